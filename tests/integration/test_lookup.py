"""Online lookups across PostgreSQL and Redis: one call, values equal to what the databases
hold, in the order asked, with a latency budget and an optional cache."""

from __future__ import annotations

import random
import time
from typing import Any

import asyncpg
import pytest
import redis

import federator
from federator.lookup import FeatureLookup, FeatureTable, MissingKeysError

from .conftest import run_async

N = 2_000
SCHEMA = "lookupt"
NO_PROFILE = {5, 50, 500}  # keys PostgreSQL lacks
NO_COUNTERS = {6, 60, 600}  # keys Redis lacks
REDIS_TABLES = {
    "counters": {
        "key": "lk:counters:{user_id}",
        "type": "hash",
        "columns": {"user_id": "int64", "clicks_7d": "float64", "segment": "string"},
    }
}


def profile(uid: int) -> dict[str, Any]:
    return {"age": 18 + uid % 60, "score": uid / 7, "country": ("DE", "FR", "IT")[uid % 3]}


def counters(uid: int) -> dict[str, Any]:
    return {"clicks_7d": uid * 0.5, "segment": ("new", "loyal")[uid % 2]}


async def _load_pg(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA};"
            f"CREATE TABLE {SCHEMA}.profiles (user_id bigint PRIMARY KEY, age int,"
            " score float8, country text)"
        )
        rows = [
            (u, p["age"], p["score"], p["country"])
            for u in range(N)
            if u not in NO_PROFILE
            for p in [profile(u)]
        ]
        await conn.copy_records_to_table("profiles", records=rows, schema_name=SCHEMA)
    finally:
        await conn.close()


def _load_redis(dsn: str) -> None:
    r = redis.Redis.from_url(dsn, decode_responses=True)
    try:
        pipe = r.pipeline(transaction=False)
        for u in range(N):
            if u not in NO_COUNTERS:
                c = counters(u)
                pipe.hset(
                    f"lk:counters:{u}",
                    mapping={"clicks_7d": str(c["clicks_7d"]), "segment": c["segment"]},
                )
        pipe.execute()
    finally:
        r.close()


def catalog(pg_dsn: str, redis_dsn: str) -> dict[str, Any]:
    return {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg_dsn},
            "kv": {"kind": "redis", "url": redis_dsn, "tables": REDIS_TABLES},
        }
    }


@pytest.fixture(scope="module")
def fed(pg_dsn: str, redis_dsn: str):
    run_async(_load_pg(pg_dsn))
    _load_redis(redis_dsn)
    with federator.connect(catalog(pg_dsn, redis_dsn), timeout=60) as f:
        yield f


TABLES = {f"pg.{SCHEMA}.profiles": "user_id", "kv.counters": "user_id"}


def expected(keys: list[int]) -> list[dict[str, Any]]:
    out = []
    for k in keys:
        p = profile(k) if k in range(N) and k not in NO_PROFILE else dict.fromkeys(profile(0))
        c = counters(k) if k in range(N) and k not in NO_COUNTERS else dict.fromkeys(counters(0))
        out.append({"key": k, **p, **c})
    return out


def some_keys(n: int, seed: int = 1) -> list[int]:
    rng = random.Random(seed)
    keys = [*rng.sample(range(N), n - 8), 5, 6, 50, 60, 500, 600, N + 3, N + 4]
    rng.shuffle(keys)
    return keys


async def test_one_call_fetches_both_sources_in_key_order(fed: federator.Federation) -> None:
    keys = some_keys(256)
    got = await fed.lookup(keys, TABLES)
    assert got.column_names == ["key", "age", "score", "country", "clicks_7d", "segment"]
    assert got.to_pylist() == expected(keys)


async def test_duplicate_keys_numpy_and_torch_keys(fed: federator.Federation) -> None:
    import numpy as np

    keys = [3, 3, 9, 3]
    assert (await fed.lookup(np.array(keys), TABLES)).to_pylist() == expected(keys)
    torch = pytest.importorskip("torch")
    assert (await fed.lookup(torch.tensor(keys), TABLES)).to_pylist() == expected(keys)


def test_each_table_is_one_pushed_request(fed: federator.Federation) -> None:
    lookup = FeatureLookup(fed, TABLES)
    texts = lookup.explain([1, 2, 3])
    assert len(texts) == 2
    assert all("1 fragment(s), no residual" in t for t in texts)
    assert '"user_id" IN ($1' in texts[0]
    assert "pipelined HGETALL lk:counters:{user_id}" in texts[1]
    assert "SCAN" not in texts[1]


def test_columns_prefix_and_sync_run(fed: federator.Federation) -> None:
    lookup = FeatureLookup(
        fed,
        [
            FeatureTable(f"pg.{SCHEMA}.profiles", "user_id", columns=("age",), prefix="p_"),
            FeatureTable("kv.counters", "user_id", columns=("segment",)),
        ],
        key_name="user_id",
    )
    got = lookup.run([10, 5, 6])
    assert got.to_pylist() == [
        {"user_id": 10, "p_age": 28, "segment": "new"},
        {"user_id": 5, "p_age": None, "segment": "loyal"},
        {"user_id": 6, "p_age": 24, "segment": None},
    ]


async def test_missing_keys_can_be_an_error(fed: federator.Federation) -> None:
    lookup = FeatureLookup(fed, TABLES, missing="error")
    assert len(await lookup([1, 2])) == 2
    with pytest.raises(MissingKeysError, match=r"profiles has no row for 1 key\(s\): \[5\]"):
        await lookup([1, 5])


async def test_latency_budget_raises_a_clear_timeout(fed: federator.Federation) -> None:
    lookup = FeatureLookup(fed, TABLES, timeout=1e-6)
    with pytest.raises(federator.QueryTimeoutError, match=r"lookup of 3 key\(s\) in .*counters"):
        await lookup([1, 2, 3])
    # The same lookup with room to spare still works after a timeout.
    assert (await lookup([1, 2, 3], timeout=30)).to_pylist() == expected([1, 2, 3])


async def test_cache_serves_repeated_keys_until_cleared(
    fed: federator.Federation, pg_dsn: str
) -> None:
    lookup = FeatureLookup(fed, TABLES, cache_ttl=60)
    first = await lookup([11, 12, 5])
    assert first.to_pylist() == expected([11, 12, 5])

    async def set_age(age: int) -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(f"UPDATE {SCHEMA}.profiles SET age = $1 WHERE user_id = 11", age)
        finally:
            await conn.close()

    await set_age(99)
    try:
        cached = await lookup([5, 11, 13])
        assert cached.column("age").to_pylist() == [None, profile(11)["age"], profile(13)["age"]]
        lookup.clear_cache()
        fresh = await lookup([11])
        assert fresh.column("age").to_pylist() == [99]
    finally:
        await set_age(profile(11)["age"])


async def test_cache_expires(fed: federator.Federation, pg_dsn: str) -> None:
    lookup = FeatureLookup(fed, {f"pg.{SCHEMA}.profiles": "user_id"}, cache_ttl=0.2)
    await lookup([20])
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute(f"UPDATE {SCHEMA}.profiles SET age = 77 WHERE user_id = 20")
        time.sleep(0.3)
        assert (await lookup([20])).column("age").to_pylist() == [77]
    finally:
        await conn.execute(
            f"UPDATE {SCHEMA}.profiles SET age = $1 WHERE user_id = 20", profile(20)["age"]
        )
        await conn.close()


async def test_many_keys_are_chunked(fed: federator.Federation) -> None:
    keys = list(range(N))
    got = await fed.lookup(keys, TABLES)
    assert got.to_pylist() == expected(keys)


async def test_the_federation_cache_serves_lookups_where_configured(
    pg_dsn: str, redis_dsn: str, fed: federator.Federation
) -> None:
    spec = catalog(pg_dsn, redis_dsn)
    spec["cache"] = {"enabled": True, "ttl": 60}
    async with federator.connect(spec, timeout=60) as cached:
        lookup = FeatureLookup(cached, TABLES)
        keys = some_keys(64, seed=9)
        first = await lookup(keys)
        hits = cached.cache.stats()["hits"]
        again = await lookup(keys)
        assert again.equals(first) and first.to_pylist() == expected(keys)
        assert cached.cache.stats()["hits"] >= hits + 2  # one per table
