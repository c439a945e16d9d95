"""Hybrid top-k shapes beyond ``JOIN … ORDER BY distance LIMIT k`` (milvus-lite + SQLite): a
top-k in a derived table, an ``IN (subquery)`` filter from another source, tie-breakers after
the distance, and the distance taken from the search rather than recomputed. Every answer
equals numpy brute force over the same vectors (FLAT index: exact), ties included: groups of
identical vectors tie exactly, and ``ORDER BY d, id`` has one right answer."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import federator

from .test_milvus import brute  # numpy truth, pgvector's distance conventions

pytest.importorskip("pymilvus", reason="pip install pymilvus==3.0.2 milvus-lite==3.2.2")

N, DIM, GROUPS = 1200, 8, 24  # row i has the vector of group i % GROUPS: 50 exact ties each
INDEXES = {"emb": "L2", "emb_cos": "COSINE", "emb_ip": "IP"}
OPS = [("<->", "l2", "emb"), ("<=>", "cosine", "emb_cos"), ("<#>", "neg_ip", "emb_ip")]


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    rng = np.random.default_rng(17)
    base = rng.normal(size=(GROUPS, DIM)).astype(np.float32)
    return {"vectors": base[np.arange(N) % GROUPS], "rng": rng}


@pytest.fixture(scope="module")
def catalog(data: dict[str, Any], tmp_path_factory) -> dict[str, Any]:
    from pymilvus import DataType, MilvusClient

    folder = tmp_path_factory.mktemp("shapes")
    uri = str(folder / "vectors.db")
    client = MilvusClient(uri)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    index = client.prepare_index_params()
    for name, metric in INDEXES.items():
        schema.add_field(name, DataType.FLOAT_VECTOR, dim=DIM)
        index.add_index(name, index_type="FLAT", metric_type=metric)
    client.create_collection("items", schema=schema, index_params=index)
    client.insert(
        "items",
        [{"id": i} | {n: v.tolist() for n in INDEXES} for i, v in enumerate(data["vectors"])],
    )
    client.close()
    lite = sqlite3.connect(folder / "shop.db")
    lite.execute("CREATE TABLE stock (id INTEGER, qty INTEGER)")
    lite.executemany("INSERT INTO stock VALUES (?, ?)", [(i, i % 7) for i in range(N)])
    lite.commit()
    lite.close()
    return {
        "sources": {
            "m": {"kind": "milvus", "uri": uri},
            "shop": {"kind": "sqlite", "path": str(folder / "shop.db")},
        }
    }


@pytest.fixture(scope="module")
def fed(catalog: dict[str, Any]) -> Iterator[Any]:
    with federator.connect(catalog, timeout=120) as f:
        yield f


def exact_top_k(ids: np.ndarray, dist: np.ndarray, k: int, id_desc: bool = False) -> list[int]:
    """``ORDER BY dist, id [DESC] LIMIT k``: the one right answer, ties included."""
    return ids[np.lexsort((-ids if id_desc else ids, dist))[:k]].tolist()


def query_vector(data: dict[str, Any]) -> np.ndarray:
    return data["rng"].normal(size=DIM).astype(np.float32)


def test_top_k_in_a_derived_table_is_a_search(fed, data) -> None:
    q = query_vector(data)
    sql = (
        "SELECT near.id, near.d, s.qty FROM (SELECT id, emb <-> :q AS d FROM m.items "
        "ORDER BY d, id LIMIT 10) AS near JOIN shop.stock AS s ON s.id = near.id "
        "ORDER BY near.d, near.id"
    )
    plan = fed.explain(sql, {"q": q})
    assert "search items: anns_field=emb metric=L2 vector=:q limit=" in plan
    assert "query items" not in plan and "output_fields: ['id']" in plan
    got = fed.sql(sql, {"q": q}).to_arrow().to_pylist()
    dist = brute(data["vectors"], q, "l2")
    want = exact_top_k(np.arange(N), dist, 10)
    assert [r["id"] for r in got] == want
    assert [r["qty"] for r in got] == [i % 7 for i in want]
    np.testing.assert_allclose([r["d"] for r in got], dist[want], rtol=1e-4, atol=1e-4)


def test_derived_table_without_tie_breaker(fed, data) -> None:
    """A derived top-k without ORDER BY keys to break ties: Milvus's own search answers it
    (one request, the distances are the k smallest)."""
    q = query_vector(data)
    sql = (
        "SELECT near.id, near.d FROM (SELECT id, emb_cos <=> :q AS d FROM m.items "
        "ORDER BY d LIMIT 6) AS near JOIN shop.stock AS s ON s.id = near.id WHERE s.qty >= 0"
    )
    plan = fed.explain(sql, {"q": q})
    assert "search items: anns_field=emb_cos metric=COSINE vector=:q limit=6" in plan
    got = fed.sql(sql, {"q": q}).to_arrow().to_pylist()
    dist = brute(data["vectors"], q, "cosine")
    np.testing.assert_allclose(sorted(r["d"] for r in got), np.sort(dist)[:6], rtol=1e-4, atol=1e-5)
    assert all(abs(dist[r["id"]] - r["d"]) < 1e-4 for r in got)


@pytest.mark.parametrize(("op", "metric", "field"), OPS)
@pytest.mark.parametrize("id_desc", [False, True])
def test_tie_breaker_pushes_the_search_and_keeps_exact_order(
    fed, data, op, metric, field, id_desc
) -> None:
    """``ORDER BY d, id`` with 50-way exact ties at every distance (more than the first fetch):
    the search is pushed, candidates are grown until the k-th is nearer than the farthest
    fetched, and the answer equals numpy's lexicographic order."""
    q = query_vector(data)
    direction = " DESC" if id_desc else ""
    sql = f"SELECT id, {field} {op} :q AS d FROM m.items ORDER BY d, id{direction} LIMIT 10"
    plan = fed.explain(sql, {"q": q})
    assert f"search items: anns_field={field}" in plan and "ties broken by id" in plan
    got = fed.sql(sql, {"q": q}).to_arrow().to_pylist()
    dist = brute(data["vectors"], q, metric)
    want = exact_top_k(np.arange(N), dist, 10, id_desc)
    assert [r["id"] for r in got] == want
    np.testing.assert_allclose([r["d"] for r in got], dist[want], rtol=1e-4, atol=1e-4)


def test_tie_breaker_with_inner_product_desc(fed, data) -> None:
    q = query_vector(data)
    sql = "SELECT id, inner_product(emb_ip, :q) AS s FROM m.items ORDER BY s DESC, id LIMIT 9"
    got = fed.sql(sql, {"q": q}).to_arrow().to_pylist()
    scores = data["vectors"].astype(np.float64) @ q.astype(np.float64)
    assert [r["id"] for r in got] == exact_top_k(np.arange(N), -scores, 9)


def test_tie_breaker_with_a_filter_on_another_source(fed, data) -> None:
    q = query_vector(data)
    sql = (
        "SELECT i.id, i.emb <-> :q AS d FROM m.items AS i JOIN shop.stock AS s ON s.id = i.id "
        "WHERE s.qty IN (1, 2, 3, 4, 5) ORDER BY d, i.id DESC LIMIT 7"
    )
    result = fed.sql(sql, {"q": q})
    got = result.to_arrow().column("id").to_pylist()
    ids = np.array([i for i in range(N) if 1 <= i % 7 <= 5])
    assert got == exact_top_k(ids, brute(data["vectors"][ids], q, "l2"), 7, id_desc=True)
    assert "search items" in result.explain(analyze=True)


@pytest.mark.parametrize("mode", ["auto", "pre", "post"])
@pytest.mark.parametrize(("where", "keep"), [("id % 50 = 3", 0.02), ("qty < 6", 0.86)])
def test_in_subquery_is_a_pre_or_post_filter(catalog, data, mode, where, keep) -> None:
    """``id IN (SELECT id FROM shop.stock WHERE …)``: the search takes the subquery's keys
    (pre-filter) or over-fetches and filters after (post-filter), chosen like a join filter;
    the answer equals numpy over the ids the subquery keeps."""
    q = query_vector(data)
    sql = (
        "SELECT id, emb_cos <=> :q AS d FROM m.items "
        f"WHERE id IN (SELECT id FROM shop.stock WHERE {where}) ORDER BY d, id LIMIT 10"
    )
    planner = {"vector_filter": mode, "bind_max_keys": N}
    with federator.connect(catalog | {"planner": planner}, timeout=120) as f:
        plan = f.explain(sql, {"q": q})
        result = f.sql(sql, {"q": q})
        got = result.to_arrow().column("id").to_pylist()
        text = result.explain(analyze=True)
    kept = [i for i in range(N) if (i % 50 == 3 if keep < 0.5 else i % 7 < 6)]
    ids = np.array(kept)
    assert got == exact_top_k(ids, brute(data["vectors"][ids], q, "cosine"), 10)
    assert "search items" in plan
    if mode == "post":
        assert "post-filter (no keys)" in text
        return
    assert "bind: id in [" in plan and "semi-join" not in plan.split("Residual")[0]
    chosen = "pre-filter:" if "pre-filter:" in text else "post-filter ("
    assert chosen == ("post-filter (" if mode == "auto" and keep > 0.2 else "pre-filter:")


def test_distance_comes_from_the_search(fed, data) -> None:
    """The residual reads the search's distance (pgvector's terms) and no vector is shipped;
    a query that still needs the vector gets both."""
    q = query_vector(data)
    sql = (
        "SELECT i.id, i.emb_cos <=> :q AS d FROM m.items AS i JOIN shop.stock AS s "
        "ON s.id = i.id WHERE s.qty = 3 ORDER BY d LIMIT 5"
    )
    plan = fed.explain(sql, {"q": q})
    assert "output_fields: ['id']" in plan and "distance as: _distance" in plan
    assert "LIST_COSINE_DISTANCE" not in plan and "i._distance AS d" in plan
    got = fed.sql(sql, {"q": q}).to_arrow().to_pylist()
    ids = np.array([i for i in range(N) if i % 7 == 3])
    dist = brute(data["vectors"][ids], q, "cosine")
    np.testing.assert_allclose([r["d"] for r in got], np.sort(dist)[:5], rtol=1e-4, atol=1e-5)
    both = sql.replace("SELECT i.id,", "SELECT i.id, i.emb_cos AS v,")
    plan = fed.explain(both, {"q": q})
    assert "output_fields: ['emb_cos', 'id']" in plan and "distance as: _distance" in plan
    rows = fed.sql(both, {"q": q}).to_arrow().to_pylist()
    np.testing.assert_allclose([r["v"] for r in rows], data["vectors"][[r["id"] for r in rows]])
    np.testing.assert_allclose([r["d"] for r in rows], np.sort(dist)[:5], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def pg_fed(pgvector_dsn: str, data: dict[str, Any], catalog: dict[str, Any]) -> Iterator[Any]:
    """The same tied vectors in pgvector (table ``shape_items``), SQLite's stock beside them."""
    import asyncpg

    from federator.sql.dialect import vector_text

    from .conftest import run_async

    async def load() -> None:
        con = await asyncpg.connect(pgvector_dsn)
        try:
            await con.execute("DROP TABLE IF EXISTS shape_items")
            await con.execute(f"CREATE TABLE shape_items (id int PRIMARY KEY, emb vector({DIM}))")
            await con.executemany(
                "INSERT INTO shape_items VALUES ($1, $2::vector)",
                [(i, vector_text(v)) for i, v in enumerate(data["vectors"])],
            )
            await con.execute("ANALYZE shape_items")
        finally:
            await con.close()

    run_async(load())
    sources = {"pg": {"kind": "postgres", "dsn": pgvector_dsn}, "shop": catalog["sources"]["shop"]}
    with federator.connect({"sources": sources}, timeout=60) as f:
        yield f


@pytest.mark.parametrize(("op", "metric"), [("<->", "l2"), ("<=>", "cosine"), ("<#>", "neg_ip")])
def test_pgvector_tie_breaker_and_distance_from_the_source(pg_fed, data, op, metric) -> None:
    """pgvector: the top-k and its distance computed in PostgreSQL (no vectors shipped), the
    tie-breaker and SQLite's filter in the residual; equal to numpy's lexicographic order."""
    q = query_vector(data)
    sql = (
        f"SELECT i.id, i.emb {op} :q AS d FROM pg.shape_items AS i JOIN shop.stock AS s "
        "ON s.id = i.id WHERE s.qty <> 2 ORDER BY d, i.id LIMIT 12"
    )
    plan = pg_fed.explain(sql, {"q": q})
    head = plan.split("Residual")[0]
    assert f'"i"."emb" {op} CAST($1 AS VECTOR) AS "_distance"' in head
    assert f"{op} CAST($1 AS VECTOR) LIMIT 12" in head and '"emb" AS' not in head
    assert "i._distance AS d" in plan and "LIST_" not in plan
    got = pg_fed.sql(sql, {"q": q}).to_arrow().to_pylist()
    ids = np.array([i for i in range(N) if i % 7 != 2])
    dist = brute(data["vectors"][ids], q, metric)
    want = exact_top_k(ids, dist, 12)
    assert [r["id"] for r in got] == want
    np.testing.assert_allclose([r["d"] for r in got], np.sort(dist)[:12], rtol=1e-4, atol=1e-4)


def test_ties_with_keys_in_several_requests(catalog, data, monkeypatch) -> None:
    """Keys bound in several requests each return their own nearest, so the farthest of
    their union bounds no tie: a tie-broken top-k is post-filtered instead (exact)."""
    import federator.adapters.milvus as milvus

    monkeypatch.setattr(milvus, "BIND_BATCH", 100)
    q = query_vector(data)
    sql = (
        "SELECT i.id, i.emb <-> :q AS d FROM m.items AS i JOIN shop.stock AS s ON s.id = i.id "
        "WHERE s.qty < 6 ORDER BY d, i.id LIMIT 10"
    )
    planner = {"vector_filter": "pre", "bind_max_keys": N}
    with federator.connect(catalog | {"planner": planner}, timeout=120) as f:
        result = f.sql(sql, {"q": q})
        got = result.to_arrow().column("id").to_pylist()
        assert "post-filter (" in result.explain(analyze=True)
    ids = np.array([i for i in range(N) if i % 7 < 6])
    assert got == exact_top_k(ids, brute(data["vectors"][ids], q, "l2"), 10)


def test_derived_top_k_with_a_filter_on_another_source(fed, data) -> None:
    """A derived table that is itself a hybrid top-k (join, filter elsewhere, tie-breaker):
    the search is pushed and grown until its own SELECT yields k rows, whatever the outer
    query then filters."""
    q = query_vector(data)
    sql = (
        "SELECT near.id, s2.qty FROM (SELECT i.id, i.emb <-> :q AS d FROM m.items AS i "
        "JOIN shop.stock AS s ON s.id = i.id WHERE s.id % 3 = 0 ORDER BY d, i.id LIMIT 10) "
        "AS near JOIN shop.stock AS s2 ON s2.id = near.id WHERE s2.qty > 2 ORDER BY near.d, "
        "near.id"
    )
    result = fed.sql(sql, {"q": q})
    got = result.to_arrow().to_pylist()
    assert "search items" in result.explain(analyze=True)
    ids = np.array([i for i in range(N) if i % 3 == 0])
    inner = exact_top_k(ids, brute(data["vectors"][ids], q, "l2"), 10)
    assert [(r["id"], r["qty"]) for r in got] == [(i, i % 7) for i in inner if i % 7 > 2]


def test_filter_on_a_derived_top_k_applies_after_its_limit(fed, data) -> None:
    """``WHERE near.d < r`` on a derived top-k filters its k rows (after the LIMIT): the
    search runs as written and the filter stays in the residual."""
    q = query_vector(data)
    dist = brute(data["vectors"], q, "l2")
    levels = np.unique(dist)  # one distance per group of 50 tied rows
    radius = float(levels[:2].mean())  # between the nearest group and the next
    sql = (
        "SELECT near.id, s.qty FROM (SELECT id, emb <-> :q AS d FROM m.items ORDER BY d "
        "LIMIT 75) AS near JOIN shop.stock AS s ON s.id = near.id WHERE near.d < :r"
    )
    plan = fed.explain(sql, {"q": q, "r": radius})
    assert "limit=75" in plan and "near.d < $r" in plan
    got = sorted(r["id"] for r in fed.sql(sql, {"q": q, "r": radius}).to_arrow().to_pylist())
    assert got == np.flatnonzero(dist < radius).tolist()  # the nearest group, all 50
    farther = sql.replace("near.d < :r", "near.d > :r")  # before the LIMIT it would keep 75
    rows = fed.sql(farther, {"q": q, "r": radius}).to_arrow().column("id").to_pylist()
    assert len(rows) == 25 and set(rows) <= set(np.flatnonzero(dist == levels[1]).tolist())
