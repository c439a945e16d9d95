"""pgvector through the PostgreSQL adapter (PostgreSQL 16 + pgvector from PyPI pgserver):
the operators push down as written, the query vector binds as a ``::vector`` parameter, and
every answer equals numpy brute force over the same vectors."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import asyncpg
import numpy as np
import pyarrow as pa
import pytest
from vector_truth import brute

import federator
from federator.sql.dialect import vector_text

from .conftest import run_async

N, DIM = 400, 16
CATS = ("toys", "books", "garden", "tools")


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    rng = np.random.default_rng(11)
    vectors = rng.normal(size=(N, DIM)).astype(np.float32)
    cats = [CATS[i % len(CATS)] for i in range(N)]
    prices = rng.integers(1, 100, size=N)
    return {"vectors": vectors, "cats": cats, "prices": prices, "rng": rng}


@pytest.fixture(scope="module")
def fed(pgvector_dsn: str, data: dict[str, Any], tmp_path_factory) -> Iterator[Any]:
    async def load() -> None:
        con = await asyncpg.connect(pgvector_dsn)
        try:
            await con.execute("DROP TABLE IF EXISTS items")
            await con.execute(
                f"CREATE TABLE items (id int PRIMARY KEY, cat text, emb vector({DIM}))"
            )
            await con.executemany(
                "INSERT INTO items VALUES ($1, $2, $3::vector)",
                [(i, data["cats"][i], vector_text(v)) for i, v in enumerate(data["vectors"])],
            )
            await con.execute("ANALYZE items")
        finally:
            await con.close()

    run_async(load())
    path = tmp_path_factory.mktemp("pgv") / "shop.db"
    lite = sqlite3.connect(path)
    lite.execute("CREATE TABLE products (id INTEGER, price INTEGER)")
    lite.executemany(
        "INSERT INTO products VALUES (?, ?)", [(i, int(p)) for i, p in enumerate(data["prices"])]
    )
    lite.commit()
    lite.close()
    f = federator.connect(
        {
            "sources": {
                "pg": {"kind": "postgres", "dsn": pgvector_dsn},
                "shop": {"kind": "sqlite", "path": str(path)},
            }
        },
        timeout=60,
    )
    yield f
    f.close()


def top_k(ids: np.ndarray, dist: np.ndarray, k: int) -> list[int]:
    order = np.lexsort((ids, dist))[:k]
    return ids[order].tolist()


@pytest.mark.parametrize(("op", "metric"), [("<->", "l2"), ("<=>", "cosine"), ("<#>", "neg_ip")])
def test_top_k_pushed_down_equals_numpy(fed, data, op: str, metric: str) -> None:
    q = data["rng"].normal(size=DIM).astype(np.float32)
    sql = f"SELECT id, emb {op} :q AS d FROM pg.items WHERE cat = 'books' ORDER BY d LIMIT 10"
    plan = fed.explain(sql, {"q": q})
    assert "no residual" in plan and op in plan and "AS VECTOR" in plan.upper()
    got = fed.sql(sql, {"q": q}).to_arrow().to_pylist()
    ids = np.array([i for i in range(N) if data["cats"][i] == "books"])
    dist = brute(data["vectors"][ids], q, metric)
    assert [r["id"] for r in got] == top_k(ids, dist, 10)
    np.testing.assert_allclose([r["d"] for r in got], np.sort(dist)[:10], rtol=1e-4, atol=1e-5)


def test_functions_literal_and_torch(fed, data) -> None:
    torch = pytest.importorskip("torch")
    q = data["rng"].normal(size=DIM).astype(np.float32)
    lit = vector_text(q)
    a = fed.sql(
        f"SELECT id, cosine_distance(emb, '{lit}') AS d FROM pg.items ORDER BY d LIMIT 5"
    ).to_arrow()
    b = fed.sql(
        "SELECT id FROM pg.items ORDER BY emb <=> :q LIMIT 5", {"q": torch.tensor(q)}
    ).to_arrow()
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    ip = fed.sql(
        "SELECT id, inner_product(emb, :q) AS s FROM pg.items ORDER BY s DESC LIMIT 3", {"q": q}
    ).to_arrow()
    scores = data["vectors"].astype(np.float64) @ q.astype(np.float64)
    assert ip.column("id").to_pylist() == np.argsort(-scores)[:3].tolist()


def test_cross_source_filter_then_top_k(fed, data) -> None:
    """Products (SQLite) filter the candidates; the top-k equals numpy over the survivors."""
    q = data["rng"].normal(size=DIM).astype(np.float32)
    sql = (
        "SELECT i.id, i.emb <-> :q AS d FROM pg.items AS i JOIN shop.products AS p "
        "ON p.id = i.id WHERE p.price < 20 ORDER BY d LIMIT 10"
    )
    got = fed.sql(sql, {"q": q}).to_arrow().to_pylist()
    ids = np.array([i for i in range(N) if data["prices"][i] < 20])
    dist = brute(data["vectors"][ids], q, "l2")
    assert [r["id"] for r in got] == top_k(ids, dist, 10)


def test_hnsw_index_recall(fed, data, pgvector_dsn: str) -> None:
    async def index() -> None:
        con = await asyncpg.connect(pgvector_dsn)
        try:
            await con.execute(
                "CREATE INDEX IF NOT EXISTS items_emb ON items USING hnsw (emb vector_cosine_ops)"
            )
        finally:
            await con.close()

    run_async(index())
    hits = 0
    for _ in range(10):
        q = data["rng"].normal(size=DIM).astype(np.float32)
        got = fed.sql("SELECT id FROM pg.items ORDER BY emb <=> :q LIMIT 10", {"q": q})
        truth = set(top_k(np.arange(N), brute(data["vectors"], q, "cosine"), 10))
        hits += len(truth & set(got.to_arrow().column("id").to_pylist()))
    recall = hits / 100
    print(f"pgvector hnsw recall@10 = {recall:.2f}")
    assert recall >= 0.95


@pytest.mark.parametrize(("bulk_rows", "path"), [(-1, "row path"), (0, "binary COPY")])
def test_vector_columns_are_float32_lists(fed, data, pgvector_dsn: str, bulk_rows, path) -> None:
    """A vector column arrives as list<float32> (not pgvector's text) on both paths, so it
    feeds to_torch as an embedding matrix."""
    torch = pytest.importorskip("torch")
    source = {"kind": "postgres", "dsn": pgvector_dsn, "bulk_rows": bulk_rows}
    with federator.connect({"sources": {"pg": source}}) as f:
        result = f.sql("SELECT id, emb FROM pg.items WHERE id < :n ORDER BY id", {"n": 50})
        assert ("bulk: binary COPY" in result.explain()) == (path == "binary COPY")
        table = result.to_arrow()
        assert table.schema.field("emb").type == pa.list_(pa.float32())
        assert table.column("id").to_pylist() == list(range(50))
        got = np.array(table.column("emb").to_pylist(), dtype=np.float32)
        np.testing.assert_array_equal(got, data["vectors"][:50])
        tensors = result.to_torch(["emb"])
        assert tensors["emb"].shape == (50, DIM) and tensors["emb"].dtype == torch.float32
        np.testing.assert_array_equal(tensors["emb"].numpy(), data["vectors"][:50])
