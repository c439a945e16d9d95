"""A consumer several producers could bind takes, at run time, the key set that keeps the
least of it: TPC-H Q5's lineitem (PostgreSQL in the split) is bound on the orders side's keys
(a year of one region's orders: about 3 % of lineitem), not on that region's suppliers (20 %),
though the supplier keys are fewer. The rows it fetches are counted on one PostgreSQL."""

from __future__ import annotations

from servers import dsn_with_database
from sqlglot import exp

from .conftest import run_async
from .tpch import TRUTH_DB, arrow_answer, compare, federated_names

# lineitem rows of 1994's orders placed by customers in ASIA: what Q5's lineitem bound on the
# order keys fetches (the orders side is bound on the nations of ASIA's suppliers: all five)
BOUND_ON_ORDERS = """
SELECT count(*) FROM lineitem WHERE l_orderkey IN (
  SELECT o_orderkey FROM orders JOIN customer ON c_custkey = o_custkey
  JOIN nation ON c_nationkey = n_nationkey JOIN region ON n_regionkey = r_regionkey
  WHERE r_name = 'ASIA' AND o_orderdate >= DATE '1994-01-01' AND o_orderdate < DATE '1995-01-01')
"""


def _truth_count(tpch, sql: str) -> int:
    import asyncpg

    async def count() -> int:
        conn = await asyncpg.connect(dsn_with_database(tpch.pg_dsn, TRUTH_DB))
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return run_async(count())


def test_q05_binds_lineitem_on_the_order_keys(tpch, tpch_federation) -> None:
    query = tpch.queries["q05"]
    fed = tpch_federation("split")
    res = fed.sql(query.sql(federated_names("split")))
    assert compare(query, tpch.truth["q05"], arrow_answer(res.to_arrow())) is None
    ex = res.last_execution
    line = next(f for f in ex.plan.fragments if f.source == "pg")
    assert line.bind is not None and len(line.bind.alternatives) == 1
    note = ex.stats[line.id].note
    assert ".o_orderkey of " in note, note  # "chose f0.o_orderkey of f2.s_suppkey: …"
    assert '"l_orderkey" = ANY($1)' in ex.plan.requests[line.id].text
    assert ex.stats[line.id].rows == _truth_count(tpch, BOUND_ON_ORDERS)
    assert "bound keys" in res.explain(analyze=True)


# partsupp rows of the parts Q2's outer query keeps (size 15, type %BRASS, supplied from
# EUROPE): what its decorrelated minimum-cost subquery fetches once bound on the part keys
BOUND_ON_PARTS = """
SELECT count(*) FROM partsupp WHERE ps_partkey IN (
  SELECT p_partkey FROM part JOIN partsupp ON p_partkey = ps_partkey
  JOIN supplier ON s_suppkey = ps_suppkey JOIN nation ON s_nationkey = n_nationkey
  JOIN region ON n_regionkey = r_regionkey
  WHERE p_size = 15 AND p_type LIKE '%BRASS' AND r_name = 'EUROPE')
"""


def test_q02_binds_the_minimum_cost_subquery_on_the_outer_part_keys(tpch, tpch_federation) -> None:
    """Q2 reversed (partsupp and part on MariaDB, suppliers on PostgreSQL): the subquery's
    partsupp side could take EUROPE's supplier keys (a fifth of partsupp) or, through the
    subquery's GROUP BY ps_partkey, the outer query's part keys; it takes the part keys."""
    query = tpch.queries["q02"]
    fed = tpch_federation("reverse")
    res = fed.sql(query.sql(federated_names("reverse")))
    assert compare(query, tpch.truth["q02"], arrow_answer(res.to_arrow())) is None
    ex = res.last_execution
    partsupp = next(f for f in ex.plan.fragments if f.bind is not None and f.bind.alternatives)
    note = ex.stats[partsupp.id].note
    assert ".p_partkey of " in note, note  # "chose f2.p_partkey of f1.s_suppkey: …"
    assert ex.stats[partsupp.id].rows == _truth_count(tpch, BOUND_ON_PARTS)


def test_q18_waits_for_the_large_orders_keys_on_both_splits(tpch, tpch_federation) -> None:
    """Q18's decorrelated IN keeps the orders whose lines sum over 300 units (a HAVING,
    which the sources estimate by a guess): orders and lineitem wait for those keys and are
    bound on them, on either split."""
    query = tpch.queries["q18"]
    for split in ("split", "reverse"):
        fed = tpch_federation(split)
        res = fed.sql(query.sql(federated_names(split)))
        assert compare(query, tpch.truth["q18"], arrow_answer(res.to_arrow())) is None
        ex = res.last_execution
        having = next(f for f in ex.plan.fragments if f.query.find(exp.Having) is not None)
        takers = [f for f in ex.plan.fragments if f.bind and f.bind.producer == having.id]
        assert len(takers) == 2, ex.plan.explain()
        for frag in takers:
            assert "bound at run time" in ex.stats[frag.id].note, ex.stats[frag.id].note
