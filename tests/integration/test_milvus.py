"""Milvus (milvus-lite, in-process on a ``.db`` file): collections as tables, vector search with
the filter and limit pushed down, scalar queries, bind joins and hybrid plans with another
source. Every answer equals numpy brute force over the same vectors (FLAT index: exact)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from vector_truth import brute, top_k

import federator

pymilvus = pytest.importorskip("pymilvus", reason="pip install pymilvus==3.0.2 milvus-lite==3.2.2")

N, DIM = 2000, 16
CATS = ("toys", "books", "garden", "tools")
INDEXES = {"emb": "L2", "emb_cos": "COSINE", "emb_ip": "IP"}  # vector field -> index metric


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    rng = np.random.default_rng(5)
    return {
        "vectors": rng.normal(size=(N, DIM)).astype(np.float32),
        "cats": [CATS[i % len(CATS)] for i in range(N)],
        "prices": rng.integers(1, 1000, size=N),
        "rng": rng,
    }


@pytest.fixture(scope="module")
def fed(data: dict[str, Any], tmp_path_factory) -> Iterator[Any]:
    from pymilvus import DataType, MilvusClient

    folder = tmp_path_factory.mktemp("milvus")
    uri = str(folder / "vectors.db")
    client = MilvusClient(uri)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("cat", DataType.VARCHAR, max_length=32)
    schema.add_field("price", DataType.DOUBLE)
    index = client.prepare_index_params()
    for name, metric in INDEXES.items():  # the same vectors under each metric's index
        schema.add_field(name, DataType.FLOAT_VECTOR, dim=DIM)
        index.add_index(name, index_type="FLAT", metric_type=metric)
    client.create_collection("items", schema=schema, index_params=index)
    client.insert(
        "items",
        [
            {"id": i, "cat": data["cats"][i], "price": float(data["prices"][i]), "emb": v.tolist()}
            | {name: v.tolist() for name in INDEXES}
            for i, v in enumerate(data["vectors"])
        ],
    )
    client.close()
    lite = sqlite3.connect(folder / "shop.db")
    lite.execute("CREATE TABLE stock (id INTEGER, warehouse TEXT, qty INTEGER)")
    lite.executemany(
        "INSERT INTO stock VALUES (?, ?, ?)",
        [(i, "north" if i % 10 == 0 else "south", i % 7) for i in range(N)],
    )
    lite.commit()
    lite.close()
    f = federator.connect(
        {
            "sources": {
                "m": {"kind": "milvus", "uri": uri},
                "shop": {"kind": "sqlite", "path": str(folder / "shop.db")},
            }
        },
        timeout=120,
    )
    yield f
    f.close()


OPS = [("<->", "l2", "L2"), ("<=>", "cosine", "COSINE"), ("<#>", "neg_ip", "IP")]
FIELD = {"L2": "emb", "COSINE": "emb_cos", "IP": "emb_ip"}


@pytest.mark.parametrize(("op", "metric", "milvus_metric"), OPS)
def test_search_with_filter_equals_numpy(fed, data, op, metric, milvus_metric) -> None:
    q = data["rng"].normal(size=DIM).astype(np.float32)
    field = FIELD[milvus_metric]
    sql = (
        f"SELECT id, price, {field} {op} :q AS d FROM m.items "
        "WHERE cat = 'books' AND price < :p ORDER BY d LIMIT 10"
    )
    plan = fed.explain(sql, {"q": q, "p": 500})
    assert "no residual" in plan and "exact scan" not in plan
    assert f"search items: anns_field={field} metric={milvus_metric}" in plan
    assert 'filter: (cat == "books" and price < :p)' in plan
    got = fed.sql(sql, {"q": q, "p": 500}).to_arrow().to_pylist()
    ids = np.array([i for i in range(N) if data["cats"][i] == "books" and data["prices"][i] < 500])
    dist = brute(data["vectors"][ids], q, metric)
    assert [r["id"] for r in got] == top_k(ids, dist, 10)
    np.testing.assert_allclose([r["d"] for r in got], np.sort(dist)[:10], rtol=1e-4, atol=1e-4)
    assert all(data["prices"][r["id"]] == r["price"] for r in got)


@pytest.mark.parametrize(("op", "metric", "milvus_metric"), OPS)
@pytest.mark.parametrize("field", ["emb", "emb_cos", "emb_ip"])
def test_operator_on_an_index_of_another_metric(fed, data, field, op, metric, milvus_metric):
    """`<=>` on an L2 index (and every other mismatch): ranked exactly by the operator's own
    metric over the filtered rows, and EXPLAIN names the index metric and the operator to use."""
    if INDEXES[field] == milvus_metric:
        pytest.skip("the index matches")
    q = data["rng"].normal(size=DIM).astype(np.float32)
    sql = (
        f"SELECT id, {field} {op} :q AS d FROM m.items WHERE price < 700 ORDER BY d LIMIT 8 "
        "OFFSET 2"
    )
    plan = fed.explain(sql, {"q": q})
    index_op = {"L2": "<->", "COSINE": "<=>", "IP": "<#>"}[INDEXES[field]]
    assert f"exact scan: the index on {field} is {INDEXES[field]}" in plan
    assert f"asks {milvus_metric}" in plan and f"order by {index_op}" in plan
    got = fed.sql(sql, {"q": q}).to_arrow().to_pylist()
    ids = np.array([i for i in range(N) if data["prices"][i] < 700])
    dist = brute(data["vectors"][ids], q, metric)
    assert [r["id"] for r in got] == top_k(ids, dist, 10)[2:]
    np.testing.assert_allclose([r["d"] for r in got], np.sort(dist)[2:10], rtol=1e-5, atol=1e-5)


def test_inner_product_desc_and_torch(fed, data) -> None:
    torch = pytest.importorskip("torch")
    q = data["rng"].normal(size=DIM).astype(np.float32)
    got = fed.sql(
        "SELECT id, inner_product(emb_ip, :q) AS s FROM m.items ORDER BY s DESC LIMIT 5",
        {"q": torch.tensor(q)},
    ).to_arrow()
    scores = data["vectors"].astype(np.float64) @ q.astype(np.float64)
    assert got.column("id").to_pylist() == np.argsort(-scores)[:5].tolist()
    np.testing.assert_allclose(got.column("s").to_pylist(), np.sort(scores)[::-1][:5], rtol=1e-4)


def test_scalar_query(fed, data) -> None:
    sql = (
        "SELECT id, cat FROM m.items WHERE (id IN (1, 2, 3) OR price BETWEEN 10 AND 12) "
        "AND cat LIKE 'b%'"
    )
    plan = fed.explain(sql)
    assert "query items" in plan and "no residual" in plan
    got = sorted(r["id"] for r in fed.sql(sql).to_arrow().to_pylist())
    want = sorted(
        i
        for i in range(N)
        if (i in (1, 2, 3) or 10 <= data["prices"][i] <= 12) and data["cats"][i].startswith("b")
    )
    assert got == want


def test_unpushable_parts_run_in_the_residual(fed, data) -> None:
    sql = "SELECT cat, count(*) AS n FROM m.items WHERE price > 900 GROUP BY cat ORDER BY cat"
    got = fed.sql(sql).to_arrow().to_pylist()
    want = {}
    for i in range(N):
        if data["prices"][i] > 900:
            want[data["cats"][i]] = want.get(data["cats"][i], 0) + 1
    assert got == [{"cat": c, "n": want[c]} for c in sorted(want)]
    vectors = fed.sql("SELECT id, emb FROM m.items WHERE id = 7").to_arrow().to_pylist()
    np.testing.assert_allclose(vectors[0]["emb"], data["vectors"][7])


def test_join_with_another_source_top_k(fed, data) -> None:
    """A filter on SQLite and a top-k in Milvus: the answer equals numpy over the survivors."""
    q = data["rng"].normal(size=DIM).astype(np.float32)
    sql = (
        "SELECT i.id, i.emb <-> :q AS d FROM m.items AS i JOIN shop.stock AS s ON s.id = i.id "
        "WHERE s.warehouse = 'north' ORDER BY d LIMIT 10"
    )
    got = fed.sql(sql, {"q": q}).to_arrow().to_pylist()
    ids = np.array([i for i in range(N) if i % 10 == 0])
    assert [r["id"] for r in got] == top_k(ids, brute(data["vectors"][ids], q, "l2"), 10)


@pytest.mark.parametrize("mode", ["auto", "pre", "post"])
@pytest.mark.parametrize(("where", "share"), [("s.id % 100 = 0", 0.01), ("s.qty < 6", 0.86)])
def test_hybrid_pre_and_post_filter_equal_numpy(fed, data, mode, where, share) -> None:
    """The top-k pushed into the search, the SQLite filter applied before (ids bound) or after
    (over-fetch, grown until k survive): the same answer as numpy either way."""
    q = data["rng"].normal(size=DIM).astype(np.float32)
    sql = (
        "SELECT i.id, i.emb_cos <=> :q AS d FROM m.items AS i JOIN shop.stock AS s ON s.id = i.id "
        f"WHERE {where} ORDER BY d LIMIT 10"
    )
    catalog = {
        "sources": {
            name: a.config.options | {"kind": a.kind} for name, a in fed.catalog.adapters.items()
        },
        "planner": {"vector_filter": mode, "bind_max_keys": N},
    }
    keep = [i for i in range(N) if (i % 100 == 0 if share < 0.5 else i % 7 < 6)]
    ids = np.array(keep)
    want = top_k(ids, brute(data["vectors"][ids], q, "cosine"), 10)
    with federator.connect(catalog, timeout=120) as f:
        result = f.sql(sql, {"q": q})
        got = result.to_arrow().column("id").to_pylist()
        text = result.explain(analyze=True)
    assert got == want
    assert "search items" in text and "vector top-k" in text
    chosen = "pre-filter:" if "pre-filter:" in text else "post-filter ("
    if mode != "auto":
        assert chosen.startswith(mode)
    else:
        assert chosen == ("pre-filter:" if share <= 0.2 else "post-filter (")


def test_post_filter_grows_until_k_rows_survive(fed, data) -> None:
    """A residual filter the search cannot see (price vs qty across sources) removes most
    candidates: the fetch grows until 10 rows survive."""
    q = data["rng"].normal(size=DIM).astype(np.float32)
    sql = (
        "SELECT i.id, i.emb <-> :q AS d FROM m.items AS i JOIN shop.stock AS s ON s.id = i.id "
        "WHERE i.price < s.qty * 20 ORDER BY d LIMIT 10"
    )
    catalog = {
        "sources": {
            name: a.config.options | {"kind": a.kind} for name, a in fed.catalog.adapters.items()
        },
        "planner": {"vector_filter": "post", "post_factor": 2, "bind_max_keys": 1},
    }
    stock_qty = np.array([i % 7 for i in range(N)])
    ids = np.array([i for i in range(N) if data["prices"][i] < stock_qty[i] * 20])
    want = top_k(ids, brute(data["vectors"][ids], q, "l2"), 10)
    with federator.connect(catalog, timeout=120) as f:
        result = f.sql(sql, {"q": q})
        got = result.to_arrow().column("id").to_pylist()
        text = result.explain(analyze=True)
    assert got == want
    assert "grown to limit" in text


def test_server_uri(milvus_url: str, data) -> None:
    """The same adapter over a Milvus server URI (milvus-lite's gRPC server)."""
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(milvus_url)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("emb", DataType.FLOAT_VECTOR, dim=DIM)
    index = client.prepare_index_params()
    index.add_index("emb", index_type="FLAT", metric_type="COSINE")
    client.create_collection("served", schema=schema, index_params=index)
    client.insert("served", [{"id": i, "emb": v.tolist()} for i, v in enumerate(data["vectors"])])
    client.close()
    q = data["rng"].normal(size=DIM).astype(np.float32)
    with federator.connect({"sources": {"m": {"kind": "milvus", "uri": milvus_url}}}) as f:
        got = f.sql("SELECT id FROM m.served ORDER BY emb <=> :q LIMIT 5", {"q": q}).to_arrow()
        assert "127.0.0.1" in f.sources()["m"]
    want = top_k(np.arange(N), brute(data["vectors"], q, "cosine"), 5)
    assert got.column("id").to_pylist() == want
