"""TPC-H on both splits for issue 14's third item, in one run: federator as round two left it
(``[planner] bind_alternatives = false``: each bind chosen from the estimates alone), this
round's defaults (a consumer several producers could bind takes the key set that keeps the
least of it, chosen on the observed keys), and the defaults with the adaptive bind ceiling at
consumer rows / 16 instead of / 40 (``bind_large_ratio = 4``), each against the same query on
one PostgreSQL holding every table; rows moved per source; the machine's load average.

    python -m bench.round3 --sf 0.1 --splits split,reverse --out /tmp/round3.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from typing import Any

import asyncpg

import federator

from . import tpch
from .env import start
from .round2 import _answer, _geomean, _pair, write_report

VARIANTS: dict[str, dict[str, Any]] = {
    "round 2": {"bind_alternatives": False},
    "this": {},
    "ceiling /16": {"bind_large_ratio": 4.0},
    # issue 14, q17: the grouped derived table left unbound, as before branch q17
    "no grouped bind": {"grouped_bind": False},
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.round3", description=__doc__)
    ap.add_argument("--sf", type=float, default=0.1)
    ap.add_argument("--splits", default="split,reverse")
    ap.add_argument("--queries", default="all")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--pg")
    ap.add_argument("--mysql")
    ap.add_argument("--tpch-loaded", action="store_true")
    ap.add_argument("--variants", default="round 2,this,ceiling /16", help="names, comma-separated")
    ap.add_argument("--out", default="bench/results/tpch-round3.md")
    args = ap.parse_args(argv)
    tp = tpch._tp()
    qids = sorted(tp.load_queries()) if args.queries == "all" else args.queries.split(",")
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    env = start(args.pg, args.mysql)
    loads = [os.getloadavg()[0]]
    try:
        loaded = "already loaded" if args.tpch_loaded else _load(env, args.sf)
        lines = []
        for split in args.splits.split(","):
            variants = {n: VARIANTS[n] for n in args.variants.split(",")}
            lines += _run(env, split, qids, args.repeats, variants)
            loads.append(os.getloadavg()[0])
    finally:
        env.stop()
    title = f"# TPC-H SF {args.sf:g}, both splits: binds chosen on observed keys (commit {commit})"
    average = ", ".join(f"{x:.1f}" for x in loads)
    lines = [
        f"Load average (1 min) at the start and after each split: {average} (a shared 2-core "
        "machine).",
        "",
        *lines,
    ]
    write_report(args.out, title, f"bench.round3 {' '.join(argv or sys.argv[1:])}", loaded, lines)
    return 0


def _load(env: Any, sf: float) -> str:
    """The truth and both splits, generated at SF ``sf``."""
    return f"{tpch.load_all(env, sf):.0f} s"


def _run(
    env: Any, split: str, qids: list[str], repeats: int, variants: dict[str, dict[str, Any]]
) -> list[str]:
    tp = tpch._tp()
    queries = tp.load_queries()
    sources = {
        "pg": {"kind": "postgres", "dsn": tp._with_db(env.pg_dsn, tp.PG_DB[split])},
        "my": {"kind": "mysql", "dsn": tp._with_db(env.mysql_dsn, tp.MY_DB[split])},
    }
    loop = asyncio.new_event_loop()
    truth_conn = loop.run_until_complete(asyncpg.connect(tp._with_db(env.pg_dsn, tp.TRUTH_DB)))
    feds = {
        name: federator.connect({"sources": sources, "planner": planner}, timeout=600)
        for name, planner in variants.items()
    }
    rows = [
        f"## Split {split!r} (PostgreSQL: {', '.join(tp.PG_SIDE[split])})",
        "",
        "| query | single PG s | "
        + " | ".join(f"{n} s | ratio" for n in variants)
        + " | correct | "
        + " | ".join(f"rows moved {n}" for n in variants)
        + " |",
        "|---|---:|" + "---:|---:|" * len(variants) + "---|" + "---:|" * len(variants),
    ]
    ratios: dict[str, list[float]] = {n: [] for n in variants}
    try:
        for qid in qids:
            q = queries[qid]
            pg_s, truth = tpch._best(
                lambda q=q: loop.run_until_complete(tp.truth_answer(truth_conn, q)), repeats
            )
            cells, moved, correct = [qid, f"{pg_s:.3f}"], [], []
            sql = q.sql(tp.federated_names(split))
            for name, fed in feds.items():
                seconds, (res, table) = tpch._best(lambda s=sql, f=fed: _answer(f, s), repeats)
                ratios[name].append(seconds / pg_s)
                cells += [f"{seconds:.3f}", f"{seconds / pg_s:.2f}"]
                correct.append(
                    "yes" if tp.compare(q, truth, tp.arrow_answer(table)) is None else "NO"
                )
                moved.append(tpch._moved(res.last_execution))
                print(f"{split} {qid} {name}: {seconds:.3f} s ({seconds / pg_s:.2f}x)", flush=True)
                ex = res.last_execution  # the timed run's plan and stats, not a run more
                print(ex.plan.explain(ex.stats, ex.residual_stats), flush=True)
            cells.append(" / ".join(correct))
            cells += [_pair(m, 0) for m in moved]
            rows.append("| " + " | ".join(cells) + " |")
            print("ROW " + rows[-1], flush=True)  # a run cut short keeps its rows in the log
    finally:
        for fed in feds.values():
            fed.close()
        loop.run_until_complete(truth_conn.close())
        loop.close()
    summary = "; ".join(
        f"{n} {_geomean(r):.2f} (worst {max(r):.2f})" for n, r in ratios.items() if r
    )
    return [*rows, "", f"Geometric mean ratio to single PostgreSQL: {summary}.", ""]


if __name__ == "__main__":
    raise SystemExit(main())
