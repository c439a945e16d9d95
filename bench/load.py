"""Load: many concurrent mixed queries against real PostgreSQL and MariaDB for a while.

``python -m bench.load`` is a short smoke run (10 s, 50 concurrent);
``python -m bench.load --seconds 60 --concurrency 200`` is the issue's load (issue 19, item 11):
200 clients, each sending its next query when its answer comes (a closed loop, so the mean
latency is about 200 / throughput); ``--rate 60 --concurrency 200`` is an open loop instead:
60 queries arrive per second, at most 200 in flight, latency counted from each arrival.

The mix, drawn at random per query (``--mix``): single-source PostgreSQL (a key lookup),
single-source MariaDB (an aggregate over one key), a small cross-source join PostgreSQL x
MariaDB with its aggregate on the residual (uncached), and the same join with fixed parameters
served from the join cache. Every answer is checked against values computed from the generated
data. The report gives throughput, p50/p99 per kind, the first cross-source query after
``connect()``, server connections per source (sampled from ``pg_stat_activity`` and
``information_schema.PROCESSLIST``), RSS at start, peak, end and per quarter of the run (flat, or
growing?); it is printed and written to
``bench/results/load.md`` (``--out``).

Servers start the way ``python -m bench`` starts them (tests/servers.py), or come from
``--pg DSN --mysql DSN``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import os
import platform
import random
import sys
import threading
import time
import tracemalloc
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomysql
import asyncpg

import federator

from . import env as benv
from .timing import percentile

RESULTS = Path(__file__).parent / "results"
N_CUSTOMERS = 2_000
N_ORDERS = 20_000
SPAN = 10  # customers per cross-source query: ids lo .. lo + SPAN - 1
SEGMENTS = ("a", "b", "c", "d")

PG_SQL = "SELECT id, segment FROM pg.load_customers WHERE id = :id"
MY_SQL = "SELECT count(*) AS n, sum(qty) AS q FROM my.load_orders WHERE customer_id = :id"
CROSS_SQL = (
    "SELECT c.segment, count(*) AS n, sum(o.qty) AS q"
    " FROM pg.load_customers c JOIN my.load_orders o ON o.customer_id = c.id"
    " WHERE c.id BETWEEN :lo AND :hi GROUP BY c.segment ORDER BY c.segment"
)
KINDS = ("pg", "my", "cross", "cached")
DEFAULT_MIX = "pg=2,my=2,cross=5,cached=1"


def segment(cid: int) -> str:
    return SEGMENTS[cid % len(SEGMENTS)]


def qty(oid: int) -> int:
    return oid % 7


# ---- data and truth ----------------------------------------------------------------------
async def load(pg_dsn: str, mysql_dsn: str) -> None:
    """``load_customers`` on PostgreSQL, ``load_orders`` on MariaDB (recreated each run)."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS load_customers")
        await conn.execute("CREATE TABLE load_customers (id int PRIMARY KEY, segment text)")
        await conn.copy_records_to_table(
            "load_customers", records=[(i, segment(i)) for i in range(N_CUSTOMERS)]
        )
        await conn.execute("ANALYZE load_customers")
    finally:
        await conn.close()
    my = await aiomysql.connect(**benv.mysql_args(mysql_dsn), autocommit=True)
    try:
        async with my.cursor() as cur:
            await cur.execute("DROP TABLE IF EXISTS load_orders")
            await cur.execute(
                "CREATE TABLE load_orders (id INT PRIMARY KEY, customer_id INT, qty INT,"
                " KEY (customer_id))"
            )
            rows = [(i, i % N_CUSTOMERS, qty(i)) for i in range(N_ORDERS)]
            await cur.executemany("INSERT INTO load_orders VALUES (%s, %s, %s)", rows)
            await cur.execute("ANALYZE TABLE load_orders")
    finally:
        my.close()


def orders_of(cid: int) -> list[int]:
    return list(range(cid, N_ORDERS, N_CUSTOMERS))


def truth_pg(cid: int) -> list[tuple[Any, ...]]:
    return [(cid, segment(cid))]


def truth_my(cid: int) -> list[tuple[Any, ...]]:
    ids = orders_of(cid)
    return [(len(ids), sum(qty(i) for i in ids) if ids else None)]


def truth_cross(lo: int, hi: int) -> list[tuple[Any, ...]]:
    out: dict[str, list[int]] = {}
    for cid in range(lo, hi + 1):
        ids = orders_of(cid)
        acc = out.setdefault(segment(cid), [0, 0])
        acc[0] += len(ids)
        acc[1] += sum(qty(i) for i in ids)
    return [(s, n, q) for s, (n, q) in sorted(out.items()) if n]


def normalized(table: Any) -> list[tuple[Any, ...]]:
    """Rows with numbers as ints (a MariaDB SUM is DECIMAL, DuckDB's is HUGEINT)."""
    rows = []
    for row in zip(*(c.to_pylist() for c in table.columns), strict=True):
        rows.append(tuple(int(v) if hasattr(v, "as_integer_ratio") else v for v in row))
    return rows


# ---- one query ---------------------------------------------------------------------------
@dataclass
class Query:
    kind: str
    sql: str
    params: dict[str, Any]
    truth: list[tuple[Any, ...]]
    max_staleness: float | None  # 0: bypass the cache; None: the catalog's default


def draw(kind: str, rng: random.Random) -> Query:
    if kind == "pg":
        cid = rng.randrange(N_CUSTOMERS)
        return Query(kind, PG_SQL, {"id": cid}, truth_pg(cid), 0)
    if kind == "my":
        cid = rng.randrange(N_CUSTOMERS)
        return Query(kind, MY_SQL, {"id": cid}, truth_my(cid), 0)
    if kind == "cross":
        lo = rng.randrange(N_CUSTOMERS - SPAN)
        hi = lo + SPAN - 1
        return Query(kind, CROSS_SQL, {"lo": lo, "hi": hi}, truth_cross(lo, hi), 0)
    return Query(kind, CROSS_SQL, {"lo": 100, "hi": 100 + SPAN - 1}, CACHED_TRUTH, None)


CACHED_TRUTH = truth_cross(100, 100 + SPAN - 1)


def parse_mix(text: str) -> list[tuple[str, float]]:
    mix = []
    for part in filter(None, text.split(",")):
        kind, _, weight = part.partition("=")
        if kind not in KINDS:
            raise SystemExit(f"--mix: unknown kind {kind!r} (known: {', '.join(KINDS)})")
        mix.append((kind, float(weight or 1)))
    return mix


# ---- the run -----------------------------------------------------------------------------
@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in KINDS})
    wrong: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    errors: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    first_error: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, q: Query, seconds: float, table: Any | None, error: str = "") -> None:
        with self.lock:
            if table is None:
                self.errors[q.kind] += 1
                self.first_error = self.first_error or error
                return
            self.latencies[q.kind].append(seconds)
            if normalized(table) != q.truth:
                self.wrong[q.kind] += 1

    def all_latencies(self) -> list[float]:
        return [s for v in self.latencies.values() for s in v]


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Monitor:
    """Samples server connections (peak) and this process's RSS (peak) every ``every`` s."""

    def __init__(self, pg_dsn: str, mysql_dsn: str, every: float = 0.5):
        self.pg_dsn, self.mysql_dsn, self.every = pg_dsn, mysql_dsn, every
        self.peak = {"pg": 0, "my": 0}
        self.last = {"pg": 0, "my": 0}
        self.peak_rss = 0
        self.rss_samples: list[tuple[float, int]] = []  # (perf_counter, bytes)
        self._stop = asyncio.Event()

    async def counts(self) -> dict[str, int]:
        pg = await asyncpg.connect(self.pg_dsn)
        my = await aiomysql.connect(**benv.mysql_args(self.mysql_dsn), autocommit=True)
        try:
            return await self._counts(pg, my)
        finally:
            await pg.close()
            my.close()

    async def _counts(self, pg: Any, my: Any) -> dict[str, int]:
        n_pg = await pg.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        async with my.cursor() as cur:
            await cur.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
                " WHERE DB = DATABASE() AND ID <> CONNECTION_ID()"
            )
            (n_my,) = await cur.fetchone()
        return {"pg": int(n_pg), "my": int(n_my)}

    async def run(self) -> None:
        pg = await asyncpg.connect(self.pg_dsn)
        my = await aiomysql.connect(**benv.mysql_args(self.mysql_dsn), autocommit=True)
        try:
            while not self._stop.is_set():
                self.last = await self._counts(pg, my)
                for k, v in self.last.items():
                    self.peak[k] = max(self.peak[k], v)
                now_rss = rss()
                self.peak_rss = max(self.peak_rss, now_rss)
                self.rss_samples.append((time.perf_counter(), now_rss))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.every)
        finally:
            await pg.close()
            my.close()

    def stop(self) -> None:
        self._stop.set()


def catalog(pg_dsn: str, mysql_dsn: str, timeout: float) -> dict[str, Any]:
    return {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg_dsn},
            "my": {"kind": "mysql", "dsn": mysql_dsn},
        },
        "cache": {"enabled": True, "ttl": 3600},
        "timeout": timeout,
    }


def first_query(cat: dict[str, Any]) -> tuple[float, float]:
    """Seconds of ``connect()`` and of the first cross-source query after it (a fresh
    federation: pools, catalog reads and the residual engine's first use all count)."""
    t0 = time.perf_counter()
    fed = federator.connect(cat)
    t1 = time.perf_counter()
    try:
        q = draw("cross", random.Random(1))
        table = fed.sql(q.sql, q.params, max_staleness=0).to_arrow()
        t2 = time.perf_counter()
        if normalized(table) != q.truth:
            raise SystemExit("the first cross-source query gave a wrong answer")
    finally:
        fed.close()
    return t1 - t0, t2 - t1


async def run_async_workers(
    fed: Any, mix: list[tuple[str, float]], concurrency: int, seconds: float, tally: Tally
) -> None:
    kinds, weights = zip(*mix, strict=True)
    end = time.perf_counter() + seconds

    async def worker(i: int) -> None:
        rng = random.Random(i)
        while time.perf_counter() < end:
            q = draw(rng.choices(kinds, weights)[0], rng)
            t0 = time.perf_counter()
            try:
                result = await fed.sql_async(q.sql, q.params, max_staleness=q.max_staleness)
                table = await result.to_arrow_async()
            except Exception as e:
                tally.note(q, 0, None, f"{type(e).__name__}: {e}")
                continue
            tally.note(q, time.perf_counter() - t0, table)

    await asyncio.gather(*(worker(i) for i in range(concurrency)))


async def run_open_loop(
    fed: Any,
    mix: list[tuple[str, float]],
    rate: float,
    concurrency: int,
    seconds: float,
    tally: Tally,
) -> None:
    """Queries arrive at ``rate`` per second whatever the answers' pace (at most
    ``concurrency`` in flight); a latency counts from the arrival, waiting for a slot included."""
    kinds, weights = zip(*mix, strict=True)
    rng = random.Random(0)
    slots = asyncio.Semaphore(concurrency)
    start = time.perf_counter()
    running: set[asyncio.Task[None]] = set()

    async def one(q: Query, arrival: float) -> None:
        try:
            result = await fed.sql_async(q.sql, q.params, max_staleness=q.max_staleness)
            table = await result.to_arrow_async()
        except Exception as e:
            tally.note(q, 0, None, f"{type(e).__name__}: {e}")
            return
        finally:
            slots.release()
        tally.note(q, time.perf_counter() - arrival, table)

    for i in range(int(rate * seconds)):
        arrival = start + i / rate
        await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
        await slots.acquire()
        task = asyncio.create_task(one(draw(rng.choices(kinds, weights)[0], rng), arrival))
        running.add(task)
        task.add_done_callback(running.discard)
    await asyncio.gather(*running)


def run_thread_workers(
    fed: Any, mix: list[tuple[str, float]], threads: int, seconds: float, tally: Tally
) -> None:
    kinds, weights = zip(*mix, strict=True)
    end = time.perf_counter() + seconds

    def worker(i: int) -> None:
        rng = random.Random(i)
        while time.perf_counter() < end:
            q = draw(rng.choices(kinds, weights)[0], rng)
            t0 = time.perf_counter()
            try:
                table = fed.sql(q.sql, q.params, max_staleness=q.max_staleness).to_arrow()
            except Exception as e:
                tally.note(q, 0, None, f"{type(e).__name__}: {e}")
                continue
            tally.note(q, time.perf_counter() - t0, table)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()


@dataclass
class Outcome:
    seconds: float
    tally: Tally
    rss_start: int
    rss_peak: int
    rss_end: int
    rss_quarters: list[int]  # the largest RSS sampled in each quarter of the run
    conns_peak: dict[str, int]
    conns_after: dict[str, int]
    connect_s: float
    first_cross_s: float
    traced: list[str] = field(default_factory=list)  # --tracemalloc: what grew after warm-up


def measure(
    pg_dsn: str,
    mysql_dsn: str,
    mix: list[tuple[str, float]],
    concurrency: int,
    threads: int,
    rate: float,
    seconds: float,
    timeout: float,
    trace: int = 0,
) -> Outcome:
    cat = catalog(pg_dsn, mysql_dsn, timeout)
    connect_s, first_cross_s = first_query(cat)
    tally = Tally()
    with federator.connect(cat) as fed:
        for kind in KINDS:  # pools open, catalog read, plans cached: the steady state
            q = draw(kind, random.Random(0))
            fed.sql(q.sql, q.params, max_staleness=q.max_staleness).to_arrow()
        rss_start = rss()
        tracer = Tracer(trace, seconds / 4)

        async def main() -> tuple[float, dict[str, int], list[int]]:
            monitor = Monitor(pg_dsn, mysql_dsn)
            sampling = asyncio.create_task(monitor.run())
            t0 = time.perf_counter()
            tracer.begin()
            if threads:
                await asyncio.to_thread(run_thread_workers, fed, mix, threads, seconds, tally)
            elif rate:
                await run_open_loop(fed, mix, rate, concurrency, seconds, tally)
            else:
                await run_async_workers(fed, mix, concurrency, seconds, tally)
            elapsed = time.perf_counter() - t0
            tracer.end()
            monitor.stop()
            await sampling
            return elapsed, monitor.peak | {"rss": monitor.peak_rss}, quarters(monitor, t0)

        elapsed, peaks, rss_quarters = asyncio.run(main())
        rss_end = rss()
    conns_after = asyncio.run(Monitor(pg_dsn, mysql_dsn).counts())
    return Outcome(
        elapsed,
        tally,
        rss_start,
        max(peaks.pop("rss"), rss_end),
        rss_end,
        rss_quarters,
        peaks,
        conns_after,
        connect_s,
        first_cross_s,
        tracer.lines,
    )


class Tracer:
    """``--tracemalloc N``: Python allocations traced from the start of the load; a snapshot
    once ``warm`` seconds have passed (pools, engine, allocator warmed up) and one at the end;
    the N source lines whose live memory grew most in between."""

    def __init__(self, top: int, warm: float):
        self.top, self.warm = top, warm
        self.lines: list[str] = []
        self._first: tracemalloc.Snapshot | None = None
        self._task: asyncio.Task[None] | None = None
        self._sizes: list[int] = []

    def begin(self) -> None:
        if self.top:
            tracemalloc.start(1)
            self._task = asyncio.create_task(self._snapshot_after_warm_up())

    async def _snapshot_after_warm_up(self) -> None:
        await asyncio.sleep(self.warm)
        self._sizes.append(tracemalloc.get_traced_memory()[0])
        self._first = tracemalloc.take_snapshot()

    def end(self) -> None:
        if not self.top or self._first is None:
            return
        last = tracemalloc.take_snapshot()
        end_size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        mib = 1024 * 1024
        grown = last.compare_to(self._first, "lineno")
        self.lines = [
            f"Python memory traced by tracemalloc: {self._sizes[0] / mib:.1f} MiB after "
            f"{self.warm:.0f} s (warm-up), {end_size / mib:.1f} MiB at the end; the lines whose "
            "live memory grew most in between:",
            "",
            "| grew | live at end | allocations | where |",
            "|---:|---:|---:|---|",
        ]
        for stat in grown[: self.top]:
            frame = stat.traceback[0]
            where = f"{Path(frame.filename).name}:{frame.lineno}"
            self.lines.append(
                f"| {stat.size_diff / 1024:+,.0f} KiB | {stat.size / 1024:,.0f} KiB"
                f" | {stat.count_diff:+,} | {where} |"
            )


def quarters(monitor: Monitor, t0: float) -> list[int]:
    samples = [(t - t0, b) for t, b in monitor.rss_samples if t >= t0]
    if not samples:
        return []
    span = max(t for t, _ in samples) or 1.0
    out = [0, 0, 0, 0]
    for t, b in samples:
        q = min(3, int(4 * t / span))
        out[q] = max(out[q], b)
    return out


# ---- report ------------------------------------------------------------------------------
def report(o: Outcome, args: argparse.Namespace, command: str) -> list[str]:
    t = o.tally
    total = len(t.all_latencies())
    how = f"{args.concurrency} concurrent clients, each sending its next query on an answer"
    if args.threads:
        how = f"{args.threads} threads of the sync API, each sending its next query on an answer"
    elif args.rate:
        how = f"{args.rate:g} queries/s arriving (open loop, at most {args.concurrency} in flight)"
    mib = 1024 * 1024
    lines = [
        "# federator load",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}; PostgreSQL and MariaDB on "
        f"loopback {'given by --pg/--mysql' if args.pg or args.mysql else 'started by the run'}.",
        f"Command: `{command}` at commit {_commit()}.",
        "",
        f"{how} for {o.seconds:.1f} s, mix {args.mix}; every answer checked against values "
        "computed from the generated data.",
        "",
        f"**Throughput {total / o.seconds:.1f} queries/s**, p50 "
        f"{_ms(percentile(t.all_latencies(), 50))}, p99 {_ms(percentile(t.all_latencies(), 99))}"
        f"; wrong answers {sum(t.wrong.values())}, errors {sum(t.errors.values())}.",
        "",
        "| kind | queries | queries/s | p50 | p99 | max | wrong | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in KINDS:
        lat = t.latencies[kind]
        if not lat and not t.errors[kind]:
            continue
        lines.append(
            f"| {kind} | {len(lat):,} | {len(lat) / o.seconds:.1f} | {_ms(percentile(lat, 50))}"
            f" | {_ms(percentile(lat, 99))} | {_ms(max(lat, default=0))} | {t.wrong[kind]}"
            f" | {t.errors[kind]} |"
        )
    lines += [
        "",
        f"First cross-source query after `connect()`: {_ms(o.first_cross_s)} "
        f"(`connect()` itself {_ms(o.connect_s)}).",
        "",
        f"Server connections (peak during the run / after close): PostgreSQL "
        f"{o.conns_peak['pg']} / {o.conns_after['pg']}, MariaDB {o.conns_peak['my']} / "
        f"{o.conns_after['my']}.",
        "",
        f"RSS: {o.rss_start / mib:.0f} MiB at start (after one query of each kind), "
        f"{o.rss_peak / mib:.0f} MiB peak, {o.rss_end / mib:.0f} MiB at end; the largest in each "
        f"quarter of the run: {', '.join(f'{b / mib:.0f}' for b in o.rss_quarters)} MiB.",
    ]
    if o.traced:
        lines += ["", *o.traced]
    if t.first_error:
        lines += ["", f"First error: {t.first_error[:300]}"]
    return lines


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"


def _commit() -> str:
    import subprocess

    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=10, help="how long to load (default 10)")
    ap.add_argument("--concurrency", type=int, default=50, help="concurrent asyncio queries")
    ap.add_argument("--threads", type=int, default=0, help="use N threads of the sync API instead")
    ap.add_argument("--rate", type=float, default=0, help="open loop: queries arriving per second")
    ap.add_argument("--mix", default=DEFAULT_MIX, help=f"kind=weight,... (default {DEFAULT_MIX})")
    ap.add_argument("--timeout", type=float, default=30, help="federator timeout per query")
    ap.add_argument("--pg", help="DSN of a running PostgreSQL (default: start one)")
    ap.add_argument("--mysql", help="DSN of a running MariaDB/MySQL (default: start one)")
    ap.add_argument("--out", default=str(RESULTS / "load.md"))
    ap.add_argument(
        "--tracemalloc", type=int, default=0, metavar="N", help="report the N lines grown most"
    )
    args = ap.parse_args(argv)
    mix = parse_mix(args.mix)
    command = "python -m bench.load " + " ".join(argv if argv is not None else sys.argv[1:])
    e = benv.start(args.pg, args.mysql)
    try:
        asyncio.run(load(e.pg_dsn, e.mysql_dsn))
        outcome = measure(
            e.pg_dsn,
            e.mysql_dsn,
            mix,
            args.concurrency,
            args.threads,
            args.rate,
            args.seconds,
            args.timeout,
            args.tracemalloc,
        )
    finally:
        e.stop()
    text = "\n".join(report(outcome, args, command.strip())) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    t = outcome.tally
    return 1 if sum(t.wrong.values()) or sum(t.errors.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
