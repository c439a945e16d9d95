"""Latency of cache hits: a fragment (PostgreSQL, ``--rows`` result rows) and a frequent
three-source join (PostgreSQL x MariaDB x Redis, ``--rows`` result rows), freshness tokens on
(the default), in process, with the Redis tier, and from the Redis tier in another process;
and planning with the plan cache cold and warm.

Each figure is wall p50/p99 and CPU p50 (the process's, loop thread included) of ``--runs``
calls of ``fed.sql(...).to_arrow()`` (planning included). Servers start like the tests start
theirs (tests/servers.py), or come from FEDERATOR_BENCH_PG / _MYSQL / _REDIS. Run::

    python bench/bench_cache.py [--rows 1000] [--runs 300]

Issue 15's targets at 1,000 rows: in-process fragment and join hits p50 ≤ 1 ms, p99 ≤ 5 ms;
a Redis-tier hit from another process p50 ≤ 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from servers import ServerPool  # noqa: E402
from timing import percentile  # noqa: E402  (bench/timing.py)

import federator  # noqa: E402
from federator.config import parse_dsn  # noqa: E402

QUERY = (
    "SELECT u.id, u.name, o.amount, f.score, f.segment "
    "FROM pg.bc_users AS u JOIN my.bc_orders AS o ON o.user_id = u.id "
    "JOIN kv.features AS f ON f.user_id = u.id WHERE u.tier = :tier"
)
FRAGMENT = "SELECT u.id, u.name FROM pg.bc_users AS u WHERE u.tier = :tier"


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
) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds of ``runs`` calls (CPU: the whole process, loop thread too)."""
    wall, cpu = [], []
    for _ in range(runs):
        if before is not None:
            before()
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.process_time() - c0) * 1000)
    return wall, cpu


def line(name: str, measured: tuple[list[float], list[float]]) -> str:
    wall, cpu = measured
    return (
        f"| {name} | {percentile(wall, 50):.3f} | {percentile(wall, 99):.3f} | "
        f"{percentile(cpu, 50):.3f} |"
    )


def warm_up(fed: federator.Federation, query: str, params: dict[str, Any]) -> int:
    """Run ``query`` until its answer comes from cache (a join shape must be seen first)."""
    for _ in range(6):
        result = fed.sql(query, params)
        rows = result.to_arrow().num_rows
    assert "from cache" in result.explain(analyze=True)
    return rows


def run(pg: str, my: str, redis_url: str, n: int, runs: int) -> list[str]:
    asyncio.run(load(pg, my, redis_url, n))
    time.sleep(1.1)  # MariaDB's UPDATE_TIME has a one-second grain: a fresh write is unsettled
    params = {"tier": "a"}
    prefix = f"bench:{uuid.uuid4().hex[:8]}"
    shared = {"enabled": True, "redis": redis_url, "redis_prefix": prefix}
    out = [
        "| case | wall p50 ms | wall p99 ms | CPU p50 ms |",
        "|---|---:|---:|---:|",
    ]
    with federator.connect(catalog(pg, my, redis_url, n)) as fed:
        result = fed.sql(QUERY, params)
        rows = result.to_arrow().num_rows
        out.append(
            line(
                f"join, uncached ({rows:,} rows; execute only)",
                sample(result.to_arrow, max(20, runs // 10)),
            )
        )
        for what, text in (("three-source join", QUERY), ("one-source query", FRAGMENT)):
            fed.sql(text, params)
            plan = lambda t=text: fed._loop.run(fed.plan_async(t, params))  # noqa: E731
            cold = sample(plan, runs, fed.planner._plans.clear)
            out.append(line(f"planning a {what}, plan cache cold (parse + plan)", cold))
            out.append(line(f"planning a {what}, plan cache warm (bind only)", sample(plan, runs)))
    for name, settings in (
        ("in process, freshness tokens on", {"enabled": True}),
        ("in process + Redis tier, tokens on", shared),
    ):
        with federator.connect(catalog(pg, my, redis_url, n, **settings)) as fed:
            for what, text in (("fragment", FRAGMENT), ("join", QUERY)):
                warm_up(fed, text, params)
                out.append(
                    line(
                        f"{what} hit, {name}: sql + to_arrow",
                        sample(lambda t=text: fed.sql(t, params).to_arrow(), runs),
                    )
                )
    with federator.connect(catalog(pg, my, redis_url, n, **shared)) as fed:
        warm_up(fed, QUERY, params)  # stored in Redis for the other process
        child = subprocess.run(
            [sys.executable, __file__, "--child", pg, my, redis_url, prefix, str(n), str(runs)],
            capture_output=True,
            text=True,
        )
        out.extend(child.stdout.strip().splitlines())
        if child.returncode:
            out.append(f"other process failed: {child.stderr.strip()[-2000:]}")
    return out


def child(pg: str, my: str, redis_url: str, prefix: str, n: int, runs: int) -> list[str]:
    """Another process: every hit read from the Redis tier (its own entries dropped first)."""
    shared = {"enabled": True, "redis": redis_url, "redis_prefix": prefix, "join_threshold": 1}
    shared["redis_wait"] = 1.0  # a loaded machine must not open the circuit: hits are measured
    with federator.connect(catalog(pg, my, redis_url, n, **shared)) as fed:
        params = {"tier": "a"}
        fed.sql(QUERY, params).to_arrow()
        assert fed.cache.stats()["redis_hits"] == 1, fed.cache.stats()
        measured = sample(lambda: fed.sql(QUERY, params).to_arrow(), runs, fed.cache.clear)
        assert fed.cache.stats()["redis_hits"] == runs + 1, fed.cache.stats()
        return [line("join hit from the Redis tier, another process: sql + to_arrow", measured)]


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--child":
        pg, my, redis_url, prefix, n, runs = argv[1:]
        print("\n".join(child(pg, my, redis_url, prefix, int(n), int(runs))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=300)
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
            print(text, flush=True)
    finally:
        pool.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
