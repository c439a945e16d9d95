"""TPC-H (the tests' "split": PostgreSQL + MariaDB) on the in-process engine against the Ray
engine on a local 3-node cluster (a head with no CPUs, two workers of one CPU, on loopback),
same servers, same run; every answer checked against one PostgreSQL holding all tables.

Three columns per query: in-process; Ray with each residual as one DuckDB task; Ray with every
residual that splits run in buckets (``distribute_rows = 0``). Best of ``--repeats`` warm runs.

    python -m bench.ray_tpch --scale 0.1 --repeats 2 --out bench/results/ray.md
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import time
from pathlib import Path
from typing import Any

import federator

from .env import start
from .tpch import SPLIT, _best, _tp, load

OBJECT_STORE = 200 * 2**20


def _cluster(object_store: int = OBJECT_STORE) -> Any:
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep 127.0.0.1 (README)
    import ray
    from ray.cluster_utils import Cluster

    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False  # as the tests: read at import time
    local = {"node_ip_address": "127.0.0.1", "object_store_memory": object_store}
    c = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False, **local}
    )
    for _ in range(2):
        c.add_node(num_cpus=1, **local)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, logging_level="WARNING")
    return c


def _timed(fed: Any, sql: str, repeats: int) -> tuple[float, Any, str]:
    fed.sql(sql).to_arrow()  # warm: actors, worker processes, catalog
    seconds, (result, table) = _best(lambda: _run(fed, sql), repeats)
    how = "\n".join(result.last_execution.engine_lines()) if result.last_execution else ""
    return seconds, table, how


def _run(fed: Any, sql: str) -> tuple[Any, Any]:
    result = fed.sql(sql)
    return result, result.to_arrow()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--out", default="bench/results/ray.md")
    args = ap.parse_args()
    tp = _tp()
    env = start(None, None)
    cluster = None
    try:
        loaded = load(env, args.scale)
        t0 = time.perf_counter()
        cluster = _cluster()
        cluster_s = time.perf_counter() - t0
        catalog = {
            "sources": {
                "pg": {"kind": "postgres", "dsn": tp._with_db(env.pg_dsn, tp.PG_DB[SPLIT])},
                "my": {"kind": "mysql", "dsn": tp._with_db(env.mysql_dsn, tp.MY_DB[SPLIT])},
            }
        }
        bucketed = {**catalog, "execution": {"distribute_rows": 0}}
        queries = tp.load_queries()
        truth = asyncio.run(tp.truth_answers(env.pg_dsn, queries))
        rows = []
        with (
            federator.connect(catalog, timeout=args.timeout) as local,
            federator.connect(catalog, engine="ray", timeout=args.timeout) as ray_one,
            federator.connect(bucketed, engine="ray", timeout=args.timeout) as ray_buckets,
        ):
            for qid in sorted(queries):
                q = queries[qid]
                sql = q.sql(tp.federated_names(SPLIT))
                row = [qid]
                for fed in (local, ray_one, ray_buckets):
                    try:
                        s, table, how = _timed(fed, sql, args.repeats)
                        ok = tp.compare(q, truth[qid], tp.arrow_answer(table)) is None
                        row.append(f"{s:.3f}" + ("" if ok else " WRONG"))
                        if fed is ray_buckets:
                            row.append("buckets" if "buckets (" in how else "one task")
                    except Exception as e:  # noted, the run goes on
                        row.append(f"error: {type(e).__name__}")
                print(" | ".join(row), flush=True)
                rows.append(row)
        _write(Path(args.out), args, loaded, cluster_s, rows)
    finally:
        if cluster is not None:
            import ray

            ray.shutdown()
            cluster.shutdown()
        env.stop()


def _write(
    out: Path, args: Any, loaded: dict[str, float], cluster_s: float, rows: list[list[str]]
) -> None:
    head = "| query | in-process s | Ray, one task s | Ray, buckets s | residual on Ray |"
    lines = [
        f"# TPC-H SF {args.scale}: in-process vs Ray (local 3-node cluster)",
        "",
        f"Machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        "shared with other work; cluster: head with 0 CPUs + 2 workers of 1 CPU, "
        f"{OBJECT_STORE // 2**20} MB object store each, on loopback. Started in "
        f"{cluster_s:.1f} s; data loaded in {loaded['total']:.1f} s. Best of {args.repeats} "
        "warm runs per query; every answer checked against one PostgreSQL.",
        "",
        head,
        "|---|---:|---:|---:|---|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
