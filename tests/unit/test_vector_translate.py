"""Milvus translation without a server: pushdown fixtures (federated SQL in, Milvus search /
query parameters out, hybrid top-k notes) and the pure helpers.

Fixture cases: tests/fixtures/pushdown/milvus/*.sql. Regenerate their expected sections from
the current translator with ``python tests/unit/test_vector_translate.py`` and read the diff.
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
from federator.adapters.milvus import _distance, _filter, _literal, milvus_arrow_type

import federator
from federator.sql.dialect import parse

VECTORS = pa.schema(
    [
        ("id", pa.int64()),
        ("category", pa.string()),
        ("price", pa.float64()),
        ("emb", pa.list_(pa.float32())),
    ]
)


def milvus_federation(**planner: object) -> federator.Federation:
    """Milvus (collection product_vectors, 100,000 rows) beside the fixture PostgreSQL and
    SQLite sources; no I/O."""
    vectors = TableInfo("vec", TableRef("default", "product_vectors"), VECTORS, 100_000)
    return offline_federation(
        {"vec": {"kind": "milvus", "uri": "/nonexistent/vectors.db"}},
        {"vec": [vectors]},
        beside=("pg", "lite"),
        planner=dict(planner),
    )


fed = federation_fixture(milvus_federation)


def test_there_are_milvus_fixtures() -> None:
    assert len(collect("milvus")) >= 5


@pytest.mark.parametrize("case", params("milvus"))
def test_milvus_pushdown(fed: federator.Federation, case: Case) -> None:
    assert not (diff := differences(fed, case)), "\n".join(diff)


def test_forced_filter_modes_are_explained() -> None:
    sql = (
        "SELECT v.id FROM vec.product_vectors AS v JOIN pg.products AS p ON p.id = v.id "
        "WHERE p.category = 'toys' ORDER BY v.emb <=> :q LIMIT 10"
    )
    for mode in ("pre", "post"):
        with milvus_federation(vector_filter=mode) as f:
            plan = f.explain(sql, {"q": [0.1, 0.2]})
            assert f"vector_filter={mode}" in plan
            assert "search product_vectors" in plan


# ---- pure helpers -------------------------------------------------------------------------
def test_filter_expression_and_literals() -> None:
    where = parse(
        "SELECT 1 FROM t WHERE (a = 'x\"y' OR b IN (1, 2)) AND NOT c > :p AND d LIKE 'ab%' "
        "AND e BETWEEN 1 AND 2 AND f IS NULL"
    ).args["where"]
    names: list[str] = []
    pieces = _filter(where, names)
    text = "".join(p if isinstance(p, str) else f"{{{p[1]}}}" for p in pieces)
    assert text == (
        '((((((a == "x\\"y" or b in [1, 2])) and not (c > {p})) and d like "ab%") '
        "and (e >= 1 and e <= 2)) and f is null)"
    )
    assert names == ["p"]
    assert _literal('it\'s "q"') == '"it\'s \\"q\\""'
    assert _literal([1, "a"]) == '[1, "a"]'
    assert _literal(True) == "true"
    # Milvus's parser knows no \u escapes: non-ASCII letters go as they are
    assert _literal("Zürich") == '"Zürich"'
    assert "".join(_filter(parse("SELECT 1 FROM t WHERE c = 'Zoë'").args["where"], [])) == (
        'c == "Zoë"'
    )


def test_two_collections_join_in_the_residual(fed: federator.Federation) -> None:
    """Milvus filters by a comparison of two columns but cannot join: two collections joined
    were one query of one of them (``pid == id``, found by the conformance matrix)."""
    plan = fed.explain(
        "SELECT a.id, b.price FROM vec.product_vectors AS a "
        "JOIN vec.product_vectors AS b ON b.price = a.price"
    )
    assert plan.count("query product_vectors") == 2
    assert "not run inside source vec: no rule of 'milvus' pushes Join" in plan
    assert "a.price = b.price" in plan.split("Residual")[1]


def test_count_star_is_a_filtered_scan_counted_in_the_residual(fed: federator.Federation) -> None:
    """The fragment of ``count(*)`` returns a constant per row (``SELECT 1 FROM t``), which
    Milvus refused: "milvus cannot return 1" (found by the conformance matrix)."""
    plan = fed.explain("SELECT count(*) AS c FROM vec.product_vectors WHERE price > 10")
    assert "query product_vectors\n    filter: price > 10\n    output_fields: []" in plan, plan
    assert "COUNT(*) AS c" in plan.split("Residual")[1]


def test_distances_in_pgvector_terms() -> None:
    assert _distance("l2", 4.0) == 2.0
    assert _distance("cosine", 0.25) == 0.75
    assert _distance("neg_ip", 3.0) == -3.0
    assert _distance("ip", 3.0) == 3.0


def test_arrow_types() -> None:
    class T:
        def __init__(self, name: str) -> None:
            self.name = name

    assert milvus_arrow_type(T("FLOAT_VECTOR"), {}) == pa.list_(pa.float32())
    assert milvus_arrow_type(T("INT64"), {}) == pa.int64()
    assert milvus_arrow_type(T("VARCHAR"), {}) == pa.string()


if __name__ == "__main__":
    update_fixtures(milvus_federation, "milvus", sys.argv[1:])
