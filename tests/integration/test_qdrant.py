"""Qdrant (qdrant-client's local mode on a folder, in-process): collections as tables, payload
fields as columns, vector top-k with the payload filter pushed down, scrolls, bind joins and
hybrid plans with SQLite and PostgreSQL. Every answer equals numpy brute force over the same
vectors (local mode searches exactly), or DuckDB over the same payloads for filters."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from vector_truth import brute, top_k

import federator

pytest.importorskip("qdrant_client", reason="pip install 'federator[qdrant]'")

N, DIM = 600, 8
CATS = ("toys", "books", "garden", None, "MISSING")  # None: a null payload value; MISSING: none
FIELDS = {"emb": "Euclid", "emb_cos": "Cosine", "emb_ip": "Dot"}  # vector -> its distance
OPS = [("<->", "l2", "emb"), ("<=>", "cosine", "emb_cos"), ("<#>", "neg_ip", "emb_ip")]


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    rng = np.random.default_rng(18)
    n_values = [int(x) if i % 4 else None for i, x in enumerate(rng.integers(0, 20, size=N))]
    return {
        "vectors": rng.normal(size=(N, DIM)).astype(np.float32),
        "cats": [CATS[i % len(CATS)] for i in range(N)],
        "prices": [round(float(p), 2) for p in rng.uniform(1, 1000, size=N)],
        "n": n_values,  # None: the field is missing from the point's payload
        "rng": rng,
    }


def _payload(data: dict[str, Any], i: int) -> dict[str, Any]:
    payload: dict[str, Any] = {"price": data["prices"][i]}
    if data["cats"][i] != "MISSING":
        payload["cat"] = data["cats"][i]
    if data["n"][i] is not None:
        payload["n"] = data["n"][i]
    return payload


@pytest.fixture(scope="module")
def folder(data: dict[str, Any], tmp_path_factory) -> Any:
    from qdrant_client import QdrantClient, models

    folder = tmp_path_factory.mktemp("qdrant")
    # local mode commits (fsyncs) each point: written on tmpfs where there is one, then copied
    build = tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    client = QdrantClient(path=build.name)
    client.create_collection(
        "items",
        vectors_config={
            name: models.VectorParams(size=DIM, distance=getattr(models.Distance, d.upper()))
            for name, d in FIELDS.items()
        },
    )
    client.upsert(
        "items",
        [
            models.PointStruct(
                id=i, vector={name: v.tolist() for name in FIELDS}, payload=_payload(data, i)
            )
            for i, v in enumerate(data["vectors"])
        ],
    )
    client.close()
    shutil.copytree(build.name, folder / "store")
    build.cleanup()
    lite = sqlite3.connect(folder / "shop.db")
    lite.execute("CREATE TABLE stock (id INTEGER, warehouse TEXT, qty INTEGER)")
    lite.executemany(
        "INSERT INTO stock VALUES (?, ?, ?)",
        [(i, "north" if i % 10 == 0 else "south", i % 7) for i in range(N)],
    )
    lite.commit()
    lite.close()
    return folder


def _catalog(folder: Any, store: Any = None, **planner: Any) -> dict[str, Any]:
    catalog: dict[str, Any] = {
        "sources": {
            "q": {"kind": "qdrant", "path": str(store or folder / "store")},
            "shop": {"kind": "sqlite", "path": str(folder / "shop.db")},
        }
    }
    if planner:
        catalog["planner"] = planner
    return catalog


@pytest.fixture(scope="module")
def fed(folder: Any) -> Iterator[Any]:
    f = federator.connect(_catalog(folder), timeout=120)
    yield f
    f.close()


def _copy(folder: Any, tmp_path: Any) -> Any:
    """A copy of the store: local mode lets one client (the module's ``fed``) hold a folder."""
    return shutil.copytree(folder / "store", tmp_path / "store")


@pytest.mark.parametrize(("op", "metric", "field"), OPS)
def test_search_with_filter_equals_numpy(fed, data, op, metric, field) -> None:
    q = data["rng"].normal(size=DIM).astype(np.float32)
    sql = (
        f"SELECT id, price, cat, {field} {op} :q AS d FROM q.items "
        "WHERE cat = 'books' AND price < :p ORDER BY d LIMIT 10"
    )
    plan = fed.explain(sql, {"q": q, "p": 500})
    assert "no residual" in plan and "exact scan" not in plan
    assert f"query_points items: using={field} distance={FIELDS[field]}" in plan
    assert '{"key": "cat", "match": {"value": "books"}}' in plan
    assert '{"key": "price", "range": {"lt": ":p"}}' in plan
    got = fed.sql(sql, {"q": q, "p": 500}).to_arrow().to_pylist()
    ids = np.array([i for i in range(N) if data["cats"][i] == "books" and data["prices"][i] < 500])
    dist = brute(data["vectors"][ids], q, metric)
    assert [r["id"] for r in got] == top_k(ids, dist, 10)
    np.testing.assert_allclose([r["d"] for r in got], np.sort(dist)[:10], rtol=1e-4, atol=1e-4)
    assert all(data["prices"][r["id"]] == r["price"] and r["cat"] == "books" for r in got)


MISMATCHED = [(op, metric, f) for op, metric, own in OPS for f in FIELDS if f != own]


@pytest.mark.parametrize(("op", "metric", "field"), MISMATCHED)
def test_operator_on_a_vector_of_another_distance(fed, data, op, metric, field) -> None:
    """`<=>` on a Euclid vector (and every other mismatch): ranked exactly by the operator's own
    metric over the filtered points (a Cosine vector as Qdrant stores it: normalized), and
    EXPLAIN names the vector's distance and the operator that searches it."""
    q = data["rng"].normal(size=DIM).astype(np.float32)
    sql = (
        f"SELECT id, {field} {op} :q AS d FROM q.items WHERE price < 700 "
        "ORDER BY d LIMIT 8 OFFSET 2"
    )
    plan = fed.explain(sql, {"q": q})
    own = {"Euclid": "<->", "Cosine": "<=>", "Dot": "<#>"}[FIELDS[field]]
    assert f"exact scan: vector {field} is {FIELDS[field]}" in plan
    assert f"order by {own} to search the index" in plan
    got = fed.sql(sql, {"q": q}).to_arrow().to_pylist()
    ids = np.array([i for i in range(N) if data["prices"][i] < 700])
    vectors = data["vectors"][ids].astype(np.float64)
    if FIELDS[field] == "Cosine":
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    dist = brute(vectors, q, metric)
    assert [r["id"] for r in got] == top_k(ids, dist, 10)[2:]
    np.testing.assert_allclose([r["d"] for r in got], np.sort(dist)[2:10], rtol=1e-5, atol=1e-5)


def test_inner_product_desc_and_vectors_out(fed, data) -> None:
    q = data["rng"].normal(size=DIM).astype(np.float32)
    got = fed.sql(
        "SELECT id, emb, inner_product(emb_ip, :q) AS s FROM q.items ORDER BY s DESC LIMIT 5",
        {"q": q.tolist()},
    ).to_arrow()
    scores = data["vectors"].astype(np.float64) @ q.astype(np.float64)
    ids = np.argsort(-scores)[:5].tolist()
    assert got.column("id").to_pylist() == ids
    np.testing.assert_allclose(got.column("s").to_pylist(), np.sort(scores)[::-1][:5], rtol=1e-4)
    np.testing.assert_allclose(np.array(got.column("emb").to_pylist()), data["vectors"][ids])
    assert got.schema.field("emb").type == pa.list_(pa.float32())


@pytest.fixture(scope="module")
def truth(data: dict[str, Any]) -> Iterator[Any]:
    """DuckDB over the same payloads (a missing field and a null value both NULL)."""
    con = duckdb.connect()
    cats = [None if c == "MISSING" else c for c in data["cats"]]
    items = pa.table({"id": list(range(N)), "cat": cats, "price": data["prices"], "n": data["n"]})
    con.register("items", items)
    yield con
    con.close()


FILTERS = [
    "cat IS NULL",
    "cat IS NOT NULL AND n IS NULL",
    "NOT cat = 'toys'",
    "cat <> 'toys' OR n > 15",
    "n NOT IN (1, 2, 3)",
    "n IN (4, 5) OR cat IN ('garden')",
    "NOT (n > 5 OR cat = 'books')",
    "NOT (n BETWEEN 3 AND 9) AND price >= 100.5",
    "n = -1 OR price <= 10",
    "NOT NOT (n < 2)",
    "id IN (1, 2, 3, 500) AND NOT n = 7",
    "NOT id IN (0, 1, 2) AND n > 17",
]


@pytest.mark.parametrize("where", FILTERS)
def test_filters_keep_sql_null_semantics(fed, truth, where) -> None:
    """Missing and null payload values are NULL: a negated comparison drops them as SQL does."""
    sql = f"SELECT id FROM q.items WHERE {where}"
    assert "no residual" in fed.explain(sql), fed.explain(sql)
    got = sorted(fed.sql(sql).to_arrow().column("id").to_pylist())
    want = sorted(r[0] for r in truth.execute(f"SELECT id FROM items WHERE {where}").fetchall())
    assert got == want


def test_range_over_the_point_id_runs_in_the_residual(fed, truth) -> None:
    where = "id < 20 AND n > 3"
    sql = f"SELECT id, n FROM q.items WHERE {where}"
    plan = fed.explain(sql)
    assert '"range": {"gt": 3}' in plan and "id < 20" in plan.split("Residual")[1]
    got = sorted(fed.sql(sql).to_arrow().column("id").to_pylist())
    want = sorted(r[0] for r in truth.execute(f"SELECT id FROM items WHERE {where}").fetchall())
    assert got == want


def test_scroll_limit_offset_aggregate_and_parameters(fed, truth) -> None:
    got = fed.sql(
        "SELECT cat, count(*) AS c, sum(n) AS s FROM q.items WHERE n >= :lo "
        "GROUP BY cat ORDER BY cat NULLS LAST",
        {"lo": 10},
    ).to_arrow()
    want = truth.execute(
        "SELECT cat, count(*) AS c, sum(n) AS s FROM items WHERE n >= 10 "
        "GROUP BY cat ORDER BY cat NULLS LAST"
    ).fetchall()
    assert [tuple(r.values()) for r in got.to_pylist()] == [tuple(r) for r in want]
    rows = fed.sql("SELECT id FROM q.items WHERE n = :n LIMIT 3 OFFSET 1", {"n": 12}).to_arrow()
    all_ids = [r[0] for r in truth.execute("SELECT id FROM items WHERE n = 12").fetchall()]
    assert set(rows.column("id").to_pylist()) <= set(all_ids)
    assert rows.num_rows == min(3, len(all_ids) - 1)
    assert fed.sql("SELECT id FROM q.items WHERE n = :n", {"n": None}).to_arrow().num_rows == 0
    negated = fed.sql("SELECT id FROM q.items WHERE n > -:n AND n < 1", {"n": 1}).to_arrow()
    want_ids = [r[0] for r in truth.execute("SELECT id FROM items WHERE n = 0").fetchall()]
    assert sorted(negated.column("id").to_pylist()) == sorted(want_ids)


def test_a_string_bound_for_a_range_is_a_clear_error(fed) -> None:
    with pytest.raises(federator.UnsupportedError, match="with numbers only"):
        fed.sql("SELECT id FROM q.items WHERE price < :p", {"p": "cheap"}).to_arrow()


def test_join_with_sqlite_top_k(fed, data) -> None:
    """A filter on SQLite and a top-k in Qdrant: the answer equals numpy over the survivors."""
    q = data["rng"].normal(size=DIM).astype(np.float32)
    sql = (
        "SELECT i.id, i.emb <-> :q AS d FROM q.items AS i JOIN shop.stock AS s ON s.id = i.id "
        "WHERE s.warehouse = 'north' ORDER BY d LIMIT 10"
    )
    got = fed.sql(sql, {"q": q}).to_arrow().to_pylist()
    ids = np.array([i for i in range(N) if i % 10 == 0])
    assert [r["id"] for r in got] == top_k(ids, brute(data["vectors"][ids], q, "l2"), 10)


@pytest.mark.parametrize("mode", ["pre", "post"])
@pytest.mark.parametrize(("where", "share"), [("s.id % 50 = 0", 0.02), ("s.qty < 6", 0.86)])
def test_hybrid_pre_and_post_filter_equal_numpy(folder, tmp_path, data, mode, where, share) -> None:
    """The top-k pushed into the search, the SQLite filter applied before (ids bound: has_id)
    or after (over-fetch, grown until k survive): the same answer as numpy either way."""
    q = data["rng"].normal(size=DIM).astype(np.float32)
    sql = (
        "SELECT i.id, i.emb_cos <=> :q AS d FROM q.items AS i JOIN shop.stock AS s "
        f"ON s.id = i.id WHERE {where} AND i.cat IS NOT NULL ORDER BY d LIMIT 10"
    )
    keep = [
        i
        for i in range(N)
        if (i % 50 == 0 if share < 0.5 else i % 7 < 6) and data["cats"][i] not in (None, "MISSING")
    ]
    ids = np.array(keep)
    want = top_k(ids, brute(data["vectors"][ids], q, "cosine"), 10)
    catalog = _catalog(folder, _copy(folder, tmp_path), vector_filter=mode, bind_max_keys=N)
    with federator.connect(catalog, timeout=120) as f:
        result = f.sql(sql, {"q": q})
        got = result.to_arrow().column("id").to_pylist()
        text = result.explain(analyze=True)
    assert got == want
    assert "query_points items" in text and "vector top-k" in text
    assert ("pre-filter:" in text) == (mode == "pre")


def test_hybrid_with_postgres(pg_dsn: str, folder, tmp_path, data) -> None:
    """Profiles in PostgreSQL, vectors in Qdrant: the top-k among one segment's ids."""
    import asyncpg

    async def load() -> None:
        con = await asyncpg.connect(pg_dsn)
        try:
            await con.execute("DROP TABLE IF EXISTS qd_profiles")
            await con.execute("CREATE TABLE qd_profiles (item_id bigint, segment text)")
            await con.executemany(
                "INSERT INTO qd_profiles VALUES ($1, $2)",
                [(i, "gold" if i % 9 == 0 else "basic") for i in range(N)],
            )
        finally:
            await con.close()

    asyncio.run(load())
    catalog = _catalog(folder, _copy(folder, tmp_path))
    catalog["sources"]["pg"] = {"kind": "postgres", "dsn": pg_dsn}
    q = data["rng"].normal(size=DIM).astype(np.float32)
    sql = (
        "SELECT p.segment, i.id, i.price, i.emb <-> :q AS d FROM q.items AS i "
        "JOIN pg.qd_profiles AS p ON p.item_id = i.id "
        "WHERE p.segment = 'gold' AND i.price > 100 ORDER BY d LIMIT 7"
    )
    with federator.connect(catalog, timeout=120) as f:
        got = f.sql(sql, {"q": q}).to_arrow().to_pylist()
    ids = np.array([i for i in range(N) if i % 9 == 0 and data["prices"][i] > 100])
    dist = brute(data["vectors"][ids], q, "l2")
    assert [r["id"] for r in got] == top_k(ids, dist, 7)
    np.testing.assert_allclose([r["d"] for r in got], np.sort(dist)[:7], rtol=1e-4)
    assert {r["segment"] for r in got} == {"gold"}


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection")
def test_catalog_errors_and_secrets(tmp_path, folder) -> None:
    with pytest.raises(federator.CatalogError, match="needs one of 'path'"):
        federator.connect({"sources": {"q": {"kind": "qdrant"}}}).sql("SELECT 1 FROM q.x")
    with pytest.raises(federator.CatalogError, match="is not a folder"):
        federator.connect(
            {"sources": {"q": {"kind": "qdrant", "path": str(tmp_path / "nope")}}}
        ).sql("SELECT id FROM q.items")
    secret = "s3cr3t-qdrant-key"
    catalog = {"sources": {"q": {"kind": "qdrant", "url": "http://127.0.0.1:9", "api_key": secret}}}
    with federator.connect(catalog, timeout=5) as f:
        with pytest.raises(federator.SourceUnreachableError) as caught:
            f.sql("SELECT id FROM q.items").to_arrow()
        assert "127.0.0.1:9" in str(caught.value) and secret not in str(caught.value)
        assert secret not in repr(f.catalog.adapters["q"]) and secret not in repr(f)


def test_a_locked_folder_is_a_clear_error(fed, folder) -> None:
    """Local mode allows one client per folder: a second federation says so."""
    fed.sql("SELECT id FROM q.items LIMIT 1").to_arrow()
    with (
        federator.connect(_catalog(folder)) as other,
        pytest.raises(federator.SourceUnreachableError, match="already accessed"),
    ):
        other.sql("SELECT id FROM q.items LIMIT 1").to_arrow()


def test_declared_columns_and_a_payload_of_another_type(tmp_path) -> None:
    from qdrant_client import QdrantClient, models

    store = tmp_path / "typed"
    client = QdrantClient(path=str(store))
    client.create_collection("t", vectors_config=models.VectorParams(size=2, distance="Dot"))
    payloads = [{"v": 1}, {"v": 2}, {"v": "three"}]
    client.upsert(
        "t", [models.PointStruct(id=i, vector=[1.0, i], payload=p) for i, p in enumerate(payloads)]
    )
    client.close()
    source = {"kind": "qdrant", "path": str(store), "sample_size": 2}
    with (
        federator.connect({"sources": {"q": source}}) as f,
        pytest.raises(federator.SourceError, match="'v' holds str \"three\", not int64"),
    ):
        f.sql("SELECT id, v FROM q.t").to_arrow()
    source["tables"] = {"t": {"columns": {"v": "string"}}}
    with federator.connect({"sources": {"q": source}}) as f:
        got = f.sql("SELECT id, v, vector <#> :q AS d FROM q.t ORDER BY d LIMIT 2", {"q": [0, 1]})
        assert got.to_arrow().to_pylist() == [
            {"id": 2, "v": "three", "d": -2.0},
            {"id": 1, "v": "2", "d": -1.0},
        ]


def test_uuid_ids_an_unnamed_vector_booleans_and_empty_lists(tmp_path) -> None:
    """Point ids that are UUIDs are text; an unnamed vector is column ``vector``; a boolean
    column filters on its own; an empty list is NULL in filters and in results alike."""
    from qdrant_client import QdrantClient, models

    ids = [str(uuid.UUID(int=i + 1)) for i in range(4)]
    client = QdrantClient(path=str(tmp_path / "u"))
    client.create_collection("u", vectors_config=models.VectorParams(size=2, distance="Cosine"))
    payloads = [{"live": True, "tags": []}, {"live": False, "tags": ["a"]}, {"live": True}, {}]
    client.upsert(
        "u",
        [
            models.PointStruct(id=ids[i], vector=[1.0, float(i)], payload=p)
            for i, p in enumerate(payloads)
        ],
    )
    client.close()
    with federator.connect(
        {"sources": {"q": {"kind": "qdrant", "path": str(tmp_path / "u")}}}
    ) as f:
        rows = f.sql("SELECT id, live, tags FROM q.u WHERE live OR tags IS NOT NULL").to_arrow()
        assert sorted(rows.to_pylist(), key=lambda r: r["id"]) == [
            {"id": ids[0], "live": True, "tags": None},
            {"id": ids[1], "live": False, "tags": ["a"]},
            {"id": ids[2], "live": True, "tags": None},
        ]
        assert f.sql("SELECT id FROM q.u WHERE NOT live").to_arrow().column("id").to_pylist() == [
            ids[1]
        ]
        got = f.sql(
            "SELECT id, vector <=> :q AS d FROM q.u WHERE id <> :skip ORDER BY d LIMIT 2",
            {"q": [0.0, 1.0], "skip": ids[3]},
        ).to_arrow()
    angles = [1 - i / np.hypot(1.0, i) for i in range(3)]  # cosine distance to [0, 1]
    assert got.column("id").to_pylist() == [ids[2], ids[1]]
    np.testing.assert_allclose(got.column("d").to_pylist(), [angles[2], angles[1]], rtol=1e-6)
