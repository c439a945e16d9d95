"""Rows per second of the MongoDB and Redis adapters against the glue they replace.

* Mongo: a federated scan of N documents (default 1,000,000) against plain motor
  ``find()`` → list of dicts (what a hand-written loader does before building a DataFrame).
* Redis: K key lookups (default 100,000) arriving as a bind join from a SQLite table, against one
  HGETALL per key (the naive loop) and against a hand-pipelined loop.

Measured on the development machine (16 cores shared with other work, CongoDB 2.2.0 in node 20,
Debian's redis-server 7, hiredis installed), 2026-11-23:

    MongoDB scan of 1,000,000 documents (5 columns, one decimal, one dotted path)
      motor find() -> list of dicts              36,878 rows/s
      federator scan -> Arrow table              33,167 rows/s   0.90x  (CongoDB's aggregate is
                                                                 slower than its find; the Arrow
                                                                 conversion costs ~1 s per 1 M rows)
    Redis: 100,000 key lookups
      one HGETALL per key (redis.asyncio)         5,359 rows/s
      hand-pipelined HGETALL, 1,000 per batch    40,892 rows/s   7.63x
      federator bind join (SQLite ids -> Redis)  29,611 rows/s   5.53x  (includes the SQLite side,
                                                                 type conversion and the join)

Servers are started like the tests do (tests/servers.py: CongoDB, redis-server), or taken from
FEDERATOR_TEST_MONGO_URL / FEDERATOR_BENCH_REDIS_URL. Run::

    python bench/mongo_redis.py [--docs 1000000] [--keys 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from servers import ServerPool  # noqa: E402

import federator  # noqa: E402

DB = "bench"


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def report(name: str, rows: int, seconds: float, baseline: float | None = None) -> None:
    ratio = f"  {baseline / seconds:5.2f}x the baseline's speed" if baseline else ""
    print(f"  {name:44} {rows:>10,} rows {seconds:8.2f} s {rows / seconds:>12,.0f} rows/s{ratio}")


# ---- MongoDB ---------------------------------------------------------------------------------
def load_mongo(url: str, n: int) -> None:
    from bson import Decimal128
    from pymongo import MongoClient

    client = MongoClient(url, serverSelectionTimeoutMS=10_000)
    try:
        coll = client[DB].docs
        if coll.estimated_document_count() == n:
            return
        coll.drop()
        rng = random.Random(1)
        chunk = []
        for i in range(n):
            chunk.append(
                {
                    "n": i,
                    "qty": rng.randrange(10),
                    "amount": Decimal128(f"{rng.randrange(10_000)}.{rng.randrange(100):02d}"),
                    "status": ("new", "paid", "shipped")[i % 3],
                    "address": {"city": f"city{i % 50}"},
                }
            )
            if len(chunk) == 20_000:
                coll.insert_many(chunk)
                chunk = []
        if chunk:
            coll.insert_many(chunk)
    finally:
        client.close()


def bench_mongo(url: str, n: int) -> None:
    print(f"MongoDB scan of {n:,} documents ({url.split('@')[-1]})")
    t, _ = timed(lambda: load_mongo(url, n))
    print(f"  (loaded in {t:.1f} s)")

    async def motor_list() -> int:
        from motor.motor_asyncio import AsyncIOMotorClient

        client = AsyncIOMotorClient(url)
        try:
            cursor = client[DB].docs.find(
                {}, {"_id": 0, "n": 1, "qty": 1, "amount": 1, "status": 1, "address.city": 1}
            )
            docs = await cursor.to_list(length=None)
            return len(docs)
        finally:
            client.close()

    base, rows = timed(lambda: asyncio.run(motor_list()))
    report("motor find() -> list of dicts", rows, base)
    # CongoDB answers nothing (not even heartbeats) while it computes a pipeline: give it time
    catalog = {"sources": {"m": {"kind": "mongo", "url": url, "database": DB, "timeout": 300}}}
    with federator.connect(catalog) as fed:
        query = 'SELECT n, qty, amount, status, "address.city" FROM m.docs'
        seconds, table = timed(lambda: fed.sql(query).to_arrow())
        report("federator scan -> Arrow table", len(table), seconds, base)


# ---- Redis -----------------------------------------------------------------------------------
def load_redis(url: str, k: int) -> None:
    import redis

    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        r.flushdb()
        pipe = r.pipeline(transaction=False)
        for i in range(k):
            pipe.hset(f"f:{i}", mapping={"clicks": str(i * 0.5), "segment": "abc"[i % 3]})
            if i % 10_000 == 9_999:
                pipe.execute()
        pipe.execute()
    finally:
        r.close()


def bench_redis(url: str, k: int) -> None:
    print(f"Redis: {k:,} key lookups ({url})")
    load_redis(url, k)

    async def one_by_one() -> int:
        import redis.asyncio as aioredis

        client = aioredis.from_url(url, decode_responses=True)
        try:
            found = 0
            for i in range(k):
                if await client.hgetall(f"f:{i}"):
                    found += 1
            return found
        finally:
            await client.aclose()

    async def pipelined() -> int:
        import redis.asyncio as aioredis

        client = aioredis.from_url(url, decode_responses=True)
        try:
            found = 0
            for start in range(0, k, 1000):
                pipe = client.pipeline(transaction=False)
                for i in range(start, min(start + 1000, k)):
                    pipe.hgetall(f"f:{i}")
                found += sum(1 for v in await pipe.execute() if v)
            return found
        finally:
            await client.aclose()

    base, rows = timed(lambda: asyncio.run(one_by_one()))
    report("one HGETALL per key (redis.asyncio)", rows, base)
    seconds, rows = timed(lambda: asyncio.run(pipelined()))
    report("hand-pipelined HGETALL, 1,000 per batch", rows, seconds, base)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "ids.db")
        con = sqlite3.connect(path)
        con.execute("CREATE TABLE ids (id INTEGER PRIMARY KEY)")
        con.executemany("INSERT INTO ids VALUES (?)", [(i,) for i in range(k)])
        con.commit()
        con.close()
        catalog = {
            "sources": {
                "lite": {"kind": "sqlite", "path": path},
                "kv": {
                    "kind": "redis",
                    "url": url,
                    "tables": {
                        "features": {
                            "key": "f:{id}",
                            "type": "hash",
                            "rows": 100 * k,
                            "columns": {"id": "int64", "clicks": "float64", "segment": "string"},
                        }
                    },
                },
            },
            "planner": {"bind_max_keys": 10 * k},
        }
        with federator.connect(catalog) as fed:
            query = (
                "SELECT f.id, f.clicks, f.segment"
                " FROM lite.ids AS i JOIN kv.features AS f ON f.id = i.id"
            )
            assert "bind-join keys" in fed.explain(query)
            seconds, table = timed(lambda: fed.sql(query).to_arrow())
            report("federator bind join (pipelined HGETALL)", len(table), seconds, base)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=1_000_000)
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--only", choices=["mongo", "redis"])
    args = parser.parse_args(argv)
    pool = ServerPool()
    try:
        if args.only != "redis":
            bench_mongo(pool.get("mongo").dsn, args.docs)
        if args.only != "mongo":
            url = os.environ.get("FEDERATOR_BENCH_REDIS_URL") or pool.get("redis").dsn
            bench_redis(url, args.keys)
    finally:
        pool.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
