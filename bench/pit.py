"""Point-in-time training sets: ``fed.training_set`` against the pandas glue.

    python -m bench.pit [--labels 1000000] [--users 100000] [--versions 5] [--pg DSN --mysql DSN]

Three feature tables of ``users x versions`` rows each, their times spread over a year:
``pg.pit_profiles`` (age, plan; TTL 30 days), ``my.pit_counters`` (clicks; no TTL) and
``lake.pit_events`` (Parquet; score; TTL 7 days). ``--labels`` label rows name random users at
random times in the year's last 60 days. Each contestant runs in a process of its own; its
time is the wall clock of the training set (data in memory as a pandas frame), its memory the
process's peak RSS (``resource.getrusage``) above the RSS measured before the work started.

- **federator**: ``fed.training_set(labels, [3 Features]).to_pandas()``: each feature source
  gets the label keys where binding pays and the time window ``[min(ts) - ttl, max(ts)]``;
  the as-of match runs in DuckDB.
- **pandas glue**: every feature table read whole (ConnectorX for PostgreSQL and MariaDB,
  pyarrow for the Parquet file: the fastest readers there are), then ``pd.merge_asof`` per
  feature (sorted by time, ``by="user_id"``) and the TTLs applied by hand.

Both answers are compared (same rows, same values) before the report is printed; the report
goes to ``bench/results/pit.md`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiomysql
import asyncpg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .env import ROOT, mysql_args, start

START = datetime(2025, 1, 1)
YEAR_S = 365 * 86_400
LABEL_SPAN_S = 60 * 86_400  # labels fall in the year's last 60 days
TTLS = {"pit_profiles": timedelta(days=30), "pit_counters": None, "pit_events": timedelta(days=7)}
SOURCES = (("pg", "pit_profiles"), ("my", "pit_counters"), ("lake", "pit_events"))
COLUMNS = {"pit_profiles": ["age", "plan"], "pit_counters": ["clicks"], "pit_events": ["score"]}


# ---- data ----------------------------------------------------------------------------------
def feature_times(users: int, versions: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rnd = np.random.default_rng(seed)
    user = np.repeat(np.arange(users, dtype=np.int64), versions)
    seconds = rnd.integers(0, YEAR_S, users * versions)
    return user, np.datetime64(START, "us") + seconds.astype("timedelta64[s]")


def labels(n: int, users: int, cutoff: bool = False) -> pa.Table:
    """``n`` label rows of random users at random times of the year's last 60 days, or all at
    the year's end (``cutoff``: one cut-off, the latest-row-per-key case)."""
    rnd = np.random.default_rng(7)
    seconds = YEAR_S - LABEL_SPAN_S + rnd.integers(0, LABEL_SPAN_S, n)
    if cutoff:
        seconds[:] = YEAR_S - 1
    ts = np.datetime64(START, "us") + seconds.astype("timedelta64[s]")
    return pa.table(
        {
            "id": np.arange(n, dtype=np.int64),
            "user_id": rnd.integers(0, users, n).astype(np.int64),
            "ts": pa.array(ts, pa.timestamp("us")),
        }
    )


async def load(pg: str, mysql: str, lake: Path, users: int, versions: int) -> None:
    user, ts = feature_times(users, versions, 1)
    profiles = [
        (int(u), t.astype(datetime), int(u % 80), f"plan{u % 3}")
        for u, t in zip(user, ts, strict=True)
    ]
    conn = await asyncpg.connect(pg)
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS pit_profiles; CREATE TABLE pit_profiles"
            " (user_id bigint, updated_at timestamp, age int, plan text)"
        )
        await conn.copy_records_to_table("pit_profiles", records=profiles)
        await conn.execute("CREATE INDEX ON pit_profiles (user_id, updated_at)")
        await conn.execute("VACUUM ANALYZE pit_profiles")
    finally:
        await conn.close()
    user, ts = feature_times(users, versions, 2)
    counters = [(int(u), t.astype(datetime), int(u % 1000)) for u, t in zip(user, ts, strict=True)]
    my = await aiomysql.connect(**mysql_args(mysql), autocommit=True)
    try:
        async with my.cursor() as cur:
            await cur.execute("DROP TABLE IF EXISTS pit_counters")
            await cur.execute(
                "CREATE TABLE pit_counters (user_id BIGINT, updated_at DATETIME(6), clicks INT,"
                " KEY (user_id, updated_at))"
            )
            for i in range(0, len(counters), 20_000):
                await cur.executemany(
                    "INSERT INTO pit_counters VALUES (%s, %s, %s)", counters[i : i + 20_000]
                )
            await cur.execute("ANALYZE TABLE pit_counters PERSISTENT FOR ALL")
    finally:
        my.close()
    user, ts = feature_times(users, versions, 3)
    events = pa.table(
        {
            "user_id": user,
            "updated_at": pa.array(ts, pa.timestamp("us")),
            "score": (user % 97).astype(np.float64),
        }
    )
    pq.write_table(events, lake / "pit_events.parquet")


# ---- contestants (each in its own process) ---------------------------------------------------
def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def run_federator(pg: str, mysql: str, lake: str, table: pa.Table) -> Any:
    import federator
    from federator import Feature

    catalog = {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg},
            "my": {"kind": "mysql", "dsn": mysql},
            "lake": {"kind": "files", "path": lake},
        }
    }
    with federator.connect(catalog) as fed:
        features = [
            Feature(f"{src}.{name}", "user_id", "updated_at", COLUMNS[name], ttl=TTLS[name])
            for src, name in (
                ("pg", "pit_profiles"),
                ("my", "pit_counters"),
                ("lake", "pit_events"),
            )
        ]
        result = fed.training_set(table, features)
        frame = result.to_pandas()
        ex = result.last_execution  # this run's EXPLAIN ANALYZE, not a second run's
        explain = result.plan.explain(ex.stats, ex.residual_stats)
    return frame, explain


def run_pandas(pg: str, mysql: str, lake: str, table: pa.Table) -> Any:
    import connectorx as cx
    import pandas as pd

    frame = table.to_pandas().sort_values("ts")
    frame["ts"] = frame["ts"].astype("datetime64[ns]")
    feats = {
        "pit_profiles": cx.read_sql(
            pg,
            "SELECT user_id, updated_at, age, plan FROM pit_profiles",
        ),
        "pit_counters": cx.read_sql(mysql, "SELECT user_id, updated_at, clicks FROM pit_counters"),
        "pit_events": pq.read_table(Path(lake) / "pit_events.parquet").to_pandas(),
    }
    for name, feat in feats.items():
        feat = feat.astype({"user_id": "int64", "updated_at": "datetime64[ns]"})
        feat = feat.sort_values("updated_at")
        merged = pd.merge_asof(
            frame,
            feat.rename(columns={"updated_at": f"_{name}_at"}),
            left_on="ts",
            right_on=f"_{name}_at",
            by="user_id",
            direction="backward",
        )
        ttl = TTLS[name]
        if ttl is not None:
            stale = merged["ts"] - merged[f"_{name}_at"] > pd.Timedelta(ttl)
            merged.loc[stale, COLUMNS[name]] = None
        frame = merged.drop(columns=[f"_{name}_at"])
    return frame, ""


def child(which: str, pg: str, mysql: str, lake: str, n: int, users: int, cutoff: bool) -> None:
    table = labels(n, users, cutoff)
    import pandas  # noqa: F401  (imports are not the work measured)

    if which == "federator":
        import federator  # noqa: F401
    else:
        import connectorx  # noqa: F401
    base = _rss()
    started = time.perf_counter()
    fn = run_federator if which == "federator" else run_pandas
    frame, explain = fn(pg, mysql, lake, table)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    frame = frame.sort_values("id").reset_index(drop=True)
    cols = ["id", "age", "plan", "clicks", "score"]
    digest = [
        int(frame["id"].sum()),
        *(int(frame[c].notna().sum()) for c in cols[1:]),
        float(frame["age"].fillna(-1).astype(float).sum()),
        float(frame["clicks"].fillna(-1).astype(float).sum()),
        float(frame["score"].fillna(-1).astype(float).sum()),
    ]
    out = {"seconds": seconds, "peak_mib": (peak - base) / 2**20, "rows": len(frame)}
    out.update({"digest": digest, "explain": explain})
    print(json.dumps(out))


def measure(
    which: str, args: argparse.Namespace, pg: str, mysql: str, lake: Path, cutoff: bool
) -> dict:
    cmd = [sys.executable, "-m", "bench.pit", "--child", which, "--pg", pg, "--mysql", mysql]
    cmd += ["--cutoff"] if cutoff else []
    cmd += ["--lake", str(lake), "--labels", str(args.labels), "--users", str(args.users)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"{which} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def report(args: argparse.Namespace, runs: dict[str, list[dict]], cutoff: bool) -> str:
    rows = args.users * args.versions
    lines = []
    if not cutoff:
        lines += [
            "# Point-in-time training sets: `fed.training_set` vs pandas `merge_asof` glue",
            "",
            f"`python -m bench.pit --labels {args.labels} --users {args.users} --versions"
            f" {args.versions} --repeats {args.repeats}`: each contestant in a process of its"
            " own, alternating; best time and that run's peak RSS above the RSS before the work.",
            "",
            f"{args.labels:,} label rows x 3 feature tables of {rows:,} rows each, times over"
            " a year (PostgreSQL 15 `pit_profiles` TTL 30 days, MariaDB `pit_counters` no TTL,"
            " Parquet `pit_events` TTL 7 days), on one 2-core machine shared with other work.",
            "",
        ]
    what = (
        "## Every label at one cut-off (the year's end): latest row per key sent by the sources"
        if cutoff
        else "## Labels spread over the year's last 60 days: time windows"
    )
    lines += [
        what,
        "",
        "| contestant | seconds | peak RSS above start (MiB) | rows |",
        "|---|---|---|---|",
    ]
    for which, results in runs.items():
        best = min(results, key=lambda r: r["seconds"])
        lines.append(
            f"| {which} | {best['seconds']:.2f} | {best['peak_mib']:.0f} | {best['rows']:,} |"
        )
    lines += ["", "Answers agree (row count, non-null counts and value sums per column).", ""]
    best = min(runs["federator"], key=lambda r: r["seconds"])["explain"]
    lines += ["EXPLAIN ANALYZE of the best federator run:", "", "```", best, "```", ""]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--labels", type=int, default=1_000_000)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--versions", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--pg")
    p.add_argument("--mysql")
    p.add_argument("--lake")
    p.add_argument("--child")
    p.add_argument("--cutoff", action="store_true")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "pit.md"))
    args = p.parse_args()
    if args.child:
        child(args.child, args.pg, args.mysql, args.lake, args.labels, args.users, args.cutoff)
        return
    env = start(args.pg, args.mysql)
    try:
        with tempfile.TemporaryDirectory(prefix="pit-lake-") as folder:
            lake = Path(folder)
            started = time.perf_counter()
            asyncio.run(load(env.pg_dsn, env.mysql_dsn, lake, args.users, args.versions))
            print(f"loaded in {time.perf_counter() - started:.1f} s", file=sys.stderr)
            text = ""
            for cutoff in (False, True):
                runs: dict[str, list[dict]] = {"federator": [], "pandas glue": []}
                for _ in range(args.repeats):
                    for which in runs:
                        key = "federator" if which == "federator" else "pandas"
                        got = measure(key, args, env.pg_dsn, env.mysql_dsn, lake, cutoff)
                        runs[which].append(got)
                        print(which, cutoff, got["seconds"], file=sys.stderr)
                a, b = runs["federator"][0]["digest"], runs["pandas glue"][0]["digest"]
                if not np.allclose(a, b):
                    raise SystemExit(f"answers differ: federator {a}, pandas {b}")
                text += report(args, runs, cutoff)
            Path(args.out).write_text(text)
            print(text)
    finally:
        env.stop()


if __name__ == "__main__":
    main()
