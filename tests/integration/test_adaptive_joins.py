"""Join decisions on real servers (TPC-H split: lineitem on PostgreSQL, orders, customer,
supplier, nation on MariaDB): each query answers like the one PostgreSQL holding every table,
and EXPLAIN says how each join was run and why."""

from __future__ import annotations

import re
from typing import Any

import asyncpg
import pytest

import federator

from .conftest import run_async
from .tpch import TRUTH_DB, _with_db, arrow_answer, compare, federated_names

SPLIT = "split"


def _explain(fed: Any, sql: str) -> str:
    return fed.explain(sql, analyze=True)


def _fragment_blocks(plan: str) -> list[str]:
    return re.split(r"\n(?=Fragment )", plan.split("Residual")[0])[1:]


def _check_tpch(tpch: Any, fed: Any, qid: str) -> str:
    query = tpch.queries[qid]
    sql = query.sql(federated_names(SPLIT))
    diff = compare(query, tpch.truth[qid], arrow_answer(fed.sql(sql).to_arrow()))
    assert diff is None, f"{qid}: {diff}"
    return _explain(fed, sql)


def _truth_rows(tpch: Any, sql: str) -> list[tuple[Any, ...]]:
    async def run() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(_with_db(tpch.pg_dsn, TRUTH_DB))
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return sorted(run_async(run()))


def test_q07_joins_each_side_of_the_or_apart_and_binds_the_small_one(
    tpch: Any, tpch_federation: Any
) -> None:
    plan = _check_tpch(tpch, tpch_federation(SPLIT), "q07")
    blocks = _fragment_blocks(plan)
    assert not any("`supplier`" in b and "`orders`" in b for b in blocks), plan
    lineitem = next(b for b in blocks if '"lineitem"' in b)
    assert "bind join" in lineitem and "bound at run time: observed" in lineitem, plan


def test_q05_keeps_the_many_to_many_nation_join_out_of_mariadb(
    tpch: Any, tpch_federation: Any
) -> None:
    plan = _check_tpch(tpch, tpch_federation(SPLIT), "q05")
    assert "many-to-many" in plan and "c_nationkey" in plan, plan
    assert not any("`customer`" in b and "`supplier`" in b for b in _fragment_blocks(plan))


def test_q10_binds_the_order_keys_on_mariadbs_estimate(tpch: Any, tpch_federation: Any) -> None:
    # MariaDB's own estimate of the quarter's orders (its histogram on o_orderdate) is close
    # to the truth, so the order keys are bound into lineitem (re-checked at run time), and
    # lineitem sends one partial sum per order rather than its rows.
    plan = _check_tpch(tpch, tpch_federation(SPLIT), "q10")
    orders, lineitem = _fragment_blocks(plan)
    assert "(source EXPLAIN)" in orders.splitlines()[0], plan
    assert "bind join" in lineitem, plan
    assert re.search(r"bound at run time: observed [\d,]+ distinct keys \(estimated", lineitem)
    assert "partial aggregate before the join: grouped by l_orderkey" in lineitem, plan


@pytest.mark.parametrize(
    ("where", "decision"),
    [
        ("l.l_quantity = 1", "bound at run time"),  # 2% of lineitem: few keys, bound
        ("l.l_returnflag = 'R'", "bind dropped at run time"),  # a quarter: fetched in full
    ],
)
def test_semi_join_reduction_sends_distinct_keys_of_the_selective_side(
    tpch: Any, where: str, decision: str
) -> None:
    # on the catalog's estimates: the sources' own would make l_quantity = 1 a plain bind
    planner = {"semi_join_min_rows": 0, "source_estimate_seconds": 0}
    catalog = {**tpch.catalog(SPLIT), "planner": planner}
    columns = "o.o_orderkey, o.o_orderdate, l.l_linenumber"
    with federator.connect(catalog) as fed:
        sql = (
            f"SELECT {columns} FROM pg.lineitem l "
            f"JOIN my.orders o ON o.o_orderkey = l.l_orderkey WHERE {where}"
        )
        got = fed.sql(sql).to_arrow()
        plan = _explain(fed, sql)
    truth = _truth_rows(
        tpch,
        f"SELECT {columns} FROM lineitem l JOIN orders o ON o.o_orderkey = l.l_orderkey "
        f"WHERE {where}",
    )
    assert sorted(zip(*(c.to_pylist() for c in got.columns), strict=True)) == truth
    blocks = _fragment_blocks(plan)
    keys = next(b for b in blocks if "semi-join reduction: distinct l_orderkey" in b)
    assert "SELECT DISTINCT" in keys, plan
    orders = next(b for b in blocks if "`orders`" in b)
    assert "semi-join reduction:" in orders and decision in orders, plan


@pytest.mark.parametrize("keys", [0, 1])
def test_a_bind_with_few_or_no_keys_answers_like_one_database(
    tpch: Any, tpch_federation: Any, keys: int
) -> None:
    fed = tpch_federation(SPLIT)
    name = "'no such nation'" if keys == 0 else "'GERMANY'"
    sql = (
        "SELECT s.s_name, count(*) AS n FROM my.supplier s JOIN my.nation n "
        "ON n.n_nationkey = s.s_nationkey JOIN pg.partsupp ps ON ps.ps_suppkey = s.s_suppkey "
        f"WHERE n.n_name = {name} GROUP BY s.s_name"
    )
    got = fed.sql(sql).to_arrow()
    truth = _truth_rows(
        tpch,
        "SELECT rtrim(s.s_name), count(*) FROM supplier s JOIN nation n "
        "ON n.n_nationkey = s.s_nationkey JOIN partsupp ps ON ps.ps_suppkey = s.s_suppkey "
        f"WHERE n.n_name = {name} GROUP BY s.s_name",
    )
    assert sorted(zip(*(c.to_pylist() for c in got.columns), strict=True)) == truth
    assert (len(truth) == 0) == (keys == 0)


def test_exists_binds_the_preserved_sides_keys_into_the_subquery(
    tpch: Any, tpch_federation: Any
) -> None:
    """EXISTS becomes a LEFT JOIN to the grouped lineitem side, which takes the orders' keys."""
    fed = tpch_federation(SPLIT)
    body = (
        "SELECT o.o_orderpriority, count(*) AS n FROM {orders} o "
        "WHERE o.o_orderdate = DATE '1995-03-15' AND EXISTS (SELECT * FROM {lineitem} l "
        "WHERE l.l_orderkey = o.o_orderkey AND l.l_quantity > 10) GROUP BY o.o_orderpriority"
    )
    sql = body.format(orders="my.orders", lineitem="pg.lineitem")
    got = fed.sql(sql).to_arrow()
    truth = _truth_rows(
        tpch,
        body.format(orders="orders", lineitem="lineitem").replace(
            "SELECT o.o_orderpriority,", "SELECT rtrim(o.o_orderpriority),"
        ),
    )
    assert sorted(zip(*(c.to_pylist() for c in got.columns), strict=True)) == truth
    plan = _explain(fed, sql)
    lineitem = next(b for b in _fragment_blocks(plan) if '"lineitem"' in b)
    assert "bind join" in lineitem and "bound at run time" in lineitem, plan
    orders = next(b for b in _fragment_blocks(plan) if "`orders`" in b)
    assert "bind join" not in orders, plan


def test_many_bound_keys_travel_through_binary_copy(tpch: Any) -> None:
    """With bulk_rows 0 a bound fetch of 1,000+ keys runs as COPY with the keys unnested."""
    catalog = tpch.catalog(SPLIT)
    catalog["sources"]["pg"]["bulk_rows"] = 0
    body = (
        "SELECT o.o_orderkey, l.l_linenumber, l.l_extendedprice, l.l_shipdate "
        "FROM {orders} o JOIN {lineitem} l ON l.l_orderkey = o.o_orderkey "
        "WHERE o.o_orderdate < DATE '1993-01-01'"
    )
    with federator.connect(catalog) as fed:
        sql = body.format(orders="my.orders", lineitem="pg.lineitem")
        got = fed.sql(sql).to_arrow()
        plan = _explain(fed, sql)
    truth = _truth_rows(tpch, body.format(orders="orders", lineitem="lineitem"))
    assert sorted(zip(*(c.to_pylist() for c in got.columns), strict=True)) == truth
    lineitem = next(b for b in _fragment_blocks(plan) if '"lineitem"' in b)
    assert "through binary COPY" in lineitem, plan
    keys = int(re.search(r"bound keys ([\d,]+)", lineitem).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert keys >= 1_000, plan


def test_many_bound_keys_of_a_grouped_fragment_take_the_plain_query(tpch: Any) -> None:
    """Grouped by the bound key, the lineitem side answers one row per order: its 1,000+ keys
    go as ``= ANY($1)`` of a plain query, not through COPY, even with bulk_rows 0."""
    catalog = tpch.catalog(SPLIT)
    catalog["sources"]["pg"]["bulk_rows"] = 0
    body = (
        "SELECT o.o_orderpriority, sum(l.l_extendedprice) AS total "
        "FROM {orders} o JOIN {lineitem} l ON l.l_orderkey = o.o_orderkey "
        "WHERE o.o_orderdate < DATE '1993-01-01' GROUP BY o.o_orderpriority"
    )
    with federator.connect(catalog) as fed:
        sql = body.format(orders="my.orders", lineitem="pg.lineitem")
        got = fed.sql(sql).to_arrow()
        plan = _explain(fed, sql)
    truth = _truth_rows(
        tpch,
        body.format(orders="orders", lineitem="lineitem").replace(
            "SELECT o.o_orderpriority,", "SELECT rtrim(o.o_orderpriority),"
        ),
    )
    assert sorted(zip(*(c.to_pylist() for c in got.columns), strict=True)) == truth
    lineitem = next(b for b in _fragment_blocks(plan) if '"lineitem"' in b)
    assert "GROUP BY" in lineitem and "= ANY($1)" in lineitem, plan
    assert "as a plain query (= ANY($1)), not through COPY" in lineitem, plan
    assert "through binary COPY:" not in lineitem, plan
    keys = int(re.search(r"bound keys ([\d,]+)", lineitem).group(1).replace(",", ""))  # type: ignore[union-attr]
    assert keys >= 1_000, plan
