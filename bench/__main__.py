"""``python -m bench``: start servers, load data, measure everything in one run, print one
report and write it to bench/results/latest.md."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import federator

from . import env as benv
from . import overhead, scan, tpch
from .timing import Measure, geomean

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument(
        "--full",
        action="store_true",
        help="the issue's sizes: 2M-row scans, TPC-H SF1, a 10M-row stream",
    )
    ap.add_argument("--rows", type=int, help="rows in the scan table (default 500k, --full 2M)")
    ap.add_argument("--sf", type=float, help="TPC-H scale factor (default 0.05, --full 1)")
    ap.add_argument("--stream-rows", type=int, help="rows streamed for the memory check")
    ap.add_argument("--repeats", type=int, default=2, help="best of this many runs per figure")
    ap.add_argument("--overhead-runs", type=int, default=1000)
    ap.add_argument("--pg", help="DSN of a running PostgreSQL (default: start one)")
    ap.add_argument("--mysql", help="DSN of a running MariaDB/MySQL (default: start one)")
    ap.add_argument(
        "--skip", default="", help="comma list of parts to skip: scan,tpch,overhead,memory"
    )
    ap.add_argument(
        "--query-timeout", type=float, default=600, help="seconds per TPC-H query and method"
    )
    ap.add_argument(
        "--no-peer", action="store_true", help="leave out DuckDB attach (needs its own venv)"
    )
    ap.add_argument(
        "--tpch-loaded",
        action="store_true",
        help="TPC-H is already loaded at --sf on the servers given by --pg/--mysql: skip the load",
    )
    ap.add_argument("--out", default=str(RESULTS / "latest.md"))
    args = ap.parse_args(argv)
    rows = args.rows or (2_000_000 if args.full else 500_000)
    sf = args.sf or (1.0 if args.full else 0.05)
    stream_rows = args.stream_rows or (10_000_000 if args.full else 2_000_000)
    skip = set(filter(None, args.skip.split(",")))

    started = time.perf_counter()
    e = benv.start(args.pg, args.mysql)
    lines: list[str] = [
        "# federator benchmarks",
        "",
        f"Run {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC on {platform.node()}: "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, federator "
        f"{getattr(federator, '__version__', '?')}; servers on loopback "
        f"{'given by --pg/--mysql' if args.pg or args.mysql else 'started by the run'}. "
        f"Every ratio compares figures measured in this run. Best of {args.repeats} runs.",
        f"Command: `python -m bench {' '.join(argv if argv is not None else sys.argv[1:])}` "
        f"at commit {_commit()}.",
        "",
    ]
    try:
        summary: dict[str, object] = {}
        if "scan" not in skip:
            _log(f"loading the scan table ({rows:,} rows) on both servers")
            asyncio.run(benv.load_scan(e, rows))
            catalog = {"sources": {"pg": {"kind": "postgres", "dsn": e.pg_dsn},
                                   "my": {"kind": "mysql", "dsn": e.mysql_dsn}}}  # fmt: skip
            rows_catalog = {
                "sources": {"pg": {"kind": "postgres", "dsn": e.pg_dsn, "bulk_rows": -1}}
            }
            paging = min(rows, 200_000)
            with federator.connect(catalog) as fed, federator.connect(rows_catalog) as fed_rows:
                for f, src in ((fed, "pg"), (fed, "my"), (fed_rows, "pg")):  # catalog and pools
                    f.sql(f"SELECT id FROM {src}.{benv.SCAN_TABLE} LIMIT 1").to_arrow()
                _log("PostgreSQL scans")
                pg = scan.postgres(e, fed, fed_rows, args.repeats, paging)
                _log("MariaDB scans")
                my = scan.mariadb(e, fed, args.repeats, paging)
            lines += _scan_section("PostgreSQL → Arrow", rows, pg, "federator (bulk path)")
            lines += _scan_section("MariaDB → Arrow", rows, my, "federator")
            summary["pg"] = pg
            summary["my"] = my
        if "overhead" not in skip:
            if "scan" in skip:
                asyncio.run(benv.load_scan(e, rows))
            _log(f"planning overhead ({args.overhead_runs} runs)")
            ov = overhead.run(e.pg_dsn, args.overhead_runs)
            summary["overhead"] = ov
            lines += [
                f"## Planning overhead: one-row single-source query, {args.overhead_runs:,} runs",
                "",
                "| | p50 ms | p99 ms |",
                "|---|---:|---:|",
                f"| asyncpg `fetch` directly | {ov['direct_p50']:.3f} | {ov['direct_p99']:.3f} |",
                f"| federator `fed.sql(...).to_arrow()` | {ov['federator_p50']:.3f} | {ov['federator_p99']:.3f} |",  # noqa: E501
                f"| overhead | {ov['federator_p50'] - ov['direct_p50']:.3f} | "
                f"{ov['federator_p99'] - ov['direct_p99']:.3f} |",
                f"| planning, plan cache cold (parse + plan) | {ov['plan_cold_p50']:.3f} | "
                f"{ov['plan_cold_p99']:.3f} |",
                f"| planning, plan cache warm (bind only) | {ov['plan_warm_p50']:.3f} | "
                f"{ov['plan_warm_p99']:.3f} |",
                "",
            ]
        if "tpch" not in skip:
            _log(f"TPC-H SF {sf}: generating and loading")
            load_s = {} if args.tpch_loaded else tpch.load(e, sf)
            _log(f"TPC-H loaded in {load_s.get('total', 0):.0f} s; running 22 queries")
            res = tpch.run(e, args.repeats, args.query_timeout, peer=not args.no_peer)
            summary["tpch"] = res
            _save_json(Path(args.out).with_suffix(".tpch.json"), sf, res, load_s)
            lines += _tpch_section(sf, res, load_s)
        if "memory" not in skip:
            _log(f"streaming {stream_rows:,} rows through to_batches() in a subprocess")
            out = subprocess.run(
                [sys.executable, "-m", "bench.memory", e.pg_dsn, str(stream_rows)],
                capture_output=True, text=True, cwd=benv.ROOT, check=False,
            )  # fmt: skip
            if out.returncode == 0:
                mem = json.loads(out.stdout.strip().splitlines()[-1])
                summary["memory"] = mem
                lines += [
                    f"## Streaming memory: {mem['rows']:,} rows through `to_batches()`",
                    "",
                    f"Peak RSS above the starting footprint: **{mem['peak_above_mb']:.0f} MB** "
                    f"(start {mem['base_mb']:.0f} MB); {mem['seconds']:.1f} s, "
                    f"{mem['rows'] / mem['seconds'] / 1e6:.2f} M rows/s (bulk path).",
                    "",
                ]
            else:
                lines += ["## Streaming memory", "", f"failed: {out.stderr[-500:]}", ""]
        lines += _targets(summary)
    finally:
        e.stop()
    lines.append(f"Total run time {time.perf_counter() - started:.0f} s.")
    text = "\n".join(lines) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    _log(f"wrote {args.out}")
    return 0


def _save_json(path: Path, sf: float, run: tpch.Run, load_s: dict[str, float]) -> None:
    """The raw TPC-H figures, for a later look (bench/results/*.json is not committed)."""
    data = {"sf": sf, "load_s": load_s, "peer_note": run.peer_note,
            "results": [dataclasses.asdict(r) for r in run.results]}  # fmt: skip
    path.write_text(json.dumps(data, indent=1))


def _commit() -> str:
    """The measured commit: $BENCH_COMMIT (a run from an exported tree), else git's HEAD."""
    if os.environ.get("BENCH_COMMIT"):
        return os.environ["BENCH_COMMIT"]
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, cwd=benv.ROOT, check=False,
    )  # fmt: skip
    return out.stdout.strip() or "unknown"


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _fmt_rate(r: float | None) -> str:
    return f"{r / 1e6:.2f} M" if r else "-"


def _find(ms: list[Measure], prefix: str) -> Measure | None:
    return next((m for m in ms if m.name.startswith(prefix) and m.seconds), None)


def _scan_section(
    title: str, rows: int, shapes: list[tuple[str, list[Measure]]], ours: str
) -> list[str]:
    out = [
        f"## {title}: {rows:,} rows of (bigint, int, timestamp, double, text, boolean, numeric(12,2))",  # noqa: E501
        "",
    ]
    for shape, ms in shapes:
        fed = _find(ms, ours)
        out += [
            f"### {shape}",
            "",
            "| method | rows | seconds | rows/s | federator is x faster |",
            "|---|---:|---:|---:|---:|",
        ]
        for m in ms:
            if m.seconds is None:
                out.append(f"| {m.name} | | | {m.note} | |")
                continue
            ratio = (fed.rows_per_s / m.rows_per_s) if fed and m.rows_per_s else None
            out.append(
                f"| {m.name} | {m.rows:,} | {m.seconds:.3f} | {_fmt_rate(m.rows_per_s)} | "
                f"{ratio:.2f} |"
                if ratio
                else f"| {m.name} | {m.rows:,} | {m.seconds:.3f} | {_fmt_rate(m.rows_per_s)} | |"
            )
        out.append("")
    return out


def _ratio(r: tpch.QueryResult, seconds: float | None) -> float | None:
    return seconds / r.single_pg_s if seconds and r.single_pg_s else None


def _cell(v: float | None, fmt: str) -> str:
    return format(v, fmt) if v else "-"


def _geomeans(res: list[tpch.QueryResult]) -> dict[str, float]:
    """Geometric mean ratio to single PostgreSQL per method, over the queries it answered."""
    return {
        m: geomean([x for r in res if (x := _ratio(r, getattr(r, f"{m}_s")))])
        for m in ("federator", "duck", "glue")
    }


def _tpch_section(sf: float, run: tpch.Run, load_s: dict[str, float]) -> list[str]:
    res = run.results
    out = [
        f"## TPC-H SF {sf}, split (PostgreSQL: lineitem, part, partsupp; MariaDB: the rest)",
        "",
        "Bulk load from the generated `.tbl` files (PostgreSQL `COPY FROM STDIN`, MariaDB "
        "`LOAD DATA LOCAL INFILE`, indexes after the load; the three databases concurrently): "
        + (", ".join(f"{k} {v:.1f} s" for k, v in load_s.items()) or "loaded before this run")
        + ".",
        "",
        "Time per query divided by the same query on one PostgreSQL holding every table. "
        "Correct: the answer equals that PostgreSQL's (tests/integration/tpch `compare`).",
        "",
        "| query | single PG s | federator s | ratio | DuckDB attach s | ratio | glue s | ratio "
        "| correct fed / duck / glue | rows moved pg / my | bytes moved pg / my | result rows |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    yes = lambda ok, s: ("yes" if ok else "NO") if s else "-"  # noqa: E731
    for r in res:
        pg, my = r.moved.get("pg", (0, 0)), r.moved.get("my", (0, 0))
        out.append(
            f"| {r.qid} | {_cell(r.single_pg_s, '.4f')} | {_cell(r.federator_s, '.4f')} | "
            f"{_cell(_ratio(r, r.federator_s), '.2f')} | {_cell(r.duck_s, '.4f')} | "
            f"{_cell(_ratio(r, r.duck_s), '.2f')} | {_cell(r.glue_s, '.4f')} | "
            f"{_cell(_ratio(r, r.glue_s), '.2f')} | {yes(r.correct, r.federator_s)} / "
            f"{yes(r.duck_correct, r.duck_s)} / {yes(r.glue_correct, r.glue_s)} | "
            f"{pg[0]:,} / {my[0]:,} | {pg[1]:,} / {my[1]:,} | {r.result_rows:,} |"
        )
    g = _geomeans(res)
    duck = (
        f"DuckDB attach **{g['duck']:.2f}** (federator ÷ DuckDB = {g['federator'] / g['duck']:.2f})"
        if not run.peer_note
        else f"DuckDB attach {run.peer_note}"
    )
    out += [
        "",
        f"Geometric mean ratio to single PostgreSQL: federator **{g['federator']:.2f}**, {duck}, "
        f"glue baseline **{g['glue']:.2f}** (federator ÷ glue = {g['federator'] / g['glue']:.2f}). "
        f"Correct: federator {sum(r.correct for r in res)}/{len(res)}, DuckDB attach "
        f"{sum(r.duck_correct for r in res)}/{len(res)}, glue {sum(r.glue_correct for r in res)}"
        f"/{len(res)}. A geometric mean covers the queries that method answered; a method's "
        "error or timeout on one query is listed below and the run goes on.",
        "",
        "DuckDB attach: DuckDB 1.5.5 with its postgres and mysql scanner extensions (PyPI, "
        "loaded by file path) in `bench/.peer-venv`, one process per query, best of the repeats "
        "after ATTACH; its CHAR(n) columns are right-trimmed before the comparison, as the truth's "
        "are. The glue casts decimals to double (ConnectorX's decimal128(38,10) sums overflow), "
        "so its exact decimals rarely compare equal.",
        "",
    ]
    out += _time_goes(res)
    errors = [f"- {r.qid}: {r.error.strip()}" for r in res if r.error]
    if errors:
        out += ["Errors:", *errors, ""]
    return out


def _time_goes(res: list[tpch.QueryResult], worst: int = 5) -> list[str]:
    """The worst federator/single-PG ratios with each fragment's rows, bytes and time."""
    ranked = sorted(
        (r for r in res if _ratio(r, r.federator_s)),
        key=lambda r: -(_ratio(r, r.federator_s) or 0),
    )[:worst]
    if not ranked:
        return []
    out = [
        f"### Where federator's time goes: the {len(ranked)} worst ratios",
        "",
        "Per fragment: rows and bytes moved, its time (fragments overlap), bound keys when it "
        "ran as a bind join; then the residual's time and the rows the query returns.",
        "",
    ]
    for r in ranked:
        out.append(
            f"- **{r.qid}** {r.federator_s:.2f} s, {_ratio(r, r.federator_s):.1f}x single PG "
            f"({r.single_pg_s:.2f} s); {r.result_rows:,} result rows; residual "
            f"{r.residual_ms / 1000:.2f} s"
        )
        for f in r.fragments:
            est = f"{f['estimated_rows']:,}" if f["estimated_rows"] is not None else "?"
            keys = f", {f['bound_keys']:,} bound keys" if f["bound_keys"] is not None else ""
            note = f" ({f['note']})" if f["note"] else ""
            out.append(
                f"  - {f['id']} on {f['source']}: {f['rows']:,} rows (estimated {est}), "
                f"{f['bytes'] / 1e6:.1f} MB, {f['ms'] / 1000:.2f} s{keys}{note}"
            )
    out.append("")
    return out


def _targets(s: dict[str, object]) -> list[str]:
    out = ["## Targets", "", "| target | measured | met |", "|---|---|---|"]
    if "pg" in s:
        ms = dict(s["pg"])["full scan"]  # type: ignore[call-overload]
        fed, adbc = _find(ms, "federator (bulk"), _find(ms, "ADBC")
        wire = _find(ms, "binary COPY to /dev/null")
        if fed and adbc:
            r = fed.rows_per_s / adbc.rows_per_s
            out.append(
                f"| PostgreSQL bulk ≥ ADBC rows/s | {r:.2f}x ADBC | {'yes' if r >= 1 else 'no'} |"
            )
        if fed and wire:
            r = fed.rows_per_s / wire.rows_per_s
            out.append(
                f"| PostgreSQL bulk ≥ 60% of the binary COPY wire limit | {r:.0%} | "
                f"{'yes' if r >= 0.6 else 'no'} |"
            )
    if "my" in s:
        ms = dict(s["my"])["full scan"]  # type: ignore[call-overload]
        fed, cx = _find(ms, "federator"), _find(ms, "ConnectorX")
        if fed and cx:
            r = fed.rows_per_s / cx.rows_per_s
            out.append(
                f"| MariaDB bulk ≥ 0.8x ConnectorX | {r:.2f}x | {'yes' if r >= 0.8 else 'no'} |"
            )
    if "tpch" in s:
        run: tpch.Run = s["tpch"]  # type: ignore[assignment]
        res, g = run.results, _geomeans(run.results)
        ok = sum(r.correct for r in res)
        out.append(
            f"| TPC-H every query correct | {ok}/{len(res)} | {'yes' if ok == len(res) else 'no'} |"
        )
        out.append(
            f"| TPC-H geomean ≤ 0.5x glue | {g['federator'] / g['glue']:.2f}x glue | "
            f"{'yes' if g['federator'] <= 0.5 * g['glue'] else 'no'} |"
        )
        if run.peer_note:
            out.append(f"| TPC-H geomean ≤ DuckDB attach | {run.peer_note} | - |")
        else:
            out.append(
                f"| TPC-H geomean ≤ DuckDB attach | {g['federator'] / g['duck']:.2f}x DuckDB "
                f"({g['federator']:.2f} vs {g['duck']:.2f}) | "
                f"{'yes' if g['federator'] <= g['duck'] else 'no'} |"
            )
    if "overhead" in s:
        ov = s["overhead"]
        d = ov["federator_p50"] - ov["direct_p50"]  # type: ignore[index]
        out.append(
            f"| planning overhead ≤ 2 ms at p50 | {d:.2f} ms | {'yes' if d <= 2 else 'no'} |"
        )
    if "memory" in s:
        m = s["memory"]
        out.append(
            f"| {m['rows']:,}-row stream < 500 MB above start | {m['peak_above_mb']:.0f} MB | "  # type: ignore[index]
            f"{'yes' if m['peak_above_mb'] < 500 else 'no'} |"
        )  # type: ignore[index]
    out.append("")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
