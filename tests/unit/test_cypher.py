"""Cypher generation without a server: pushdown fixtures (federated SQL in, Cypher out) for a
graph source (label tables Person/Company, relationship tables FOLLOWS/WORKS_AT) beside the
fixture SQLite shop, and the generator's pure helpers.

Fixture cases: tests/fixtures/pushdown/graph/*.sql. Regenerate their expected sections with
``python tests/unit/test_cypher.py`` and read the diff.
"""

from __future__ import annotations

import sys

import pyarrow as pa
import pytest
from _pushdown import (
    Case,
    collect,
    differences,
    federation_fixture,
    offline_federation,
    params,
    update_fixtures,
)
from federator.adapters.base import TableInfo, TableRef
from federator.adapters.cypher import CypherGenerator, GraphTable, quote

import federator
from federator.sql.dialect import parse

PERSON = pa.schema(
    [
        ("_id", pa.int64()),
        ("pid", pa.int64()),
        ("name", pa.string()),
        ("age", pa.int64()),
        ("city", pa.string()),
    ]
)
COMPANY = pa.schema([("_id", pa.int64()), ("name", pa.string())])
FOLLOWS = pa.schema(
    [("_id", pa.int64()), ("_src", pa.int64()), ("_dst", pa.int64()), ("since", pa.int64())]
)
WORKS_AT = pa.schema([("_id", pa.int64()), ("_src", pa.int64()), ("_dst", pa.int64())])
GRAPH = {
    "Person": (PERSON, "node", 1_000_000),
    "Company": (COMPANY, "node", 10_000),
    "FOLLOWS": (FOLLOWS, "rel", 20_000_000),
    "WORKS_AT": (WORKS_AT, "rel", 1_000_000),
}


def graph_federation() -> federator.Federation:
    """A FalkorDB source "g" (graph "social") with fixed tables beside the fixture SQLite."""
    source = {"kind": "falkordb", "url": "redis://:s3cret@graph.invalid:6379", "graph": "social"}
    infos = [TableInfo("g", TableRef("social", n), s, rows) for n, (s, _, rows) in GRAPH.items()]
    fed = offline_federation({"g": source}, {"g": infos})
    g = fed.catalog.adapters["g"]
    for name, (_, kind, _) in GRAPH.items():
        g._graph_tables[name] = GraphTable(name, kind)  # type: ignore[attr-defined]
    return fed


fed = federation_fixture(graph_federation)


def test_there_are_graph_fixtures() -> None:
    assert len(collect("graph")) >= 5


@pytest.mark.parametrize("case", params("graph"))
def test_graph_pushdown(fed: federator.Federation, case: Case) -> None:
    assert not (diff := differences(fed, case)), "\n".join(diff)


def test_explain_hides_the_password(fed: federator.Federation) -> None:
    assert "s3cret" not in fed.explain("SELECT name FROM g.Person")
    assert "s3cret" not in repr(fed.catalog.adapters["g"])


def test_generator_helpers() -> None:
    tables = {"Person": GraphTable("Person", "node"), "FOLLOWS": GraphTable("FOLLOWS", "rel")}
    gen = CypherGenerator(tables)
    q = gen.generate(
        parse(
            "SELECT f._src, f._dst, p.name FROM FOLLOWS AS f JOIN Person AS p "
            "ON f._dst = p._id WHERE p.name LIKE '%x%' AND p.age BETWEEN :lo AND 40"
        )
    )
    assert q.text.splitlines()[0] == "MATCH (f__src)-[f:FOLLOWS]->(p:Person)"
    assert "(p.name CONTAINS 'x')" in q.text and "($lo <= p.age AND p.age <= 40)" in q.text
    assert "RETURN id(f__src) AS _src, id(p) AS _dst" in q.text
    assert q.param_names == ["lo"]
    assert quote("a`b") == "`a``b`"


def test_division_by_a_column_runs_in_the_residual(fed: federator.Federation) -> None:
    """Cypher divides a float by zero as Infinity (an error in the federated dialect) and
    FalkorDB's Bolt endpoint reports an integer one as "unknown error" (found by the
    conformance matrix): only a non-zero literal divisor is pushed."""
    pushed = fed.explain("SELECT age / 2 AS h, age % 3 AS m FROM g.Person")
    assert "no residual" in pushed and "(p.age / 2)" not in pushed
    assert "/ 2" in pushed and "% 3" in pushed
    split = fed.explain("SELECT 10 / (age - age) AS v, age % pid AS m FROM g.Person")
    assert "residual on DuckDB" in split
    assert "division by a non-zero literal" in split


def test_bolt_server_unreachable_is_typed() -> None:
    """The neo4j driver's ServiceUnavailable (not an OSError) reached the caller bare."""
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    source = {"kind": "neo4j", "url": f"bolt://127.0.0.1:{port}", "timeout": 5}
    with (
        federator.connect({"sources": {"g": source}}) as f,
        pytest.raises(federator.SourceUnreachableError, match=f"127.0.0.1:{port}"),
    ):
        f.sql("SELECT name FROM g.Person")


if __name__ == "__main__":
    update_fixtures(graph_federation, "graph", sys.argv[1:])
