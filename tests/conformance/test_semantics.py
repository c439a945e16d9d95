"""Regression tests of issue 19 item 5: one meaning per construct on every path.

The federated dialect follows PostgreSQL: integer / integer is an integer truncated toward
zero, division (and modulo) by zero is an error, a scalar subquery of more than one row is an
error. Truths are hand-computed from conform_data's rows.
"""

from __future__ import annotations

import datetime as dt

import pytest

import federator

ALONE = ("pg", "my", "lite", "files", "mongo", "pgv", "kv", "g", "mv", "gb", "qd")
PAIRS = (("pg", "my"), ("my", "pg"), ("lite", "files"), ("files", "mongo"))


def _values(fed: federator.Federation, sql: str) -> list[tuple]:
    return sorted(tuple(r.values()) for r in fed.sql(sql).to_arrow().to_pylist())


@pytest.mark.parametrize("kind", ALONE)
def test_integer_division_truncates_on_every_source(
    conform_fed: federator.Federation, kind: str
) -> None:
    got = _values(
        conform_fed, f"SELECT id, id / 2 AS h, -id / 4 AS q FROM {kind}.people WHERE id <= 3"
    )
    assert got == [(1, 0, 0), (2, 1, 0), (3, 1, 0)]


@pytest.mark.parametrize(("p", "o"), PAIRS)
def test_integer_division_truncates_once_joined_across_sources(
    conform_fed: federator.Federation, p: str, o: str
) -> None:
    # the issue: pg.customers.id / 2 gave [0, 1, 1] alone but [0.5, 1, 1.5] joined with MySQL
    sql = (
        f"SELECT DISTINCT p.id, p.id / 2 AS h FROM {p}.people p JOIN {o}.orders o "
        "ON o.pid = p.id WHERE p.id <= 3"
    )
    assert _values(conform_fed, sql) == [(1, 0), (2, 1), (3, 1)]


@pytest.mark.parametrize("kind", ALONE)
def test_integer_parameter_divides_as_an_integer_on_every_source(
    conform_fed: federator.Federation, kind: str
) -> None:
    # the issue: `:x / 2` and `n / :d` with integers divided as floats in the residual
    # (DuckDB) and on Parquet files; the plan of the same text with a float divides exactly
    sql = f"SELECT id, id / :d AS h, :x / 2 AS g FROM {kind}.people WHERE id <= 3"
    assert _values(conform_fed, sql.replace(":d", "2").replace(":x", "-7")) == [
        (1, 0, -3),
        (2, 1, -3),
        (3, 1, -3),
    ]
    got = conform_fed.sql(sql, {"d": 2, "x": -7}).to_arrow()
    assert sorted(tuple(r.values()) for r in got.to_pylist()) == [
        (1, 0, -3),
        (2, 1, -3),
        (3, 1, -3),
    ]
    got = conform_fed.sql(sql, {"d": 2.0, "x": -7}).to_arrow()
    assert sorted(tuple(r.values()) for r in got.to_pylist()) == [
        (1, 0.5, -3),
        (2, 1.0, -3),
        (3, 1.5, -3),
    ]


@pytest.mark.parametrize("kind", ALONE)
def test_division_by_zero_is_an_error_on_every_source(
    conform_fed: federator.Federation, kind: str
) -> None:
    with pytest.raises(federator.FederatorError, match="division by zero"):
        conform_fed.sql(f"SELECT id, 10 / (n - n) AS v FROM {kind}.people WHERE n = 10").to_arrow()


@pytest.mark.parametrize("kind", ALONE)
def test_modulo_by_zero_is_an_error_on_every_source(
    conform_fed: federator.Federation, kind: str
) -> None:
    with pytest.raises(federator.FederatorError, match="division by zero"):
        conform_fed.sql(f"SELECT id, id % (n - n) AS v FROM {kind}.people WHERE n = 10").to_arrow()


@pytest.mark.parametrize(("p", "o"), [(k, k) for k in ALONE] + list(PAIRS))
def test_scalar_subquery_of_several_rows_is_an_error(
    conform_fed: federator.Federation, p: str, o: str
) -> None:
    # the issue: WHERE id = (SELECT id FROM t) with 3 rows in t returned 3 rows on MySQL,
    # SQLite and cross-source (the subquery had become a join)
    sql = f"SELECT id FROM {p}.people WHERE id = (SELECT pid FROM {o}.orders WHERE oid < 103)"
    with pytest.raises(federator.FederatorError, match=r"(?i)more than (one|1) row"):
        conform_fed.sql(sql).to_arrow()


@pytest.mark.parametrize(("p", "o"), [(k, k) for k in ALONE] + list(PAIRS))
def test_scalar_subquery_of_one_row_still_answers(
    conform_fed: federator.Federation, p: str, o: str
) -> None:
    sql = f"SELECT id FROM {p}.people WHERE id = (SELECT pid FROM {o}.orders WHERE oid = 102)"
    assert _values(conform_fed, sql) == [(2,)]


def test_sqlite_is_not_given_a_scalar_subquery_of_several_rows(
    conform_fed: federator.Federation,
) -> None:
    plan = conform_fed.explain(
        "SELECT id FROM lite.people WHERE id = (SELECT pid FROM lite.orders WHERE oid < 103)"
    )
    assert "residual on DuckDB" in plan, plan


def test_explain_says_when_a_string_comparison_runs_under_mysql_collation(
    conform_fed: federator.Federation,
) -> None:
    query = "SELECT id FROM my.people WHERE name = 'bob'"
    plan = conform_fed.explain(query)
    assert "case- and accent-insensitive" in plan, plan
    # which is what MariaDB answers: 'bob' and 'Bob' (the federated dialect's truth: id 2 only)
    assert _values(conform_fed, query) == [(2,), (3,)]
    assert "insensitive" not in conform_fed.explain("SELECT id FROM my.people WHERE n = 10")


def test_explain_names_the_mysql_collation_of_each_compared_column(
    conform_fed: federator.Federation,
) -> None:
    # issue 12: how a user sees that a comparison was pushed to a backend whose semantics
    # differ, also where no string literal shows it (a parameter, GROUP BY)
    query = "SELECT city, count(*) AS c FROM my.people WHERE name = :n GROUP BY city"
    plan = conform_fed.explain(query, {"n": "bob"})
    note = next(line for line in plan.splitlines() if "semantics:" in line)
    assert "people.name under utf8mb4_" in note and "people.city under utf8mb4_" in note, note
    assert "case-insensitive" in note
    assert sorted(conform_fed.sql(query, {"n": "bob"}).to_arrow().to_pylist(), key=str) == [
        {"city": "Berlin", "c": 1},  # bob
        {"city": "Paris", "c": 1},  # Bob: equal to 'bob' under the collation
    ]
    assert "semantics:" not in conform_fed.explain("SELECT id FROM my.people WHERE n = 10")


def test_explain_has_no_collation_note_for_binary_collations(mysql_dsn: str) -> None:
    from urllib.parse import urlparse

    import pymysql
    from servers import dsn_with_database

    url = urlparse(mysql_dsn)
    con = pymysql.connect(host=url.hostname, port=url.port, user=url.username or "root")
    try:
        with con.cursor() as cur:
            cur.execute("DROP DATABASE IF EXISTS collation12")
            cur.execute("CREATE DATABASE collation12 CHARACTER SET utf8mb4")
            cur.execute(
                "CREATE TABLE collation12.t (a VARCHAR(10) COLLATE utf8mb4_bin, "
                "b VARCHAR(10) COLLATE utf8mb4_general_ci)"
            )
            cur.execute("INSERT INTO collation12.t VALUES ('bob', 'bob'), ('Bob', 'Bob')")
        con.commit()
    finally:
        con.close()
    source = {"kind": "mysql", "dsn": dsn_with_database(mysql_dsn, "collation12")}
    with federator.connect({"sources": {"my": source}}) as fed:
        binary = "SELECT a FROM my.t WHERE a = 'bob'"
        assert "semantics:" not in fed.explain(binary)
        assert fed.sql(binary).to_arrow().to_pylist() == [{"a": "bob"}]
        plan = fed.explain("SELECT a FROM my.t WHERE b = 'bob'")
        assert "t.b under utf8mb4_general_ci (case-insensitive)" in plan, plan


# ---- found by the conformance matrix and the fuzzer -------------------------------------------
def test_mysql_avg_of_wide_values_fits_decimal128(conform_fed: federator.Federation) -> None:
    # AVG of INT 2147483647 came as DECIMAL(40, 30) (div_precision_increment 30): ArrowInvalid
    got = _values(
        conform_fed, "SELECT avg(n) AS a, avg(score) AS s FROM my.people WHERE id = 4 OR id = 5"
    )
    assert [tuple(float(v) for v in row) for row in got] == [(2147483647.0, 99999999.99)]


def test_mysql_avg_compares_with_a_decimal_in_the_residual(
    conform_fed: federator.Federation,
) -> None:
    # AVG of a MariaDB DECIMAL(12,2) arrived as decimal(38,32): DuckDB's comparison cast the
    # other side to it and overflowed on 99999999.99
    amounts = [10, 5.5, 100, 0.99, 0.99, 20, 1, 40, -5, 999999.99, 3.33, 3.33, 12, 7.25]
    mean = sum(amounts) / len(amounts)
    people = {1: 12.5, 2: -3.25, 3: 0, 4: 99999999.99, 6: -99999999.99, 7: 12.5, 8: 7.1}
    people |= {9: 0.01, 10: 1000, 11: 5.55, 12: 12.5}
    sql = "SELECT id FROM pg.people WHERE score > (SELECT avg(amount) FROM my.orders)"
    assert _values(conform_fed, sql) == sorted((i,) for i, s in people.items() if s > mean)


def test_sqlite_sum_of_numeric_stored_as_real_is_a_decimal(
    conform_fed: federator.Federation,
) -> None:
    # SQLite sums NUMERIC(12,2) as doubles (100000005.54000001): it failed to convert back
    sql = "SELECT city, sum(score) AS s FROM lite.people WHERE city = 'Paris' GROUP BY city"
    assert [(c, str(s)) for c, s in _values(conform_fed, sql)] == [("Paris", "100000005.54")]


@pytest.mark.parametrize("outer", ["pg", "mongo"])
def test_in_subquery_over_mongo_is_split_not_refused(
    conform_fed: federator.Federation, outer: str
) -> None:
    # issue 12: the decorrelated subquery was handed to MongoDB whole, wrapped in a SELECT it
    # cannot run ("MongoDB cannot run SELECT "_u_0"... as one pipeline"); its inner query is
    # the pipeline now, the rest runs in the residual
    sql = f"SELECT id FROM {outer}.people WHERE id IN (SELECT pid FROM mongo.orders WHERE qty > 1)"
    assert _values(conform_fed, sql) == [(1,), (2,), (6,), (7,), (8,), (10,), (12,)]


def test_sqlite_coalesce_of_a_date_is_a_date(conform_fed: federator.Federation) -> None:
    # found by the fuzzer: SQLite keeps dates as text, and COALESCE(born, DATE '…') came back
    # as the string '1970-01-01' where every other source answers a date
    sql = "SELECT id, COALESCE(born, DATE '2000-01-01') AS b FROM lite.people WHERE id IN (3, 5)"
    assert _values(conform_fed, sql) == [(3, dt.date(2000, 1, 1)), (5, dt.date(1970, 1, 1))]


def test_graph_fragment_whose_bind_join_is_dropped_runs_without_keys(
    conform_catalog: dict, conform_truth
) -> None:
    # found by the fuzzer with bind joins forced on: a bind into a FalkorDB fragment dropped
    # at run time ran the bound Cypher with no keys ("Missing parameters")
    forced = {**conform_catalog, "planner": {"bind_ratio": 1e-9, "bind_min_share_left": 2.0}}
    sql = (
        "SELECT p.name FROM {p} p WHERE (NOT (p.city IS NOT NULL) "
        "OR p.id IN (SELECT pid FROM {o} WHERE pid IS NOT NULL))"
    )
    want = sorted(conform_truth.sql(sql.format(p="people", o="orders")).fetchall(), key=str)
    with federator.connect(forced, timeout=60) as fed:
        got = fed.sql(sql.format(p="pgv.people", o="g.orders")).to_arrow().to_pylist()
    assert sorted(((r["name"],) for r in got), key=str) == want


def test_two_redis_fragments_of_one_table_with_other_columns_are_not_shared(
    conform_fed: federator.Federation, conform_truth
) -> None:
    # found by the fuzzer: identical requests run once, and two Redis scans of kv.orders (the
    # join's and the EXISTS subquery's) had the same text but not the same columns
    sql = (
        "SELECT o.oid FROM {p} p JOIN {o} o ON o.pid = p.id "
        "WHERE EXISTS (SELECT 1 FROM {o} q WHERE q.pid = p.id) AND o.amount IS NOT NULL"
    )
    want = sorted(conform_truth.sql(sql.format(p="people", o="orders")).fetchall())
    got = conform_fed.sql(sql.format(p="kv.people", o="kv.orders")).to_arrow().to_pylist()
    assert sorted((r["oid"],) for r in got) == want


def test_sqlite_like_is_case_sensitive(conform_fed: federator.Federation) -> None:
    # found by the fuzzer: SQLite's LIKE folds ASCII case, so O'Brien NOT LIKE '%o%' was false
    sql = "SELECT id FROM lite.people WHERE name NOT LIKE '%o%' AND name LIKE '%B%'"
    assert _values(conform_fed, sql) == [(8,)]  # O'Brien: no lowercase o (case-folded: none)


@pytest.mark.parametrize("kind", ("pg", "pgv", "my", "lite", "files", "mongo"))
def test_avg_of_a_double_near_the_square_root_of_the_range(
    conform_fed: federator.Federation, kind: str
) -> None:
    # fuzz seed 4242 query 9751: PostgreSQL's AVG(double) also sums squares, and 1e300 squared
    # overflowed ("value out of range: overflow") though the mean is 1e300 / 3
    sql = f"SELECT city, avg(x) AS a FROM {kind}.people WHERE city = 'Paris' GROUP BY city"
    ((city, mean),) = _values(conform_fed, sql)
    assert city == "Paris" and mean == pytest.approx((0.0 + 1e300 - 0.25) / 3, rel=1e-12)
    window = f"SELECT id, avg(x) OVER () AS a FROM {kind}.people WHERE id IN (1, 2)"
    assert _values(conform_fed, window) == [(1, -0.5), (2, -0.5)]
