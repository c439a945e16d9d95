"""Lazy results: nothing runs until a terminal call."""

from __future__ import annotations

import asyncio
import contextlib
import html
import time
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa

from federator.errors import FederationClosedError
from federator.execute import Execution
from federator.plan.model import Plan
from federator.telemetry import QueryTrace

if TYPE_CHECKING:
    import pandas as pd
    from sqlglot import exp

    from federator._loop import LoopThread
    from federator.cache import Cache


class QueryRunner(Protocol):
    """What a :class:`Result` (and :mod:`federator.lookup`) uses of the federation that planned
    it, :class:`federator.Federation`; a protocol, so this layer never imports the one above."""

    _loop: LoopThread
    cache: Cache
    open_streams: weakref.WeakSet[Any]
    timeout: float | None

    async def plan_async(self, query: str | exp.Query, params: Mapping[str, Any]) -> Plan: ...

    def _execution(
        self,
        plan: Plan,
        params: dict[str, Any],
        timeout: float | None,
        max_staleness: float | None = None,
        spent: float = 0.0,
        trace: QueryTrace | None = None,
    ) -> Execution: ...


class Result:
    """The answer of one federated query, planned but not yet run.

    >>> import federator, pyarrow as pa  # doctest: +SKIP
    >>> fed.sql("SELECT 1 AS x FROM files.t").to_arrow()  # doctest: +SKIP
    pyarrow.Table
    """

    def __init__(
        self,
        fed: QueryRunner,
        plan: Plan,
        params: dict[str, Any],
        timeout: float | None,
        *,
        max_staleness: float | None = None,
        planning_seconds: float = 0.0,
        trace: QueryTrace | None = None,
        query: str | exp.Query | None = None,
    ):
        self._fed = fed
        self.plan = plan
        self.query = query  # as given to fed.sql: text or a sqlglot tree
        self._params = params
        self._timeout = timeout
        # ``timeout`` bounds planning and a run together: each run gets what planning left.
        self._planning_seconds = planning_seconds
        self._max_staleness = max_staleness  # seconds a cached answer may be old; 0: bypass
        self.last_execution: Execution | None = None
        self._trace = trace if trace is not None else QueryTrace()  # spans, metrics, log line

    @property
    def params(self) -> dict[str, Any]:
        """The parameter values this result runs with (a copy)."""
        return dict(self._params)

    html_max_rows = 20  # rows _repr_html_ shows; the rest are counted, not kept

    def __repr__(self) -> str:
        return f"<federator.Result: {len(self.plan.fragments)} fragment(s)>"

    def _repr_html_(self) -> str:
        """Run the query and render it for Jupyter: an HTML table with each column's type, at
        most :attr:`html_max_rows` rows then a "… N more rows" line, the row count and the
        time it took. Rows past those shown stream by and are only counted.

        >>> fed.sql("SELECT id, name FROM shop.users")  # doctest: +SKIP
        (in a notebook: the table, "… 20 more rows", "40 rows · 12.3 ms")
        """
        started = time.perf_counter()
        shown: list[pa.RecordBatch] = []
        kept = total = 0
        with self.to_batches() as reader:
            schema = reader.schema
            for batch in reader:
                total += batch.num_rows
                if kept < self.html_max_rows:
                    shown.append(batch.slice(0, self.html_max_rows - kept))
                    kept += shown[-1].num_rows
        seconds = time.perf_counter() - started
        return html_table(pa.Table.from_batches(shown, schema=schema), total, seconds)

    def _execution(self) -> Execution:
        self.last_execution = self._fed._execution(
            self.plan,
            self._params,
            self._timeout,
            self._max_staleness,
            self._planning_seconds,
            trace=self._trace,
        )
        return self.last_execution

    # ---- sync terminals --------------------------------------------------------------
    def to_arrow(self) -> pa.Table:
        """Run the query and return the whole answer as one Arrow table."""
        return self._fed._loop.run(self._execution().to_table())

    def to_batches(self) -> BatchReader:
        """Run the query and stream the answer: a :class:`BatchReader`, pyarrow's
        RecordBatchReader interface whose ``close()`` (or ``with``, or dropping it) stops the
        query: fragments still running are cancelled, their connections go back to the pools."""
        stream = self._execution().stream()
        self._fed.open_streams.add(stream)
        loop = self._fed._loop
        try:
            first = loop.run(anext(stream))
        except BaseException:
            _close_stream(loop, stream)
            raise

        def rest() -> Iterator[pa.RecordBatch]:
            try:
                yield first
                while True:
                    try:
                        batch = loop.run(anext(stream))
                    except StopAsyncIteration:
                        return
                    yield batch
            finally:
                _close_stream(loop, stream)

        batches = rest()
        return BatchReader(pa.RecordBatchReader.from_batches(first.schema, batches), batches)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return iter(self.to_batches())

    def to_pandas(self) -> pd.DataFrame:
        return self.to_arrow().to_pandas()

    def to_torch(self, columns: list[str] | None = None, **options: Any) -> Any:
        """Run the query and return tensors: a dict by column, or ``Features(x, y, mask)`` with
        ``features=[...]`` and ``label=``. Options and policies: :func:`federator.tensors.to_torch`.
        """
        from federator.tensors import to_torch

        return to_torch(self.to_arrow(), columns, **options)

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        return self.to_batches().__arrow_c_stream__(requested_schema)

    def explain(self, analyze: bool = False) -> str:
        if not analyze:
            self._trace.close("explained")  # a plain EXPLAIN runs nothing: end the query span
            cache = self._fed.cache
            lines = cache.describe(self.plan, self._max_staleness) if cache.enabled else []
            return "\n".join([self.plan.explain(), *lines])
        self.to_arrow()
        assert self.last_execution is not None
        ex = self.last_execution  # its plan: the requests as sent (an alternative bind's)
        explained = ex.plan.explain(
            ex.stats, ex.residual_stats if self.plan.residual is not None else None
        )
        return "\n".join([explained, *ex.engine_lines()])

    def to_ray_dataset(self) -> Any:
        """Run the query and hand the answer to Ray Data (``pip install 'federator[ray]'``).

        >>> ds = fed.sql("SELECT id, label FROM pg.items").to_ray_dataset()  # doctest: +SKIP
        >>> ds.count()  # doctest: +SKIP
        """
        import ray.data

        return ray.data.from_arrow(self.to_arrow())

    # ---- async terminals -------------------------------------------------------------
    async def to_arrow_async(self) -> pa.Table:
        return await self._fed._loop.run_async(self._execution().to_table())

    async def __aiter__(self) -> AsyncIterator[pa.RecordBatch]:
        stream = self._execution().stream()
        loop = self._fed._loop
        try:
            while True:
                try:
                    batch = await loop.run_async(anext(stream))
                except StopAsyncIteration:
                    return
                yield batch
        finally:
            with contextlib.suppress(FederationClosedError):  # closing it closed the stream
                await loop.run_async(stream.aclose())


class BatchReader:
    """A federated answer as a stream of record batches, with pyarrow's RecordBatchReader
    interface (``schema``, ``read_next_batch``, ``read_all``, ``read_pandas``, iteration,
    ``__arrow_c_stream__``; other attributes are the reader's); ``close()`` and ``with`` stop
    the query, which a RecordBatchReader's ``close()`` does not do for a Python iterator.

    >>> with fed.sql("SELECT id FROM pg.big").to_batches() as reader:  # doctest: +SKIP
    ...     first = reader.read_next_batch()  # the rest is never fetched
    """

    def __init__(
        self, reader: pa.RecordBatchReader, batches: Generator[pa.RecordBatch, None, None]
    ):
        self._reader = reader
        self._batches = batches  # the reader's source: closing it stops the query

    @property
    def schema(self) -> pa.Schema:
        return self._reader.schema

    def read_next_batch(self) -> pa.RecordBatch:
        return self._reader.read_next_batch()

    def read_all(self) -> pa.Table:
        return self._reader.read_all()

    def read_pandas(self, **options: Any) -> pd.DataFrame:
        return self._reader.read_pandas(**options)

    def __iter__(self) -> Iterator[pa.RecordBatch]:
        return iter(self._reader)

    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object:
        return self._reader.__arrow_c_stream__(requested_schema)

    def close(self) -> None:
        """Stop the query (safe to call twice, and after the last batch)."""
        self._batches.close()
        self._reader.close()

    def __enter__(self) -> BatchReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reader, name)

    def __repr__(self) -> str:
        return f"<federator.BatchReader {self._reader.schema.names}>"


def html_table(table: pa.Table, total_rows: int, seconds: float) -> str:
    """``table`` (the first rows of an answer of ``total_rows``) as an HTML table whose header
    names each column and its Arrow type; every name, type and value is escaped.

    >>> html_table(pa.table({"x": ["<b>"]}), 1, 0.0012)  # doctest: +ELLIPSIS
    '<div class="federator-result"><table>...<td>&lt;b&gt;</td>...1 row · 1.2 ms</p></div>'
    """
    head = "".join(
        f"<th>{html.escape(f.name)}<br><small>{html.escape(str(f.type))}</small></th>"
        for f in table.schema
    )
    body = "".join(
        "<tr>" + "".join(f"<td>{_html_cell(v)}</td>" for v in row.values()) + "</tr>"
        for row in table.to_pylist()
    )
    more = total_rows - table.num_rows
    lines = f"<p>… {more:,} more row{'s' * (more != 1)}</p>" if more > 0 else ""
    took = f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
    footer = f"<p>{total_rows:,} row{'s' * (total_rows != 1)} · {took}</p>"
    return (
        f'<div class="federator-result"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>{lines}{footer}</div>"
    )


def _html_cell(value: Any) -> str:
    return "<i>NULL</i>" if value is None else html.escape(str(value))


def _close_stream(loop: LoopThread, stream: AsyncGenerator[pa.RecordBatch, None]) -> None:
    """Stop a stream from the caller's thread (a federation being closed closes it itself)."""
    with contextlib.suppress(FederationClosedError):
        loop.run(_aclose_when_idle(stream))


async def _aclose_when_idle(stream: AsyncGenerator[pa.RecordBatch, None]) -> None:
    # Ctrl-C while a batch is awaited cancels that step on the loop; closing the generator
    # before the cancellation has run through it would raise "already running".
    while stream.ag_running:
        await asyncio.sleep(0.005)
    await stream.aclose()
