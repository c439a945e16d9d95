"""The residual split for a distributed engine: per-bucket SQL, a final SQL, hash partitions.

The fragments' outputs (``f0``, ``f1``, … as the residual names them) are hash partitioned on
their join keys into B buckets; a small input is instead broadcast whole to every bucket.
``bucket_sql`` runs on DuckDB once per bucket over that bucket's tables, ``final_sql`` once over
one table ``buckets`` holding every bucket's output. Together they answer what the residual
answers, because every row of the residual's joins is formed in exactly one bucket:

- the partitioned inputs are joined on one class of equal keys (``a.k = b.k AND b.k = c.k``),
  so rows that join share a key and so a bucket; an outer join's unmatched row has no match
  in its bucket because it has none anywhere; NULL keys go to bucket 0 and match nothing;
- aggregates are computed in parts: SUM as the sum of sums, COUNT as the sum of counts, AVG
  as the sum of sums over the sum of counts, MIN/MAX of minimums/maximums, COUNT(DISTINCT k)
  as the sum of counts only when ``k`` is the partition key (each value lives in one bucket);
  the final query groups again and applies HAVING, ORDER BY and LIMIT;
- without aggregates, each bucket keeps its own top rows for ORDER BY … LIMIT n and the final
  query orders and limits their union.

What cannot be split so (window functions, percentiles, DISTINCT aggregates over other
columns, joins not on equal keys, subqueries, CTEs, set operations) is :class:`NotDistributed`
with the reason EXPLAIN shows; it runs as one residual.

>>> from sqlglot import parse_one
>>> d = distribute_residual(
...     parse_one("SELECT a.g, SUM(b.v) AS s FROM f0 AS a JOIN f1 AS b ON a.k = b.k GROUP BY a.g"),
...     {"f0": pa.schema({"k": pa.int64(), "g": pa.string()}),
...      "f1": pa.schema({"k": pa.int32(), "v": pa.int64()})},
...     {"f0": 10**6, "f1": 10**7},
...     4,
... )
>>> d.partition_keys, d.broadcast
({'f0': ['k'], 'f1': ['k']}, [])
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from federator.plan.partial_agg import scope_aggregates
from federator.sql.dialect import residual_duckdb_sql
from federator.sql.trees import conjuncts

# An input of at most this many rows (known) is sent whole to every bucket instead of being
# partitioned, unless it is the largest input or an outer join must keep its unmatched rows.
BROADCAST_MAX_ROWS = 100_000
BUCKETS_TABLE = "buckets"

_SPLITTABLE = (exp.Sum, exp.Count, exp.Avg, exp.Min, exp.Max)
_ORDER_STATS = (
    exp.PercentileCont,
    exp.PercentileDisc,
    exp.Quantile,
    exp.ApproxQuantile,
    exp.Median,
)
_NUMERIC_TYPES = {
    *("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "FLOAT", "DOUBLE"),
    *("UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"),
}
_SPLIT_NAMES = {"sum", "count", "count_star", "avg", "min", "max"}  # DuckDB's names
_INTEGER_KEYS = "integer"
_STRING_KEYS = "string"


@dataclass(frozen=True)
class DistributedResidual:
    """A residual as per-bucket SQL and a final SQL (DuckDB dialect; parameters as ``$name``).

    ``partition_keys``: the columns each partitioned input is hash partitioned on (see
    :func:`hash_partition`); ``broadcast``: inputs every bucket reads whole. ``row_wise``:
    the final SQL only maps rows (no aggregate, DISTINCT, ORDER BY, LIMIT or OFFSET), so it may
    run on each bucket's output alone and the answers be concatenated as they come.
    """

    bucket_sql: str
    final_sql: str
    partition_keys: dict[str, list[str]]
    broadcast: list[str] = field(default_factory=list)
    row_wise: bool = False


@dataclass(frozen=True)
class NotDistributed:
    """Why a residual runs as one piece; ``reason`` is what EXPLAIN shows."""

    reason: str


class _Refused(Exception):
    """A shape that is not split; its message is the reason."""


def distribute_residual(
    residual: exp.Query,
    inputs: dict[str, pa.Schema],
    rows: dict[str, int | None],
    buckets: int,
    *,
    broadcast_rows: int = BROADCAST_MAX_ROWS,
) -> DistributedResidual | NotDistributed:
    """Split ``residual`` (over tables named as ``inputs``' keys) into per-bucket and final
    SQL, partitioning its inputs on their join keys into ``buckets``; see the module docstring.
    ``rows`` are the inputs' row estimates (None: not known): an input of at most
    ``broadcast_rows`` is broadcast (0: none is). The SQL is the same for every ``buckets``.
    """
    try:
        return _Distributor(residual, inputs, rows, broadcast_rows).split()
    except _Refused as refused:
        return NotDistributed(str(refused))


def hash_partition(table: pa.Table, keys: list[str], buckets: int) -> list[pa.Table]:
    """``table``'s rows in ``buckets`` tables by a hash of ``keys``: equal keys land in the same
    bucket whatever the input (an int32 key and an int64 key of equal value alike; string and
    large_string alike; decimals of scale 0 as integers); a row with a NULL key goes to bucket 0.

    >>> t = pa.table({"k": pa.array([1, 2, None], pa.int32())})
    >>> u = pa.table({"k": pa.array([1, 2], pa.int64())})
    >>> [p.num_rows for p in hash_partition(t, ["k"], 1)]
    [3]
    >>> [b for b, p in enumerate(hash_partition(t, ["k"], 3)) if 1 in p["k"].to_pylist()] == [
    ...     b for b, p in enumerate(hash_partition(u, ["k"], 3)) if 1 in p["k"].to_pylist()]
    True
    """
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, not {buckets}")
    if buckets == 1:
        return [table]
    ids = _bucket_ids(table, keys, buckets)
    order = pc.sort_indices(ids)
    counts = pc.value_counts(ids)
    sizes = dict(
        zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)
    )
    ordered = _take(table, order)
    parts, start = [], 0
    for b in range(buckets):
        size = sizes.get(b, 0)
        parts.append(ordered.slice(start, size))
        start += size
    return parts


def _take(table: pa.Table, indices: pa.Array) -> pa.Table:
    """``table.take(indices)``, also for view columns (string_view, binary_view), which Arrow
    takes from only through their non-view type."""
    columns = []
    for column in table.columns:
        t = column.type
        wide = {pa.string_view(): pa.large_string(), pa.binary_view(): pa.large_binary()}.get(t)
        if wide is None:
            columns.append(column.take(indices))
        else:
            columns.append(column.cast(wide).take(indices).cast(t))
    return pa.Table.from_arrays(columns, schema=table.schema)


def _bucket_ids(table: pa.Table, keys: list[str], buckets: int) -> pa.Array:
    """Each row's bucket: DuckDB's hash of the normalised keys modulo ``buckets``; 0 on NULL."""

    normalised = ", ".join(_normalised_key(table.schema.field(k)) for k in keys)
    any_null = " OR ".join(f"{_quote(k)} IS NULL" for k in keys)
    sql = (
        f"SELECT CAST(CASE WHEN {any_null} THEN 0 ELSE hash({normalised}) % {buckets} END "
        f"AS INTEGER) AS b FROM keys_table"
    )
    con = _cursor()
    try:
        con.register("keys_table", table.select(keys))
        return con.sql(sql).to_arrow_table().column("b").combine_chunks()
    finally:
        con.close()


_DATABASE: list[Any] = []  # one in-memory DuckDB per process; a cursor per use
_DATABASE_LOCK = threading.Lock()


def _cursor() -> Any:
    """A fresh cursor (its own connection, its own registered tables) of the process's
    DuckDB database: a cursor costs microseconds, a new database about 50 ms."""
    import duckdb

    with _DATABASE_LOCK:
        if not _DATABASE:
            _DATABASE.append(duckdb.connect())
        return _DATABASE[0].cursor()


_INHERITED: list[Any] = []  # a forked child's copy of its parent's database, never freed


def _forget_parent_database() -> None:
    """In a forked child: set the parent's DuckDB aside for good (freeing it here would touch
    the parent's threads and crash the child); the child opens its own when it needs one."""
    global _DATABASE_LOCK
    _DATABASE_LOCK = threading.Lock()  # another thread of the parent may have held it
    if _DATABASE:
        parent = _DATABASE.pop()
        _INHERITED.append(parent)
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(parent))  # not even at interpreter exit


os.register_at_fork(after_in_child=_forget_parent_database)


def _normalised_key(column: pa.Field) -> str:
    """A key as DuckDB should hash it, so equal values of related types hash alike."""
    name = _quote(column.name)
    family = key_family(column.type)
    if family == _INTEGER_KEYS:
        # A decimal or unsigned value beyond BIGINT equals no BIGINT: hash its digits.
        return (
            f"CASE WHEN {name} BETWEEN -9223372036854775808 AND 9223372036854775807 "
            f"THEN hash(CAST({name} AS BIGINT)) ELSE hash(CAST({name} AS VARCHAR)) END"
        )
    if family == _STRING_KEYS:
        return f"CAST({name} AS VARCHAR)"
    return name


def key_family(t: pa.DataType) -> str:
    """Which key values hash alike: integers and scale-0 decimals, strings, or one type.

    >>> key_family(pa.int32()), key_family(pa.decimal128(12, 0)), key_family(pa.large_string())
    ('integer', 'integer', 'string')
    """
    if pa.types.is_integer(t) or (pa.types.is_decimal(t) and t.scale == 0):
        return _INTEGER_KEYS
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return _STRING_KEYS
    return str(t)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass
class _Input:
    alias: str  # the name the residual's scope reads it by
    table: str  # f0, f1, …
    rows: int | None
    preserved: bool = False  # an outer join keeps its unmatched rows
    full: bool = False


class _Distributor:
    """One residual's split (see :func:`distribute_residual`)."""

    def __init__(
        self,
        residual: exp.Query,
        inputs: dict[str, pa.Schema],
        rows: dict[str, int | None],
        broadcast_rows: int,
    ):
        self.residual = residual
        self.inputs = inputs
        self.rows = rows
        self.broadcast_rows = broadcast_rows

    def split(self) -> DistributedResidual:
        select = self._plain_select()
        scope = self._scope(select)
        classes = _KeyClasses()
        for condition in self._equalities(select):
            classes.join(condition)
        broadcast = self._broadcast(scope)
        partitioned = [i for i in scope.values() if i.table not in broadcast]
        keys = self._partition_keys(select, partitioned, classes)
        self._check_outer_joins(select, scope, broadcast, keys, classes)
        self._check_key_types(scope, keys)
        key_columns = {(i.alias, keys[i.table][0]) for i in partitioned}
        key_class = classes.members(next(iter(key_columns)))
        types = self._probe()
        bucket, final = _Rewriter(select, key_class, types).rewrite()
        return DistributedResidual(
            bucket_sql=residual_duckdb_sql(bucket),
            final_sql=residual_duckdb_sql(final),
            partition_keys={i.table: keys[i.table] for i in partitioned},
            broadcast=sorted(broadcast),
            row_wise=_row_wise(select),
        )

    # ---- the shape -----------------------------------------------------------------------
    def _plain_select(self) -> exp.Select:
        q = self.residual
        if isinstance(q, exp.SetOperation):
            raise _Refused(f"a set operation ({q.key.upper()}) is not split into buckets")
        if not isinstance(q, exp.Select):
            raise _Refused(f"a {type(q).__name__} residual is not split into buckets")
        if q.args.get("with_") or q.args.get("with"):
            raise _Refused("a residual with a WITH clause (CTE) is not split into buckets")
        if q.find(exp.Window) is not None or q.args.get("qualify"):
            raise _Refused("window functions need every row of a partition in one place")
        if any(isinstance(n, exp.Query) for n in q.find_all(exp.Query) if n is not q):
            raise _Refused("a residual with a subquery is not split into buckets")
        if q.find(exp.Unnest, exp.Lateral) is not None:
            raise _Refused("UNNEST or LATERAL in the residual is not split into buckets")
        if isinstance(q.args.get("distinct"), exp.Distinct) and q.args["distinct"].args.get("on"):
            raise _Refused("DISTINCT ON is not split into buckets")
        return q

    def _scope(self, select: exp.Select) -> dict[str, _Input]:
        """The inputs the FROM and JOINs read, by alias, with what outer joins preserve."""
        from_ = select.args.get("from_")
        if from_ is None:
            raise _Refused("a residual that reads no input is not split into buckets")
        nodes = [(from_.this, None)] + [(j.this, j) for j in select.args.get("joins") or []]
        scope: dict[str, _Input] = {}
        for node, join in nodes:
            if not isinstance(node, exp.Table) or node.db or node.name not in self.inputs:
                raise _Refused(f"{node.sql()} is not one of the residual's inputs")
            alias = node.alias_or_name
            if alias in scope:
                raise _Refused(f"alias {alias} names two inputs")
            scope[alias] = _Input(alias, node.name, self.rows.get(node.name))
            if join is not None:
                self._mark_preserved(scope, alias, join)
        return scope

    @staticmethod
    def _mark_preserved(scope: dict[str, _Input], alias: str, join: exp.Join) -> None:
        if join.args.get("using"):
            raise _Refused("JOIN … USING is not split into buckets")
        side = (join.side or "").upper()
        kind = (join.kind or "").upper()
        earlier = [i for a, i in scope.items() if a != alias]
        if side in ("LEFT", "FULL") or kind in ("SEMI", "ANTI"):
            for i in earlier:
                i.preserved = True
                i.full = i.full or side == "FULL"
        if side in ("RIGHT", "FULL"):
            scope[alias].preserved = True
            scope[alias].full = side == "FULL"

    def _equalities(self, select: exp.Select) -> list[exp.EQ]:
        """Column = column conditions of the WHERE and of every ON."""
        conditions = conjuncts(select.args.get("where"))
        for join in select.args.get("joins") or []:
            conditions += conjuncts(join.args.get("on"))
        return [
            c
            for c in conditions
            if isinstance(c, exp.EQ)
            and isinstance(c.this, exp.Column)
            and isinstance(c.expression, exp.Column)
        ]

    def _broadcast(self, scope: dict[str, _Input]) -> set[str]:
        """Inputs small enough (by rows) to send whole to every bucket; never the largest, nor
        one an outer join preserves (its unmatched rows would come once per bucket)."""
        sizes = [i.rows for i in scope.values()]
        largest = None if None in sizes else max(scope.values(), key=lambda i: i.rows or 0)
        return {
            i.table
            for i in scope.values()
            if i is not largest
            and not i.preserved
            and i.rows is not None
            and i.rows <= self.broadcast_rows
            and _count_table(scope, i.table) == 1
        }

    def _partition_keys(
        self, select: exp.Select, partitioned: list[_Input], classes: _KeyClasses
    ) -> dict[str, list[str]]:
        """One key column per partitioned input, all of one class of equal keys."""
        if len(partitioned) == 1:
            only = partitioned[0]
            return {only.table: [self._lone_key(select, only, classes)]}
        for members in classes.all():
            chosen: dict[str, list[str]] = {}
            for i in partitioned:
                cols = sorted(c for a, c in members if a == i.alias)
                if not cols or chosen.get(i.table, cols[:1]) != cols[:1]:
                    break
                chosen[i.table] = cols[:1]
            else:
                return chosen
        names = ", ".join(i.table for i in partitioned)
        raise _Refused(
            f"the partitioned inputs {names} are not all joined on one key "
            "(a non-equi join or joins on different keys)"
        )

    def _lone_key(self, select: exp.Select, only: _Input, classes: _KeyClasses) -> str:
        """The key of the one partitioned input: a DISTINCT aggregate's column, else a join
        key, else a grouping column, else its first column."""
        candidates: list[str] = []
        for agg in scope_aggregates(select):
            if isinstance(agg.this, exp.Distinct):
                candidates += [
                    c.name for c in agg.this.find_all(exp.Column) if c.table == only.alias
                ]
        candidates += sorted(c for members in classes.all() for a, c in members if a == only.alias)
        group = select.args.get("group")
        if group is not None:
            candidates += [
                e.name
                for e in group.expressions
                if isinstance(e, exp.Column) and e.table == only.alias
            ]
        candidates += self.inputs[only.table].names[:1]
        if not candidates:
            raise _Refused(f"{only.table} has no column to partition on")
        return candidates[0]

    def _check_outer_joins(
        self,
        select: exp.Select,
        scope: dict[str, _Input],
        broadcast: set[str],
        keys: dict[str, list[str]],
        classes: _KeyClasses,
    ) -> None:
        """An outer join between partitioned inputs must match on the partition key in ON."""
        seen: list[_Input] = [scope[select.args["from_"].this.alias_or_name]]
        for join in select.args.get("joins") or []:
            right = scope[join.this.alias_or_name]
            outer = (join.side or "").upper() in ("LEFT", "RIGHT", "FULL") or (
                (join.kind or "").upper() in ("SEMI", "ANTI")
            )
            left_parted = [i for i in seen if i.table not in broadcast]
            if outer and right.table not in broadcast and left_parted:
                key = (right.alias, keys[right.table][0])
                on_pairs = [
                    {(c.this.table, c.this.name), (c.expression.table, c.expression.name)}
                    for c in conjuncts(join.args.get("on"))
                    if isinstance(c, exp.EQ)
                    and isinstance(c.this, exp.Column)
                    and isinstance(c.expression, exp.Column)
                ]
                members = classes.members(key)
                if not any(key in pair and pair - {key} <= members for pair in on_pairs):
                    raise _Refused(
                        f"the outer join of {right.table} does not match on the partition key"
                    )
            if outer and not left_parted and (join.side or "").upper() in ("LEFT", "FULL"):
                raise _Refused("an outer join preserves a broadcast input")
            seen.append(right)

    def _check_key_types(self, scope: dict[str, _Input], keys: dict[str, list[str]]) -> None:
        families = {
            table: key_family(self.inputs[table].field(cols[0]).type)
            for table, cols in keys.items()
        }
        if len(set(families.values())) > 1:
            shown = ", ".join(f"{t}.{keys[t][0]} ({families[t]})" for t in sorted(families))
            raise _Refused(f"the partition keys are of types that hash differently: {shown}")

    def _probe(self) -> list[exp.DataType] | None:
        """Refuse aggregates DuckDB knows that are not split (whatever sqlglot parsed them as),
        and return the DuckDB types of the residual's outputs (run over empty inputs) so the
        final query gives the same types; None when they cannot be found. Kept per residual
        and input schemas: an engine asks again for other bucket counts or row estimates."""
        probe = self.residual.transform(
            lambda n: exp.Null() if isinstance(n, exp.Placeholder) else n
        )
        sql = residual_duckdb_sql(probe)
        key = (sql, tuple((n, s.to_string()) for n, s in sorted(self.inputs.items())))
        with _PROBED_LOCK:
            found = _PROBED.get(key, _UNSEEN)
        if found is _UNSEEN:
            try:
                found = _probe_types(probe, sql, self.inputs)
            except _Refused as refused:
                found = refused
            with _PROBED_LOCK:
                if len(_PROBED) >= 256:
                    _PROBED.pop(next(iter(_PROBED)))
                _PROBED[key] = found
        if isinstance(found, _Refused):
            raise _Refused(str(found))
        return found


_PROBED: dict[tuple[Any, ...], list[exp.DataType] | _Refused | None] = {}
_PROBED_LOCK = threading.Lock()
_UNSEEN: Any = object()


def _probe_types(
    probe: exp.Query, sql: str, inputs: dict[str, pa.Schema]
) -> list[exp.DataType] | None:
    """See :meth:`_Distributor._probe` (``probe``: the residual, parameters as NULL)."""
    import duckdb

    con = _cursor()
    try:
        _refuse_other_aggregates(con, sql)
        for name, schema in inputs.items():
            con.register(name, schema.empty_table())
        _refuse_non_numeric_averages(con, probe)
        types = con.sql(sql).types
        return [exp.DataType.build(str(t), dialect="duckdb") for t in types]
    except (duckdb.Error, ValueError):
        return None
    finally:
        con.close()


def _refuse_non_numeric_averages(con: Any, select: exp.Query) -> None:
    """AVG finishes as a DOUBLE sum over a count: refuse it over anything but numbers (an
    INTERVAL's or a TIMESTAMP's average is not a number). ``con`` holds the empty inputs."""
    assert isinstance(select, exp.Select)
    args = [a.this for a in scope_aggregates(select) if isinstance(a, exp.Avg)]
    if not args:
        return
    probe = select.copy()
    for key in ("group", "having", "order", "limit", "offset", "distinct", "qualify"):
        probe.set(key, None)
    probe.set("expressions", [a.copy().as_(f"a{i}") for i, a in enumerate(args)])
    for arg, t in zip(args, con.sql(residual_duckdb_sql(probe)).types, strict=True):
        name = str(t).upper()
        if not (name in _NUMERIC_TYPES or name.startswith("DECIMAL")):
            raise _Refused(f"AVG({arg.sql()}) over a {name} is not split into partial aggregates")


def _refuse_other_aggregates(con: Any, sql: str) -> None:
    """Raise :class:`_Refused` when ``sql`` calls a DuckDB aggregate that is not split."""
    import json

    parsed = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0]
    called = set(_function_names(json.loads(parsed)))
    for name in sorted((called & _aggregate_names(con)) - _SPLIT_NAMES):
        if any(word in name for word in ("quantile", "percentile", "median", "mad", "mode")):
            raise _Refused(
                f"{name}() (a percentile or quantile) needs all of a group's rows in one place"
            )
        raise _Refused(f"{name}() is not split into partial aggregates")


_AGGREGATES: list[frozenset[str]] = []  # DuckDB's aggregate function names, read once


def _aggregate_names(con: Any) -> frozenset[str]:
    if not _AGGREGATES:
        rows = con.execute(
            "SELECT DISTINCT function_name FROM duckdb_functions() "
            "WHERE function_type = 'aggregate'"
        ).fetchall()
        _AGGREGATES.append(frozenset(r[0].lower() for r in rows))
    return _AGGREGATES[0]


def _function_names(node: object) -> list[str]:
    """Every ``function_name`` in DuckDB's serialized parse tree."""
    if isinstance(node, dict):
        own = [node["function_name"].lower()] if isinstance(node.get("function_name"), str) else []
        return own + [n for v in node.values() for n in _function_names(v)]
    if isinstance(node, list):
        return [n for v in node for n in _function_names(v)]
    return []


def _count_table(scope: dict[str, _Input], table: str) -> int:
    return sum(1 for i in scope.values() if i.table == table)


class _KeyClasses:
    """Classes of (alias, column) pairs equated by the joins (union-find)."""

    def __init__(self) -> None:
        self.parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(self, col: tuple[str, str]) -> tuple[str, str]:
        self.parent.setdefault(col, col)
        while self.parent[col] != col:
            col = self.parent[col]
        return col

    def join(self, eq: exp.EQ) -> None:
        a = (eq.this.table, eq.this.name)
        b = (eq.expression.table, eq.expression.name)
        if a[0] != b[0]:
            self.parent[self.find(a)] = self.find(b)

    def members(self, col: tuple[str, str]) -> set[tuple[str, str]]:
        root = self.find(col)
        return {c for c in list(self.parent) if self.find(c) == root}

    def all(self) -> list[set[tuple[str, str]]]:
        roots: dict[tuple[str, str], set[tuple[str, str]]] = {}
        for c in sorted(self.parent):
            roots.setdefault(self.find(c), set()).add(c)
        return list(roots.values())


class _Rewriter:
    """The bucket and final queries of one residual SELECT."""

    def __init__(
        self,
        select: exp.Select,
        key_class: set[tuple[str, str]],
        types: list[exp.DataType] | None,
    ):
        self.select = select
        self.key_class = key_class
        self.types = types
        self.aggs = scope_aggregates(select)

    def rewrite(self) -> tuple[exp.Select, exp.Select]:
        if self.aggs or self.select.args.get("group"):
            return self._aggregate()
        return self._rows()

    # ---- without aggregates: rows, DISTINCT, ORDER BY … LIMIT ----------------------------
    def _rows(self) -> tuple[exp.Select, exp.Select]:
        bucket = self.select.copy()
        outputs = [e.copy() for e in self.select.selects]
        if any(isinstance(e, exp.Star) or isinstance(e.unalias(), exp.Star) for e in outputs):
            raise _Refused("SELECT * in the residual is not split into buckets")
        columns = [e.unalias().copy().as_(f"__c{i}") for i, e in enumerate(outputs)]
        order = self.select.args.get("order")
        final_order: list[exp.Ordered] = []
        for ordered in order.expressions if order else []:
            index = _output_index(ordered.this, outputs)
            if index is None:
                if self.select.args.get("distinct"):
                    raise _Refused("SELECT DISTINCT ordered by a column it does not output")
                index = len(columns)
                columns.append(ordered.this.copy().as_(f"__c{index}"))
            final_order.append(_reordered(ordered, exp.column(f"__c{index}")))
        bucket.set("expressions", columns)
        bucket.set(
            "order", exp.Order(expressions=[o.copy() for o in final_order]) if order else None
        )
        _local_limit(bucket, self.select)
        final = exp.select(
            *(
                self._typed(exp.column(f"__c{i}"), i).as_(_name(e), quoted=True)
                for i, e in enumerate(outputs)
            )
        ).from_(BUCKETS_TABLE)
        if self.select.args.get("distinct"):
            final.set("distinct", exp.Distinct())
        _finish(final, self.select, final_order)
        return bucket, final

    # ---- with aggregates: partial aggregates per bucket, the rest in the final -----------
    def _aggregate(self) -> tuple[exp.Select, exp.Select]:
        group = self.select.args.get("group")
        groups = list(group.expressions) if group else []
        if any(isinstance(g, exp.Literal) for g in groups):
            raise _Refused("GROUP BY a position is not split into buckets")
        if group is not None and any(
            group.args.get(k) for k in ("rollup", "cube", "grouping_sets")
        ):
            raise _Refused("ROLLUP, CUBE and GROUPING SETS are not split into buckets")
        if self.select.args.get("distinct"):
            raise _Refused("SELECT DISTINCT over aggregates is not split into buckets")
        bucket_columns = [g.copy().as_(f"__g{i}") for i, g in enumerate(groups)]
        partials: dict[str, str] = {}

        def partial(node: exp.Expression) -> exp.Column:
            sql = node.sql()
            if sql not in partials:
                partials[sql] = f"__p{len(partials)}"
                bucket_columns.append(node.copy().as_(partials[sql]))
            return exp.column(partials[sql])

        def final_of(node: exp.Expression) -> exp.Expression:
            return self._final_expression(node, groups, partial)

        outputs = [final_of(e.unalias()) for e in self.select.selects]
        final = exp.select(
            *(
                self._typed(o, i).as_(_name(e), quoted=True)
                for i, (o, e) in enumerate(zip(outputs, self.select.selects, strict=True))
            )
        ).from_(BUCKETS_TABLE)
        if groups:
            final.set(
                "group", exp.Group(expressions=[exp.column(f"__g{i}") for i in range(len(groups))])
            )
        having = self.select.args.get("having")
        if having is not None:
            final.set("having", exp.Having(this=final_of(having.this)))
        order = self.select.args.get("order")
        final_order = [
            _reordered(o, _alias_or(o.this, self.select, final_of))
            for o in (order.expressions if order else [])
        ]
        bucket = self.select.copy()
        for key in ("having", "order", "limit", "offset", "distinct"):
            bucket.set(key, None)
        bucket.set("expressions", bucket_columns or [exp.Literal.number(1).as_("__one")])
        _finish(final, self.select, final_order)
        return bucket, final

    def _final_expression(
        self,
        node: exp.Expression,
        groups: list[exp.Expression],
        partial: Callable[[exp.Expression], exp.Column],
    ) -> exp.Expression:
        """``node`` over the buckets' outputs: grouping expressions as ``__g``, aggregates as
        their final combination of partial aggregates."""

        def swap(n: exp.Expression) -> exp.Expression:
            for i, g in enumerate(groups):
                if n == g:
                    return exp.column(f"__g{i}")
            if isinstance(n, exp.Filter) and isinstance(n.this, exp.AggFunc):
                return self._combine(n.this, partial, n.expression)
            if isinstance(n, exp.AggFunc):
                return self._combine(n, partial, None)
            if isinstance(n, exp.Column) and n.table:
                raise _Refused(f"{n.sql()} is read outside its aggregates and groups")
            return n

        return _transform_outside_in(node.copy(), swap)

    def _combine(
        self,
        agg: exp.AggFunc,
        partial: Callable[[exp.Expression], exp.Column],
        where: exp.Expression | None,
    ) -> exp.Expression:
        """The final aggregate of partial aggregates for ``agg`` (with its FILTER ``where``)."""

        def part(node: exp.AggFunc) -> exp.Column:
            return partial(exp.Filter(this=node, expression=where.copy()) if where else node)

        if isinstance(agg, _ORDER_STATS) or isinstance(agg.parent, exp.WithinGroup):
            raise _Refused(
                f"{agg.sql()} (a percentile or quantile) needs all of a group's rows in one place"
            )
        if not isinstance(agg, _SPLITTABLE):
            raise _Refused(f"{agg.sql()} is not split into partial aggregates")
        if isinstance(agg.this, exp.Distinct):
            return self._distinct(agg, part)
        if isinstance(agg, exp.Count):
            return exp.Coalesce(
                this=exp.Sum(this=part(agg.copy())), expressions=[exp.Literal.number(0)]
            )
        if isinstance(agg, exp.Avg):
            total = exp.cast(exp.Sum(this=part(exp.Sum(this=agg.this.copy()))), "DOUBLE")
            count = exp.Sum(this=part(exp.Count(this=agg.this.copy())))
            return exp.Div(
                this=total,
                expression=exp.Nullif(this=count, expression=exp.Literal.number(0)),
                typed=False,
                safe=True,
            )
        return type(agg)(this=part(agg.copy()))

    def _distinct(
        self, agg: exp.AggFunc, part: Callable[[exp.AggFunc], exp.Column]
    ) -> exp.Expression:
        """COUNT/SUM(DISTINCT k): a sum of per-bucket results when ``k`` is the partition key."""
        args = agg.this.expressions
        if not (
            len(args) == 1
            and isinstance(args[0], exp.Column)
            and (args[0].table, args[0].name) in self.key_class
            and isinstance(agg, (exp.Count, exp.Sum, exp.Min, exp.Max))
        ):
            raise _Refused(
                f"{agg.sql()} over a column that is not the partition key needs every value "
                "in one place"
            )
        if isinstance(agg, exp.Count):
            return exp.Coalesce(
                this=exp.Sum(this=part(agg.copy())), expressions=[exp.Literal.number(0)]
            )
        combine = exp.Sum if isinstance(agg, exp.Sum) else type(agg)
        return combine(this=part(agg.copy()))

    def _typed(self, node: exp.Expression, index: int) -> exp.Expression:
        if self.types is None:
            return node
        return exp.Cast(this=node, to=self.types[index].copy())


def _transform_outside_in(
    node: exp.Expression, swap: Callable[[exp.Expression], exp.Expression]
) -> exp.Expression:
    """Replace subtrees top-down: a replaced subtree is not visited again."""
    new = swap(node)
    if new is not node:
        return new
    for key, value in list(node.args.items()):
        if isinstance(value, exp.Expression):
            node.set(key, _transform_outside_in(value, swap))
        elif isinstance(value, list):
            node.set(
                key,
                [
                    _transform_outside_in(v, swap) if isinstance(v, exp.Expression) else v
                    for v in value
                ],
            )
    return node


def _reordered(ordered: exp.Ordered, node: exp.Expression) -> exp.Ordered:
    """``ordered`` (direction, NULLS placement kept) over ``node``."""
    copy = ordered.copy()
    copy.set("this", node)
    return copy


def _name(output: exp.Expression) -> str:
    return output.alias_or_name


def _output_index(node: exp.Expression, outputs: list[exp.Expression]) -> int | None:
    """Which output ``node`` (an ORDER BY expression) is: by position, alias or expression."""
    if isinstance(node, exp.Literal) and node.is_int and 1 <= int(node.this) <= len(outputs):
        return int(node.this) - 1
    for i, out in enumerate(outputs):
        if isinstance(node, exp.Column) and not node.table and node.name == out.alias_or_name:
            return i
    for i, out in enumerate(outputs):
        if node == out.unalias():
            return i
    return None


def _alias_or(
    node: exp.Expression,
    select: exp.Select,
    final_of: Callable[[exp.Expression], exp.Expression],
) -> exp.Expression:
    """An ORDER BY expression of an aggregate query over the final's outputs."""
    index = _output_index(node, list(select.selects))
    if index is not None:
        return exp.column(_name(select.selects[index]), quoted=True)
    return final_of(node)


def _local_limit(bucket: exp.Select, select: exp.Select) -> None:
    """Each bucket keeps at most LIMIT + OFFSET rows (its top rows when ordered)."""
    bucket.set("offset", None)
    limit = select.args.get("limit")
    count = _literal_int(limit.expression if limit is not None else None)
    offset = select.args.get("offset")
    skip = _literal_int(offset.expression if offset is not None else None) if offset else 0
    if count is None or skip is None:
        bucket.set("limit", None)
        return
    bucket.set("limit", exp.Limit(expression=exp.Literal.number(count + skip)))


def _literal_int(node: exp.Expression | None) -> int | None:
    if isinstance(node, exp.Literal) and node.is_int:
        return int(node.this)
    return None


def _row_wise(select: exp.Select) -> bool:
    """Whether the final query over ``select``'s buckets only maps rows, one bucket at a time."""
    if scope_aggregates(select):
        return False
    return not any(select.args.get(k) for k in ("group", "distinct", "order", "limit", "offset"))


def _finish(final: exp.Select, select: exp.Select, order: list[exp.Ordered]) -> None:
    """The final query's ORDER BY, LIMIT and OFFSET: the residual's."""
    if order:
        final.set("order", exp.Order(expressions=order))
    for key in ("limit", "offset"):
        if select.args.get(key) is not None:
            final.set(key, select.args[key].copy())
