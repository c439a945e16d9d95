"""Issue 14's bench report in one run: TPC-H on both splits by federator, the glue baseline and
DuckDB attach against one PostgreSQL holding every table; the 5 worst queries' fragments; a
scale curve over several scale factors; planning overhead with the plan cache cold and warm.

    python -m bench.round4 --sfs 0.1,1,3 --main-sf 1 --out bench/results/tpch-round4.md
    python -m bench.round4 --sfs 0.1,1,3 --pg DSN --mysql DSN --tpch-loaded   # SF 1 on them

The main scale factor (``--main-sf``) runs ``--methods`` and the planning overhead; the others
run ``--curve-methods`` on servers the run starts, loads and stops. Each finished query appends
one JSON line per method to ``<out>.jsonl`` and the markdown report is rebuilt from that file,
so a crash loses nothing; ``--resume`` skips what the file already holds.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import federator

from . import duckdb_peer, tpch
from .__main__ import _time_goes
from .env import ROOT, Env, start
from .overhead import planning
from .timing import geomean, percentile

ABOVE = 3.0  # the issue's bound: no query above 3x single PostgreSQL
METHOD_NAMES = {"federator": "federator", "glue": "glue", "duckdb": "DuckDB attach"}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sfs = [float(x) for x in args.sfs.split(",")]
    main_sf = args.main_sf if args.main_sf is not None else (1.0 if 1.0 in sfs else sfs[0])
    if args.tpch_loaded and not (args.pg and args.mysql):
        raise SystemExit("--tpch-loaded needs --pg and --mysql: the servers holding SF --main-sf")
    out = Path(args.out)
    log = out.with_suffix(".jsonl")
    if not args.resume:
        log.unlink(missing_ok=True)
    done = done_keys(read_rows(log))
    command = f"python -m bench.round4 {' '.join(argv if argv is not None else sys.argv[1:])}"
    _append(log, {"kind": "run", "commit": _commit(), "command": command,
                  "date": f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC",
                  "loadavg": os.getloadavg()[0]})  # fmt: skip
    peer_note = _peer_note(args)
    if peer_note:
        _append(log, {"kind": "note", "text": f"DuckDB attach {peer_note}"})
    qids = sorted(tpch._tp().load_queries()) if args.queries == "all" else args.queries.split(",")
    splits = args.splits.split(",")
    for sf in sfs:
        methods = _methods(args.methods if sf == main_sf else args.curve_methods, peer_note)
        plan_overhead = sf == main_sf and args.planning_runs > 0
        todo = _todo(done, sf, splits, qids, methods, plan_overhead)
        if not todo:
            continue
        with _servers(sf, sf == main_sf, args, log) as env:
            for split in splits:
                _run_split(env, sf, split, qids, methods, args, log, done, out)
                _append(log, {"kind": "loadavg", "sf": sf, "split": split,
                              "loadavg": os.getloadavg()[0]})  # fmt: skip
            if plan_overhead:
                _planning(env, sf, splits[0], qids, args, log, done)
    _write(out, log)
    return 0


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.round4", description=__doc__)
    ap.add_argument("--sfs", default="0.1,1,3", help="scale factors, comma-separated")
    ap.add_argument("--main-sf", type=float, help="runs --methods and planning (default 1)")
    ap.add_argument("--splits", default="split,reverse")
    ap.add_argument("--queries", default="all")
    ap.add_argument("--methods", default="federator,glue,duckdb")
    ap.add_argument("--curve-methods", default="federator", help="methods at the other SFs")
    ap.add_argument("--repeats", type=int, default=1, help="best of this many runs")
    ap.add_argument("--query-timeout", type=float, default=300, help="seconds per query/method")
    ap.add_argument("--planning-runs", type=int, default=50, help="warm plans per query; 0: none")
    ap.add_argument("--cold-runs", type=int, default=3, help="cold plans per query")
    ap.add_argument("--pg", help="DSN of the PostgreSQL holding --main-sf (default: start one)")
    ap.add_argument("--mysql", help="DSN of the MariaDB holding --main-sf (default: start one)")
    ap.add_argument("--tpch-loaded", action="store_true", help="--main-sf is loaded on them")
    ap.add_argument("--resume", action="store_true", help="skip what <out>.jsonl already holds")
    ap.add_argument("--out", default="bench/results/tpch-round4.md")
    return ap


# ---- running --------------------------------------------------------------------------------
@contextlib.contextmanager
def _servers(sf: float, main: bool, args: argparse.Namespace, log: Path) -> Iterator[Env]:
    """The servers holding SF ``sf``: those given for the main SF (loaded unless
    --tpch-loaded), else ones started, loaded and stopped here."""
    env = start(args.pg, args.mysql) if main else start(None, None)
    try:
        if not (main and args.tpch_loaded):
            seconds = tpch.load_all(env, sf)
            _append(log, {"kind": "load", "sf": sf, "seconds": seconds})
        yield env
    finally:
        env.stop()  # only the servers this run started


def _run_split(
    env: Env, sf: float, split: str, qids: list[str], methods: list[str],
    args: argparse.Namespace, log: Path, done: set[tuple[Any, ...]], out: Path,
) -> None:  # fmt: skip
    """Every query of ``split`` by every method not done yet; the report after each query."""
    with tpch.Measurer(env, split, args.repeats, args.query_timeout) as m:
        for qid in qids:
            wanted = _wanted(done, sf, split, qid, methods)
            if not wanted:
                continue
            pg, truth = m.truth(qid)  # its answer is needed even when its time is kept
            results = [pg] if "pg" in wanted else []
            for method in wanted[1:] if "pg" in wanted else wanted:
                no_truth = tpch.MethodResult(method, error=f"no truth to check: {pg.error}")
                results.append(m.measure(method, qid, truth) if truth is not None else no_truth)
            for r in results:
                _append(log, {"kind": "query", "sf": sf, "split": split, "query": qid,
                              **dataclasses.asdict(r)})  # fmt: skip
                done.add((sf, split, qid, r.method))
            _progress(sf, split, qid, results)
            _write(out, log)


def _planning(
    env: Env, sf: float, split: str, qids: list[str], args: argparse.Namespace, log: Path,
    done: set[tuple[Any, ...]],
) -> None:  # fmt: skip
    """Planning ms per query: cold (plan cache and the sources' estimates empty), warm (the
    same text again) and warm with a new parameter value where the query has a number to
    make one."""
    tp = tpch._tp()
    queries = tp.load_queries()
    with federator.connect(tpch.split_catalog(env, split), timeout=args.query_timeout) as fed:
        for qid in qids:
            if (sf, split, qid, "planning") in done:
                continue
            sql = queries[qid].sql(tp.federated_names(split))
            row: dict[str, Any] = {"kind": "planning", "sf": sf, "split": split, "query": qid}
            try:
                row.update(_plan_times(fed, sql, args.cold_runs, args.planning_runs))
            except Exception as e:
                row["error"] = tpch._why(e)
            _append(log, row)
            print(f"[round4] planning {qid}: {_planning_line(row)}", file=sys.stderr, flush=True)


def _plan_times(
    fed: federator.Federation, sql: str, cold_runs: int, warm_runs: int
) -> dict[str, list[float]]:
    """Planning ms of ``sql``: ``cold_ms``, ``warm_ms`` and ``param_ms`` (empty when the query
    has no integer to make a parameter of)."""
    ms = lambda seconds: [x * 1000 for x in seconds]  # noqa: E731
    no_params = lambda i: {}  # noqa: E731
    planning(fed, sql, 1, cold=False, params=no_params)  # the catalog's tables, untimed
    out = {
        "cold_ms": ms(planning(fed, sql, cold_runs, True, no_params, forget_estimates=True)),
        "warm_ms": ms(planning(fed, sql, warm_runs, False, no_params)),
        "param_ms": [],
    }
    with_param = parametrized(sql)
    if with_param:
        text, first = with_param
        planning(fed, text, 1, cold=False, params=lambda i: {"p": first})
        new_value = lambda i: {"p": first + 1 + i}  # noqa: E731
        out["param_ms"] = ms(planning(fed, text, warm_runs, False, new_value))
    return out


def parametrized(sql: str) -> tuple[str, int] | None:
    """``sql`` with its first compared integer literal as the parameter ``:p``, and that value.

    >>> parametrized("SELECT a FROM t WHERE b < 24 AND c > 1.5")
    ('SELECT a FROM t WHERE b < :p AND c > 1.5', 24)
    """
    m = re.search(r"(<=|>=|<|>|=)\s*(\d+)\b(?!\s*\.)", sql)
    if not m:
        return None
    return sql[: m.start(2)] + ":p" + sql[m.end(2) :], int(m.group(2))


def _todo(
    done: set[tuple[Any, ...]], sf: float, splits: list[str], qids: list[str],
    methods: list[str], plan_overhead: bool,
) -> bool:  # fmt: skip
    """Whether anything of SF ``sf`` is left to measure (else its servers are not started)."""
    if any(_wanted(done, sf, s, q, methods) for s in splits for q in qids):
        return True
    return plan_overhead and any((sf, splits[0], q, "planning") not in done for q in qids)


def _wanted(
    done: set[tuple[Any, ...]], sf: float, split: str, qid: str, methods: list[str]
) -> list[str]:
    """The methods ("pg" first: the truth) of one query not measured yet."""
    return [m for m in ("pg", *methods) if (sf, split, qid, m) not in done]


def _methods(names: str, peer_note: str) -> list[str]:
    methods = [m for m in names.split(",") if m]
    unknown = set(methods) - set(METHOD_NAMES)
    if unknown:
        raise SystemExit(f"unknown method {sorted(unknown)}: use {', '.join(METHOD_NAMES)}")
    return [m for m in methods if not (m == "duckdb" and peer_note)]


def _peer_note(args: argparse.Namespace) -> str:
    """Why DuckDB attach cannot run ("" when it can); builds its venv on first use."""
    if "duckdb" not in f"{args.methods},{args.curve_methods}":
        return ""
    try:
        duckdb_peer.python()
    except Exception as e:
        return f"unavailable: {e}"
    return ""


def _commit() -> str:
    """The measured commit, "dirty" when the tree has changes git tracks."""
    git = lambda *a: subprocess.run(  # noqa: E731
        ["git", *a], capture_output=True, text=True, cwd=ROOT, check=False
    ).stdout.strip()
    head = os.environ.get("BENCH_COMMIT") or git("rev-parse", "--short", "HEAD") or "unknown"
    return head + (" (dirty)" if git("status", "--porcelain", "--untracked-files=no") else "")


def _append(log: Path, row: dict[str, Any]) -> None:
    """One row as a line of its own, on disk before the run goes on."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a+b") as f:
        end = f.seek(0, os.SEEK_END)
        if end and f.seek(end - 1) >= 0 and f.read(1) != b"\n":
            f.write(b"\n")  # a line cut short by a crash stays a line of its own
        f.write(json.dumps(row).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


def _write(out: Path, log: Path) -> None:
    out.write_text(build_report(read_rows(log)))


def _progress(sf: float, split: str, qid: str, results: list[tpch.MethodResult]) -> None:
    cells = ", ".join(
        f"{r.method} {r.seconds:.3f}" if r.seconds else f"{r.method} {r.error[:80]}"
        for r in results
    )
    print(f"[round4] SF {sf:g} {split} {qid}: {cells}", file=sys.stderr, flush=True)


# ---- the report (pure: rows of the jsonl in, markdown out) -----------------------------------
def read_rows(log: Path) -> list[dict[str, Any]]:
    """The jsonl's rows; a last line cut short by a crash is left out."""
    if not log.exists():
        return []
    rows = []
    for line in log.read_text().splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            rows.append(json.loads(line))
    return rows


def done_keys(rows: Iterable[dict[str, Any]]) -> set[tuple[Any, ...]]:
    """(sf, split, query, method) measured already; method "planning" for planning rows."""
    keys = set()
    for r in rows:
        if r["kind"] == "query":
            keys.add((r["sf"], r["split"], r["query"], r["method"]))
        elif r["kind"] == "planning":
            keys.add((r["sf"], r["split"], r["query"], "planning"))
    return keys


@dataclasses.dataclass
class Summary:
    """One method on one (SF, split): ratios to single PostgreSQL over the queries it answered."""

    ratios: dict[str, float]
    correct: int
    failed: int

    @property
    def geomean(self) -> float:
        return geomean(list(self.ratios.values()))

    @property
    def above(self) -> list[str]:
        return sorted(q for q, x in self.ratios.items() if x > ABOVE)

    @property
    def worst(self) -> tuple[str, float] | None:
        return max(self.ratios.items(), key=lambda kv: kv[1]) if self.ratios else None


def summarize(table: dict[str, dict[str, dict[str, Any]]], method: str) -> Summary:
    """``table``: query → method → row (the latest for each). Ratios, correct and failed."""
    ratios, correct, failed = {}, 0, 0
    for qid, by_method in table.items():
        r, pg = by_method.get(method), by_method.get("pg")
        if r is None:
            continue
        if not r["seconds"]:
            failed += 1
            continue
        correct += bool(r["correct"])
        if pg and pg["seconds"]:
            ratios[qid] = r["seconds"] / pg["seconds"]
    return Summary(ratios, correct, failed)


def build_report(rows: list[dict[str, Any]], worst: int = 5) -> str:
    """The markdown report of the jsonl's rows (each section from what has been measured)."""
    tables = _tables(rows)
    lines = ["# TPC-H across PostgreSQL and MariaDB: both splits, scale curve, planning", ""]
    lines += _header(rows)
    for (sf, split), table in tables.items():  # in the order they ran
        lines += _split_section(sf, split, table, rows, worst)
    lines += _curve(tables)
    lines += _planning_section([r for r in rows if r["kind"] == "planning"])
    return "\n".join(lines) + "\n"


def _tables(rows: list[dict[str, Any]]) -> dict[tuple[float, str], dict[str, dict[str, Any]]]:
    """(sf, split) → query → method → its latest row."""
    out: dict[tuple[float, str], dict[str, dict[str, Any]]] = {}
    for r in rows:
        if r["kind"] == "query":
            out.setdefault((r["sf"], r["split"]), {}).setdefault(r["query"], {})[r["method"]] = r
    return out


def _header(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        if r["kind"] == "run":
            out.append(
                f"- Run at commit **{r['commit']}**, started {r['date']}, load average "
                f"{r['loadavg']:.2f}: `{r['command']}`"
            )
        elif r["kind"] == "load":
            out.append(f"- SF {r['sf']:g}: truth and both splits loaded in {r['seconds']:.0f} s")
        elif r["kind"] == "note":
            out.append(f"- {r['text']}")
    return [
        *out,
        "",
        "Time is the best of the repeats; x = time / the same query on one PostgreSQL holding "
        "every table (single PG), whose answer every method is checked against. A geometric "
        f"mean covers the queries a method answered; above {ABOVE:g}x counts them too. Rows "
        "and bytes moved are federator's, per source (pg / my). The glue reads each table whole "
        "with ConnectorX and joins in DuckDB; it casts decimals to double (ConnectorX's "
        "decimal128(38,10) sums overflow), so its exact decimals rarely compare equal.",
        "",
    ]


def _cell(r: dict[str, Any] | None, pg: dict[str, Any] | None) -> list[str]:
    """Seconds and ratio of one method's row: '-' not run, 'timeout', 'error'."""
    if r is None:
        return ["-", "-"]
    if not r["seconds"]:
        return ["timeout" if r["timed_out"] else "error", "-"]
    ratio = f"{r['seconds'] / pg['seconds']:.2f}" if pg and pg["seconds"] else "-"
    return [f"{r['seconds']:.3f}", ratio]


def _split_section(
    sf: float, split: str, table: dict[str, dict[str, Any]], rows: list[dict[str, Any]], worst: int
) -> list[str]:
    tp = tpch._tp()
    methods = [m for m in METHOD_NAMES if any(m in t for t in table.values())]
    head = " | ".join(f"{METHOD_NAMES[m]} s | x" for m in methods)
    out = [
        f"## SF {sf:g}, split {split!r} (PostgreSQL: {', '.join(tp.PG_SIDE[split])}; "
        "MariaDB: the rest)",
        "",
        f"| query | single PG s | {head} | correct {' / '.join(methods)} | rows moved pg / my "
        "| bytes moved pg / my |",
        "|---|---:|" + "---:|---:|" * len(methods) + "---|---:|---:|",
    ]
    errors = []
    for qid, by_method in sorted(table.items()):
        pg, fed = by_method.get("pg"), by_method.get("federator") or {}
        cells = [qid, _cell(pg, None)[0]]
        for m in methods:
            cells += _cell(by_method.get(m), pg)
        cells.append(" / ".join(_yes(by_method.get(m)) for m in methods))
        moved = fed.get("moved") or {}
        cells += [" / ".join(f"{moved.get(s, (0, 0))[i]:,}" for s in ("pg", "my")) for i in (0, 1)]
        out.append("| " + " | ".join(cells) + " |")
        errors += [f"- {qid} {m}: {r['error']}" for m, r in by_method.items() if r["error"]]
    out += ["", *_summary_lines(table, methods)]
    loads = [
        r["loadavg"]
        for r in rows
        if r["kind"] == "loadavg" and (r["sf"], r["split"]) == (sf, split)
    ]
    if loads:
        out.append(f"\nLoad average after this split: {', '.join(f'{x:.2f}' for x in loads)}.")
    out.append("")
    if errors:
        out += ["Errors and timeouts:", *errors, ""]
    out += _time_goes([_query_result(q, t) for q, t in sorted(table.items())], worst)
    return out


def _x(ratio: float) -> str:
    return "-" if math.isnan(ratio) else f"{ratio:.2f}"


def _yes(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    return "yes" if r["correct"] else ("NO" if r["seconds"] else "-")


def _summary_lines(table: dict[str, dict[str, Any]], methods: list[str]) -> list[str]:
    out = []
    for m in methods:
        s = summarize(table, m)
        w = f"worst {s.worst[0]} {s.worst[1]:.2f}x" if s.worst else "none answered"
        above = f" ({', '.join(s.above)})" if s.above else ""
        out.append(
            f"- {METHOD_NAMES[m]}: geomean **{_x(s.geomean)}** x single PG over "
            f"{len(s.ratios)} queries; {len(s.above)} above {ABOVE:g}x{above}; {w}; "
            f"correct {s.correct}/{len(s.ratios) + s.failed}; {s.failed} failed or timed out"
        )
    return out


def _query_result(qid: str, by_method: dict[str, dict[str, Any]]) -> tpch.QueryResult:
    """The federator row as the ``python -m bench`` report's QueryResult (for _time_goes)."""
    pg, fed = by_method.get("pg") or {}, by_method.get("federator") or {}
    return tpch.QueryResult(
        qid, federator_s=fed.get("seconds"), single_pg_s=pg.get("seconds"),
        correct=bool(fed.get("correct")), moved=fed.get("moved") or {},
        fragments=fed.get("fragments") or [], residual_ms=fed.get("residual_ms") or 0.0,
        result_rows=fed.get("result_rows") or 0,
    )  # fmt: skip


def _curve(tables: dict[tuple[float, str], dict[str, dict[str, Any]]]) -> list[str]:
    """Per SF and split: federator's geomean and what it moved, single PG's total time."""
    if not tables:
        return []
    out = [
        "## Scale curve",
        "",
        "| SF | split | federator geomean x | answered | rows moved | bytes moved | single PG "
        "total s | federator total s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for (sf, split), table in sorted(tables.items(), key=_by_sf):
        s = summarize(table, "federator")
        feds = [t["federator"] for t in table.values() if t.get("federator", {}).get("seconds")]
        moved = [v for f in feds for v in (f.get("moved") or {}).values()]
        pg_total = sum(t["pg"]["seconds"] or 0 for t in table.values() if "pg" in t)
        out.append(
            f"| {sf:g} | {split} | {_x(s.geomean)} | {len(s.ratios)} | "
            f"{sum(m[0] for m in moved):,} | {sum(m[1] for m in moved):,} | {pg_total:.2f} | "
            f"{sum(f['seconds'] for f in feds):.2f} |"
        )
    return [*out, ""]


def _planning_line(row: dict[str, Any]) -> str:
    if row.get("error"):
        return f"{row['error']} | - | -"
    med = lambda v: f"{percentile(v, 50):.2f}" if v else "-"  # noqa: E731
    return f"{med(row['cold_ms'])} | {med(row['warm_ms'])} | {med(row['param_ms'])}"


def _by_sf(item: tuple[tuple[float, str], Any]) -> tuple[float, str]:
    return item[0]


def _by_query(row: dict[str, Any]) -> str:
    return row["query"]


def _planning_section(rows: list[dict[str, Any]]) -> list[str]:
    """Per query the median planning ms cold / warm / new value; p50/p99 over every run."""
    if not rows:
        return []
    sf, split = rows[0]["sf"], rows[0]["split"]
    out = [
        f"## Planning overhead (SF {sf:g}, split {split!r})",
        "",
        "Cold: plan cache and the sources' kept estimates emptied before each run (parse, ask "
        "the sources, plan). Warm: the same text again (the kept plan, bound). New value: the "
        "query's first compared integer as a parameter `:p`, a new value each run (rebinds "
        "without planning). Milliseconds.",
        "",
        "| | p50 ms | p99 ms | runs |",
        "|---|---:|---:|---:|",
    ]
    for name, key in (("cold", "cold_ms"), ("warm", "warm_ms"), ("new value", "param_ms")):
        values = [x for r in rows for x in r.get(key, [])]
        if values:
            out.append(
                f"| {name} | {percentile(values, 50):.2f} | {percentile(values, 99):.2f} | "
                f"{len(values)} |"
            )
    out += ["", "| query | cold median ms | warm median ms | new value median ms |"]
    out.append("|---|---:|---:|---:|")
    out += [f"| {r['query']} | {_planning_line(r)} |" for r in sorted(rows, key=_by_query)]
    return [*out, ""]


if __name__ == "__main__":
    raise SystemExit(main())
