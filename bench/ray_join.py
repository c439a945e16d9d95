"""A residual join + GROUP BY over two Parquet sources: in-process against the Ray engine on a
local 3-node cluster (head with no CPUs, two workers of one CPU) with the residual as one task
and in 2 and 4 hash buckets, each DuckDB task under ``--memory-limit``. The answer of every run
is checked against DuckDB over the same files.

``--query group`` (the first bench) lets the planner aggregate the big side below the join, so
the residual sees far fewer rows than the tables hold; ``--query both`` aggregates over both
sides (``sum(b.v * s.w)``), so the residual joins every row. For each Ray run the bench measures
the peak memory of each node (see :class:`MemorySampler`), the bytes through the driver and the
bytes shuffled (as the engine counts them), and the single-core rate of each stage, from which
the report estimates larger clusters.

    python -m bench.ray_join --big 4000000 --small 1000000 --out bench/results/ray-join-4m.md
    flock /work/bench-srv/cpu.lock python -m bench.ray_join --big 20000000 --small 5000000 \\
        --query both --object-store-mb 1024 --repeats 1 --out bench/results/ray-join-20m.md
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

import federator
from federator.plan.distribute import hash_partition

from .ray_tpch import _cluster

QUERIES = {
    "group": (
        "SELECT s.g AS g, count(*) AS n, sum(b.v) AS total FROM a.big AS b "
        "JOIN c.small AS s ON b.k = s.k GROUP BY s.g ORDER BY g"
    ),
    "both": (
        "SELECT s.g AS g, count(*) AS n, sum(b.v * s.w) AS total FROM a.big AS b "
        "JOIN c.small AS s ON b.k = s.k GROUP BY s.g ORDER BY g"
    ),
}
SAMPLE_EVERY = 0.05  # seconds between memory samples
MIB = 2**20


def _files(folder: Path, big: int, small: int) -> None:
    rng = np.random.default_rng(7)
    (folder / "a").mkdir()
    (folder / "c").mkdir()
    pq.write_table(
        pa.table({"k": rng.integers(0, small, big), "v": rng.integers(0, 1000, big)}),
        folder / "a" / "big.parquet",
        row_group_size=big // 4,
    )
    pq.write_table(
        pa.table(
            {"k": np.arange(small), "g": np.arange(small) % 100, "w": rng.integers(1, 10, small)}
        ),
        folder / "c" / "small.parquet",
    )


def _on_files(sql: str, folder: Path) -> str:
    return sql.replace("a.big", f"read_parquet('{folder}/a/big.parquet')").replace(
        "c.small", f"read_parquet('{folder}/c/small.parquet')"
    )


def _arrow(relation: Any) -> pa.Table:
    return relation.to_arrow_table() if hasattr(relation, "to_arrow_table") else relation.arrow()


def _truth(folder: Path, sql: str) -> pa.Table:
    return _arrow(duckdb.sql(_on_files(sql, folder)))


def _input_rows(execution: Any) -> int:
    """The residual's input rows as EXPLAIN ANALYZE shows them: the fragments' rows."""
    return sum(execution.stats[f.id].rows for f in execution.plan.fragments)


def _time(fed: Any, sql: str, repeats: int) -> tuple[float, pa.Table, Any]:
    """The best of ``repeats`` runs: its seconds, answer and execution (its stages' figures)."""
    best, table, execution = float("inf"), None, None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fed.sql(sql)
        answer = result.to_arrow()
        seconds = time.perf_counter() - t0
        if seconds < best:
            best, table, execution = seconds, answer, result.last_execution
    return best, table, execution


# ---- memory ----------------------------------------------------------------------------------
@dataclass
class Peak:
    total: int = 0  # private bytes of the processes + object store bytes in use, at one sample
    store: int = 0  # the object store's bytes in use at that sample
    spilled: int = 0  # bytes the node's object store spilled to disk (cumulative, last sample)


@dataclass
class MemorySampler:
    """Every 50 ms: for each Ray node, the private memory (RSS minus shared pages) of its
    processes (the raylet and every process under it: workers, source actors, agents; on the
    head also the GCS and monitors) plus its object store's bytes in use (the raylet's node
    stats); for the driver (this process), its private memory. Shared pages (the object store's
    shared memory as mapped by workers, libraries) are left out per process, so the store is
    counted once per node. Keeps each one's peak."""

    nodes: list[tuple[str, Any]]  # (label, ray._private.node.Node)
    extra: dict[str, int] = field(default_factory=dict)  # label -> a pid (driver, a subprocess)
    spill_dir: Path | None = None  # DuckDB's temporary files (.tmp of the working directory)
    peaks: dict[str, Peak] = field(default_factory=dict)
    spill_peak: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> MemorySampler:
        self._thread = threading.Thread(target=self._run, name="memory-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()

    def _run(self) -> None:
        pids: dict[str, list[int]] = {}
        for n in range(1_000_000_000):
            if n % 10 == 0:  # workers come and go: list the processes every 0.5 s
                pids = {label: _node_pids(node) for label, node in self.nodes}
                pids.update({label: [pid] for label, pid in self.extra.items()})
            stores = {label: _store(node) for label, node in self.nodes}
            self.spill_peak = max(self.spill_peak, _size(self.spill_dir))
            for label, node_pids in pids.items():
                store, spilled = stores.get(label, (0, 0))
                total = _private(node_pids) + store
                peak = self.peaks.setdefault(label, Peak())
                peak.spilled = max(peak.spilled, spilled)
                if total > peak.total:
                    peak.total, peak.store = total, store
            if self._stop.wait(SAMPLE_EVERY):
                return

    def shown(self) -> str:
        spill = f"; DuckDB spill {self.spill_peak / MIB:,.0f}" if self.spill_dir else ""
        return (
            "; ".join(
                f"{label} {p.total / MIB:,.0f}"
                + (f" (store {p.store / MIB:,.0f})" if p.store else "")
                + (f", spilled {p.spilled / MIB:,.0f}" if p.spilled else "")
                for label, p in self.peaks.items()
            )
            + spill
        )


def _size(folder: Path | None) -> int:
    """The bytes of the files under ``folder`` (0: none, or no such folder)."""
    if folder is None or not folder.exists():
        return 0
    total = 0
    for path in folder.rglob("*"):
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


def _node_pids(node: Any) -> list[int]:
    pids = []
    for kind, process in node.live_processes():
        pids.append(process.pid)
        if kind == "raylet":
            with contextlib.suppress(psutil.Error):
                pids += [c.pid for c in psutil.Process(process.pid).children(recursive=True)]
    return pids


def _private(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            info = psutil.Process(pid).memory_info()
        except psutil.Error:
            continue  # ended between listing and reading
        total += info.rss - info.shared
    return total


def _store(node: Any) -> tuple[int, int]:
    """The node's object store bytes in use (primary copies, secondary copies and fallback
    allocations alike) and the bytes it spilled so far."""
    from ray._private.internal_api import node_stats

    try:
        stats = node_stats(node.node_ip_address, node.node_manager_port, False).store_stats
    except Exception:
        return 0, 0
    return stats.object_store_bytes_used + stats.object_store_bytes_fallback, (
        stats.spilled_bytes_total
    )


# ---- in-process, in a subprocess under a memory cap -----------------------------------------
def in_process(folder: Path, sql: str, memory_limit: str | None, out: Path) -> None:
    """Run ``sql`` in-process (the ``--in-process`` child): the answer to ``out``, the figures
    as one JSON line on stdout."""
    os.chdir(folder)  # DuckDB spills to .tmp of the working directory
    sources = {n: {"kind": "files", "path": str(folder / n)} for n in ("a", "c")}
    execution = {"memory_limit": memory_limit} if memory_limit else {}
    with federator.connect({"sources": sources, "execution": execution}) as fed:
        fed.sql("SELECT count(*) AS n FROM c.small").to_arrow()  # warm: the residual engine
        t0 = time.perf_counter()
        result = fed.sql(sql)
        table = result.to_arrow()
        seconds = time.perf_counter() - t0
    pq.write_table(table, out)
    print(json.dumps({"seconds": seconds, "input_rows": _input_rows(result.last_execution)}))


def _run_in_process(
    folder: Path, query: str, memory_limit: str | None, cap_gib: float
) -> tuple[str, str, str, str]:
    """(seconds or why not, peak memory, exact, input rows) of the in-process engine, run in a
    subprocess whose address space is capped at ``cap_gib`` and killed past it in RSS."""
    out = folder / f"in-process-{memory_limit}.parquet"
    cap = int(cap_gib * 2**30)
    args = [sys.executable, "-m", "bench.ray_join", "--in-process", str(folder.resolve())]
    args += ["--query", query, "--answer", str(out)]
    args += ["--memory-limit", memory_limit or "none"]

    def capped() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (2 * cap, 2 * cap))  # virtual: DuckDB reserves

    child = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=capped
    )
    sampler = MemorySampler([], extra={"process": child.pid}, spill_dir=folder / ".tmp")
    killed = False
    with sampler:
        while child.poll() is None:
            time.sleep(0.2)
            if sampler.peaks.get("process", Peak()).total > cap:
                child.kill()
                killed = True
        stdout, stderr = child.communicate()
    peak = sampler.shown()
    if killed:
        return f"did not finish: over {cap_gib:g} GiB", peak, "-", "-"
    if child.returncode != 0:
        last = (stderr.strip().splitlines() or ["?"])[-1][:160]
        return f"did not finish: {last}", peak, "-", "-"
    figures = json.loads(stdout.strip().splitlines()[-1])
    exact = pq.read_table(out).equals(_truth(folder, QUERIES[query]))
    return f"{figures['seconds']:.2f}", peak, str(exact), f"{figures['input_rows']:,}"


# ---- single-core stage rates -----------------------------------------------------------------
def stage_rates(folder: Path, sql: str, memory_limit: str, buckets: int = 4) -> dict[str, float]:
    """Rates of the residual's stages on one core, measured here on the bench's own data: hash
    partitioning (bytes/s), one bucket's join + aggregate on DuckDB with one thread under the
    memory limit (input rows/s), the driver's ``ray.put`` (bytes/s, when Ray is connected)."""
    pa.set_cpu_count(1)
    big = pq.read_table(folder / "a" / "big.parquet")
    small = pq.read_table(folder / "c" / "small.parquet")
    t0 = time.perf_counter()
    big_parts = hash_partition(big, ["k"], buckets)
    small_parts = hash_partition(small, ["k"], buckets)
    partition_s = time.perf_counter() - t0
    con = duckdb.connect()
    con.execute(f"SET threads = 1; SET memory_limit = '{memory_limit}'")
    con.register("big", big_parts[0])
    con.register("small", small_parts[0])
    t0 = time.perf_counter()
    _arrow(con.sql(sql.replace("a.big", "big").replace("c.small", "small")))
    bucket_s = time.perf_counter() - t0
    con.close()
    rates = {
        "partition_bytes_s": (big.nbytes + small.nbytes) / partition_s,
        "bucket_rows_s": (big_parts[0].num_rows + small_parts[0].num_rows) / bucket_s,
    }
    import ray

    if ray.is_initialized():
        t0 = time.perf_counter()
        refs = [ray.put(big), ray.put(small)]
        rates["put_bytes_s"] = (big.nbytes + small.nbytes) / (time.perf_counter() - t0)
        del refs
    pa.set_cpu_count(os.cpu_count() or 2)
    return rates


# ---- the cluster -----------------------------------------------------------------------------
def _ray_runs(args: argparse.Namespace, folder: Path, truth: pa.Table) -> tuple[list, dict]:
    sql = QUERIES[args.query]
    sources = {n: {"kind": "files", "path": str(folder / n)} for n in ("a", "c")}
    rows = []
    cluster = _cluster(args.object_store_mb * MIB)
    try:
        import ray

        workers = sorted(cluster.worker_nodes, key=lambda n: n.node_manager_port)
        nodes = [("head", cluster.head_node)]
        nodes += [(f"worker {i}", n) for i, n in enumerate(workers, 1)]
        idle = MemorySampler(nodes, extra={"driver": os.getpid()})
        with idle:
            time.sleep(1.0)
        rows.append(
            {"engine": "Ray cluster idle (1 s, before any query)", "peak_mib": idle.shown()}
        )
        for buckets in args.buckets:
            execution = {"buckets": buckets, "distribute_rows": 0, "splits": 2}
            execution["memory_limit"] = args.memory_limit
            catalog = {"sources": sources, "execution": execution}
            sampler = MemorySampler(nodes, {"driver": os.getpid()}, folder / ".tmp")
            with federator.connect(catalog, engine="ray") as fed, sampler:
                fed.sql(sql).to_arrow()  # warm: actors and workers
                s, table, ex = _time(fed, sql, args.repeats)
            stage1 = max(ex.stats[f.id].ms for f in ex.plan.fragments) / 1000
            rows.append(
                {
                    "engine": f"Ray, {buckets} bucket(s)",
                    "seconds": f"{s:.2f}",
                    "exact": str(table.equals(truth)),
                    "input_rows": f"{_input_rows(ex):,}",
                    "stage1_s": f"{stage1:.2f}",
                    "stage2_s": f"{ex.residual_stats.ms / 1000:.2f}",
                    "driver_mb": f"{ex.driver_bytes / MIB:,.1f}",
                    "shuffled_mb": f"{ex.shuffled_bytes / MIB:,.1f}",
                    "peak_mib": sampler.shown(),
                    "how": ex.residual_how,
                }
            )
            print(rows[-1], flush=True)
        rates = stage_rates(folder, sql, args.memory_limit)  # last: it leaves the driver bigger
        ray.shutdown()
    finally:
        cluster.shutdown()
    return rows, rates


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=int, default=4_000_000)
    ap.add_argument("--small", type=int, default=1_000_000)
    ap.add_argument("--query", choices=sorted(QUERIES), default="group")
    ap.add_argument("--memory-limit", default="256MB")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--buckets", type=lambda s: [int(b) for b in s.split(",")], default=[1, 2, 4])
    ap.add_argument("--object-store-mb", type=int, default=200)
    ap.add_argument("--cap-gib", type=float, default=8.0, help="the in-process run's memory cap")
    ap.add_argument("--out", default="bench/results/ray-join.md")
    ap.add_argument("--in-process", type=Path, help=argparse.SUPPRESS)  # the child's data
    ap.add_argument("--answer", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    memory_limit = None if args.memory_limit == "none" else args.memory_limit
    if args.in_process is not None:
        in_process(args.in_process, QUERIES[args.query], memory_limit, args.answer)
        return
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    args.out = Path(args.out).resolve()
    args.commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    folder = Path(tempfile.mkdtemp(prefix="federator-ray-join-"))
    try:
        _measure(args, folder, memory_limit)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _measure(args: argparse.Namespace, folder: Path, memory_limit: str | None) -> None:
    load = [os.getloadavg()]
    _files(folder, args.big, args.small)
    truth = _truth(folder, QUERIES[args.query])
    rows = []
    for limit in (None, memory_limit):
        s, peak, exact, inputs = _run_in_process(folder, args.query, limit, args.cap_gib)
        name = f"in-process, memory_limit {limit or 'none'}"
        rows.append(
            {
                "engine": name,
                "seconds": s,
                "exact": exact,
                "input_rows": inputs,
                "peak_mib": peak,
            }
        )
        print(rows[-1], flush=True)
        load.append(os.getloadavg())
    here = Path.cwd()
    os.chdir(folder)  # the cluster's processes start here: DuckDB tasks spill to its .tmp
    try:
        ray_rows, rates = _ray_runs(args, folder, truth)
    finally:
        os.chdir(here)
    load.append(os.getloadavg())
    _write(args, rows + ray_rows, rates, load)


def _write(args: argparse.Namespace, rows: list[dict], rates: dict, load: list) -> None:
    columns = [
        "engine",
        "seconds",
        "exact",
        "input_rows",
        "stage1_s",
        "stage2_s",
        "driver_mb",
        "shuffled_mb",
        "peak_mib",
    ]
    lines = [
        f"## {args.big:,} x {args.small:,} rows, query `{args.query}`",
        "",
        f"`python -m bench.ray_join --big {args.big} --small {args.small} --query {args.query} "
        f"--memory-limit {args.memory_limit} --repeats {args.repeats} --object-store-mb "
        f"{args.object_store_mb}` at commit {args.commit}; {os.cpu_count()} shared cores; load "
        "average (1 min) at start, after each in-process run and at the end: "
        + ", ".join(f"{one:.2f}" for one, _, _ in load)
        + f". SQL: `{QUERIES[args.query]}`",
        "",
        "| " + " | ".join(columns) + " |",
        "|---|" + "---:|" * (len(columns) - 1),
        *("| " + " | ".join(r.get(c, "") for c in columns) + " |" for r in rows),
        "",
        "Stage rates on one core (this data): "
        + ", ".join(f"{k} {v:,.0f}" for k, v in rates.items()),
        "",
        "Residual on Ray: " + "; ".join(f"{r['engine']}: {r['how']}" for r in rows if "how" in r),
        "",
    ]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
