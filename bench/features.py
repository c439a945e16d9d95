"""Online lookup of 256 keys: a feature view's materialized Redis copy against the same lookup
through the live source (PostgreSQL computing the view for those keys).

    python -m bench.features [--users 20000] [--events 5] [--runs 300] [--rounds 3]
                             [--pg DSN] [--redis URL]

The view is each user's event count, amount sum and last event time. The live path is
``FeatureLookup`` over a PostgreSQL view of the same aggregate (``user_id IN (...)`` pushed into
it, an index on ``user_id``); the materialized path is ``fed.features.lookup`` (a pointer read,
then pipelined HMGET). Both run from one warm federation; the table prints p50/p99 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from typing import Any

import asyncpg

import federator
from federator.lookup import FeatureLookup

from .env import servers
from .timing import percentile

KEYS = 256
VIEW_SQL = (
    "SELECT user_id, max(ts) AS ts, count(*) AS events, sum(amount) AS amount "
    "FROM {src}fvb_events GROUP BY user_id"
)


async def load(dsn: str, users: int, events: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP VIEW IF EXISTS fvb_stats; DROP TABLE IF EXISTS fvb_events")
        await conn.execute(
            "CREATE TABLE fvb_events AS SELECT (g % $1)::bigint AS user_id,"
            " timestamptz '2026-11-01' + g * interval '1 second' AS ts, (g % 97) * 0.5 AS amount"
            " FROM generate_series(1, $2::int) g",
            users,
            users * events,
        )
        await conn.execute("CREATE INDEX ON fvb_events (user_id); ANALYZE fvb_events")
        await conn.execute(f"CREATE VIEW fvb_stats AS {VIEW_SQL.format(src='')}")
    finally:
        await conn.close()


def timed(fn: Any, batches: list[list[int]]) -> list[float]:
    """Milliseconds of ``fn(keys)`` for each batch of keys."""
    out = []
    for keys in batches:
        started = time.perf_counter()
        fn(keys)
        out.append((time.perf_counter() - started) * 1000)
    return out


def run(
    pg_dsn: str, redis_url: str, users: int, events: int, runs: int, rounds: int
) -> dict[str, Any]:
    asyncio.run(load(pg_dsn, users, events))
    folder = tempfile.mkdtemp(prefix="fvbench-")
    catalog = {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg_dsn},
            "kv": {"kind": "redis", "url": redis_url},
        },
        "features": {
            "user_stats": {
                "query": VIEW_SQL.format(src="pg.public."),
                "entity": "user_id",
                "timestamp": "ts",
                "offline": {"path": folder},
                "online": {"source": "kv", "key": "user_stats:{user_id}"},
            }
        },
    }
    rng = random.Random(7)
    with federator.connect(catalog) as fed:
        started = time.perf_counter()
        done = fed.features.materialize("user_stats")
        materialize_s = time.perf_counter() - started
        live = FeatureLookup(fed, {"pg.fvb_stats": "user_id"})
        batches = [rng.sample(range(users), KEYS) for _ in range(runs)]
        # the same answer both ways (the live one's key column is named "key")
        a = fed.features.lookup("user_stats", batches[0])
        b = live.run(batches[0])
        assert a.column("events").to_pylist() == b.column("events").to_pylist()
        for _ in range(20):  # warm: plans, pools
            fed.features.lookup("user_stats", batches[0])
            live.run(batches[0])
        figures = []
        for _ in range(rounds):  # alternating, so a load spike on the machine hits both
            online = timed(lambda keys: fed.features.lookup("user_stats", keys), batches)
            through = timed(live.run, batches)
            figures.append(
                {
                    "materialized": (percentile(online, 50), percentile(online, 99)),
                    "live": (percentile(through, 50), percentile(through, 99)),
                }
            )
    return {"rows": done.rows, "materialize_s": round(materialize_s, 2), "rounds": figures}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--events", type=int, default=5)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pg")
    ap.add_argument("--redis")
    args = ap.parse_args()
    pool = servers.ServerPool()
    needed = [k for k, given in (("postgres", args.pg), ("redis", args.redis)) if not given]
    pool.prestart(needed)
    try:
        pg = args.pg or pool.get("postgres").dsn
        kv = args.redis or pool.get("redis").dsn
        r = run(pg, kv, args.users, args.events, args.runs, args.rounds)
    finally:
        pool.stop()
    print(f"view rows {r['rows']}, materialized in {r['materialize_s']} s; {KEYS} keys per lookup")
    print("| round | path | p50 ms | p99 ms |\n|---|---|---:|---:|")
    for i, figures in enumerate(r["rounds"], 1):
        for name in ("materialized", "live"):
            p50, p99 = figures[name]
            print(f"| {i} | {name} | {p50:.3f} | {p99:.3f} |")


if __name__ == "__main__":
    main()
