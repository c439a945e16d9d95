"""The distributed residual: per-bucket SQL + final SQL answer what the residual answers.

The truth is the residual itself run by DuckDB over the whole inputs; the distributed side
hash-partitions the inputs (``hash_partition``), runs ``bucket_sql`` on DuckDB per bucket and
``final_sql`` over the buckets' outputs. Rows must match as multisets (floats to 1e-9
relative), in order on the ORDER BY keys where the residual orders. Data is random, with
NULL keys and skewed keys (most rows on a few keys).
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from sqlglot import exp

from federator.plan.distribute import (
    BROADCAST_MAX_ROWS,
    DistributedResidual,
    NotDistributed,
    distribute_residual,
    hash_partition,
)
from federator.sql.dialect import parse, residual_duckdb_sql

BUCKETS = (1, 2, 4, 7)
QUICK_PLANNER = {"source_estimate_seconds": 0}  # plan on the catalog's estimates only
BIG = {"f0": 10 * BROADCAST_MAX_ROWS, "f1": 20 * BROADCAST_MAX_ROWS, "f2": 30 * BROADCAST_MAX_ROWS}
SMALL_F1 = {**BIG, "f1": BROADCAST_MAX_ROWS // 10}


def _skewed_key(rng: random.Random, keys: int) -> int | None:
    if rng.random() < 0.08:
        return None
    return int(rng.paretovariate(1.5)) % keys if rng.random() < 0.3 else rng.randrange(keys)


def _maybe(rng: random.Random, value: Any) -> Any:
    return None if rng.random() < 0.1 else value


def random_inputs(seed: int = 13) -> dict[str, pa.Table]:
    """f0 (k int32), f1 (k int64), f2 (s string key, k large_string digits): NULLs, skew."""
    rng = random.Random(seed)
    n0, n1, n2 = 400, 250, 120
    f0 = pa.table(
        {
            "k": pa.array([_skewed_key(rng, 60) for _ in range(n0)], pa.int32()),
            "g": [_maybe(rng, rng.choice("abcde")) for _ in range(n0)],
            "v": [_maybe(rng, rng.uniform(-5, 50)) for _ in range(n0)],
            "d": pa.array(
                [_maybe(rng, Decimal(rng.randrange(-500, 5000)) / 100) for _ in range(n0)],
                pa.decimal128(12, 2),
            ),
            "s": [_maybe(rng, f"s{rng.randrange(30)}") for _ in range(n0)],
        }
    )
    f1 = pa.table(
        {
            "k": pa.array([_skewed_key(rng, 70) for _ in range(n1)], pa.int64()),
            "h": pa.array([_maybe(rng, rng.choice("xyz")) for _ in range(n1)], pa.large_string()),
            "w": pa.array([_maybe(rng, rng.randrange(-3, 100)) for _ in range(n1)], pa.int64()),
            "id": pa.array(range(n1), pa.int64()),
        }
    )
    f2 = pa.table(
        {
            "s": pa.array(
                [_maybe(rng, f"s{rng.randrange(40)}") for _ in range(n2)], pa.large_string()
            ),
            "k": pa.array(
                [_maybe(rng, Decimal(rng.randrange(60))) for _ in range(n2)], pa.decimal128(20, 0)
            ),
            "x": pa.array([rng.randrange(10) for _ in range(n2)], pa.int16()),
        }
    )
    return {"f0": f0, "f1": f1, "f2": f2}


@pytest.fixture(scope="module")
def inputs() -> dict[str, pa.Table]:
    return random_inputs()


# ---- comparing answers --------------------------------------------------------------------
_DB = duckdb.connect()


def run_sql(
    sql: str, tables: dict[str, pa.Table], params: dict[str, Any] | None = None
) -> pa.Table:
    """``sql`` on DuckDB over ``tables``, with the parameters it names (``$name``)."""
    con = _DB.cursor()
    try:
        for name, table in tables.items():
            con.register(name, table)
        used = {k: v for k, v in (params or {}).items() if f"${k}" in sql}
        return con.sql(sql, params=used or None).to_arrow_table()
    finally:
        con.close()


def distributed_answer(
    d: DistributedResidual,
    tables: dict[str, pa.Table],
    buckets: int,
    params: dict[str, Any] | None = None,
) -> pa.Table:
    parts = {
        name: hash_partition(tables[name], keys, buckets) for name, keys in d.partition_keys.items()
    }
    outputs = []
    for b in range(buckets):
        local = {n: parts[n][b] if n in parts else t for n, t in tables.items()}
        outputs.append(run_sql(d.bucket_sql, local, params))
    return run_sql(d.final_sql, {"buckets": pa.concat_tables(outputs)}, params)


def _canon(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return ("nan",)
        return ("f", float(f"{value:.9g}"))
    return ("v", repr(value))


def _rows(table: pa.Table) -> list[tuple]:
    return [tuple(_canon(v) for v in row.values()) for row in table.to_pylist()]


def order_key_columns(residual: exp.Query) -> list[int] | None:
    """Output positions of the residual's ORDER BY keys that are outputs; None: unordered."""
    order = residual.args.get("order")
    if order is None:
        return None
    names = [s.alias_or_name for s in residual.selects]
    found = []
    for o in order.expressions:
        node = o.this
        if isinstance(node, exp.Column) and not node.table and node.name in names:
            found.append(names.index(node.name))
        else:
            hits = [i for i, s in enumerate(residual.selects) if s.unalias() == node]
            if hits:
                found.append(hits[0])
    return found


def assert_same_answer(
    residual: exp.Query, want: pa.Table, want_rows: list[tuple], got: pa.Table, label: str
) -> None:
    """``got`` has ``want``'s schema and rows (``want_rows``: ``_rows(want)``), in order on
    the residual's ORDER BY keys."""
    assert got.schema.names == want.schema.names, label
    assert got.schema.types == want.schema.types, label
    got_rows = _rows(got)
    assert sorted(got_rows) == sorted(want_rows), label
    keys = order_key_columns(residual)
    if keys:
        assert [tuple(r[i] for i in keys) for r in got_rows] == [
            tuple(r[i] for i in keys) for r in want_rows
        ], label


def check_distributes(
    sql: str,
    tables: dict[str, pa.Table],
    rows: dict[str, int | None],
    params: dict[str, Any] | None = None,
) -> DistributedResidual:
    residual = parse(sql)
    want = run_sql(residual_duckdb_sql(residual), tables, params)
    want_rows = _rows(want)
    schemas = {n: t.schema for n, t in tables.items()}
    last = None
    for buckets in BUCKETS:
        d = distribute_residual(residual, schemas, rows, buckets)
        assert isinstance(d, DistributedResidual), (sql, d)
        got = distributed_answer(d, tables, buckets, params)
        assert_same_answer(residual, want, want_rows, got, f"{buckets} buckets: {sql}\n{d}")
        last = d
    assert last is not None
    return last


# ---- shapes that distribute ---------------------------------------------------------------
JOIN = "FROM f0 AS a JOIN f1 AS b ON a.k = b.k"
SHAPES = [
    # join + GROUP BY with every splittable aggregate
    f"SELECT a.g AS g, SUM(b.w) AS s, COUNT(*) AS n, COUNT(b.h) AS nh, AVG(a.v) AS av, "
    f"AVG(a.d) AS ad, SUM(a.d) AS sd, MIN(b.h) AS lo, MAX(a.d) AS hi {JOIN} GROUP BY a.g",
    # the planner's form: cross join + WHERE equality, HAVING, ORDER BY aggregate
    "SELECT a.g AS g, b.h AS h, COUNT(*) AS n, SUM(a.v * b.w) AS r FROM f0 AS a "
    "CROSS JOIN f1 AS b WHERE a.k = b.k AND b.w > 3 GROUP BY a.g, b.h HAVING COUNT(*) > 2 "
    "ORDER BY r DESC NULLS FIRST, g, h",
    # global aggregate (one row, also from empty buckets)
    f"SELECT COUNT(*) AS n, SUM(a.v) AS s, AVG(b.w) AS aw, MIN(a.g) AS g {JOIN}",
    # a global aggregate over nothing
    f"SELECT COUNT(*) AS n, SUM(a.v) AS s, AVG(b.w) AS aw {JOIN} WHERE b.w > 1000",
    # COUNT DISTINCT of the partition key, SUM DISTINCT too
    f"SELECT a.g AS g, COUNT(DISTINCT a.k) AS keys, COUNT(DISTINCT b.k) AS bk {JOIN} GROUP BY a.g",
    # FILTER clauses and expressions over aggregates
    f"SELECT a.g AS g, COUNT(*) FILTER (WHERE b.w > 10) AS big, "
    f"SUM(b.w) / COUNT(*) AS mean, AVG(a.v) FILTER (WHERE a.v > 0) AS pos {JOIN} "
    "GROUP BY a.g ORDER BY g NULLS LAST",
    # grouping by an expression
    f"SELECT a.k % 5 AS m, COUNT(*) AS n {JOIN} GROUP BY a.k % 5 ORDER BY m",
    # rows: ORDER BY … LIMIT (local top-N), a key not in the output
    f"SELECT a.g AS g, b.w AS w, b.id AS id {JOIN} ORDER BY b.w DESC NULLS LAST, b.id, a.d LIMIT 7",
    f"SELECT b.id AS id, a.v AS v {JOIN} ORDER BY b.id, a.v NULLS FIRST, a.d LIMIT 5 OFFSET 3",
    f"SELECT b.id AS id, a.v AS v, a.d AS d {JOIN} ORDER BY 1 DESC, 2 NULLS FIRST, 3 LIMIT 6",
    f"SELECT a.g AS g, COUNT(*) AS n {JOIN} GROUP BY a.g ORDER BY 2 DESC, 1 LIMIT 3",
    # rows, no order
    f"SELECT a.g AS g, b.h AS h, a.k AS k {JOIN} WHERE a.v > 10",
    # DISTINCT rows
    f"SELECT DISTINCT a.g AS g, b.h AS h {JOIN}",
    # outer joins: unmatched and NULL-key rows survive once
    "SELECT a.k AS k, a.g AS g, b.w AS w FROM f0 AS a LEFT JOIN f1 AS b ON a.k = b.k AND b.w > 5",
    "SELECT a.g AS g, COUNT(b.id) AS n FROM f0 AS a LEFT JOIN f1 AS b ON b.k = a.k "
    "GROUP BY a.g ORDER BY g",
    "SELECT a.k AS ak, b.k AS bk, b.id AS id FROM f0 AS a RIGHT JOIN f1 AS b ON a.k = b.k",
    "SELECT a.k AS ak, b.k AS bk, b.id AS id FROM f0 AS a FULL JOIN f1 AS b ON a.k = b.k",
    "SELECT a.g AS g FROM f0 AS a LEFT JOIN f1 AS b ON b.k = a.k WHERE b.id IS NULL",
    # three inputs on one key class; int32 / int64 / decimal(20,0) keys
    "SELECT a.g AS g, COUNT(*) AS n, SUM(c.x) AS x FROM f0 AS a CROSS JOIN f1 AS b "
    "CROSS JOIN f2 AS c WHERE a.k = b.k AND c.k = b.k GROUP BY a.g",
    # a string key (string and large_string)
    "SELECT c.x AS x, COUNT(*) AS n, MAX(a.v) AS v FROM f0 AS a JOIN f2 AS c ON a.s = c.s "
    "GROUP BY c.x ORDER BY x",
    # one input only: partial aggregates over any partitioning
    "SELECT a.g AS g, SUM(a.v) AS s, COUNT(*) AS n FROM f0 AS a GROUP BY a.g ORDER BY g",
    # a parameter
    f"SELECT a.g AS g, COUNT(*) AS n {JOIN} WHERE b.w > :w GROUP BY a.g",
]


@pytest.mark.parametrize("sql", SHAPES)
def test_shape_distributes_and_answers_alike(inputs: dict[str, pa.Table], sql: str) -> None:
    params = {"w": 20} if ":w" in sql else None
    d = check_distributes(sql, inputs, BIG, params)
    assert not d.broadcast


ROW_WISE = {  # the shapes whose final SQL only maps rows: plain rows, outer joins
    f"SELECT a.g AS g, b.h AS h, a.k AS k {JOIN} WHERE a.v > 10",
    "SELECT a.k AS k, a.g AS g, b.w AS w FROM f0 AS a LEFT JOIN f1 AS b ON a.k = b.k AND b.w > 5",
    "SELECT a.k AS ak, b.k AS bk, b.id AS id FROM f0 AS a RIGHT JOIN f1 AS b ON a.k = b.k",
    "SELECT a.k AS ak, b.k AS bk, b.id AS id FROM f0 AS a FULL JOIN f1 AS b ON a.k = b.k",
    "SELECT a.g AS g FROM f0 AS a LEFT JOIN f1 AS b ON b.k = a.k WHERE b.id IS NULL",
}


@pytest.mark.parametrize(
    "sql", [s for s in SHAPES if s in ROW_WISE or "DISTINCT a.g" in s] + SHAPES[:2] + SHAPES[7:8]
)
def test_row_wise_final_runs_per_bucket_alike(inputs: dict[str, pa.Table], sql: str) -> None:
    """A row-wise final SQL over each bucket alone, concatenated, is the residual's answer."""
    residual = parse(sql)
    params = {"w": 20} if ":w" in sql else None
    d = distribute_residual(residual, {n: t.schema for n, t in inputs.items()}, BIG, 4)
    assert isinstance(d, DistributedResidual)
    assert d.row_wise == (sql in ROW_WISE)
    if not d.row_wise:
        return
    want = run_sql(residual_duckdb_sql(residual), inputs, params)
    parts = {n: hash_partition(inputs[n], k, 4) for n, k in d.partition_keys.items()}
    answers = []
    for b in range(4):
        local = {n: parts[n][b] if n in parts else t for n, t in inputs.items()}
        answers.append(run_sql(d.final_sql, {"buckets": run_sql(d.bucket_sql, local)}))
    got = pa.concat_tables(answers)
    assert_same_answer(residual, want, _rows(want), got, sql)


@pytest.mark.parametrize("sql", SHAPES[:3] + SHAPES[7:10])
def test_small_input_is_broadcast(inputs: dict[str, pa.Table], sql: str) -> None:
    d = check_distributes(sql, inputs, SMALL_F1)
    assert d.broadcast == ["f1"] and list(d.partition_keys) == ["f0"]


def test_broadcast_threshold_is_a_parameter(inputs: dict[str, pa.Table]) -> None:
    schemas = {n: t.schema for n, t in inputs.items()}
    rows = {"f0": 400, "f1": 250}
    residual = parse(SHAPES[0])
    some = distribute_residual(residual, schemas, rows, 4)
    none = distribute_residual(residual, schemas, rows, 4, broadcast_rows=0)
    assert isinstance(some, DistributedResidual) and isinstance(none, DistributedResidual)
    assert some.broadcast == ["f1"]
    assert none.broadcast == [] and sorted(none.partition_keys) == ["f0", "f1"]


def test_outer_join_never_broadcasts_the_preserved_side(inputs: dict[str, pa.Table]) -> None:
    sql = "SELECT a.k AS k, b.w AS w FROM f1 AS b LEFT JOIN f0 AS a ON a.k = b.k"
    d = check_distributes(sql, inputs, SMALL_F1)
    assert "f1" not in d.broadcast


def test_a_non_equi_join_runs_with_a_broadcast_side(inputs: dict[str, pa.Table]) -> None:
    sql = "SELECT a.g AS g, COUNT(*) AS n FROM f0 AS a JOIN f1 AS b ON a.k < b.k GROUP BY a.g"
    d = check_distributes(sql, inputs, SMALL_F1)
    assert d.broadcast == ["f1"]


# ---- shapes that do not, and why ----------------------------------------------------------
REFUSED = [
    (f"SELECT a.g AS g, ROW_NUMBER() OVER (ORDER BY a.k) AS r {JOIN}", "window functions"),
    (f"SELECT SUM(a.v) OVER (PARTITION BY a.g) AS r {JOIN}", "window functions"),
    (f"SELECT QUANTILE_CONT(a.v, 0.5) AS q {JOIN}", "percentile or quantile"),
    (f"SELECT MEDIAN(a.v) AS q {JOIN} GROUP BY a.g", "percentile or quantile"),
    (
        f"SELECT PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY a.v) AS q {JOIN}",
        "percentile or quantile",
    ),
    (f"SELECT COUNT(DISTINCT a.g) AS n {JOIN}", "not the partition key"),
    (f"SELECT STDDEV(a.v) AS sd {JOIN}", "not split into partial aggregates"),
    (
        f"SELECT AVG(TO_DAYS(a.k)) AS i {JOIN}",
        "over a INTERVAL is not split into partial aggregates",
    ),
    (f"SELECT STRING_AGG(a.g, ',') AS sd {JOIN}", "not split into partial aggregates"),
    ("SELECT a.g AS g FROM f0 AS a JOIN f1 AS b ON a.k < b.k", "non-equi join"),
    ("SELECT a.g AS g FROM f0 AS a CROSS JOIN f1 AS b", "non-equi join"),
    (
        "SELECT a.g AS g FROM f0 AS a JOIN f1 AS b ON a.k = b.k JOIN f2 AS c ON c.s = a.s",
        "joins on different keys",
    ),
    ("SELECT a.g AS g FROM f0 AS a JOIN f2 AS c ON a.k = c.s", "hash differently"),
    ("SELECT a.g AS g FROM f0 AS a UNION SELECT b.h FROM f1 AS b", "set operation"),
    (
        "WITH t AS (SELECT a.k AS k FROM f0 AS a) SELECT t.k AS k FROM t AS t "
        "JOIN f1 AS b ON t.k = b.k",
        "WITH clause",
    ),
    (
        "SELECT a.g AS g FROM f0 AS a WHERE a.k IN (SELECT b.k FROM f1 AS b)",
        "subquery",
    ),
]


@pytest.mark.parametrize(("sql", "reason"), REFUSED)
def test_shape_is_not_distributed_with_the_reason(
    inputs: dict[str, pa.Table], sql: str, reason: str
) -> None:
    schemas = {n: t.schema for n, t in inputs.items()}
    d = distribute_residual(parse(sql), schemas, BIG, 4)
    assert isinstance(d, NotDistributed), sql
    assert reason in d.reason, d.reason


# ---- hash_partition -----------------------------------------------------------------------
def test_equal_keys_of_related_types_land_in_the_same_bucket() -> None:
    values = [0, 1, 2, 17, -5, 2**31 - 1, None]
    typed = {
        "int8": pa.array([v if v is None or -128 <= v < 128 else 3 for v in values], pa.int8()),
        "int32": pa.array(values, pa.int32()),
        "int64": pa.array(values, pa.int64()),
        "uint32": pa.array([v if v is None or v >= 0 else 3 for v in values], pa.uint32()),
        "decimal": pa.array(
            [None if v is None else Decimal(v) for v in values], pa.decimal128(38, 0)
        ),
    }
    for buckets in (2, 5):
        homes: dict[Any, set[int]] = {}
        for arr in typed.values():
            parts = hash_partition(pa.table({"k": arr}), ["k"], buckets)
            for b, part in enumerate(parts):
                for v in part["k"].to_pylist():
                    homes.setdefault(None if v is None else int(v), set()).add(b)
        assert all(len(h) == 1 for h in homes.values()), homes
        assert homes[None] == {0}
    strings = ["a", "bb", None, "ccc"]
    small = hash_partition(pa.table({"k": pa.array(strings, pa.string())}), ["k"], 3)
    large = hash_partition(pa.table({"k": pa.array(strings, pa.large_string())}), ["k"], 3)
    assert [p["k"].to_pylist() for p in small] == [p["k"].to_pylist() for p in large]


def test_hash_partition_keeps_every_row_once(inputs: dict[str, pa.Table]) -> None:
    f0 = inputs["f0"]
    parts = hash_partition(f0, ["k"], 7)
    assert len(parts) == 7 and sum(p.num_rows for p in parts) == f0.num_rows
    assert sorted(map(repr, pa.concat_tables(parts).to_pylist())) == sorted(
        map(repr, f0.to_pylist())
    )
    assert hash_partition(f0.slice(0, 0), ["k"], 3)[2].num_rows == 0


# ---- residuals the planner makes: TPC-H and the cross-source shapes ------------------------
def _tpch_module() -> Any:
    """tests/integration/tpch (its queries, splits and generator), loaded by path."""
    import importlib.util
    from pathlib import Path

    init = Path(__file__).parents[1] / "integration" / "tpch" / "__init__.py"
    spec = importlib.util.spec_from_file_location("tpch_corpus", init)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


async def _read(adapter: Any, request: Any) -> pa.Table:
    batches = [b async for b in adapter.execute(request)]
    return pa.Table.from_batches(batches)


def planned_residual(
    fed: Any, sql: str, params: dict[str, Any] | None = None
) -> tuple[exp.Query, dict[str, pa.Table]] | None:
    """The residual the planner makes of ``sql`` and its inputs (each fragment's rows, read
    unbound through its adapter); None when one fragment is the whole query."""
    from federator.plan.binding import bind_params

    plan = fed._loop.run(fed.planner.plan(sql, params or {}))
    plan = bind_params(plan, params or {})
    if plan.residual is None:
        return None
    inputs = {}
    for frag in plan.fragments:
        adapter = fed.catalog.adapter(frag.source)
        inputs[frag.id] = fed._loop.run(_read(adapter, plan.requests[frag.id]))
    return plan.residual, inputs


def check_planned(
    residual: exp.Query, tables: dict[str, pa.Table], params: dict[str, Any] | None = None
) -> str | None:
    """Distribute ``residual`` with every input partitioned (buckets 1, 2, 4, 7), and with the
    small inputs broadcast (by their real rows; 4 buckets): None when it distributes either way
    and answers alike, else the reasons."""
    want = run_sql(residual_duckdb_sql(residual), tables, params)
    want_rows = _rows(want)
    schemas = {n: t.schema for n, t in tables.items()}
    unknown: dict[str, int | None] = dict.fromkeys(tables)
    counted: dict[str, int | None] = {n: t.num_rows for n, t in tables.items()}
    reasons = []
    for rows, bucket_counts in [(unknown, BUCKETS), (counted, (4,))]:
        for buckets in bucket_counts:
            d = distribute_residual(residual, schemas, rows, buckets)
            if isinstance(d, NotDistributed):
                assert d.reason, residual.sql()
                reasons.append(d.reason)
                break
            got = distributed_answer(d, tables, buckets, params)
            label = f"{buckets} buckets, rows {rows}:\n{residual.sql(pretty=True)}\n{d}"
            assert_same_answer(residual, want, want_rows, got, label)
    return "; ".join(reasons) if len(reasons) == 2 else None


@pytest.fixture(scope="module")
def tpch_fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import federator

    tp = _tpch_module()
    data = tmp_path_factory.mktemp("tpch")
    subprocess.run(
        [tp.tpchgen_binary(), "parquet", "-s", "0.002", "-o", str(data), "-q"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    folders = {"pg": data / "pg", "my": data / "my"}
    for folder in folders.values():
        folder.mkdir()
    for table in tp.TABLES:
        side = "pg" if table in tp.PG_SIDE["split"] else "my"
        (data / f"{table}.parquet").rename(folders[side] / f"{table}.parquet")
    sources = {name: {"kind": "files", "path": str(path)} for name, path in folders.items()}
    with federator.connect({"sources": sources, "planner": QUICK_PLANNER}) as fed:
        yield fed, tp


# TPC-H queries whose residual (over the split's two sources, as files) must distribute,
# partitioned or with small inputs broadcast; the others are one fragment (q01, q06, q13,
# q17, q19, q22 here) or give a reason (a subquery: q02, q11, q16, q21).
TPCH_DISTRIBUTED = {
    *("q03", "q04", "q05", "q07", "q08", "q09", "q10", "q12", "q14", "q15", "q18", "q20"),
}


def test_tpch_residuals_distribute_alike(tpch_fed: Any) -> None:
    fed, tp = tpch_fed
    names = tp.federated_names("split")
    outcome = {}
    for qid, query in sorted(tp.load_queries().items()):
        if qid not in TPCH_DISTRIBUTED | {"q02"}:
            continue  # one fragment, or a subquery like q02's (planning costs time)
        planned = planned_residual(fed, query.sql(names))
        outcome[qid] = "one fragment" if planned is None else check_planned(*planned)
    distributed = {q for q, why in outcome.items() if why is None}
    assert distributed == TPCH_DISTRIBUTED, outcome
    assert "subquery" in (outcome["q02"] or ""), outcome


def test_cross_source_residuals_distribute_alike(fed: Any) -> None:
    from test_cross_source import QUERIES

    reasons = []
    for sql in QUERIES:
        planned = planned_residual(fed, sql)
        assert planned is not None, sql
        reasons.append(check_planned(*planned))
    assert sum(r is None for r in reasons) >= 6, reasons


def _conformance_module(name: str) -> Any:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[1] / "conformance" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"corpus_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_conformance_shapes_over_two_sources_distribute_alike(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The conformance catalog's shapes over people (SQLite) and orders (files)."""
    import federator

    data, shapes = _conformance_module("conform_data"), _conformance_module("conform_shapes")
    folder = tmp_path_factory.mktemp("conform")
    catalog = {
        "sources": {
            "lite": {"kind": "sqlite", "path": str(data.write_sqlite(folder / "c.db"))},
            "lake": {"kind": "files", "path": str(data.write_files(folder / "files"))},
        },
        "planner": QUICK_PLANNER,
    }
    outcome = {}
    with federator.connect(catalog) as fed:
        for shape in shapes.SHAPES:
            if shape.tables != {"p", "o"} or shape.error:
                continue
            params = dict(shape.params)
            planned = planned_residual(fed, shape.text("lite.people", "lake.orders"), params)
            assert planned is not None, shape.name
            outcome[shape.name] = check_planned(*planned, params)
    assert len(outcome) >= 20
    assert sum(why is None for why in outcome.values()) >= 10, outcome
