"""The Redis cache tier's circuit breaker against a real redis-server that freezes (SIGSTOP:
it accepts connections and never answers) and thaws (SIGCONT): answers stay right, queries do
not wait for the frozen tier, EXPLAIN and stats say it was skipped, and it is used again once
it answers."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import servers

import federator

pytest.importorskip("redis")

QUERY = "SELECT name, score FROM shop.users WHERE score >= :min ORDER BY name"


@pytest.fixture
def shop_db(tmp_path: Path) -> Path:
    path = tmp_path / "shop.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE users (id INTEGER, name TEXT, score INTEGER)")
        db.executemany(
            "INSERT INTO users VALUES (?, ?, ?)", [(i, f"user{i}", i % 7) for i in range(200)]
        )
    return path


@pytest.fixture
def own_redis(redis_dsn: str) -> Iterator[servers.Server]:
    """A redis-server of this test's own (the session one is shared: never freeze it)."""
    server = servers.start_redis()
    try:
        yield server
    finally:
        assert server.pid is not None
        os.kill(server.pid, signal.SIGCONT)
        server.stop()


def truth(path: Path, min_score: int) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT name, score FROM users WHERE score >= ? ORDER BY name", (min_score,)
        ).fetchall()
    return [{"name": n, "score": s} for n, s in rows]


def catalog(path: Path, redis_url: str, **cache: Any) -> dict[str, Any]:
    return {
        "sources": {"shop": {"kind": "sqlite", "path": str(path)}},
        "cache": {"enabled": True, "tokens": False, "redis": redis_url, **cache},
    }


def test_frozen_redis_tier_is_skipped_then_used_again(
    shop_db: Path, own_redis: servers.Server
) -> None:
    assert own_redis.pid is not None
    # A cool-down well above the 10 queries' time even on a loaded machine: the state reads
    # "open" only until the cool-down after the last trip ends.
    cat = catalog(shop_db, own_redis.dsn, redis_wait=0.2, redis_cooldown=3.0)
    with federator.connect(cat) as fed:
        assert fed.sql(QUERY, {"min": 3}).to_arrow().to_pylist() == truth(shop_db, 3)
        assert fed.cache.stats()["stores"] == 1
        os.kill(own_redis.pid, signal.SIGSTOP)
        started = time.monotonic()
        for i in range(10):
            result = fed.sql(QUERY, {"min": i % 7})
            assert result.to_arrow().to_pylist() == truth(shop_db, i % 7)
        elapsed = time.monotonic() - started
        # Unguarded, every query waited about 6 s for the frozen tier (3 tries of 2 s).
        assert elapsed < 5.0, f"10 queries took {elapsed:.1f} s with the tier frozen"
        redis_stats = fed.cache.stats()["redis"]
        assert redis_stats["state"] == "open"
        assert redis_stats["timeouts"] >= 1 and redis_stats["skipped"] >= 1
        assert "no answer within 0.2 s" in redis_stats["last_failure"]
        assert "Redis tier skipped" in result.explain(analyze=True)
        assert "Redis tier (Redis tier skipped" in result.explain()
        fed.cache.invalidate(source="shop")  # kept, published once the tier answers

        os.kill(own_redis.pid, signal.SIGCONT)
        time.sleep(3.2)  # the cool-down
        assert fed.sql(QUERY, {"min": 5}).to_arrow().to_pylist() == truth(shop_db, 5)
        assert fed.cache.stats()["redis"]["state"] == "closed"
        assert fed.cache.redis is not None and not fed.cache.redis.pending_bumps
    # Another federation (another process, as far as the cache can tell) finds the entry the
    # recovered tier stored, and the invalidation sent late.
    import redis

    with federator.connect(cat) as other:
        assert other.sql(QUERY, {"min": 5}).to_arrow().to_pylist() == truth(shop_db, 5)
        assert other.cache.stats()["redis_hits"] == 1
    client = redis.Redis.from_url(own_redis.dsn)
    try:
        assert int(client.hget("federator:cache:gens", "shop.*") or 0) >= 1
    finally:
        client.close()


def test_close_does_not_wait_for_a_frozen_tier(shop_db: Path, own_redis: servers.Server) -> None:
    assert own_redis.pid is not None
    fed = federator.connect(catalog(shop_db, own_redis.dsn, redis_wait=0.2))
    fed.sql(QUERY, {"min": 1}).to_arrow()
    os.kill(own_redis.pid, signal.SIGSTOP)
    started = time.monotonic()
    fed.close()
    assert time.monotonic() - started < 2.0
