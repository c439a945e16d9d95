"""Join planning decisions on catalog fixtures (no servers): which tables of one source are
joined inside it, which joins are bound (plainly, adaptively, by semi-join reduction), and
how the executor decides a bind from the keys it observes."""

from __future__ import annotations

import sqlite3
from typing import Any

import pyarrow as pa
import pytest
from federator.adapters.base import TableInfo, TableRef
from federator.rules import rule_set_for
from sqlglot import exp
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from federator.plan.model import BindJoin, Fragment, bind_batches, choose_bind
from federator.plan.planner import (
    PlannerSettings,
    SplitResult,
    Splitter,
    optimize,
    sqlglot_schema,
)
from federator.plan.ship import ShipSmallSide, plan_ship, shippable, shipped_fragment
from federator.sql.dialect import Federated, parse

INT = pa.int64()
STR = pa.string()
DATE = pa.date32()

# A TPC-H-like split: lineitem on PostgreSQL ("pg"), the rest on MySQL ("my").
TABLES = {
    ("my", "supplier"): ([("s_suppkey", INT), ("s_name", STR), ("s_nationkey", INT)], 500),
    ("my", "nation"): ([("n_nationkey", INT), ("n_name", STR), ("n_regionkey", INT)], 25),
    ("my", "customer"): ([("c_custkey", INT), ("c_name", STR), ("c_nationkey", INT)], 7_500),
    ("my", "orders"): ([("o_orderkey", INT), ("o_custkey", INT), ("o_orderdate", DATE)], 75_000),
    ("pg", "lineitem"): (
        [
            ("l_orderkey", INT),
            ("l_linenumber", INT),
            ("l_suppkey", INT),
            ("l_flag", STR),
            ("l_qty", INT),
        ],
        300_000,
    ),
}
KEYS = {
    "supplier": (("s_suppkey",),),
    "nation": (("n_nationkey",),),
    "customer": (("c_custkey",),),
    "orders": (("o_orderkey",),),
    "lineitem": (("l_orderkey", "l_linenumber"),),
}


def infos(keys: bool = True, rows: dict[str, int] | None = None) -> list[TableInfo]:
    out = []
    for (source, name), (cols, n) in TABLES.items():
        schema = "public" if source == "pg" else "db"
        out.append(
            TableInfo(
                source,
                TableRef(schema, name),
                pa.schema(cols),
                (rows or {}).get(name, n),
                KEYS[name] if keys else None,
            )
        )
    return out


def split(sql: str, tables: list[TableInfo], **settings: object) -> SplitResult:
    """Plan ``sql`` (tables written ``source.schema.table``) the way Federation does."""
    tree = normalize_identifiers(parse(sql), dialect=Federated)
    for t in tree.find_all(exp.Table):
        if not t.alias:
            t.set("alias", exp.TableAlias(this=exp.to_identifier(t.name)))
    tree = optimize(tree, sqlglot_schema(tables), tables)
    rules = {"pg": rule_set_for("postgres"), "my": rule_set_for("mysql")}
    by_key = {(i.source, i.ref.schema, i.ref.name): i for i in tables}
    return Splitter(rules, by_key, PlannerSettings(**settings)).split(tree)  # type: ignore[arg-type]


def tables_of(frag: Fragment) -> set[str]:
    return {t.name for t in frag.query.find_all(exp.Table)}


def by_tables(result: SplitResult) -> dict[frozenset[str], Fragment]:
    return {frozenset(tables_of(f)): f for f in result.fragments}


Q7 = """
SELECT n1.n_name AS supp_nation, n2.n_name AS cust_nation, sum(l.l_qty) AS qty
FROM my.db.supplier s, pg.public.lineitem l, my.db.orders o, my.db.customer c,
     my.db.nation n1, my.db.nation n2
WHERE s.s_suppkey = l.l_suppkey AND o.o_orderkey = l.l_orderkey AND c.c_custkey = o.o_custkey
  AND s.s_nationkey = n1.n_nationkey AND c.c_nationkey = n2.n_nationkey
  AND ((n1.n_name = 'FRANCE' AND n2.n_name = 'GERMANY')
       OR (n1.n_name = 'GERMANY' AND n2.n_name = 'FRANCE'))
GROUP BY n1.n_name, n2.n_name
"""


def test_an_or_across_two_groups_does_not_join_them_in_the_source() -> None:
    result = split(Q7, infos())
    groups = by_tables(result)
    # supplier with its nation, orders with customer and theirs: never supplier x orders
    assert frozenset({"supplier", "nation"}) in groups
    assert frozenset({"orders", "customer", "nation"}) in groups
    assert not any({"supplier", "orders"} <= tables_of(f) for f in result.fragments)
    # the OR stays in the residual, where both nations meet
    assert result.residual is not None
    assert "GERMANY" in result.residual.sql()
    # the small supplier side is bound into lineitem
    line = groups[frozenset({"lineitem"})]
    assert line.bind is not None
    assert line.bind.producer == groups[frozenset({"supplier", "nation"})].id


Q5_NATION_JOIN = """
SELECT c.c_name, s.s_name, l.l_qty
FROM my.db.customer c, my.db.orders o, my.db.supplier s, pg.public.lineitem l
WHERE c.c_custkey = o.o_custkey AND c.c_nationkey = s.s_nationkey
  AND l.l_orderkey = o.o_orderkey AND l.l_suppkey = s.s_suppkey
  AND o.o_orderdate >= DATE '1994-01-01'
"""


def test_a_many_to_many_join_runs_in_the_residual_when_keys_are_known() -> None:
    result = split(Q5_NATION_JOIN, infos())
    groups = by_tables(result)
    assert frozenset({"customer", "orders"}) in groups and frozenset({"supplier"}) in groups
    assert any("many-to-many" in n and "c_nationkey" in n for n in result.notes)


def test_without_key_information_tables_of_one_source_are_joined_there() -> None:
    result = split(Q5_NATION_JOIN, infos(keys=False))
    assert frozenset({"customer", "orders", "supplier"}) in by_tables(result)
    assert "many-to-many" not in " ".join(result.notes)


def test_a_key_join_is_joined_in_the_source_whatever_its_order() -> None:
    sql = (
        "SELECT o.o_orderkey, c.c_name FROM my.db.orders o JOIN my.db.customer c "
        "ON o.o_custkey = c.c_custkey JOIN pg.public.lineitem l ON l.l_orderkey = o.o_orderkey"
    )
    groups = by_tables(split(sql, infos()))
    assert frozenset({"orders", "customer"}) in groups


Q10 = """
SELECT c.c_name, sum(l.l_qty) AS qty
FROM my.db.customer c, my.db.orders o, pg.public.lineitem l
WHERE c.c_custkey = o.o_custkey AND l.l_orderkey = o.o_orderkey
  AND o.o_orderdate >= DATE '1993-10-01' AND o.o_orderdate < DATE '1994-01-01'
  AND l.l_flag = 'R'
GROUP BY c.c_name
"""


def test_close_estimates_bind_adaptively_on_the_producer_itself() -> None:
    # orders x 0.16 = 12,000 rows against lineitem x 0.1 = 30,000: not 4x, so no plain bind;
    # o_orderkey is unique, so lineitem waits for the orders side and decides from its keys.
    result = split(Q10, infos())
    groups = by_tables(result)
    line, orders = groups[frozenset({"lineitem"})], groups[frozenset({"customer", "orders"})]
    assert line.bind is not None
    assert line.bind.producer == orders.id
    assert line.bind.reason.startswith("adaptive:")
    assert line.bind.max_keys is not None and line.bind.consumer_rows == line.estimated_rows
    assert len(result.fragments) == 2  # no keys-only fragment


def test_a_repeating_selective_key_gets_a_keys_only_fragment() -> None:
    # The producer is lineitem (l_orderkey repeats), the consumer orders.
    sql = (
        "SELECT o.o_orderdate, l.l_qty FROM pg.public.lineitem l JOIN my.db.orders o "
        "ON o.o_orderkey = l.l_orderkey WHERE l.l_flag = 'R'"
    )
    result = split(sql, infos(), semi_join_min_rows=0)
    orders = by_tables(result)[frozenset({"orders"})]
    assert orders.bind is not None and orders.bind.semi_join_of is not None
    keys = next(f for f in result.fragments if f.id == orders.bind.producer)
    assert keys.source == "pg" and keys.columns == ["l_orderkey"]
    assert keys.query.args.get("distinct") is not None
    assert "semi-join reduction" in orders.bind.reason
    assert keys.id not in (result.residual.sql() if result.residual else "")


def test_no_keys_only_fragment_for_a_small_consumer() -> None:
    sql = (
        "SELECT o.o_orderdate, l.l_qty FROM pg.public.lineitem l JOIN my.db.orders o "
        "ON o.o_orderkey = l.l_orderkey WHERE l.l_flag = 'R'"
    )
    result = split(sql, infos())  # orders: 75,000 rows < semi_join_min_rows
    assert all(f.bind is None for f in result.fragments)
    assert any("semi_join_min_rows" in n for n in result.notes)


def test_no_reduction_when_the_producer_is_not_selective() -> None:
    sql = (
        "SELECT o.o_orderdate, l.l_qty FROM pg.public.lineitem l JOIN my.db.orders o "
        "ON o.o_orderkey = l.l_orderkey"
    )
    result = split(sql, infos(rows={"lineitem": 40_000}))
    assert all(f.bind is None for f in result.fragments)
    assert any("not selective" in n for n in result.notes)


def test_semi_join_reduction_can_be_turned_off() -> None:
    result = split(Q10, infos(), semi_join_selectivity=0.0)
    assert all(f.bind is None for f in result.fragments)


@pytest.mark.parametrize(
    ("keys", "bound", "words"),
    [
        (40, True, "bound at run time: observed 40 distinct keys (estimated 50)"),
        (5_000, False, "> 1,000 allowed"),
        (900, False, "more than the consumer's estimated 800 rows"),
    ],
)
def test_a_bind_is_decided_from_the_observed_keys(keys: int, bound: bool, words: str) -> None:
    b = BindJoin(
        "f0", "k", exp.column("k"), "k", "", max_keys=1_000, consumer_rows=800, estimated_keys=50
    )
    decided, why = b.decide(keys)
    assert decided is bound
    assert words in why


def test_the_executor_ceiling_applies_on_top_of_the_plan() -> None:
    b = BindJoin("f0", "k", exp.column("k"), "k", "", max_keys=1_000)
    assert b.decide(600, limit=500)[0] is False
    assert BindJoin("f0", "k", exp.column("k"), "k", "").decide(10**6)[0] is True


@pytest.mark.parametrize(
    ("keys", "limit", "sizes"),
    [(0, 10, [0]), (10, 10, [10]), (11, 10, [6, 5]), (25, 10, [9, 8, 8]), (3, 1, [1, 1, 1])],
)
def test_bind_batches_are_even_and_within_the_limit(
    keys: int, limit: int, sizes: list[int]
) -> None:
    assert bind_batches(keys, limit) == sizes
    assert sum(sizes) == keys


def test_inner_joins_before_a_left_join_are_grouped_and_bound() -> None:
    sql = """
    SELECT c.c_name, l.l_qty, s.s_name
    FROM my.db.orders o JOIN my.db.customer c ON c.c_custkey = o.o_custkey
    JOIN pg.public.lineitem l ON l.l_orderkey = o.o_orderkey
    LEFT JOIN my.db.supplier s ON s.s_suppkey = l.l_suppkey AND s.s_name = 'x'
    WHERE c.c_name = 'Customer#1'
    """
    result = split(sql, infos())
    groups = by_tables(result)
    inner = groups[frozenset({"orders", "customer"})]
    line = groups[frozenset({"lineitem"})]
    supplier = groups[frozenset({"supplier"})]
    assert line.bind is not None and line.bind.producer == inner.id
    assert "'x'" in supplier.sql()  # the LEFT JOIN's filter on its own side is pushed
    assert result.residual is not None
    residual = result.residual.sql()
    assert "LEFT JOIN" in residual and "'x'" not in residual


def test_the_null_extended_side_of_a_left_join_takes_the_preserved_sides_keys() -> None:
    # EXISTS becomes LEFT JOIN (SELECT l_orderkey ... GROUP BY l_orderkey) AS _u_0: the
    # grouped lineitem side may only be restricted to the orders' keys, never the reverse.
    sql = """
    SELECT o.o_orderkey FROM my.db.orders o
    WHERE o.o_orderdate >= DATE '1993-07-01' AND o.o_orderdate < DATE '1993-10-01'
      AND EXISTS (SELECT * FROM pg.public.lineitem l
                  WHERE l.l_orderkey = o.o_orderkey AND l.l_qty > 10)
    """
    result = split(sql, infos())
    groups = by_tables(result)
    orders, line = groups[frozenset({"orders"})], groups[frozenset({"lineitem"})]
    assert orders.bind is None
    assert line.bind is not None and line.bind.producer == orders.id
    assert "LEFT JOIN" in result.residual.sql()  # type: ignore[union-attr]


def test_the_preserved_side_of_a_left_join_is_never_bound() -> None:
    sql = """
    SELECT o.o_orderkey, l.l_qty FROM pg.public.lineitem l
    LEFT JOIN my.db.orders o ON o.o_orderkey = l.l_orderkey AND o.o_orderdate = DATE '1994-01-01'
    """
    result = split(sql, infos())
    assert by_tables(result)[frozenset({"lineitem"})].bind is None


def test_a_subquery_left_in_the_residual_passes_its_fragment_the_keys() -> None:
    # Q21's shape: EXISTS with a non-equi correlation becomes LEFT JOIN (SELECT l_orderkey,
    # ARRAY_AGG(l_suppkey) FROM <l2 fragment> GROUP BY l_orderkey) in the residual; the l2
    # fragment may take l1's order keys, since the subquery groups by that column.
    sql = """
    SELECT s.s_name FROM my.db.supplier s JOIN pg.public.lineitem l1 ON s.s_suppkey = l1.l_suppkey
    WHERE s.s_name = 'x' AND EXISTS (SELECT * FROM pg.public.lineitem l2
        WHERE l2.l_orderkey = l1.l_orderkey AND l2.l_suppkey <> l1.l_suppkey)
    """
    result = split(sql, infos())
    l1 = next(f for f in result.fragments if "l1" in f.sql())
    l2 = next(f for f in result.fragments if "l2" in f.sql())
    assert l1.bind is not None  # the supplier's keys
    assert l1.estimated_rows is not None and l1.estimated_rows < 300_000  # narrowed by the bind
    assert l2.bind is not None and l2.bind.producer == l1.id
    assert l2.bind.key.sql() == '"l2"."l_orderkey"'


def test_identical_requests_run_once(fed: Any, truth: sqlite3.Connection) -> None:
    sql = (
        "SELECT user_id FROM lake.events WHERE kind = 'cart' UNION ALL "
        "SELECT id FROM shop.users WHERE country = 'US' UNION ALL "
        "SELECT user_id FROM lake.events WHERE kind = 'cart'"
    )
    got = sorted(r["user_id"] for r in fed.sql(sql).to_arrow().to_pylist())
    want = sorted(r[0] for r in truth.execute(sql.replace("lake.", "").replace("shop.", "")))
    assert got == want
    plan = fed.explain(sql, analyze=True)
    assert plan.count("same request as f0: fetched once") == 1, plan


@pytest.mark.parametrize("keys", [1, 3, 5_000])
def test_an_in_list_is_rendered_once_for_any_number_of_keys(keys: int) -> None:
    from federator.adapters.mysql import MySQLAdapter
    from federator.adapters.sqlbase import BIND_PARAM, SQLPayload

    from federator.config import SourceConfig

    adapter = MySQLAdapter(SourceConfig("my", "mysql", {"dsn": "mysql://u@h/db"}))
    tree = (
        exp.select("a")
        .from_("t")
        .where(exp.column("b").eq(exp.Placeholder(this="p")))
        .where(exp.column("c").eq(exp.Placeholder(this="q")))
    )
    payload = SQLPayload("", [], bound_tree=tree)
    text, names = adapter._in_list(payload, exp.column("k"), keys)
    assert names == ["p", "q"] + [f"{BIND_PARAM}{i}" for i in range(keys)]
    assert text.count("%s") == len(names)
    assert text.endswith("`k` IN (" + ", ".join(["%s"] * keys) + ")")


Q9_WHOLE_DIMENSION = """
SELECT s.s_name, sum(l.l_qty) AS qty
FROM my.db.supplier s, pg.public.lineitem l
WHERE s.s_suppkey = l.l_suppkey
GROUP BY s.s_name
"""


def test_a_producer_keeping_every_key_of_its_table_is_not_bound() -> None:
    """Every supplier's key would match about every lineitem (a foreign key): binding them
    filters nothing and only makes the lineitem request heavier."""
    result = split(Q9_WHOLE_DIMENSION, infos())
    line = by_tables(result)[frozenset({"lineitem"})]
    assert line.bind is None
    assert any("keeps about all 500 keys of its table" in n for n in result.notes)
    # the same supplier side with a filter keeps few keys: bound
    filtered = split(
        Q9_WHOLE_DIMENSION.replace("GROUP BY", "AND s.s_nationkey = 3 GROUP BY"), infos()
    )
    assert by_tables(filtered)[frozenset({"lineitem"})].bind is not None


# ---- a consumer several producers could bind: chosen at run time ---------------------------
Q5 = """
SELECT n.n_name, sum(l.l_qty) AS qty
FROM my.db.customer c, my.db.orders o, pg.public.lineitem l, my.db.supplier s, my.db.nation n
WHERE c.c_custkey = o.o_custkey AND l.l_orderkey = o.o_orderkey AND l.l_suppkey = s.s_suppkey
  AND c.c_nationkey = s.s_nationkey AND s.s_nationkey = n.n_nationkey AND n.n_name = 'CHINA'
  AND o.o_orderdate >= DATE '1994-01-01' AND o.o_orderdate < DATE '1995-01-01'
GROUP BY n.n_name
"""


def test_a_consumer_two_producers_could_bind_keeps_both_binds() -> None:
    """Q5's lineitem could take the order keys or the supplier keys: it keeps both, each with
    the size of its key's table, and the executor binds the one that keeps less of it."""
    groups = by_tables(split(Q5, infos()))
    line = groups[frozenset({"lineitem"})]
    orders = next(f for t, f in groups.items() if "orders" in t)
    supplier = next(f for t, f in groups.items() if "supplier" in t)
    assert line.bind is not None and len(line.bind.alternatives) == 1
    binds = {b.producer: b for b in (line.bind, *line.bind.alternatives)}
    assert set(binds) == {orders.id, supplier.id}
    assert binds[orders.id].key.name == "l_orderkey" and binds[orders.id].key_domain == 75_000
    assert binds[supplier.id].key.name == "l_suppkey" and binds[supplier.id].key_domain == 500


def test_alternative_binds_can_be_turned_off() -> None:
    line = by_tables(split(Q5, infos(), bind_alternatives=False))[frozenset({"lineitem"})]
    assert line.bind is not None and line.bind.alternatives == []


def _q5_binds() -> tuple[BindJoin, BindJoin]:
    supplier = BindJoin(
        "f1", "s_suppkey", exp.column("l_suppkey"), "l_suppkey", "", key_domain=10_000
    )
    orders = BindJoin(
        "f0", "o_orderkey", exp.column("l_orderkey"), "l_orderkey", "", key_domain=1_500_000
    )
    return supplier, orders


def test_the_bind_keeping_the_smaller_share_is_chosen_not_the_fewer_keys() -> None:
    supplier, orders = _q5_binds()
    index, why = choose_bind([supplier, orders], [2_003, 46_000])
    assert index == 1
    assert (
        "chose f0.o_orderkey" in why and "(20.0% of 10,000)" in why and "(3.1% of 1,500,000)" in why
    )
    # fewer order keys than that share: still the order keys; more: the supplier keys
    assert choose_bind([supplier, orders], [2_003, 2_000])[0] == 1
    assert choose_bind([supplier, orders], [2_003, 600_000])[0] == 0


def test_a_bind_the_ceiling_refuses_is_not_chosen() -> None:
    supplier, orders = _q5_binds()
    assert choose_bind([supplier, orders], [2_003, 46_000], limit=10_000)[0] == 0
    index, why = choose_bind([supplier, orders], [20_000, 46_000], limit=10_000)
    assert index is None and why.count("bind dropped at run time") == 2


def test_an_unknown_share_ranks_last_then_by_keys() -> None:
    orders = _q5_binds()[1]
    plain = BindJoin("f2", "k", exp.column("k"), "k", "")
    assert choose_bind([plain, orders], [10, 46_000])[0] == 1
    assert choose_bind([plain, BindJoin("f3", "j", exp.column("j"), "j", "")], [50, 10])[0] == 1


# ---- the small side shipped to the big source (federator.plan.ship) -------------------------
Q4 = """
SELECT o.o_orderdate, count(*) AS n
FROM my.db.orders o
WHERE o.o_orderdate >= DATE '1993-07-01' AND o.o_orderdate < DATE '1993-10-01'
  AND EXISTS (SELECT * FROM pg.public.lineitem l WHERE l.l_orderkey = o.o_orderkey AND l.l_qty > 10)
GROUP BY o.o_orderdate
ORDER BY o.o_orderdate
"""


def _ship(sql: str, **settings: object) -> tuple[SplitResult, ShipSmallSide | None]:
    result = split(sql, infos(rows={"lineitem": 3_000_000}), **settings)
    rules = {"pg": rule_set_for("postgres"), "my": rule_set_for("mysql")}
    return result, plan_ship(result.fragments, result.residual, rules, PlannerSettings(**settings))  # type: ignore[arg-type]


def test_the_small_sides_rows_go_to_postgres_as_arrays_with_the_rest_of_the_query() -> None:
    result, ship = _ship(Q4, ship_max_rows=50_000)
    assert ship is not None and ship.source == "pg"
    orders = by_tables(result)[frozenset({"orders"})]
    assert (ship.small, ship.columns) == (orders.id, orders.columns)
    schema = pa.schema([(c, INT if c == "o_orderkey" else DATE) for c in orders.columns])
    sent = shipped_fragment(ship, schema).sql(dialect="postgres")
    arrays = ", ".join(
        f"CAST(%(__rows{i})s AS {'BIGINT' if c == 'o_orderkey' else 'DATE'}[])"
        for i, c in enumerate(orders.columns)
    )
    assert f"FROM UNNEST({arrays}) AS o({', '.join(orders.columns)})" in sent
    assert "pg.public.lineitem" in sent and "l.l_qty > 10" in sent  # the big side inlined
    assert "GROUP BY o.o_orderdate ORDER BY" in sent  # the aggregate runs there too
    assert {t.name for t in exp.maybe_parse(sent, dialect="postgres").find_all(exp.Table)} == {
        "lineitem"
    }


def test_no_ship_when_off_too_big_or_to_a_source_without_rows_parameters() -> None:
    assert _ship(Q4)[1] is None  # ship_max_rows 0: the default
    assert _ship(Q4, ship_max_rows=10)[1] is None  # orders estimated above it
    result = split(Q4, infos(rows={"lineitem": 3_000_000}), ship_max_rows=50_000)
    mysql_only = {"pg": rule_set_for("mysql"), "my": rule_set_for("mysql")}
    on = PlannerSettings(ship_max_rows=50_000)
    assert plan_ship(result.fragments, result.residual, mysql_only, on) is None  # type: ignore[arg-type]


def test_a_column_without_an_array_type_is_not_shipped() -> None:
    assert shippable(pa.schema([("k", INT), ("d", DATE), ("s", STR)]))
    assert not shippable(pa.schema([("b", pa.binary())]))


Q3_LIKE = """
SELECT o.o_orderdate, sum(l.l_qty) AS qty
FROM my.db.orders o, pg.public.lineitem l
WHERE l.l_orderkey = o.o_orderkey AND o.o_orderdate < DATE '1995-03-15'
GROUP BY o.o_orderdate
"""


def test_keys_above_the_limit_but_a_small_share_of_their_table_are_bound() -> None:
    # orders x 0.33 = 25,000 rows > bind_max_keys 5,000, but (estimated twice over) 33 % of
    # 75,000 order keys is within 2 x bind_small_share 0.2: bound, re-checked at run time.
    settings = {"bind_max_keys": 5_000, "bind_large_max_keys": 30_000, "bind_small_share": 0.2}
    result = split(Q3_LIKE, infos(), **settings)
    line = by_tables(result)[frozenset({"lineitem"})]
    assert line.bind is not None and line.bind.key_domain == 75_000
    assert "of its table's 75,000 keys" in line.bind.reason
    assert line.bind.decide(14_000)[0]  # 18.7 % of the order keys
    assert not line.bind.decide(16_000)[0]  # 21.3 %
    assert not line.bind.decide(31_000)[0]  # above bind_large_max_keys


def test_without_the_small_share_rule_such_keys_are_fetched_in_full() -> None:
    settings = {"bind_max_keys": 5_000, "bind_large_max_keys": 30_000, "bind_small_share": 0}
    line = by_tables(split(Q3_LIKE, infos(), **settings))[frozenset({"lineitem"})]
    assert line.bind is None or not line.bind.decide(14_000)[0]


def test_a_small_share_is_not_bound_into_a_consumer_estimated_at_fewer_rows_than_keys() -> None:
    # TPC-H Q8 split: 91,179 order keys (6 % of 1.5 M) against a lineitem x part side estimated
    # at 39,145 rows: more keys than the rows they would filter, so it is fetched in full.
    bind = BindJoin(
        "f1",
        "o_orderkey",
        exp.column("l_orderkey"),
        "l_orderkey",
        "",
        max_keys=50_000,
        consumer_rows=39_145,
        key_domain=1_500_000,
        share_limit=0.1,
        share_max_keys=200_000,
    )
    bound, why = bind.decide(91_179)
    assert not bound and "more than the consumer's estimated 39,145 rows" in why
    bind.consumer_rows = 984_375  # the same keys against a consumer estimated large: bound
    bound, why = bind.decide(91_179)
    assert bound and "they keep 6.1% of 1,500,000 keys" in why
