"""Planning overhead: a one-row single-source query through federator against asyncpg."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import asyncpg

import federator

from .env import SCAN_TABLE
from .timing import percentile


def run(pg_dsn: str, runs: int) -> dict[str, float]:
    sql_direct = f"SELECT id, t FROM {SCAN_TABLE} WHERE id = $1"
    sql_fed = f"SELECT id, t FROM pg.{SCAN_TABLE} WHERE id = :id"

    async def direct() -> list[float]:
        conn = await asyncpg.connect(pg_dsn)
        times = []
        try:
            for i in range(runs):
                t0 = time.perf_counter()
                await conn.fetch(sql_direct, i + 1)
                times.append(time.perf_counter() - t0)
        finally:
            await conn.close()
        return times

    d = asyncio.run(direct())
    catalog = {"sources": {"pg": {"kind": "postgres", "dsn": pg_dsn}}}
    f = []
    with federator.connect(catalog) as fed:
        fed.sql(sql_fed, {"id": 1}).to_arrow()  # open the pool, load the catalog
        for i in range(runs):
            t0 = time.perf_counter()
            fed.sql(sql_fed, {"id": i + 1}).to_arrow()
            f.append(time.perf_counter() - t0)
        cold = planning(fed, sql_fed, runs, cold=True)
        warm = planning(fed, sql_fed, runs, cold=False)
    return {
        "direct_p50": percentile(d, 50) * 1000,
        "direct_p99": percentile(d, 99) * 1000,
        "federator_p50": percentile(f, 50) * 1000,
        "federator_p99": percentile(f, 99) * 1000,
        "plan_cold_p50": percentile(cold, 50) * 1000,
        "plan_cold_p99": percentile(cold, 99) * 1000,
        "plan_warm_p50": percentile(warm, 50) * 1000,
        "plan_warm_p99": percentile(warm, 99) * 1000,
    }


def planning(
    fed: federator.Federation,
    query: str,
    runs: int,
    cold: bool,
    params: Callable[[int], dict[str, Any]] = lambda i: {"id": i + 1},
    forget_estimates: bool = False,
) -> list[float]:
    """Seconds to plan ``query`` with ``params(i)`` on run ``i`` (by default a new ``:id`` each
    run): parse and plan every time (``cold``: the plan cache emptied first, and the sources'
    kept estimates too with ``forget_estimates``) or only bind the kept plan's parameters."""
    from federator.plan.source_estimates import SourceEstimates

    times = []
    for i in range(runs):
        if cold:
            fed.planner._plans.clear()
            if forget_estimates:
                fed.planner._estimates = SourceEstimates()
        t0 = time.perf_counter()
        fed._loop.run(fed.plan_async(query, params(i)))
        times.append(time.perf_counter() - t0)
    return times
