"""Planning on the sources' own estimates and aggregating before the join, on catalog
fixtures (no servers): fixture estimates stand for what each source's EXPLAIN answered."""

from __future__ import annotations

import pytest
from federator.adapters.mysql import explained_rows
from federator.rules import rule_set_for
from sqlglot import exp
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers
from test_adaptive_joins import infos

from federator.plan.estimate import ORIGIN_GUESS, ORIGIN_SOURCE, estimate_key
from federator.plan.model import Fragment
from federator.plan.planner import PlannerSettings, SplitResult, Splitter, optimize, sqlglot_schema
from federator.sql.dialect import Federated, parse, residual_duckdb_sql

# q10's shape: the quarter's orders (MariaDB) joined with returned lineitems (PostgreSQL).
Q10 = """
SELECT o.o_custkey, sum(l.l_qty) AS qty
FROM my.db.orders o JOIN pg.public.lineitem l ON l.l_orderkey = o.o_orderkey
WHERE o.o_orderdate >= DATE '1993-10-01' AND o.o_orderdate < DATE '1994-01-01'
  AND l.l_flag = 'R'
GROUP BY o.o_custkey
"""


def _split(sql: str, observed: dict[tuple[str, str], int] | None = None, **settings: object):
    tables = infos()
    tree = normalize_identifiers(parse(sql), dialect=Federated)
    tree = optimize(tree, sqlglot_schema(tables), tables)
    rules = {"pg": rule_set_for("postgres"), "my": rule_set_for("mysql")}
    by_key = {(i.source, i.ref.schema, i.ref.name): i for i in tables}
    splitter = Splitter(rules, by_key, PlannerSettings(**settings), observed)  # type: ignore[arg-type]
    return splitter, splitter.split(tree)


def _on(result: SplitResult, table: str) -> Fragment:
    return next(
        f for f in result.fragments if any(t.name == table for t in f.query.find_all(exp.Table))
    )


def _answers(splitter: Splitter, result: SplitResult, rows: dict[str, int]) -> dict:
    """Fixture estimates by fragment shape: ``rows`` by table name; a grouped fragment as it
    is and as it was (the planner asks both)."""
    out = {}
    for frag in [*result.fragments, *splitter.ungrouped]:
        grouped = frag.query.args.get("group") is not None
        table = next(t.name for t in frag.query.find_all(exp.Table))
        out[estimate_key(frag)] = rows[table + (" grouped" if grouped else "")]
    return out


def test_the_catalog_alone_refuses_the_bind_on_a_guessed_date_range() -> None:
    _, result = _split(Q10)
    orders, lineitem = _on(result, "orders"), _on(result, "lineitem")
    assert (orders.estimated_rows, orders.estimate_origin) == (12_000, ORIGIN_GUESS)
    assert lineitem.bind is not None and "adaptive:" in lineitem.bind.reason  # waits, unsure


def test_the_sources_estimates_bind_the_quarters_order_keys_into_lineitem() -> None:
    splitter, first = _split(Q10)
    rows = {"orders": 1_200, "lineitem": 75_000, "lineitem grouped": 20_000}
    _, result = _split(Q10, _answers(splitter, first, rows))
    orders, lineitem = _on(result, "orders"), _on(result, "lineitem")
    assert (orders.estimated_rows, orders.estimate_origin) == (1_200, ORIGIN_SOURCE)
    assert lineitem.bind is not None and lineitem.bind.producer == orders.id
    assert lineitem.bind.reason.startswith("bound: f0 estimated 1,200 rows")
    # lineitem sends one partial sum per order key; its estimate stays the rows it reads
    assert lineitem.estimated_groups == 20_000
    assert lineitem.query.sql(dialect="postgres") == (
        'SELECT "l"."l_orderkey" AS "l_orderkey", SUM("l"."l_qty") AS "_pa0" '
        'FROM pg.public.lineitem AS l WHERE l.l_flag = \'R\' GROUP BY "l"."l_orderkey"'
    )


def test_no_partial_aggregate_where_the_source_expects_few_rows_merged() -> None:
    splitter, first = _split(Q10)
    rows = {"orders": 1_200, "lineitem": 75_000, "lineitem grouped": 70_000}
    _, result = _split(Q10, _answers(splitter, first, rows))
    assert _on(result, "lineitem").query.args.get("group") is None
    assert any("pg estimates 70,000 groups of 75,000 rows" in n for n in result.notes)


def test_the_residual_finishes_each_aggregate_cast_to_its_unrewritten_type() -> None:
    sql = """
    SELECT o.o_custkey, sum(l.l_qty) AS s, count(*) AS n, count(l.l_qty) AS c,
           avg(l.l_qty) AS a, min(l.l_qty) AS lo
    FROM my.db.orders o JOIN pg.public.lineitem l ON l.l_orderkey = o.o_orderkey
    GROUP BY o.o_custkey HAVING max(l.l_qty) > 3
    """
    _, result = _split(sql)
    lineitem = _on(result, "lineitem")
    assert lineitem.columns == ["l_orderkey", "_pa0", "_pa1", "_pa2", "_pa3", "_pa4"]
    residual = " ".join(residual_duckdb_sql(result.residual).split())
    assert 'CAST(SUM("l"."_pa0") AS INT128) AS s' in residual  # DuckDB's SUM of BIGINT
    assert 'CAST(COALESCE(SUM("l"."_pa1"), 0) AS BIGINT) AS n' in residual
    assert 'CAST(COALESCE(SUM("l"."_pa2"), 0) AS BIGINT) AS c' in residual
    assert 'CAST(CAST(SUM("l"."_pa0") AS DOUBLE) /' in residual
    assert 'CAST(MIN("l"."_pa3") AS BIGINT) AS lo' in residual
    assert 'HAVING CAST(MAX("l"."_pa4") AS BIGINT) > 3' in residual


@pytest.mark.parametrize(
    ("select", "why"),
    [
        ("count(DISTINCT l.l_qty)", "is not split into partial aggregates"),
        ("sum(l.l_qty) FILTER (WHERE l.l_flag = 'R')", "is not split into partial aggregates"),
        ("sum(l.l_qty) + count(o.o_orderkey)", "the aggregates read no fragment or several"),
    ],
)
def test_what_stays_in_the_residual(select: str, why: str) -> None:
    sql = f"""
    SELECT o.o_custkey, {select} AS x
    FROM my.db.orders o JOIN pg.public.lineitem l ON l.l_orderkey = o.o_orderkey
    GROUP BY o.o_custkey
    """
    _, result = _split(sql)
    assert _on(result, "lineitem").query.args.get("group") is None
    assert any(why in n for n in result.notes), result.notes


@pytest.mark.parametrize(
    ("select", "why"),
    [
        ("c.c_name, l.l_flag, sum(c.c_custkey)", "my groups strings under its collation"),
        ("l.l_flag, min(c.c_name)", "my compares strings under its collation"),
    ],
)
def test_strings_are_not_grouped_or_compared_on_mariadb(select: str, why: str) -> None:
    group = ", ".join(x for x in select.split(", ") if "(" not in x)
    sql = f"""
    SELECT {select} AS x
    FROM my.db.customer c JOIN pg.public.lineitem l ON l.l_suppkey = c.c_nationkey
    GROUP BY {group}
    """
    _, result = _split(sql)
    assert _on(result, "customer").query.args.get("group") is None
    assert any(why in n for n in result.notes), result.notes


def test_mariadb_explain_rows() -> None:
    loop = {"query_block": {"nested_loop": [
        {"table": {"access_type": "ALL", "rows": 3000, "filtered": 20.0,
                   "attached_condition": "c.seg = 'B'"}},
        {"table": {"access_type": "ref", "rows": 15, "filtered": 50.0,
                   "attached_condition": "o.d < '1995-03-15'"}},
    ]}}  # fmt: skip
    assert explained_rows(loop) == 4_500
    buffered = {"query_block": {"nested_loop": [
        {"table": {"rows": 25, "filtered": 8.0}},
        {"block-nl-join": {"table": {"rows": 3000, "filtered": 100},
                           "attached_condition": "c.n = n.n"}},
    ]}}  # fmt: skip
    assert explained_rows(buffered) is None
