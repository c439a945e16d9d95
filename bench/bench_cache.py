"""Latency of a frequent three-source join (PostgreSQL x MariaDB x Redis, ~10,000 result rows):
uncached, cold (miss + store), warm in process, warm from the Redis tier.

Each figure is the p50 (and p90) of ``--runs`` runs of an already planned query
(``result.to_arrow()``: execution only), plus the p50 of ``fed.sql(...).to_arrow()`` (planning
included) for the uncached and warm cases. Servers start like the tests start theirs
(tests/servers.py), or come from FEDERATOR_BENCH_PG / _MYSQL / _REDIS. Run::

    python bench/bench_cache.py [--rows 10000] [--runs 50]

Issue 7's targets: in-process hit ≤ 1 ms p50, Redis-tier hit ≤ 10 ms p50 at this size.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from servers import ServerPool  # noqa: E402

import federator  # noqa: E402
from federator.config import parse_dsn  # noqa: E402

QUERY = (
    "SELECT u.id, u.name, o.amount, f.score, f.segment "
    "FROM pg.bc_users AS u JOIN my.bc_orders AS o ON o.user_id = u.id "
    "JOIN kv.features AS f ON f.user_id = u.id WHERE u.tier = :tier"
)


# ---- data --------------------------------------------------------------------------------
async def load(pg: str, my: str, redis_url: str, n: int) -> None:
    import aiomysql
    import asyncpg
    import redis.asyncio as aioredis

    conn = await asyncpg.connect(pg)
    try:
        await conn.execute("DROP TABLE IF EXISTS bc_users")
        await conn.execute("CREATE TABLE bc_users (id int PRIMARY KEY, name text, tier text)")
        await conn.copy_records_to_table(
            "bc_users",
            records=[(i, f"user{i}", "a" if i % 20 else "b") for i in range(n + n // 19 + 1)],
        )
        await conn.execute("ANALYZE bc_users")
    finally:
        await conn.close()
    d = parse_dsn(my)
    mconn = await aiomysql.connect(
        host=d.host,
        port=d.port,
        user=d.user,
        password=d.password or "",
        db=d.database,
        autocommit=True,
    )
    try:
        async with mconn.cursor() as cur:
            await cur.execute("DROP TABLE IF EXISTS bc_orders")
            await cur.execute(
                "CREATE TABLE bc_orders (id INT PRIMARY KEY, user_id INT, amount DECIMAL(10,2))"
            )
            rows = [(i, i, f"{i % 997}.50") for i in range(n + n // 19 + 1)]
            for start in range(0, len(rows), 5000):
                await cur.executemany(
                    "INSERT INTO bc_orders VALUES (%s, %s, %s)", rows[start : start + 5000]
                )
            await cur.execute("ANALYZE TABLE bc_orders")
    finally:
        mconn.close()
    client = aioredis.from_url(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(n + n // 19 + 1):
            pipe.hset(f"bcf:{i}", mapping={"score": i / 7, "segment": f"s{i % 5}"})
        await pipe.execute()
    finally:
        await client.aclose()


def catalog(pg: str, my: str, redis_url: str, n: int, **cache: Any) -> dict[str, Any]:
    return {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg},
            "my": {"kind": "mysql", "dsn": my},
            "kv": {
                "kind": "redis",
                "url": redis_url,
                "tables": {
                    "features": {
                        "key": "bcf:{user_id}",
                        "type": "hash",
                        "rows": n,
                        "columns": {"user_id": "int64", "score": "float64", "segment": "string"},
                    }
                },
            },
        },
        "planner": {"bind_max_keys": 4 * n},
        "cache": cache,
    }


# ---- timing ------------------------------------------------------------------------------
def sample(
    fn: Callable[[], Any], runs: int, before: Callable[[], Any] | None = None
) -> list[float]:
    out = []
    for _ in range(runs):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def line(name: str, ms: list[float], base: float | None = None) -> str:
    p50 = statistics.median(ms)
    p90 = sorted(ms)[int(len(ms) * 0.9) - 1] if len(ms) > 1 else ms[0]
    ratio = f"  {base / p50:8.1f}x faster than uncached" if base else ""
    return f"  {name:46} p50 {p50:9.3f} ms   p90 {p90:9.3f} ms{ratio}"


def run(pg: str, my: str, redis_url: str, n: int, runs: int) -> list[str]:
    asyncio.run(load(pg, my, redis_url, n))
    params = {"tier": "a"}
    out: list[str] = []
    prefix = f"bench:{uuid.uuid4().hex[:8]}"
    shared = {"enabled": True, "tokens": False, "redis": redis_url, "redis_prefix": prefix}

    with federator.connect(catalog(pg, my, redis_url, n)) as fed:
        result = fed.sql(QUERY, params)
        rows = result.to_arrow().num_rows
        out.append(f"three-source join, {rows:,} result rows; {runs} runs per figure")
        out.append(result.explain().split("\n")[0])
        uncached = sample(result.to_arrow, runs)
        base = statistics.median(uncached)
        out.append(line("uncached (execute)", uncached))
        out.append(
            line(
                "uncached (sql + execute)",
                sample(lambda: fed.sql(QUERY, params).to_arrow(), max(5, runs // 5)),
            )
        )

    with federator.connect(catalog(pg, my, redis_url, n, **shared)) as fed:
        result = fed.sql(QUERY, params)
        for _ in range(3):  # the join shape becomes frequent
            result.to_arrow()
        assert result.to_arrow().num_rows == rows

        def cold() -> None:
            fed.cache.clear()
            fed.cache.invalidate()  # and Redis: nothing shared is valid any more

        out.append(
            line(
                "cold (fetch all, store in process + Redis)",
                sample(result.to_arrow, max(5, runs // 5), cold),
                base,
            )
        )
        result.to_arrow()
        warm = sample(result.to_arrow, runs)
        out.append(line("warm in process (Redis tier on: 1 HMGET)", warm, base))
        out.append(
            line(
                "warm in process (sql + execute)",
                sample(lambda: fed.sql(QUERY, params).to_arrow(), runs),
                base,
            )
        )
        out.append(
            line(
                "warm from Redis (local entries dropped)",
                sample(result.to_arrow, runs, fed.cache.clear),
                base,
            )
        )
        stats = fed.cache.stats()
        out.append(
            f"  cache: hits {stats['hits']}, misses {stats['misses']}, redis hits "
            f"{stats['redis_hits']}, bytes in process {stats['bytes']:,}"
        )

    relaxed = {**shared, "redis_check_interval": 1.0}
    with federator.connect(catalog(pg, my, redis_url, n, **relaxed)) as fed:
        result = fed.sql(QUERY, params)
        for _ in range(4):
            result.to_arrow()
        warm = sample(result.to_arrow, runs)
        out.append(line("warm in process (Redis tier, check every 1 s)", warm, base))

    local = {"enabled": True, "tokens": False}
    with federator.connect(catalog(pg, my, redis_url, n, **local)) as fed:
        result = fed.sql(QUERY, params)
        for _ in range(4):
            result.to_arrow()
        out.append(line("warm in process (no Redis tier)", sample(result.to_arrow, runs), base))

    with federator.connect(catalog(pg, my, redis_url, n, enabled=True)) as fed:
        result = fed.sql(QUERY, params)
        for _ in range(4):
            result.to_arrow()
        out.append(
            line("warm in process (freshness tokens checked)", sample(result.to_arrow, runs), base)
        )
        text = result.explain(analyze=True)
        assert "from cache" in text, text
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=50)
    args = parser.parse_args(argv)
    pool = ServerPool()
    try:
        kinds = {
            "postgres": "FEDERATOR_BENCH_PG",
            "mariadb": "FEDERATOR_BENCH_MYSQL",
            "redis": "FEDERATOR_BENCH_REDIS",
        }
        pool.prestart([k for k, var in kinds.items() if not os.environ.get(var)])
        dsn = {k: os.environ.get(var) or pool.get(k).dsn for k, var in kinds.items()}
        for text in run(dsn["postgres"], dsn["mariadb"], dsn["redis"], args.rows, args.runs):
            print(text)
    finally:
        pool.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
