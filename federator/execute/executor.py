"""Run a plan: independent fragments at once, bound fragments after their producers, then the
residual on DuckDB over the fragments' Arrow data. Batches stream to the caller."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from federator.catalog import Catalog
from federator.deadline import ascope, run_deadline
from federator.errors import FederatorError, QueryTimeoutError, SourceError
from federator.execute.residual import (
    checked_memory_limit,
    engine_for,
    register_tables,
    residual_joins_several,
)
from federator.execute.topk import fetch_top_k, grow_top_k
from federator.plan.model import (
    LATEST,
    Fragment,
    FragmentStats,
    Plan,
    alternative_id,
    bind_batches,
    choose_bind,
)
from federator.plan.ship import ROWS_PARAM, shippable, shipped_fragment
from federator.telemetry import QueryTrace, RunTrace, reading_fragment

if TYPE_CHECKING:
    from federator.execute.handle import ResultCache

RESIDUAL_BATCH_ROWS = 65_536
RESIDUAL_HEAD_BATCHES = 2  # read by the call that starts the residual: one thread hop, not three


class Execution:
    """One run of a plan. ``stats`` fills in as fragments finish (EXPLAIN ANALYZE reads it)."""

    def __init__(
        self,
        plan: Plan,
        catalog: Catalog,
        params: Mapping[str, Any],
        timeout: float | None = None,
        bind_fallback_keys: int = 200_000,
        cache: ResultCache | None = None,
        max_staleness: float | None = None,
        spent: float = 0.0,
        trace: QueryTrace | None = None,
    ):
        if any(f.window is not None for f in plan.fragments):  # bound per run: this run's copy
            plan = dataclasses.replace(plan, requests=dict(plan.requests))
        self.plan = plan
        self.catalog = catalog
        self.params = dict(params)
        self.timeout = timeout  # the query's, planning included: planning took ``spent`` of it
        self.spent = spent
        self.bind_fallback_keys = bind_fallback_keys
        self.cache = cache  # fragment and join results (federator.cache); None: no caching
        self.max_staleness = max_staleness  # per query; None: the cache's default
        self.stats: dict[str, FragmentStats] = {f.id: FragmentStats() for f in plan.fragments}
        self.residual_stats = FragmentStats()
        execution = catalog.config.settings.get("execution", {})
        self.memory_limit = checked_memory_limit(execution.get("memory_limit"))  # residual's
        self._running: set[str] = set()
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self.trace = trace if trace is not None else QueryTrace()
        self._run: RunTrace | None = None  # the running stream's spans (federator.telemetry)

    async def stream(self) -> AsyncIterator[pa.RecordBatch]:
        """Every batch of the answer; the first batch carries the schema (it may be empty).

        The deadline (the query's: what planning left of ``timeout``) is armed around each
        step, in the task that asks for the next batch: a caller may resume the stream from
        another task each time (``Result.to_batches`` does), and a timeout bound to the first
        task would never fire in the later ones."""
        deadline = run_deadline(self.timeout, self.spent)
        self._run = run = self.trace.run()
        error: BaseException | None = None
        try:
            async with contextlib.aclosing(self._batches(deadline)) as batches:
                while True:
                    try:
                        async with asyncio.timeout_at(deadline):
                            batch = await anext(batches)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        running = ", ".join(sorted(self._running)) or "the residual"
                        raise QueryTimeoutError(self.timeout or 0, running) from None
                    run.rows += batch.num_rows
                    yield batch
        except BaseException as e:
            error = e
            raise
        finally:
            run.finish(error)

    async def _batches(self, deadline: float | None) -> AsyncIterator[pa.RecordBatch]:
        async with ascope(self.timeout, at=deadline):
            if self.plan.residual is None:
                async for batch in self._fragment_batches(self.plan.fragments[0], None):
                    yield batch
            elif self.plan.ship is not None and self.cache is None:
                async with contextlib.aclosing(self._shipped_or_split()) as answer:
                    async for batch in answer:
                        yield batch
            elif self.cache is not None:  # the join cache, which falls back to the below
                async with contextlib.aclosing(self.cache.join_batches(self)) as joined:
                    async for batch in joined:
                        yield batch
            else:
                tables = await self._fetch_all()
                async for batch in self._residual(tables):
                    yield batch

    async def to_table(self) -> pa.Table:
        batches = [b async for b in self.stream()]
        return pa.Table.from_batches(batches)

    def engine_lines(self) -> list[str]:
        """What EXPLAIN ANALYZE adds about the engine that ran the plan (none in-process)."""
        return []

    # ---- the small side shipped to the big source (federator.plan.ship) ------------------
    async def _shipped_or_split(self) -> AsyncIterator[pa.RecordBatch]:
        """Fetch the small side; when few enough rows come, send them to the big side's
        source with the rest of the query, else run the plan as split (the rows kept)."""
        ship = self.plan.ship
        small = self.plan.fragment(ship.small)
        table = await self._collect(small, None)
        if table.num_rows <= ship.max_rows and shippable(table.schema):
            async with contextlib.aclosing(self._shipped(table)) as batches:
                async for batch in batches:
                    yield batch
            return
        self.stats[small.id].note = (
            f"not shipped to {ship.source}: {table.num_rows:,} rows came "
            f"(> ship_max_rows {ship.max_rows:,}, or a type without an array)"
        )
        tables = await self._fetch_all(ready={small.id: table})
        async for batch in self._residual(tables):
            yield batch

    async def _shipped(self, small_rows: pa.Table) -> AsyncIterator[pa.RecordBatch]:
        """The whole query on the big side's source, the small side's rows as arrays."""
        ship = self.plan.ship
        big = self.plan.fragment(ship.big)
        assert self.plan.residual is not None
        query = shipped_fragment(ship, small_rows.schema)
        columns = [s.alias_or_name for s in self.plan.residual.selects]
        request = self.catalog.adapter(ship.source).translate(
            Fragment(id=big.id, source=ship.source, query=query, columns=columns)
        )
        arrays = {
            f"{ROWS_PARAM}{i}": small_rows.column(c).to_pylist() for i, c in enumerate(ship.columns)
        }
        request = request.with_params({**self.params, **arrays})
        self.plan = dataclasses.replace(self.plan, requests={**self.plan.requests, big.id: request})
        self.stats[big.id].note = (
            f"shipped: {ship.small}'s {small_rows.num_rows:,} rows sent to {ship.source} as "
            f"arrays; {ship.source} ran the whole query (the residual did not run)"
        )
        with self._fragment_span(big, cached=False):
            async with contextlib.aclosing(self._source_batches(big, None)) as batches:
                async for batch in batches:
                    yield batch

    # ---- fragments ---------------------------------------------------------------------
    async def _fetch_all(self, ready: dict[str, pa.Table] | None = None) -> dict[str, pa.Table]:
        """Every fragment's rows (``ready``: those already fetched)."""
        tasks: dict[str, asyncio.Task[pa.Table]] = {}
        first: dict[tuple[str, str, str, str], str] = {}  # identical requests run once
        try:
            async with asyncio.TaskGroup() as group:
                for frag in self.plan.fragments:
                    key = self._share_key(frag)
                    if ready and frag.id in ready:
                        fetch = _ready(ready[frag.id])
                    elif key is not None and key in first:
                        fetch = self._shared(frag, tasks[first[key]], first[key])
                    else:
                        if key is not None:
                            first[key] = frag.id
                        fetch = self._fetch(frag, tasks)
                    tasks[frag.id] = group.create_task(fetch, name=frag.id)
        except BaseExceptionGroup as group_error:
            # The first failure is the cause; the other fragments were cancelled because of it.
            raise _first_cause(group_error) from None
        return {fid: t.result() for fid, t in tasks.items()}

    def _share_key(self, frag: Fragment) -> tuple[str, str, str, str] | None:
        """What makes two fragments the same request (None: never shared: bound, top-k or a
        time window, whose values come at run time).
        The columns too: a Redis request's text names keys, not the fields it returns."""
        if frag.bind is not None or frag.top_k is not None or frag.window is not None:
            return None
        request = self.plan.requests[frag.id]
        return frag.source, request.text, repr(request.params), repr(frag.columns)

    async def _shared(self, frag: Fragment, task: asyncio.Task[pa.Table], fid: str) -> pa.Table:
        """The result of an identical request (a subquery repeated in the query)."""
        table = await asyncio.shield(task)
        self.stats[frag.id].note = f"same request as {fid}: fetched once"
        return table

    async def _fetch(self, frag: Fragment, tasks: dict[str, asyncio.Task[pa.Table]]) -> pa.Table:
        keys = None
        if frag.bind is not None and frag.bind.race and frag.top_k is None:
            return await self._fetch_racing(frag, tasks[frag.bind.producer])
        if frag.bind is not None and frag.bind.alternatives and frag.top_k is None:
            keys = await self._chosen_bind_keys(frag, tasks)
        elif frag.bind is not None:
            produced = await asyncio.shield(tasks[frag.bind.producer])
            keys = self._bind_keys(frag, produced)
        if frag.window is not None:
            self._bind_window(frag, await asyncio.shield(tasks[frag.window.producer]))
        if frag.top_k is not None:  # vector top-k: pre/post filter from the actual key count
            with self._fragment_span(frag, cached=False):
                return await fetch_top_k(self, frag, keys)
        return await self._collect(frag, keys)

    async def _collect(self, frag: Fragment, keys: list[Any] | None) -> pa.Table:
        batches = [b async for b in self._fragment_batches(frag, keys)]
        return pa.Table.from_batches(batches)

    async def _fetch_racing(self, frag: Fragment, producer: asyncio.Task[pa.Table]) -> pa.Table:
        """An adaptive bind: fetch in full at once while the producer's keys come; if they
        arrive first and binding pays, cancel the full fetch and fetch bound instead. So a
        bind that does not pay costs no waiting."""
        full = asyncio.ensure_future(self._collect(frag, None))
        try:
            done, _ = await asyncio.wait({full, producer}, return_when=asyncio.FIRST_COMPLETED)
            if full in done:
                self.stats[frag.id].note = "bind not used: the full fetch finished first"
                return full.result()
            keys = self._bind_keys(frag, producer.result())
            if keys is None:
                return await full
            full.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await full
            stats = self.stats[frag.id]
            stats.note += f"; full fetch cancelled after {stats.rows:,} rows"
            stats.rows = stats.bytes = 0
            return await self._collect(frag, keys)
        finally:
            if not full.done():
                full.cancel()
                with contextlib.suppress(BaseException):
                    await full

    async def _chosen_bind_keys(
        self, frag: Fragment, tasks: dict[str, asyncio.Task[pa.Table]]
    ) -> list[Any] | None:
        """A bind with alternatives: wait for every producer, then bind the key set that
        keeps the smallest share of the consumer (:func:`choose_bind`), or fetch in full."""
        assert frag.bind is not None
        binds = [frag.bind, *frag.bind.alternatives]
        keys = []
        for b in binds:
            produced = await asyncio.shield(tasks[b.producer])
            keys.append(_distinct(produced, b.producer_column))
        index, why = choose_bind(binds, [len(k) for k in keys], self.bind_fallback_keys)
        if index is None:
            self.stats[frag.id].note = why
            return None
        if index > 0:  # this execution's plan sends the alternative's request instead
            chosen = self.plan.requests[alternative_id(frag.id, index - 1)]
            self.plan = dataclasses.replace(
                self.plan, requests={**self.plan.requests, frag.id: chosen}
            )
        return self._bound(frag, keys[index], why)

    def _bind_keys(self, frag: Fragment, produced: pa.Table) -> list[Any] | None:
        assert frag.bind is not None
        keys = _distinct(produced, frag.bind.producer_column)
        bind, why = frag.bind.decide(len(keys), self.bind_fallback_keys)
        if not bind:
            self.stats[frag.id].note = why
            return None
        return self._bound(frag, keys, why)

    def _bound(self, frag: Fragment, keys: pa.Array, why: str) -> list[Any]:
        """``keys`` to bind into ``frag``'s request; EXPLAIN ANALYZE notes ``why``."""
        stats = self.stats[frag.id]
        spec = self.plan.requests[frag.id].bind
        if spec is not None:
            batches = bind_batches(len(keys), spec.batch_size)
            why += f"; {len(batches)} request(s) of up to {max(batches, default=0):,} keys"
        stats.note = why
        stats.bound_keys = len(keys)
        return keys.to_pylist()

    def _bind_window(self, frag: Fragment, produced: pa.Table) -> None:
        """Set the time window of an ASOF join's right side from the producer's times; at a
        single cut-off, send the latest-per-key request where one was planned."""
        window = frag.window
        assert window is not None
        times = produced.column(window.producer_column)
        values = window.bounds(times, window.type or times.type)
        request = self.plan.requests[frag.id]
        latest = self.plan.requests.get(frag.id + LATEST)
        names = {window.upper: "upper", window.lower: "lower"}
        shown = ", ".join(f"{names[k]} {v}" for k, v in values.items())
        note = f"time window bound: {shown}"
        if latest is not None and window.single_cut_off(times):
            request = latest
            note += "; one cut-off: latest row per key sent by the source"
        self.plan.requests[frag.id] = request.with_values(values)
        stats = self.stats[frag.id]
        stats.note = f"{stats.note}; {note}" if stats.note else note

    async def _fragment_batches(
        self, frag: Fragment, keys: list[Any] | None, use_cache: bool = True
    ) -> AsyncIterator[pa.RecordBatch]:
        if not use_cache:  # the cache's fetch on a miss, inside the fragment's span
            async with contextlib.aclosing(self._source_batches(frag, keys)) as fetched:
                async for batch in fetched:
                    yield batch
            return
        with self._fragment_span(frag, cached=self.cache is not None):
            if self.cache is not None:  # lookup, single flight, store when complete
                batches = self.cache.fragment_batches(self, frag, keys)
            else:
                batches = self._source_batches(frag, keys)
            async with contextlib.aclosing(batches) as fetched:
                async for batch in fetched:
                    yield batch

    def _fragment_span(self, frag: Fragment, cached: bool) -> contextlib.AbstractContextManager:
        """The fragment's span (federator.telemetry) around one fetch of it."""
        assert self._run is not None, "fragments run inside stream()"
        kind = self.catalog.adapter(frag.source).kind
        request = self.plan.requests[frag.id]
        return self._run.fragment_span(frag, kind, request, cached, self.stats[frag.id])

    def _fragment_context(self, frag: Fragment) -> Any:
        """The fragment span's context, the parent of its bind batches' spans (None: off)."""
        if frag.bind is None or self._run is None:
            return None
        return self._run.fragment_context(frag.id)

    async def _source_batches(
        self, frag: Fragment, keys: list[Any] | None
    ) -> AsyncIterator[pa.RecordBatch]:
        adapter = self.catalog.adapter(frag.source)
        sem = self._semaphores.setdefault(frag.source, asyncio.Semaphore(adapter.max_concurrency))
        stats = self.stats[frag.id]
        label = f"fragment {frag.id} on source {frag.source!r}"
        async with sem:
            self._running.add(label)
            started = time.perf_counter()
            interrupted = False
            try:
                context = self._fragment_context(frag)
                async with contextlib.aclosing(self._request_batches(frag, keys)) as batches:
                    while (batch := await _next_under(batches, context)) is not None:
                        stats.rows += batch.num_rows
                        stats.bytes += batch.nbytes
                        yield batch
            except FederatorError:
                raise
            except (asyncio.CancelledError, TimeoutError, GeneratorExit):
                interrupted = True  # keep the label: a timeout message names what was running
                raise
            except Exception as e:  # a driver error: name the fragment and the source
                raise SourceError(f"{label} failed: {type(e).__name__}: {e}") from e
            finally:
                stats.ms += (time.perf_counter() - started) * 1000
                if not interrupted:
                    self._running.discard(label)

    def _request_batches(
        self, frag: Fragment, keys: list[Any] | None
    ) -> AsyncIterator[pa.RecordBatch]:
        """The fragment's request as its source streams it (the Ray engine: from its actor);
        with ``keys`` None, a bound request runs in full."""
        return self.catalog.adapter(frag.source).execute(self.plan.requests[frag.id], keys)

    # ---- residual ----------------------------------------------------------------------
    async def _residual(self, tables: dict[str, pa.Table]) -> AsyncIterator[pa.RecordBatch]:
        assert self.plan.residual_sql is not None
        tables = await grow_top_k(self, tables)  # no-op unless a vector top-k was pushed
        started = time.perf_counter()
        engine = engine_for(self.memory_limit)
        con = engine.cursor()  # its own connection: its fragment names are its alone
        assert self._run is not None, "the residual runs inside stream()"
        with self._run.residual_span(self.residual_stats):
            try:
                params = {k: v for k, v in self.params.items() if f"${k}" in self.plan.residual_sql}
                reader, head = await engine.run(con, self._start_residual, con, tables, params)
                if not head:
                    yield pa.RecordBatch.from_pylist([], schema=reader.schema)
                for batch in head:  # a small answer comes whole in the first call to the engine
                    self.residual_stats.rows += batch.num_rows
                    self.residual_stats.bytes += batch.nbytes
                    yield batch
                more = len(head) == RESIDUAL_HEAD_BATCHES
                while more and (batch := await engine.run(con, _next_batch, reader)) is not None:
                    self.residual_stats.rows += batch.num_rows
                    self.residual_stats.bytes += batch.nbytes
                    yield batch
            finally:
                self.residual_stats.ms += (time.perf_counter() - started) * 1000
                engine.release(con)

    def _start_residual(
        self,
        con: duckdb.DuckDBPyConnection,
        tables: dict[str, pa.Table],
        params: dict[str, Any],
    ) -> tuple[pa.RecordBatchReader, list[pa.RecordBatch]]:
        """Register the fragments' tables, start the residual and read its first batches (on a
        worker thread): fewer than ``RESIDUAL_HEAD_BATCHES`` of them are the whole answer."""
        try:
            register_tables(con, tables, with_statistics=residual_joins_several(self.plan))
            relation = con.sql(self.plan.residual_sql, params=params or None)
            if hasattr(relation, "to_arrow_reader"):  # DuckDB >= 2.0
                reader = relation.to_arrow_reader(RESIDUAL_BATCH_ROWS)
            else:
                reader = relation.fetch_arrow_reader(RESIDUAL_BATCH_ROWS)
            head: list[pa.RecordBatch] = []
            while len(head) < RESIDUAL_HEAD_BATCHES and (batch := _next_batch(reader)) is not None:
                head.append(batch)
            return reader, head
        except duckdb.Error as e:
            raise SourceError(f"residual query failed on DuckDB: {e}") from e


async def _ready(table: pa.Table) -> pa.Table:
    return table


def _distinct(produced: pa.Table, column: str) -> pa.Array:
    """The distinct non-null values of a producer's key column."""
    return pc.unique(produced.column(column).combine_chunks()).drop_null()


def _first_cause(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_cause(first) if isinstance(first, BaseExceptionGroup) else first


async def _next_under(
    batches: AsyncIterator[pa.RecordBatch], context: Any
) -> pa.RecordBatch | None:
    """The next of ``batches`` (None at the end), read with ``context`` as the fragment being
    read: telemetry's bind-batch spans started in this step hang under it."""
    if context is None:
        return await anext(batches, None)
    with reading_fragment(context):
        return await anext(batches, None)


def _next_batch(reader: pa.RecordBatchReader) -> pa.RecordBatch | None:
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None
