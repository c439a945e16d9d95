"""The result cache against real PostgreSQL, MariaDB and Redis: writes become visible after
invalidation or a freshness-token change, TTL, max_staleness=0, two processes sharing entries
through Redis, corrupt Redis entries, and single flight over a cross-source join."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pytest

import federator
from federator.config import parse_dsn

N_USERS = 2_000
N_ORDERS = 6_000
ROOT = Path(__file__).resolve().parents[2]
ONE = "SELECT name FROM pg.cache_users WHERE id = 1"
JOIN = (
    "SELECT u.tier, count(*) AS n, sum(o.amount) AS total FROM pg.cache_users AS u "
    "JOIN my.cache_orders AS o ON o.user_id = u.id WHERE u.tier = :tier GROUP BY u.tier"
)


async def _pg(dsn: str, *sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for s in sql:
            await conn.execute(s)
    finally:
        await conn.close()


async def _my(dsn: str, *sql: str) -> None:
    import aiomysql

    d = parse_dsn(dsn)
    conn = await aiomysql.connect(
        host=d.host, port=d.port, user=d.user, db=d.database, autocommit=True
    )
    try:
        async with conn.cursor() as cur:
            for s in sql:
                await cur.execute(s)
    finally:
        conn.close()


async def _load(pg_dsn: str, mysql_dsn: str) -> None:
    users = ",".join(
        f"({i}, 'user{i}', '{'gold' if i % 50 == 0 else 'basic'}')" for i in range(N_USERS)
    )
    await _pg(
        pg_dsn,
        "DROP TABLE IF EXISTS cache_users",
        "CREATE TABLE cache_users (id int PRIMARY KEY, name text, tier text)",
        f"INSERT INTO cache_users VALUES {users}",
    )
    orders = ",".join(f"({i}, {i % N_USERS}, {i % 997}.25)" for i in range(N_ORDERS))
    await _my(
        mysql_dsn,
        "DROP TABLE IF EXISTS cache_orders",
        "CREATE TABLE cache_orders (id INT PRIMARY KEY, user_id INT, amount DECIMAL(10,2))"
        " ENGINE=InnoDB",
        f"INSERT INTO cache_orders VALUES {orders}",
    )


@pytest.fixture(scope="module")
def loaded(pg_dsn: str, mysql_dsn: str) -> tuple[str, str]:
    asyncio.run(_load(pg_dsn, mysql_dsn))
    return pg_dsn, mysql_dsn


def catalog(pg_dsn: str, mysql_dsn: str, **cache: Any) -> dict[str, Any]:
    return {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg_dsn},
            "my": {"kind": "mysql", "dsn": mysql_dsn},
        },
        "cache": {"enabled": True, **cache},
    }


def first_name(fed: federator.Federation, **kw: Any) -> str:
    return fed.sql(ONE, **kw).to_arrow().column(0)[0].as_py()


@pytest.fixture
def reset_name(loaded: tuple[str, str]):
    yield
    asyncio.run(_pg(loaded[0], "UPDATE cache_users SET name = 'user1' WHERE id = 1"))


def test_write_then_invalidate(loaded: tuple[str, str], reset_name: None) -> None:
    pg_dsn, mysql_dsn = loaded
    with federator.connect(catalog(pg_dsn, mysql_dsn, tokens=False)) as fed:
        assert first_name(fed) == "user1"
        asyncio.run(_pg(pg_dsn, "UPDATE cache_users SET name = 'changed' WHERE id = 1"))
        assert first_name(fed) == "user1"  # no token, no invalidation yet: the cached answer
        fed.cache.invalidate(source="pg", table="cache_users")
        assert first_name(fed) == "changed"


def test_postgres_token_sees_a_write(loaded: tuple[str, str], reset_name: None) -> None:
    pg_dsn, mysql_dsn = loaded
    with federator.connect(catalog(pg_dsn, mysql_dsn, token_interval=0)) as fed:
        assert first_name(fed) == "user1"
        assert first_name(fed) == "user1"
        assert fed.cache.stats()["hits"] == 1
        asyncio.run(_pg(pg_dsn, "UPDATE cache_users SET name = 'changed' WHERE id = 1"))
        assert first_name(fed) == "changed"  # the snapshot token changed


def test_postgres_stats_token(loaded: tuple[str, str]) -> None:
    pg_dsn, mysql_dsn = loaded
    cat = catalog(pg_dsn, mysql_dsn)
    cat["sources"]["pg"]["cache_tokens"] = "stats"
    with federator.connect(cat) as fed:
        adapter = fed.catalog.adapter("pg")
        from federator.adapters.base import TableRef

        ref = [TableRef("public", "cache_users")]
        token = fed._loop.run(adapter.freshness_token(ref))
        assert token.startswith("stats:")
        asyncio.run(_pg(pg_dsn, "INSERT INTO cache_users VALUES (999999, 'x', 'basic')"))
        asyncio.run(_pg(pg_dsn, "DELETE FROM cache_users WHERE id = 999999"))
        deadline = time.monotonic() + 15  # PostgreSQL publishes counters within seconds
        while fed._loop.run(adapter.freshness_token(ref)) == token:
            assert time.monotonic() < deadline, "stats token never changed"
            time.sleep(0.2)


def test_mysql_token_sees_a_write(loaded: tuple[str, str]) -> None:
    pg_dsn, mysql_dsn = loaded
    q = "SELECT amount FROM my.cache_orders WHERE id = 7"
    with federator.connect(catalog(pg_dsn, mysql_dsn, token_interval=0)) as fed:
        asyncio.run(_my(mysql_dsn, "UPDATE cache_orders SET amount = 1.50 WHERE id = 7"))
        time.sleep(1.1)  # UPDATE_TIME counts seconds: a write this second is not settled
        assert str(fed.sql(q).to_arrow().column(0)[0].as_py()) == "1.50"
        result = fed.sql(q)
        assert str(result.to_arrow().column(0)[0].as_py()) == "1.50"
        assert "from cache" in result.explain(analyze=True)
        asyncio.run(_my(mysql_dsn, "UPDATE cache_orders SET amount = 2.75 WHERE id = 7"))
        result = fed.sql(q)
        assert str(result.to_arrow().column(0)[0].as_py()) == "2.75"
        assert "from cache" not in result.explain(analyze=True)
        time.sleep(1.1)
        assert str(fed.sql(q).to_arrow().column(0)[0].as_py()) == "2.75"
        asyncio.run(_my(mysql_dsn, "UPDATE cache_orders SET amount = 3.00 WHERE id = 7"))
        time.sleep(1.1)  # settled, and a changed UPDATE_TIME
        assert str(fed.sql(q).to_arrow().column(0)[0].as_py()) == "3.00"


def test_ttl_expiry(loaded: tuple[str, str], reset_name: None) -> None:
    pg_dsn, mysql_dsn = loaded
    with federator.connect(catalog(pg_dsn, mysql_dsn, tokens=False, ttl=0.5)) as fed:
        assert first_name(fed) == "user1"
        asyncio.run(_pg(pg_dsn, "UPDATE cache_users SET name = 'changed' WHERE id = 1"))
        assert first_name(fed) == "user1"
        time.sleep(0.6)
        assert first_name(fed) == "changed"


def test_max_staleness_zero_bypasses(loaded: tuple[str, str], reset_name: None) -> None:
    pg_dsn, mysql_dsn = loaded
    with federator.connect(catalog(pg_dsn, mysql_dsn, tokens=False)) as fed:
        assert first_name(fed) == "user1"
        asyncio.run(_pg(pg_dsn, "UPDATE cache_users SET name = 'changed' WHERE id = 1"))
        assert first_name(fed) == "user1"
        assert first_name(fed, max_staleness=0) == "changed"
        assert fed.cache.stats()["hits"] == 1


# ---- Redis tier ----------------------------------------------------------------------------
_CHILD = """
import json, sys, federator
catalog, query, params, action = json.loads(sys.argv[1])
with federator.connect(catalog) as fed:
    if action == "invalidate":
        fed.cache.invalidate(source="pg", table="cache_users")
    result = fed.sql(query, params)
    table = result.to_arrow()
    print(json.dumps({"rows": table.to_pylist(), "stats": fed.cache.stats(),
                      "explain": result.explain(analyze=False)}, default=str))
"""


def child(cat: dict[str, Any], query: str, params: dict[str, Any], action: str = "") -> Any:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps([cat, query, params, action])],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def redis_catalog(loaded: tuple[str, str], redis_dsn: str, **cache: Any) -> dict[str, Any]:
    prefix = f"test:{uuid.uuid4().hex[:8]}"
    # These tests are about sharing, not the circuit breaker (test_cache_breaker.py): a busy
    # machine must not open the circuit on a slow but healthy tier.
    cache.setdefault("redis_wait", 5.0)
    return catalog(*loaded, tokens=False, redis=redis_dsn, redis_prefix=prefix, **cache)


def test_two_processes_share_an_entry(loaded: tuple[str, str], redis_dsn: str) -> None:
    cat = redis_catalog(loaded, redis_dsn)
    first = child(cat, JOIN, {"tier": "gold"})
    assert first["stats"]["misses"] >= 1 and first["stats"]["redis_hits"] == 0
    second = child(cat, JOIN, {"tier": "gold"})
    assert second["rows"] == first["rows"]
    assert second["stats"]["redis_hits"] >= 1 and second["stats"]["misses"] == 0
    with federator.connect(cat) as fed:
        text = fed.sql(JOIN, {"tier": "gold"}).explain(analyze=True)
        assert text.count("cache hit from Redis") == 2  # both fragments
        fed.cache.invalidate(source="pg", table="cache_users")  # reaches the other process
    third = child(cat, JOIN, {"tier": "gold"})
    assert third["rows"] == first["rows"]
    assert third["stats"]["misses"] == 1  # the pg fragment; my.cache_orders still shared
    assert third["stats"]["redis_hits"] == 1


def test_corrupt_redis_entry_is_a_miss(loaded: tuple[str, str], redis_dsn: str) -> None:
    import redis

    cat = redis_catalog(loaded, redis_dsn)
    prefix = cat["cache"]["redis_prefix"]
    truth = child(cat, ONE, {})["rows"]
    client = redis.Redis.from_url(redis_dsn)
    try:
        keys = client.keys(f"{prefix}:e:*")
        assert len(keys) == 1
        blob = client.get(keys[0])
        client.set(keys[0], blob[: len(blob) // 2])  # truncated
        got = child(cat, ONE, {})
        assert got["rows"] == truth
        assert got["stats"]["corrupt"] == 1 and got["stats"]["redis_hits"] == 0
        blob = client.get(keys[0])  # the miss stored a good entry again
        flipped = blob[:-8] + bytes(b ^ 0xFF for b in blob[-8:])
        client.set(keys[0], flipped)
        got = child(cat, ONE, {})
        assert got["rows"] == truth and got["stats"]["corrupt"] == 1
        assert child(cat, ONE, {})["stats"]["redis_hits"] == 1
    finally:
        for k in client.keys(f"{prefix}:*"):
            client.delete(k)
        client.close()


def test_redis_entry_size_limit(loaded: tuple[str, str], redis_dsn: str) -> None:
    cat = redis_catalog(loaded, redis_dsn, redis_max_entry_bytes=256)
    with federator.connect(cat) as fed:
        result = fed.sql("SELECT id, name FROM pg.cache_users")
        assert result.to_arrow().num_rows >= N_USERS
        assert result.last_execution is not None
        (stats,) = result.last_execution.stats.values()
        assert "over the Redis entry limit" in stats.note
    again = child(cat, "SELECT id, name FROM pg.cache_users", {})
    assert again["stats"]["redis_hits"] == 0


# ---- single flight -------------------------------------------------------------------------
def test_fifty_concurrent_joins_fetch_each_fragment_once(loaded: tuple[str, str]) -> None:
    with federator.connect(catalog(*loaded, tokens=False)) as fed:
        counts: Counter[str] = Counter()
        for name, adapter in fed.catalog.adapters.items():
            original = adapter.execute

            def counted(request: Any, keys: Any = None, _o: Any = original, _n: str = name):
                counts[_n] += 1
                return _o(request, keys)

            adapter.execute = counted  # type: ignore[method-assign]

        async def run() -> list[pa.Table]:
            results = [await fed.sql_async(JOIN, {"tier": "gold"}) for _ in range(50)]
            return await asyncio.gather(*(r.to_arrow_async() for r in results))

        tables = asyncio.run(run())
        assert all(t.equals(tables[0]) for t in tables)
        plan = fed.sql(JOIN, {"tier": "gold"}).plan
        assert dict(counts) == dict(Counter(f.source for f in plan.fragments))
        assert tables[0].column("n").to_pylist() == [N_ORDERS // 50]
