"""PyTorch hand-off: rows/s into a training loop, and online lookup latency.

Training input: a PostgreSQL table of N rows (default 1,000,000) x 16 float8 features + an
int label, into a loop that only touches each batch (``x.sum()``), three ways:

* ``per_item``: the pattern federator replaces: a map-style Dataset whose ``__getitem__`` opens
  a connection and runs ``SELECT … ORDER BY id LIMIT 1 OFFSET i`` (shuffled indices, so offsets
  spread over the table as in training). Measured on a sample of items; rows/s extrapolates.
* ``federated``: ``FederatedDataset`` (key ranges on ``id``), DataLoader with 0 and W workers.
* ``connectorx``: read everything with ConnectorX into Arrow, stack to one tensor with
  ``torch.from_numpy``, then iterate batches of it.

Each method runs in its own process; the peak RSS above the process's start is reported with
its rows/s.

Online lookup: features for 256 keys from a Redis hash table and a PostgreSQL table, with
``FeatureLookup`` (both sources at once, one request each) against key by key (one
``SELECT … WHERE id = $1`` and one ``HGETALL`` per key, over open connections): p50/p99.

Run::

    python bench/bench_torch.py [--rows 1000000] [--workers 2] [--pg DSN] [--redis URL]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

TABLE = "bench_torch"
FEATURES = [f"f{i}" for i in range(16)]
BATCH = 4096
LOOKUP_KEYS = 256
REDIS_KEYS = 100_000


# ---- data ----------------------------------------------------------------------------------
async def load_pg(dsn: str, rows: int) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        have = await conn.fetchval(
            "SELECT reltuples::bigint FROM pg_class WHERE relname = $1 AND relkind = 'r'", TABLE
        )
        if have is not None and abs(have - rows) < 1:
            return
        cols = ", ".join(f"random()::float8 AS {f}" for f in FEATURES)
        await conn.execute(
            f"DROP TABLE IF EXISTS {TABLE};"
            f"CREATE TABLE {TABLE} AS SELECT g::bigint AS id, {cols}, (g % 2)::int AS label"
            f" FROM generate_series(1, {int(rows)}) g;"
            f"ALTER TABLE {TABLE} ADD PRIMARY KEY (id); ANALYZE {TABLE};"
        )
    finally:
        await conn.close()


def load_redis(url: str) -> None:
    import redis

    r = redis.Redis.from_url(url, decode_responses=True)
    try:
        if r.exists(f"bt:{REDIS_KEYS}"):
            return
        rng = random.Random(2)
        pipe = r.pipeline(transaction=False)
        for k in range(1, REDIS_KEYS + 1):
            pipe.hset(f"bt:{k}", mapping={"clicks": rng.randint(0, 99), "ctr": rng.random()})
            if k % 10_000 == 0:
                pipe.execute()
        pipe.execute()
    finally:
        r.close()


def catalog(pg: str, redis_url: str | None = None) -> dict[str, Any]:
    sources: dict[str, Any] = {"pg": {"kind": "postgres", "dsn": pg}}
    if redis_url:
        sources["kv"] = {
            "kind": "redis",
            "url": redis_url,
            "tables": {
                "counters": {
                    "key": "bt:{id}",
                    "type": "hash",
                    "columns": {"id": "int64", "clicks": "int64", "ctr": "float64"},
                }
            },
        }
    return {"sources": sources}


# ---- one method, in its own process --------------------------------------------------------
class PeakRSS:
    """Peak resident memory of this process above its level at start, sampled every 5 ms."""

    def __init__(self) -> None:
        self.base = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        return (self.peak - self.base) / 2**20


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def run_per_item(dsn: str, rows: int, sample: int) -> dict[str, Any]:
    import asyncpg
    import torch
    from torch.utils.data import DataLoader, Dataset

    cols = ", ".join(FEATURES)

    class PerItem(Dataset):
        def __len__(self) -> int:
            return rows

        def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
            async def fetch() -> Any:
                conn = await asyncpg.connect(dsn)
                try:
                    return await conn.fetchrow(
                        f"SELECT {cols}, label FROM {TABLE} ORDER BY id LIMIT 1 OFFSET $1", i
                    )
                finally:
                    await conn.close()

            row = asyncio.run(fetch())
            return torch.tensor(list(row)[:16]), torch.tensor(row["label"])

    indices = random.Random(0).sample(range(rows), sample)
    loader = DataLoader(PerItem(), batch_size=256, sampler=indices)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        seen = 0
        for x, _y in loader:
            x.sum()
            seen += len(x)
        seconds = time.perf_counter() - t0
    return {"rows": seen, "seconds": seconds, "rows_s": seen / seconds, "peak_mib": mem.mib}


def run_federated(dsn: str, workers: int) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    import federator
    from federator.torch import FederatedDataset

    with federator.connect(catalog(dsn), timeout=600) as fed, PeakRSS() as mem:
        t0 = time.perf_counter()
        ds = FederatedDataset(
            fed,
            f"SELECT id, {', '.join(FEATURES)}, label FROM pg.{TABLE}",
            key="id",
            features=FEATURES,
            label="label",
            batch_size=BATCH,
            shards_per_worker=4,
        )
        seen = 0
        for x, _y, _ in DataLoader(ds, batch_size=None, num_workers=workers):
            x.sum()
            seen += len(x)
        seconds = time.perf_counter() - t0
    return {"rows": seen, "seconds": seconds, "rows_s": seen / seconds, "peak_mib": mem.mib}


def run_connectorx(dsn: str) -> dict[str, Any]:
    import connectorx as cx
    import numpy as np
    import torch

    with PeakRSS() as mem:
        t0 = time.perf_counter()
        table = cx.read_sql(
            dsn, f"SELECT {', '.join(FEATURES)}, label FROM {TABLE}", return_type="arrow"
        )
        x = torch.from_numpy(
            np.column_stack([table.column(f).to_numpy() for f in FEATURES]).astype(np.float32)
        )
        y = torch.from_numpy(table.column("label").to_numpy())
        del table
        seen = 0
        for i in range(0, len(x), BATCH):
            x[i : i + BATCH].sum()
            y[i : i + BATCH]
            seen += len(x[i : i + BATCH])
        seconds = time.perf_counter() - t0
    return {"rows": seen, "seconds": seconds, "rows_s": seen / seconds, "peak_mib": mem.mib}


def run_lookup(dsn: str, redis_url: str, rows: int, calls: int) -> dict[str, Any]:
    import asyncpg
    import redis.asyncio as aredis

    import federator
    from federator.lookup import FeatureLookup, FeatureTable

    rng = random.Random(4)
    batches = [rng.sample(range(1, min(rows, REDIS_KEYS) + 1), LOOKUP_KEYS) for _ in range(calls)]
    cols = ", ".join(FEATURES[:8])

    async def federated() -> list[float]:
        async with federator.connect(catalog(dsn, redis_url), timeout=60) as fed:
            lookup = FeatureLookup(
                fed,
                [
                    FeatureTable(f"pg.{TABLE}", "id", tuple(FEATURES[:8])),
                    FeatureTable("kv.counters", "id", ("clicks", "ctr")),
                ],
                timeout=5,
            )
            await lookup(batches[0])  # warm: pools open, plans made
            out = []
            for keys in batches:
                t0 = time.perf_counter()
                table = await lookup(keys)
                out.append((time.perf_counter() - t0) * 1000)
                assert table.num_rows == LOOKUP_KEYS
            return out

    async def key_by_key() -> list[float]:
        conn = await asyncpg.connect(dsn)
        r = aredis.Redis.from_url(redis_url, decode_responses=True)
        try:
            out = []
            for keys in batches:
                t0 = time.perf_counter()
                for k in keys:
                    await conn.fetchrow(f"SELECT {cols} FROM {TABLE} WHERE id = $1", k)
                    await r.hgetall(f"bt:{k}")
                out.append((time.perf_counter() - t0) * 1000)
            return out
        finally:
            await conn.close()
            await r.aclose()

    fed_ms = asyncio.run(federated())
    naive_ms = asyncio.run(key_by_key())
    return {"federated_ms": _pcts(fed_ms), "key_by_key_ms": _pcts(naive_ms)}


def _pcts(ms: list[float]) -> dict[str, float]:
    ms = sorted(ms)
    return {
        "p50": statistics.median(ms),
        "p99": ms[min(len(ms) - 1, int(len(ms) * 0.99))],
    }


def _child(method: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable, __file__, "--one", method, "--pg", args.pg, "--rows", str(args.rows),
        "--workers", str(args.workers), "--sample", str(args.sample),
        "--calls", str(args.calls),
    ]  # fmt: skip
    if args.redis:
        cmd += ["--redis", args.redis]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{done.stdout}\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sample", type=int, default=512, help="items read by the per-item pattern")
    ap.add_argument("--calls", type=int, default=200, help="lookup calls of 256 keys")
    ap.add_argument("--pg", help="DSN of a running PostgreSQL (default: start one)")
    ap.add_argument("--redis", help="URL of a running Redis (default: start one)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.one:
        result = {
            "per_item": lambda: run_per_item(args.pg, args.rows, args.sample),
            "federated0": lambda: run_federated(args.pg, 0),
            "federatedW": lambda: run_federated(args.pg, args.workers),
            "connectorx": lambda: run_connectorx(args.pg),
            "lookup": lambda: run_lookup(args.pg, args.redis, args.rows, args.calls),
        }[args.one]()
        print(json.dumps(result))
        return 0

    pool = None
    if not args.pg or not args.redis:
        from servers import ServerPool

        pool = ServerPool()
    try:
        if not args.pg:
            args.pg = pool.get("postgres").dsn
        if not args.redis:
            args.redis = pool.get("redis").dsn
        t0 = time.perf_counter()
        asyncio.run(load_pg(args.pg, args.rows))
        load_redis(args.redis)
        print(f"data ready in {time.perf_counter() - t0:.1f} s: {args.rows:,} rows x 16 features")
        res = {m: _child(m, args) for m in ("per_item", "federated0", "federatedW", "connectorx")}
        base = res["per_item"]["rows_s"]
        cx_rate = res["connectorx"]["rows_s"]
        print(f"\ntraining input, {args.rows:,} rows x 16 float8 + label, batches of {BATCH}:")
        names = {
            "per_item": f"per-item LIMIT/OFFSET Dataset ({args.sample} items)",
            "federated0": "FederatedDataset, 0 workers",
            "federatedW": f"FederatedDataset, {args.workers} workers",
            "connectorx": "ConnectorX read-all + torch.from_numpy",
        }
        for m, r in res.items():
            print(
                f"  {names[m]:44} {r['rows_s']:>12,.0f} rows/s  peak +{r['peak_mib']:7.1f} MiB"
                f"  {r['rows_s'] / base:9.1f}x per-item  {r['rows_s'] / cx_rate:5.2f}x connectorx"
            )
        lk = _child("lookup", args)
        f, n = lk["federated_ms"], lk["key_by_key_ms"]
        print(f"\nonline lookup, {LOOKUP_KEYS} keys from PostgreSQL + Redis, {args.calls} calls:")
        print(f"  FeatureLookup  p50 {f['p50']:8.2f} ms  p99 {f['p99']:8.2f} ms")
        print(f"  key by key     p50 {n['p50']:8.2f} ms  p99 {n['p99']:8.2f} ms")
        print(f"  p50 speed-up {n['p50'] / f['p50']:.1f}x, p99 {n['p99'] / f['p99']:.1f}x")
    finally:
        if pool is not None:
            pool.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
