"""Peak memory while streaming a large scan through ``Result.to_batches()``.

Run as ``python -m bench.memory DSN ROWS``: a separate process, so the peak is this scan's.
RSS is sampled every 5 ms from /proc; the figure is the peak above the footprint measured after
connecting (and after one small query, so imports and the pool are already paid for).
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time

import asyncpg

import federator

VIEW = "bench_stream"


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def main(dsn: str, rows: int) -> dict[str, float]:
    async def view() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                f"CREATE OR REPLACE VIEW {VIEW} AS SELECT g::bigint AS id, (g % 1000)::int AS k,"
                " timestamp '2020-01-01' + g * interval '1 second' AS ts, g * 0.5::float8 AS x,"
                " 'name_' || g AS t, g % 2 = 0 AS b, ((g % 1000000) / 100.0)::numeric(12, 2) AS amount"  # noqa: E501
                f" FROM generate_series(1, {int(rows)}) g"
            )
        finally:
            await conn.close()

    asyncio.run(view())
    catalog = {"sources": {"pg": {"kind": "postgres", "dsn": dsn, "bulk_rows": 0}}}
    with federator.connect(catalog) as fed:
        fed.sql(f"SELECT * FROM pg.{VIEW} LIMIT 1").to_arrow()
        base = _rss()
        peak = base
        stop = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not stop.is_set():
                peak = max(peak, _rss())
                time.sleep(0.005)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        t0 = time.perf_counter()
        n = 0
        for batch in fed.sql(f"SELECT * FROM pg.{VIEW}").to_batches():
            n += batch.num_rows
        seconds = time.perf_counter() - t0
        stop.set()
        th.join()
    return {
        "rows": n,
        "seconds": seconds,
        "base_mb": base / 2**20,
        "peak_above_mb": (peak - base) / 2**20,
    }


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
