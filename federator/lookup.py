"""Online lookups: features for a batch of keys from several sources, in one call.

Each feature table is read with one prepared federated query, ``key IN (:k0, …)``, that the
planner pushes whole to its source: a PostgreSQL/MySQL/SQLite ``WHERE key IN (…)``, pipelined
``HGETALL``/``MGET`` for a Redis table, a ``$in`` match for MongoDB. Every table is read at
once; the answer has one row per requested key, in the order asked, with nulls where a table
has no row for a key. Plans are made once per table and key-count bucket (powers of two) and
reused with new parameters, so a call costs the round trips and not the planning.

>>> import sqlite3, tempfile, os, asyncio, federator
>>> path = os.path.join(tempfile.mkdtemp(), "f.db")
>>> with sqlite3.connect(path) as db:
...     _ = db.execute("CREATE TABLE users (id INTEGER, age REAL)")
...     _ = db.execute("INSERT INTO users VALUES (1, 30.0), (2, 41.0)")
>>> fed = federator.connect({"sources": {"db": {"kind": "sqlite", "path": path}}})
>>> lookup = FeatureLookup(fed, {"db.users": "id"})
>>> asyncio.run(lookup([2, 3, 1])).to_pylist()
[{'key': 2, 'age': 41.0}, {'key': 3, 'age': None}, {'key': 1, 'age': 30.0}]
>>> fed.close()
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from federator.deadline import scope
from federator.errors import FederatorError, QueryTimeoutError
from federator.result import QueryRunner, Result

if TYPE_CHECKING:
    from federator.plan.model import Plan

__all__ = ["FeatureLookup", "FeatureTable", "MissingKeysError"]

_KEY = "federator_lookup_key"
_MIN_BUCKET = 8


class MissingKeysError(FederatorError):
    """``missing="error"``: a table has no row for some requested keys."""


@dataclass(frozen=True)
class FeatureTable:
    """One table to read features from: ``table`` as ``source.table``, its key column, the
    columns to return (default: all but the key) and a prefix for their output names."""

    table: str
    key: str
    columns: tuple[str, ...] | None = None
    prefix: str = ""


def feature_tables(
    tables: Mapping[str, str] | Iterable[FeatureTable | tuple[str, str]],
) -> list[FeatureTable]:
    """``{"pg.users": "user_id", ...}`` or FeatureTables or (table, key) pairs."""
    if isinstance(tables, Mapping):
        return [FeatureTable(t, k) for t, k in tables.items()]
    out = []
    for t in tables:
        out.append(t if isinstance(t, FeatureTable) else FeatureTable(*t))
    return out


class FeatureLookup:
    """A prepared lookup: ``await lookup(keys)`` → an Arrow table, one row per key.

    - ``timeout``: the latency budget in seconds for the whole call; past it the call raises
      :class:`~federator.QueryTimeoutError` naming the tables still pending, and their requests
      are cancelled.
    - ``cache_ttl``: keep each table's row for a key (or its absence) this many seconds, in
      process, up to ``cache_size`` entries per table (least recently used go first); only keys
      not cached are fetched. None (default) caches nothing.
    - ``missing``: ``"null"`` (default) gives nulls for keys a table lacks; ``"error"`` raises
      :class:`MissingKeysError`.
    - ``key_name``: the name of the key column of the answer.
    """

    def __init__(
        self,
        fed: QueryRunner,
        tables: Mapping[str, str] | Iterable[FeatureTable | tuple[str, str]],
        *,
        timeout: float | None = None,
        cache_ttl: float | None = None,
        cache_size: int = 100_000,
        missing: str = "null",
        key_name: str = "key",
    ):
        if missing not in ("null", "error"):
            raise ValueError("missing must be 'null' or 'error'")
        self.fed = fed
        self.tables = feature_tables(tables)
        if not self.tables:
            raise ValueError("a lookup needs at least one table")
        self.timeout = timeout
        self.cache_ttl = cache_ttl
        self.cache_size = cache_size
        self.missing = missing
        self.key_name = key_name
        self._plans: dict[tuple[int, int], Plan] = {}
        self._caches: list[OrderedDict[Any, tuple[float, pa.Table | None]]] = [
            OrderedDict() for _ in self.tables
        ]
        self._queries = [_query(t) for t in self.tables]

    def __repr__(self) -> str:
        names = ", ".join(t.table for t in self.tables)
        return f"<federator.FeatureLookup {names}>"

    async def __call__(self, keys: Any, *, timeout: float | None = None) -> pa.Table:
        budget = timeout if timeout is not None else self.timeout
        work = self._lookup(_key_list(keys), budget)
        loop = self.fed._loop
        if asyncio.get_running_loop() is loop.loop:
            return await work
        # One hop onto the federation's loop for the whole call, not one per table.
        return await loop.run_async(work)

    def run(self, keys: Any, *, timeout: float | None = None) -> pa.Table:
        """The same lookup from synchronous code."""
        budget = timeout if timeout is not None else self.timeout
        return self.fed._loop.run(self._lookup(_key_list(keys), budget))

    async def _lookup(self, keys: list[Any], budget: float | None) -> pa.Table:
        """Runs on the federation's loop: every table at once, within the budget."""
        pending = {t.table for t in self.tables}

        async def one(i: int) -> pa.Table:
            table = await self._table(i, keys)
            pending.discard(self.tables[i].table)
            return table

        with scope(budget):  # one deadline: the plans, connects and runs of every table
            tasks = [asyncio.ensure_future(one(i)) for i in range(len(self.tables))]
        try:
            async with asyncio.timeout(budget):
                parts = await asyncio.gather(*tasks)
        except TimeoutError:
            raise QueryTimeoutError(
                budget or 0, f"the lookup of {len(keys)} key(s) in {', '.join(sorted(pending))}"
            ) from None
        finally:
            for t in tasks:
                t.cancel()
        return self._assemble(keys, parts)

    def explain(self, keys: Any) -> list[str]:
        """Each table's plan for ``keys``: the native request its source receives."""

        async def plans() -> list[str]:
            return [
                (await self._plan(i, _key_list(keys)))[0].explain() for i in range(len(self.tables))
            ]

        return self.fed._loop.run(plans())

    def clear_cache(self) -> None:
        for c in self._caches:
            c.clear()

    # ---- one table -------------------------------------------------------------------------
    async def _table(self, i: int, keys: list[Any]) -> pa.Table:
        """Rows of table ``i`` for ``keys``: a key column named _KEY, then its features."""
        cache = self._caches[i]
        hits: list[pa.Table] = []
        wanted = list(dict.fromkeys(keys))
        if self.cache_ttl is not None:
            now = time.monotonic()
            misses = []
            for k in wanted:
                entry = cache.get(k)
                if entry is not None and entry[0] > now:
                    cache.move_to_end(k)
                    if entry[1] is not None:
                        hits.append(entry[1])
                else:
                    misses.append(k)
            wanted = misses
        fetched = list(await asyncio.gather(*(self._fetch(i, c) for c in _chunks(wanted))))
        if self.cache_ttl is not None and wanted:
            self._remember(i, wanted, fetched)
        parts = fetched + hits
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    async def _plan(self, i: int, keys: list[Any]) -> tuple[Plan, dict[str, Any]]:
        """The table's plan for this many keys (made once per bucket), bound to ``keys``."""
        bucket = _bucket(len(keys))
        params = {f"k{j}": keys[min(j, len(keys) - 1)] if keys else None for j in range(bucket)}
        plan = self._plans.get((i, bucket))
        if plan is None:
            plan = await self.fed.plan_async(self._queries[i](bucket), params)
            self._plans[(i, bucket)] = plan
        bound = replace(
            plan, requests={fid: r.with_params(params) for fid, r in plan.requests.items()}
        )
        return bound, params

    async def _fetch(self, i: int, keys: list[Any]) -> pa.Table:
        plan, params = await self._plan(i, keys)
        return await Result(self.fed, plan, params, self.fed.timeout)._execution().to_table()

    def _remember(self, i: int, keys: list[Any], fetched: list[pa.Table]) -> None:
        cache = self._caches[i]
        expires = time.monotonic() + (self.cache_ttl or 0)
        found: dict[Any, pa.Table] = {}
        for table in fetched:
            for row, k in enumerate(table.column(_KEY).to_pylist()):
                found.setdefault(k, table.slice(row, 1))
        for k in keys:
            cache[k] = (expires, found.get(k))
            cache.move_to_end(k)
        while len(cache) > self.cache_size:
            cache.popitem(last=False)

    # ---- the answer ------------------------------------------------------------------------
    def _assemble(self, keys: list[Any], parts: Sequence[pa.Table]) -> pa.Table:
        arrays: list[pa.Array] = [pa.array(keys)]
        names = [self.key_name]
        for spec, part in zip(self.tables, parts, strict=True):
            found = part.column(_KEY).combine_chunks()
            wanted = _cast_keys(arrays[0], found.type, spec)
            index = pc.index_in(wanted, value_set=found)
            if self.missing == "error" and index.null_count:
                lacking = pc.filter(arrays[0], pc.is_null(index)).to_pylist()
                raise MissingKeysError(
                    f"{spec.table} has no row for {len(lacking)} key(s): "
                    f"{lacking if len(lacking) <= 10 else str(lacking[:10])[:-1] + ', …]'}"
                )
            rows = part.drop_columns([_KEY]).take(index)
            if spec.columns is None and spec.key in rows.column_names:
                rows = rows.drop_columns([spec.key])
            for name in rows.column_names:
                out = spec.prefix + name
                if out in names:
                    raise FederatorError(
                        f"column {out!r} comes from two lookup tables; give {spec.table} a prefix"
                        " (FeatureTable(..., prefix='...')) or pick its columns"
                    )
                names.append(out)
                arrays.append(rows.column(name).combine_chunks())
        return pa.Table.from_arrays(arrays, names=names)


_PREPARED: weakref.WeakKeyDictionary[QueryRunner, dict[Any, FeatureLookup]] = (
    weakref.WeakKeyDictionary()
)


async def lookup(
    fed: QueryRunner,
    keys: Any,
    tables: Mapping[str, str] | Iterable[FeatureTable | tuple[str, str]],
    **options: Any,
) -> pa.Table:
    """``await fed.lookup(keys, tables, ...)``: a :class:`FeatureLookup` prepared on first use
    for these tables and options and kept with the federation (its plans and cache persist)."""
    specs = tuple(feature_tables(tables))
    call_timeout = options.pop("call_timeout", None)
    ident = (specs, tuple(sorted(options.items())))
    prepared = _PREPARED.setdefault(fed, {})
    found = prepared.get(ident)
    if found is None:
        found = prepared[ident] = FeatureLookup(fed, specs, **options)
    return await found(keys, timeout=call_timeout)


def _query(spec: FeatureTable) -> Any:
    """A builder of ``SELECT key, cols FROM table WHERE key IN (:k0 … :k{n-1})``."""
    parts = spec.table.split(".")
    if len(parts) not in (2, 3):
        raise FederatorError(f"lookup table {spec.table!r}: write it as source.table")
    table = exp.to_table(spec.table)
    table.set("alias", exp.TableAlias(this=exp.to_identifier("t")))
    key = exp.column(spec.key, table="t", quoted=True)
    select = [key.copy().as_(_KEY)]
    if spec.columns is None:
        select.append(exp.Column(this=exp.Star(), table=exp.to_identifier("t")))
    else:
        select += [exp.column(c, table="t", quoted=True).as_(c) for c in spec.columns]

    def build(n: int) -> exp.Query:
        values = [exp.Placeholder(this=f"k{j}") for j in range(n)]
        query = exp.select(*(s.copy() for s in select)).from_(table.copy())
        return query.where(exp.In(this=key.copy(), expressions=values))

    return build


def _key_list(keys: Any) -> list[Any]:
    if hasattr(keys, "tolist"):  # numpy, torch
        keys = keys.tolist()
    elif isinstance(keys, pa.Array | pa.ChunkedArray):
        keys = keys.to_pylist()
    return list(keys)


def _chunks(keys: list[Any], size: int = 1024) -> list[list[Any]]:
    if not keys:
        return [[]]
    return [keys[i : i + size] for i in range(0, len(keys), size)]


def _bucket(n: int) -> int:
    b = _MIN_BUCKET
    while b < n:
        b *= 2
    return b


def _cast_keys(keys: pa.Array, target: pa.DataType, spec: FeatureTable) -> pa.Array:
    if keys.type == target or pa.types.is_null(keys.type):
        return keys.cast(target)
    try:
        return keys.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise FederatorError(
            f"lookup keys are {keys.type} but {spec.table}.{spec.key} is {target}: {e}"
        ) from None
