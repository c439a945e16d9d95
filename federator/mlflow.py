"""MLflow dataset lineage: record a federated query as an input of an MLflow run, and rebuild
the training set from the run later.

:func:`log_input` runs the query (or a planned :class:`~federator.result.Result`), streams its
answer once to digest it, and logs a dataset of source type ``federator`` to the active run
(MLflow starts one if none is active, as ``mlflow.log_input`` does). The dataset records the
SQL text, the parameter values, each source's name and kind (never a DSN or a password), the
freshness token of each source that has one (a PostgreSQL snapshot, MySQL's table checksums,
file modification stamps), the Arrow schema, the row count and a content digest.
:func:`from_run` reads it back through MLflow's client and runs the same query with the same
parameters; when the answer's digest differs, it warns with :class:`DatasetChangedWarning`
(``strict=True``: raises :class:`DatasetChangedError`).

The content digest does not depend on row order: each row is hashed with DuckDB's ``hash()``
of all its columns (dictionary columns decoded first), the row hashes are summed modulo
2**64 (a multiset hash: duplicate rows count), and SHA-256 over the Arrow schema (names and
types), the row count and that sum gives the digest, 32 hex digits. DuckDB's hash may change
between DuckDB releases, so the recorded dataset names the DuckDB version it was made with.

Needs ``pip install 'federator[mlflow]'`` (``mlflow-skinny`` is enough); nothing of MLflow is
imported until this module is.

>>> import mlflow, federator  # doctest: +SKIP
>>> from federator import mlflow as fed_mlflow  # doctest: +SKIP
>>> with mlflow.start_run() as run:  # doctest: +SKIP
...     ds = fed_mlflow.log_input(fed.sql("SELECT * FROM pg.users WHERE age > :a", {"a": 30}))
>>> table = fed_mlflow.from_run(run.info.run_id, fed)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import decimal
import hashlib
import json
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from federator.cache.freshness import freshness_token
from federator.cache.keys import fragment_facts
from federator.errors import FederatorError

try:
    import mlflow
    from mlflow.data.dataset import Dataset
    from mlflow.data.dataset_source import DatasetSource
    from mlflow.data.dataset_source_registry import register_dataset_source
    from mlflow.tracking import MlflowClient
except ImportError as e:  # pragma: no cover - the extra is installed in CI
    raise FederatorError(
        f"federator.mlflow needs MLflow ({e.name} is missing): pip install 'federator[mlflow]'"
    ) from None

if TYPE_CHECKING:
    from sqlglot import exp

    from federator.federation import Federation
    from federator.result import Result

__all__ = [
    "DatasetChangedError",
    "DatasetChangedWarning",
    "FederatorDataset",
    "FederatorDatasetSource",
    "content_digest",
    "from_run",
    "log_input",
]

SOURCE_TYPE = "federator"
TOKEN_TIMEOUT = 5.0  # seconds a source's freshness token may take; then it is recorded as None


class DatasetChangedWarning(UserWarning):
    """:func:`from_run` got an answer whose digest differs from the one the run recorded."""


class DatasetChangedError(FederatorError):
    """:func:`from_run` with ``strict=True``: the answer's digest differs from the run's."""


# ---- the dataset and its source ----------------------------------------------------------


class FederatorDatasetSource(DatasetSource):
    """Where a federated dataset comes from: the query, its parameters and the sources it read
    (name, kind and freshness token each). Registered with MLflow's dataset source registry,
    so ``mlflow.data.get_source(dataset_input.dataset)`` returns one.

    >>> src = FederatorDatasetSource("SELECT 1 AS x", {}, [])
    >>> FederatorDatasetSource.from_json(src.to_json()).query
    'SELECT 1 AS x'
    """

    def __init__(
        self,
        query: str,
        params: Mapping[str, Any],
        sources: list[dict[str, Any]],
    ):
        self.query = query
        self.params = dict(params)
        self._encoded = {name: _encode(value) for name, value in self.params.items()}
        self.sources = sources  # [{"name", "kind", "freshness"}]

    @staticmethod
    def _get_source_type() -> str:
        return SOURCE_TYPE

    def load(self, fed: Federation | None = None, **_: Any) -> pa.Table:
        """Run the recorded query with its parameters on ``fed`` (a federation whose catalog
        has sources of the same names)."""
        if fed is None:
            raise FederatorError(
                "loading a federator dataset needs the federation to run it on: "
                "source.load(fed=federator.connect(catalog))"
            )
        return fed.sql(self.query, self.params).to_arrow()

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # built by log_input only, never guessed from a URI

    @classmethod
    def _resolve(cls, raw_source: Any) -> FederatorDatasetSource:
        raise FederatorError("a federator dataset source is made by federator.mlflow.log_input")

    def to_dict(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "params": self._encoded,
            "sources": self.sources,
        }

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> FederatorDatasetSource:
        params = {name: _decode(value) for name, value in source_dict.get("params", {}).items()}
        return cls(source_dict["query"], params, list(source_dict.get("sources", [])))


class FederatorDataset(Dataset):
    """A federated query's answer as MLflow sees it: source, Arrow schema, row count and the
    order-independent content digest (:func:`content_digest`)."""

    def __init__(
        self,
        source: FederatorDatasetSource,
        arrow_schema: pa.Schema,
        num_rows: int,
        digest: str,
        name: str | None = None,
    ):
        self.arrow_schema = arrow_schema
        self.num_rows = num_rows
        super().__init__(source=source, name=name, digest=digest)

    def _compute_digest(self) -> str:
        raise FederatorError("a FederatorDataset is made with its digest (content_digest)")

    @property
    def source(self) -> FederatorDatasetSource:
        return self._source  # type: ignore[return-value]

    @property
    def schema(self) -> list[dict[str, Any]]:
        """The Arrow schema as ``[{"name", "type", "nullable"}, ...]``."""
        return [
            {"name": f.name, "type": str(f.type), "nullable": f.nullable} for f in self.arrow_schema
        ]

    @property
    def profile(self) -> dict[str, Any]:
        import duckdb

        return {
            "num_rows": self.num_rows,
            "digest_method": f"duckdb-hash-sum (duckdb {duckdb.__version__})",
        }

    def to_dict(self) -> dict[str, str]:
        config = super().to_dict()
        config["schema"] = json.dumps({"arrow": self.schema})
        config["profile"] = json.dumps(self.profile)
        return config


# ---- logging and rebuilding --------------------------------------------------------------


def log_input(
    result_or_query: Result | str | exp.Query,
    context: str | None = "training",
    params: Mapping[str, Any] | None = None,
    *,
    fed: Federation | None = None,
    name: str | None = None,
) -> FederatorDataset:
    """Run a federated query and log it as an input dataset of the active MLflow run.

    ``result_or_query``: a planned :class:`~federator.result.Result` (``fed.sql(...)``; its
    parameters are used), or SQL text with ``params=`` and ``fed=``. The answer is streamed
    once to count and digest it, never kept; the freshness tokens are read just before.
    ``context`` is the input's tag (``training``, ``validation``, ...); ``name`` the
    dataset's name (default: ``federator-`` and the digest's first 8 digits).

    >>> with mlflow.start_run():  # doctest: +SKIP
    ...     ds = log_input("SELECT * FROM pg.users WHERE id < :n", params={"n": 9}, fed=fed)
    >>> ds.num_rows, ds.digest  # doctest: +SKIP
    (8, '3f0c...')
    """
    result = _result_of(result_or_query, params, fed)
    query = result.query
    text = query if isinstance(query, str) else query.sql(dialect="federated")
    source = FederatorDatasetSource(text, result.params, [])  # checks the values first
    source.sources = _sources_of(result)
    schema, rows, digest = _digest_stream(result)
    dataset = FederatorDataset(source, schema, rows, digest, name or f"federator-{digest[:8]}")
    mlflow.log_input(dataset, context=context)
    return dataset


def from_run(
    run_id: str,
    fed: Federation,
    *,
    name: str | None = None,
    strict: bool = False,
) -> pa.Table:
    """Rebuild a run's federated input: run the recorded query with the recorded parameters on
    ``fed`` and return the answer. ``name`` picks one when the run logged several. A digest
    that differs from the recorded one (the data changed since) warns with
    :class:`DatasetChangedWarning`, naming the sources whose freshness token moved; with
    ``strict=True`` it raises :class:`DatasetChangedError`.

    >>> table = from_run(run.info.run_id, fed)  # doctest: +SKIP
    """
    recorded = _recorded_dataset(run_id, name)
    source = FederatorDatasetSource.from_json(recorded.source)
    result = fed.sql(source.query, source.params)
    now = _sources_of(result)
    table = result.to_arrow()
    digest = content_digest([table], table.schema)
    if digest != recorded.digest:
        _report_change(run_id, recorded, digest, table.num_rows, source.sources, now, strict)
    return table


def content_digest(batches: Iterable[pa.RecordBatch | pa.Table], schema: pa.Schema) -> str:
    """The order-independent digest of an Arrow answer (module docstring: how).

    >>> a = pa.table({"x": [1, 2, 3]})
    >>> content_digest([a], a.schema) == content_digest([a.take([2, 0, 1])], a.schema)
    True
    """
    return _finish_digest(schema, *_sum_hashes(batches))


# ---- helpers -----------------------------------------------------------------------------


def _result_of(
    result_or_query: Result | str | exp.Query,
    params: Mapping[str, Any] | None,
    fed: Federation | None,
) -> Result:
    if isinstance(result_or_query, str) or _is_tree(result_or_query):
        if fed is None:
            raise FederatorError(
                "log_input of SQL text needs the federation to run it: "
                "log_input(sql, params=..., fed=fed)"
            )
        return fed.sql(result_or_query, params)  # type: ignore[arg-type]
    if params is not None:
        raise FederatorError(
            "log_input of a Result takes its parameters from fed.sql(query, params), not params="
        )
    if getattr(result_or_query, "query", None) is None:
        raise FederatorError(
            f"log_input takes a federator Result or SQL text, not {type(result_or_query).__name__}"
        )
    return result_or_query


def _is_tree(value: Any) -> bool:
    from sqlglot import exp

    return isinstance(value, exp.Expression)


def _sources_of(result: Result) -> list[dict[str, Any]]:
    """Each source the plan reads: name, kind and freshness token (None: it has none)."""
    plan = result.plan
    refs: dict[str, set[tuple[str, str]]] = {}
    for frag in plan.fragments:
        refs.setdefault(frag.source, set()).update(fragment_facts(plan, frag)[0])
    fed = result._fed
    catalog = fed.catalog  # type: ignore[attr-defined]
    tokens = fed._loop.run(_tokens(catalog, refs))
    return [
        {"name": s, "kind": catalog.adapter(s).kind, "freshness": tokens[s]} for s in sorted(refs)
    ]


async def _tokens(catalog: Any, refs: Mapping[str, set[tuple[str, str]]]) -> dict[str, Any]:
    from federator.adapters.base import TableRef

    async def one(source: str) -> str | None:
        tables = [TableRef(schema, name) for schema, name in sorted(refs[source])]
        try:
            async with asyncio.timeout(TOKEN_TIMEOUT):
                return await freshness_token(catalog.adapter(source), tables)
        except Exception:  # lineage without a token beats no lineage
            return None

    found = await asyncio.gather(*(one(s) for s in refs))
    return dict(zip(refs, found, strict=True))


def _digest_stream(result: Result) -> tuple[pa.Schema, int, str]:
    """(schema, rows, digest) of the answer, streamed batch by batch."""
    with result.to_batches() as reader:
        schema = reader.schema
        rows, total = _sum_hashes(reader)
    return schema, rows, _finish_digest(schema, rows, total)


def _sum_hashes(batches: Iterable[pa.RecordBatch | pa.Table]) -> tuple[int, int]:
    """(rows, sum of the rows' hashes modulo 2**64) of all ``batches``."""
    import duckdb

    rows = total = 0
    con = duckdb.connect()
    try:
        for batch in batches:
            count, summed = _hash_sum(con, batch)
            rows += count
            total = (total + summed) % 2**64
    finally:
        con.close()
    return rows, total


def _hash_sum(con: Any, batch: pa.RecordBatch | pa.Table) -> tuple[int, int]:
    """(rows, sum of the rows' hashes modulo 2**64) of one batch."""
    if batch.num_rows == 0 or batch.num_columns == 0:
        return batch.num_rows, 0
    table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
    columns = [
        c.dictionary_decode() if pa.types.is_dictionary(c.type) else c
        for c in (table.column(i).combine_chunks() for i in range(table.num_columns))
    ]
    names = [f"c{i}" for i in range(len(columns))]
    con.register("federator_digest", pa.table(columns, names=names))
    try:
        hashed = ", ".join(f'"{n}"' for n in names)
        ((count, summed),) = con.execute(
            f"SELECT count(*), sum(hash({hashed})::HUGEINT) FROM federator_digest"
        ).fetchall()
    finally:
        con.unregister("federator_digest")
    return int(count), int(summed) % 2**64


def _finish_digest(schema: pa.Schema, rows: int, total: int) -> str:
    shape = json.dumps([[f.name, str(f.type)] for f in schema])
    return hashlib.sha256(f"{shape}|{rows}|{total}".encode()).hexdigest()[:32]


@dataclass
class _Recorded:
    name: str
    digest: str
    source: str
    rows: int | None


def _recorded_dataset(run_id: str, name: str | None) -> _Recorded:
    run = MlflowClient().get_run(run_id)
    found = [d.dataset for d in run.inputs.dataset_inputs if d.dataset.source_type == SOURCE_TYPE]
    if name is not None:
        found = [d for d in found if d.name == name]
    if not found:
        which = f" named {name!r}" if name is not None else ""
        raise FederatorError(f"run {run_id} logged no federator dataset{which}")
    if len({d.digest for d in found}) > 1:
        names = sorted({d.name for d in found})
        raise FederatorError(
            f"run {run_id} logged several federator datasets ({', '.join(names)}): pick one "
            "with from_run(run_id, fed, name=...)"
        )
    d = found[0]
    rows = json.loads(d.profile).get("num_rows") if d.profile else None
    return _Recorded(d.name, d.digest, d.source, rows)


def _report_change(
    run_id: str,
    recorded: _Recorded,
    digest: str,
    rows: int,
    then: list[dict[str, Any]],
    now: list[dict[str, Any]],
    strict: bool,
) -> None:
    before = {s["name"]: s.get("freshness") for s in then}
    moved = [s["name"] for s in now if before.get(s["name"]) != s["freshness"]]
    why = f"; freshness tokens changed on {', '.join(moved)}" if moved else ""
    message = (
        f"dataset {recorded.name!r} of run {run_id} changed: digest {digest} ({rows} rows), "
        f"recorded {recorded.digest} ({recorded.rows} rows){why}"
    )
    if strict:
        raise DatasetChangedError(message)
    warnings.warn(message, DatasetChangedWarning, stacklevel=3)


# ---- parameter values as JSON, round-tripping their Python types -------------------------


def _encode(value: Any) -> Any:
    """A parameter value as JSON; types JSON lacks are tagged so :func:`_decode` restores them.

    >>> _decode(_encode(dt.date(2026, 12, 2)))
    datetime.date(2026, 12, 2)
    """
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    for tag, kind, to_text in _TAGGED:
        if isinstance(value, kind):
            return {"$type": tag, "value": to_text(value)}
    raise FederatorError(
        f"parameter value of type {type(value).__name__} cannot be recorded in MLflow: pass a "
        "number, text, bytes, a date, time, timestamp, decimal, or a list of them"
    )


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict) and "$type" in value:
        return _FROM_TEXT[value["$type"]](value["value"])
    return value


_TAGGED: list[tuple[str, type | tuple[type, ...], Any]] = [
    ("datetime", dt.datetime, dt.datetime.isoformat),  # before date: a datetime is a date
    ("date", dt.date, dt.date.isoformat),
    ("time", dt.time, dt.time.isoformat),
    ("timedelta", dt.timedelta, lambda v: v.total_seconds()),
    ("decimal", decimal.Decimal, str),
    ("bytes", bytes | bytearray, lambda v: base64.b64encode(bytes(v)).decode()),
]
_FROM_TEXT: dict[str, Any] = {
    "datetime": dt.datetime.fromisoformat,
    "date": dt.date.fromisoformat,
    "time": dt.time.fromisoformat,
    "timedelta": lambda v: dt.timedelta(seconds=v),
    "decimal": decimal.Decimal,
    "bytes": base64.b64decode,
}

register_dataset_source(FederatorDatasetSource)
