"""Telemetry overhead: the planning-overhead bench (bench/overhead.py) with tracing off (the
OpenTelemetry API alone, its no-op spans) and on (the SDK recording every span and metric).

    python -m bench.telemetry [--runs 1000] [--rounds 2] [--pg DSN]

Each mode runs in a process of its own (a process sets its tracer provider once), the modes
alternate ``--rounds`` times, and the table prints each round's milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import federator

from . import overhead
from .env import SCAN_TABLE, _load_pg, servers

MODES = ("off", "on")
ROWS = 10_000  # the scan table's rows: ids for up to this many runs


def enable_sdk() -> None:
    """Record every span (a batch processor into an exporter that drops them, as a collector
    exporter would send them away) and every metric (a reader that is collected at the end)."""
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    class Drop(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Drop()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


def child(mode: str, pg_dsn: str, runs: int) -> None:
    if mode == "on":
        enable_sdk()
    result = overhead.run(pg_dsn, runs)
    result["telemetry_us"] = telemetry_alone(pg_dsn, runs * 10)
    print(json.dumps(result))


def telemetry_alone(pg_dsn: str, runs: int) -> float:
    """Microseconds per query of the telemetry calls alone (a query span, planning, one
    fragment, the end of the run), on a real plan: the bench's figure without the noise of
    the database and the loop hops."""
    from federator.plan.model import FragmentStats
    from federator.telemetry import QueryTrace

    catalog = {"sources": {"pg": {"kind": "postgres", "dsn": pg_dsn}}}
    with federator.connect(catalog) as fed:
        plan = fed.sql(f"SELECT id, t FROM pg.{SCAN_TABLE} WHERE id = :id", {"id": 1}).plan
    frag, request = plan.fragments[0], plan.requests[plan.fragments[0].id]
    stats = FragmentStats(rows=1, bytes=100, ms=0.5)
    started = time.perf_counter()
    for _ in range(runs):
        query = QueryTrace("SELECT 1")
        with query.planning():
            pass
        run = query.run()
        run.end_fragment(run.fragment(frag, "postgres", request, False), stats, None)
        run.finish(None)
    return (time.perf_counter() - started) / runs * 1e6


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--pg", help="a PostgreSQL DSN (default: start one)")
    ap.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.pg, args.runs)
        return
    started = None
    if not args.pg:
        started = servers.ServerPool().get("postgres")
        args.pg = started.dsn
    try:
        asyncio.run(_load_pg(args.pg, ROWS))
        results = [
            (mode, measure(mode, args.pg, args.runs)) for _ in range(args.rounds) for mode in MODES
        ]
    finally:
        if started is not None:
            started.stop()
    print(table(results, args.runs))


def measure(mode: str, pg_dsn: str, runs: int) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.telemetry", "--child", mode, "--pg", pg_dsn]
    out = subprocess.run(
        [*command, "--runs", str(runs)], check=True, capture_output=True, text=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def table(results: list[tuple[str, dict[str, float]]], runs: int) -> str:
    keys = ["federator_p50", "federator_p99", "plan_cold_p50", "direct_p50", "telemetry_us"]
    lines = [
        f"one-row PostgreSQL query, {runs:,} runs per round, milliseconds "
        "(telemetry_us: microseconds per query of the telemetry calls alone)",
        "",
        "| tracing | " + " | ".join(keys) + " |",
        "|---|" + "---:|" * len(keys),
    ]
    for mode, r in results:
        lines.append(f"| {mode} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
