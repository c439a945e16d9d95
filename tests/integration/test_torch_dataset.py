"""Tensors from PostgreSQL (and PostgreSQL joined with SQLite) equal the database's own values,
per the declared policies; FederatedDataset reads every row exactly once per epoch."""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

torch = pytest.importorskip("torch")

import federator  # noqa: E402
from federator.torch import FederatedDataset, TorchConversionError  # noqa: E402

from .conftest import run_async  # noqa: E402

N = 3_000
SCHEMA = "torchds"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _rows() -> list[tuple[Any, ...]]:
    rng = random.Random(5)
    base = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    rows = []
    for i in range(N):
        rows.append(
            (
                i * 3 + 7,  # ids with gaps
                rng.uniform(-1, 1),
                rng.uniform(0, 10),
                None if i % 17 == 0 else rng.uniform(-5, 5),
                decimal.Decimal(rng.randrange(-100_000, 100_000)) / 100,
                base
                + dt.timedelta(seconds=rng.randrange(10**7), microseconds=rng.randrange(10**6)),
                rng.choice(["red", "green", "blue", None]),
                [rng.uniform(-1, 1) for _ in range(4)],
                i % 2,
            )
        )
    return rows


async def _load(dsn: str, rows: list[tuple[Any, ...]]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA};"
            f"CREATE TABLE {SCHEMA}.samples (id bigint PRIMARY KEY, f1 float8, f2 float8,"
            " f3 float8, amount numeric(12, 2), seen_at timestamptz, color text,"
            " emb float8[], label int)"
        )
        await conn.copy_records_to_table("samples", records=rows, schema_name=SCHEMA)
        await conn.execute(f"ANALYZE {SCHEMA}.samples")
    finally:
        await conn.close()


async def _truth(dsn: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def fed(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory):
    rows = _rows()
    run_async(_load(pg_dsn, rows))
    path = Path(tmp_path_factory.mktemp("torchds")) / "extra.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE extra (sample_id INTEGER, weight REAL)")
        db.executemany("INSERT INTO extra VALUES (?, ?)", [(r[0], r[0] / 1000) for r in rows])
    catalog = {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg_dsn},
            "lite": {"kind": "sqlite", "path": str(path)},
        }
    }
    with federator.connect(catalog, timeout=60) as f:
        yield f


def truth(pg_dsn: str, query: str) -> list[asyncpg.Record]:
    return run_async(_truth(pg_dsn, query))


def test_features_equal_the_database(fed, pg_dsn: str) -> None:
    x, y, mask = fed.sql(f"SELECT id, f1, f2, label FROM pg.{SCHEMA}.samples ORDER BY id").to_torch(
        features=["f1", "f2", "id"], label="label", dtype=torch.float64
    )
    want = truth(pg_dsn, f"SELECT id, f1, f2, label FROM {SCHEMA}.samples ORDER BY id")
    assert mask is None and x.shape == (N, 3)
    assert x.tolist() == [[r["f1"], r["f2"], float(r["id"])] for r in want]
    assert y.tolist() == [r["label"] for r in want]


def test_dict_columns_policies_equal_the_database(fed, pg_dsn: str) -> None:
    query = f"SELECT id, f3, amount, seen_at, color, emb FROM {SCHEMA}.samples ORDER BY id"
    want = truth(pg_dsn, query)
    result = fed.sql(query.replace(f"{SCHEMA}.", f"pg.{SCHEMA}."))
    with pytest.raises(TorchConversionError, match="null"):
        result.to_torch(["f3"])
    with pytest.raises(TorchConversionError, match="decimals="):
        result.to_torch(["amount"], nulls=0)
    out = result.to_torch(nulls="mask", decimals=torch.float64, timestamps="us", strings="codes")
    assert out["id"].tolist() == [r["id"] for r in want]
    assert out["f3_mask"].tolist() == [r["f3"] is not None for r in want]
    assert out["f3"].tolist() == [r["f3"] if r["f3"] is not None else 0.0 for r in want]
    assert out["amount"].dtype == torch.float64
    assert out["amount"].tolist() == [float(r["amount"]) for r in want]
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    assert out["seen_at"].tolist() == [
        (r["seen_at"] - epoch) // dt.timedelta(microseconds=1) for r in want
    ]
    assert out["emb"].shape == (N, 4)
    assert out["emb"].tolist() == [list(r["emb"]) for r in want]


def test_string_codes_decode_to_the_database_strings(fed, pg_dsn: str) -> None:
    from federator.torch import TorchPolicy

    want = truth(pg_dsn, f"SELECT color FROM {SCHEMA}.samples ORDER BY id")
    policy = TorchPolicy(strings="codes", nulls=-1)
    codes = fed.sql(f"SELECT color FROM pg.{SCHEMA}.samples ORDER BY id").to_torch(policy=policy)
    vocab = policy.vocabularies["color"]
    decoded = [vocab[c] if c >= 0 else None for c in codes["color"].tolist()]
    assert decoded == [r["color"] for r in want]


JOINED = (
    f"SELECT s.id, s.f1, s.f2, e.weight, s.label FROM pg.{SCHEMA}.samples AS s"
    " JOIN lite.extra AS e ON e.sample_id = s.id"
)


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_dataset_reads_every_row_exactly_once(fed, pg_dsn: str, workers: int) -> None:
    from torch.utils.data import DataLoader

    ds = FederatedDataset(fed, JOINED, key="id", batch_size=256, dtype=torch.float64)
    assert ds.num_rows == N
    seen: collections.Counter[int] = collections.Counter()
    values = {}
    loader = DataLoader(ds, batch_size=None, num_workers=workers, pin_memory=False)
    for batch in loader:
        assert len(batch["id"]) <= 256
        for i, f1, f2, w in zip(
            batch["id"].tolist(), batch["f1"].tolist(), batch["f2"].tolist(),
            batch["weight"].tolist(), strict=True,
        ):  # fmt: skip
            seen[int(i)] += 1
            values[int(i)] = (f1, f2, w)
    want = truth(pg_dsn, f"SELECT id, f1, f2 FROM {SCHEMA}.samples")
    assert set(seen.values()) == {1}
    assert set(seen) == {r["id"] for r in want}
    assert all(values[r["id"]] == (r["f1"], r["f2"], r["id"] / 1000) for r in want)


def test_dataset_shards_are_pushed_to_postgres(fed) -> None:
    ds = FederatedDataset(fed, f"SELECT id, f1 FROM pg.{SCHEMA}.samples", key="id")
    query, params = ds._part_queries(2, 4)[0]
    text = fed.explain(query, params)
    assert "no residual" in text
    assert '"id" >= $' in text and '"id" < $' in text
    assert "LIMIT" not in text and "OFFSET" not in text


def test_dataset_features_shuffled_with_workers(fed, pg_dsn: str) -> None:
    from torch.utils.data import DataLoader

    ds = FederatedDataset(
        fed, JOINED, key="id", features=["f1", "f2", "weight"], label="label", batch_size=100,
        shuffle_buffer=1000, seed=3, shards_per_worker=2,
    )  # fmt: skip
    rows = []
    pin = torch.cuda.is_available()
    for x, y, _ in DataLoader(ds, batch_size=None, num_workers=2, pin_memory=pin):
        assert x.dtype == torch.float32 and x.shape[1] == 3
        rows += [(*map(float, xr), int(yr)) for xr, yr in zip(x.tolist(), y.tolist(), strict=True)]
    want = truth(pg_dsn, f"SELECT id, f1, f2, label FROM {SCHEMA}.samples")
    f32 = lambda v: torch.tensor(v, dtype=torch.float32).item()  # noqa: E731
    expected = sorted((f32(r["f1"]), f32(r["f2"]), f32(r["id"] / 1000), r["label"]) for r in want)
    assert sorted(rows) == expected
    assert [r[2] for r in rows] != sorted(r[2] for r in rows)  # shuffled


@cuda
def test_to_torch_on_the_gpu(fed) -> None:
    x, y, _ = fed.sql(f"SELECT f1, f2, label FROM pg.{SCHEMA}.samples ORDER BY id").to_torch(
        features=["f1", "f2"], label="label", device="cuda"
    )
    assert x.is_cuda and y.is_cuda and x.shape == (N, 2)
    cpu_x, _, _ = fed.sql(f"SELECT f1, f2, label FROM pg.{SCHEMA}.samples ORDER BY id").to_torch(
        features=["f1", "f2"], label="label"
    )
    assert torch.equal(x.cpu(), cpu_x)


@cuda
def test_dataset_to_the_gpu_with_pinned_memory(fed) -> None:
    from torch.utils.data import DataLoader

    from federator.torch import move_to

    ds = FederatedDataset(fed, JOINED, key="id", features=["f1", "f2"], label="label")
    total = 0
    for batch in DataLoader(ds, batch_size=None, num_workers=2, pin_memory=True):
        assert batch.x.is_pinned()
        x, y, _ = move_to(batch, "cuda")
        assert x.is_cuda
        total += len(y)
    assert total == N


def test_a_loop_that_stops_early_stops_the_query(fed, pg_dsn: str) -> None:
    # 9 M rows of a self-join on PostgreSQL; the loop takes one batch and breaks
    ds = FederatedDataset(
        fed,
        f"SELECT a.id, b.f1 FROM pg.{SCHEMA}.samples a CROSS JOIN pg.{SCHEMA}.samples b",
        batch_size=64,
        dtype=torch.float64,
    )
    for batch in ds:
        assert len(batch["id"]) == 64
        break
    running = f"""SELECT count(*) AS n FROM pg_stat_activity WHERE state = 'active'
        AND query LIKE '%{SCHEMA}%samples%' AND pid <> pg_backend_pid()"""
    deadline = time.monotonic() + 5
    while truth(pg_dsn, running)[0]["n"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert truth(pg_dsn, running)[0]["n"] == 0
    assert fed.sql(f"SELECT count(*) AS n FROM pg.{SCHEMA}.samples").to_arrow()["n"][0].as_py() == N
