"""TPC-H before/after for issue 14's first items, in one run: federator with the sources'
estimates and aggregation before the join turned off (``[planner] source_estimate_seconds = 0,
partial_aggregate = false``: the planner as it was) and on (the defaults), against the same
query on one PostgreSQL holding every table; rows and bytes moved per source.

    python -m bench.round2 --sf 0.1 --queries q03,q04,q05,q10,q13 --out /tmp/round2.md
"""

from __future__ import annotations

import argparse
import asyncio
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg

import federator

from . import tpch
from .env import start

VARIANTS: dict[str, dict[str, Any]] = {
    "before": {"source_estimate_seconds": 0, "partial_aggregate": False},
    "after": {},
}
# --looser-binds: also the defaults with the adaptive bind ceiling at consumer rows / 16
LOOSER_BINDS = {"after, bind_large_ratio 4": {"bind_large_ratio": 4.0}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.round2", description=__doc__)
    ap.add_argument("--sf", type=float, default=0.1)
    ap.add_argument("--queries", default="q03,q04,q05,q10,q13")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--pg")
    ap.add_argument("--mysql")
    ap.add_argument("--tpch-loaded", action="store_true")
    ap.add_argument("--looser-binds", action="store_true")
    ap.add_argument("--out", default="bench/results/tpch-round2.md")
    args = ap.parse_args(argv)
    variants = {**VARIANTS, **(LOOSER_BINDS if args.looser_binds else {})}
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    env = start(args.pg, args.mysql)
    try:
        loaded = "already loaded" if args.tpch_loaded else _load(env, args.sf)
        lines = _run(env, args.queries.split(","), args.repeats, variants)
    finally:
        env.stop()
    title = f"# TPC-H SF {args.sf:g}: before/after (commit {commit})"
    write_report(args.out, title, f"bench.round2 {' '.join(argv or sys.argv[1:])}", loaded, lines)
    return 0


def write_report(out: str, title: str, command: str, loaded: str, lines: list[str]) -> None:
    """The report: a title, how it was run, then ``lines``; printed too."""
    head = [
        title,
        "",
        f"Command: `python -m {command}`; load: {loaded}.",
        "Best of the repeats; ratio = time / single PostgreSQL; rows moved pg / my.",
        "",
    ]
    text = "\n".join(head + lines) + "\n"
    Path(out).write_text(text)
    print(text)


def _load(env: Any, sf: float) -> str:
    seconds = tpch.load(env, sf)
    return f"{seconds['total']:.0f} s"


def _run(env: Any, qids: list[str], repeats: int, variants: dict[str, dict[str, Any]]) -> list[str]:
    tp = tpch._tp()
    queries = tp.load_queries()
    pg_db = tp._with_db(env.pg_dsn, tp.PG_DB[tpch.SPLIT])
    my_db = tp._with_db(env.mysql_dsn, tp.MY_DB[tpch.SPLIT])
    sources = {"pg": {"kind": "postgres", "dsn": pg_db}, "my": {"kind": "mysql", "dsn": my_db}}
    loop = asyncio.new_event_loop()
    truth_conn = loop.run_until_complete(asyncpg.connect(tp._with_db(env.pg_dsn, tp.TRUTH_DB)))
    feds = {
        name: federator.connect({"sources": sources, "planner": planner}, timeout=600)
        for name, planner in variants.items()
    }
    names = list(variants)
    rows = [
        "| query | single PG s | "
        + " | ".join(f"{n} s | ratio" for n in names)
        + " | correct | "
        + " | ".join(f"rows moved {n}" for n in names)
        + " | "
        + " | ".join(f"bytes moved {n}" for n in names)
        + " |",
        "|---|---:|" + "---:|---:|" * len(names) + "---|" + "---:|" * (2 * len(names)),
    ]
    ratios: dict[str, list[float]] = {n: [] for n in variants}
    planning: dict[str, list[float]] = {}
    try:
        for qid in qids:
            q = queries[qid]
            pg_s, truth = tpch._best(
                lambda q=q: loop.run_until_complete(tp.truth_answer(truth_conn, q)), repeats
            )
            cells = [qid, f"{pg_s:.3f}"]
            moved, correct = [], []
            for name, fed in feds.items():
                sql = q.sql(tp.federated_names(tpch.SPLIT))
                planning.setdefault(name, []).append(_planning_ms(fed, sql))
                seconds, (res, table) = tpch._best(lambda s=sql, f=fed: _answer(f, s), repeats)
                ratios[name].append(seconds / pg_s)
                cells += [f"{seconds:.3f}", f"{seconds / pg_s:.2f}"]
                diff = tp.compare(q, truth, tp.arrow_answer(table))
                correct.append("yes" if diff is None else "NO")
                m = tpch._moved(res.last_execution)
                moved.append(m)
                print(f"{qid} {name}: {seconds:.3f} s, moved {m}", flush=True)
                print(fed.explain(sql, analyze=True), flush=True)
            cells.append(" / ".join(correct))
            cells += [_pair(m, 0) for m in moved] + [_pair(m, 1) for m in moved]
            rows.append("| " + " | ".join(cells) + " |")
    finally:
        for fed in feds.values():
            fed.close()
        loop.run_until_complete(truth_conn.close())
        loop.close()
    means = ", ".join(f"{n} {_geomean(r):.2f}" for n, r in ratios.items())
    plans = "; ".join(
        f"{n}: " + ", ".join(f"{q} {ms:.0f}" for q, ms in zip(qids, v, strict=True))
        for n, v in planning.items()
    )
    return [
        *rows,
        "",
        f"Geometric mean ratio to single PostgreSQL: {means}.",
        "",
        f"Planning ms, cold (no plan or estimate kept; median of 3): {plans}.",
    ]


def _planning_ms(fed: Any, sql: str) -> float:
    """Planning time with nothing kept: the plan cache and the sources' estimates cold."""
    from federator.plan.source_estimates import SourceEstimates

    times = []
    for _ in range(3):
        fed.planner._plans.clear()
        fed.planner._estimates = SourceEstimates()
        t = time.perf_counter()
        fed.explain(sql)
        times.append((time.perf_counter() - t) * 1000)
    return sorted(times)[1]


def _answer(fed: Any, sql: str) -> tuple[Any, Any]:
    res = fed.sql(sql)
    return res, res.to_arrow()


def _pair(moved: dict[str, tuple[int, int]], i: int) -> str:
    return " / ".join(f"{moved.get(s, (0, 0))[i]:,}" for s in ("pg", "my"))


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else float("nan")


if __name__ == "__main__":
    raise SystemExit(main())
