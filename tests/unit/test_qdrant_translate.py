"""Qdrant translation without a server: pushdown fixtures (federated SQL in, query_points /
scroll requests with their filters out, hybrid top-k notes) and the pure helpers.

Fixture cases: tests/fixtures/pushdown/qdrant/*.sql. Regenerate their expected sections from
the current translator with ``python tests/unit/test_qdrant_translate.py`` and read the diff.
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
from federator.adapters.qdrant import Collection, Column, payload_type

import federator

VECTOR = pa.list_(pa.float32())
COLUMNS = [
    Column("id", pa.int64(), "id"),
    Column("category", pa.string()),
    Column("price", pa.float64()),
    Column("emb", VECTOR, "vector", vector="emb", distance="Euclid"),
    Column("emb_cos", VECTOR, "vector", vector="emb_cos", distance="Cosine"),
]


def qdrant_federation(**planner: object) -> federator.Federation:
    """Qdrant (collection product_vectors, 100,000 points) beside the fixture PostgreSQL and
    SQLite sources; no I/O (the URL is never contacted)."""
    collection = Collection("product_vectors", {c.name: c for c in COLUMNS}, 100_000)
    info = TableInfo("vec", TableRef("", "product_vectors"), collection.schema(), 100_000)
    fed = offline_federation(
        {"vec": {"kind": "qdrant", "url": "http://127.0.0.1:1", "api_key": "never-shown"}},
        {"vec": [info]},
        beside=("pg", "lite"),
        planner=dict(planner),
    )
    fed.catalog.adapters["vec"].collections = {"product_vectors": collection}
    return fed


fed = federation_fixture(qdrant_federation)


def test_there_are_qdrant_fixtures() -> None:
    assert len(collect("qdrant")) >= 5


@pytest.mark.parametrize("case", params("qdrant"))
def test_qdrant_pushdown(fed: federator.Federation, case: Case) -> None:
    assert not (diff := differences(fed, case)), "\n".join(diff)


def test_the_api_key_never_shows(fed: federator.Federation) -> None:
    plan = fed.explain(
        "SELECT id FROM vec.product_vectors ORDER BY emb <-> :q LIMIT 3", {"q": [1, 0]}
    )
    assert "never-shown" not in plan + repr(fed.catalog.adapters["vec"]) + repr(fed)


@pytest.mark.parametrize(
    ("values", "want"),
    [
        ([1, 2, None], pa.int64()),
        ([1, 2.5], pa.float64()),
        ([True, None], pa.bool_()),
        (["a", 1], pa.string()),
        ([[1.0, 2.0], []], pa.list_(pa.float64())),
        ([{"a": 1}], pa.string()),
        ([None, []], pa.string()),
    ],
)
def test_payload_types_from_samples(values: list, want: pa.DataType) -> None:
    assert payload_type(values) == want


if __name__ == "__main__":
    update_fixtures(qdrant_federation, "qdrant", sys.argv[1:])
