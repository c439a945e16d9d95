"""Hybrid vector search: top-10 latency (p50/p99) with a relational filter on another source.

Data: N vectors of dimension 128 in Milvus (milvus-lite, a local ``.db`` file, FLAT index:
exact) and a PostgreSQL table ``products(id, bucket)`` with ``bucket = id % 100``; the filter
``bucket < S`` keeps S% of the ids. The query::

    SELECT i.id, i.emb <-> :q AS d FROM m.items AS i JOIN pg.products AS p ON p.id = i.id
    WHERE p.bucket < :s ORDER BY d LIMIT 10

runs at 1%, 10% and 90% selectivity three ways: pre-filter (the ids bound into the search as
``id in [...]``), post-filter (over-fetch k x factor, grown until 10 rows survive) and the
planner's choice (``auto``). Every answer is checked against numpy brute force.

Run::

    python bench/bench_vectors.py            # 20,000 vectors (quick)
    python bench/bench_vectors.py --full     # 100,000 vectors (the issue's size)
    python bench/bench_vectors.py --rows 50000 --queries 30 --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

DIM = 128
K = 10
SELECTIVITIES = (1, 10, 90)
MODES = ("pre", "post", "auto")
SQL = (
    "SELECT i.id, i.emb <-> :q AS d FROM m.items AS i JOIN pg.products AS p ON p.id = i.id "
    "WHERE p.bucket < :s ORDER BY d LIMIT 10"
)


def load_milvus(uri: str, vectors: np.ndarray) -> None:
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(uri)
    schema = client.create_schema(auto_id=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("emb", DataType.FLOAT_VECTOR, dim=vectors.shape[1])
    index = client.prepare_index_params()
    index.add_index("emb", index_type="FLAT", metric_type="L2")
    client.create_collection("items", schema=schema, index_params=index)
    for start in range(0, len(vectors), 5_000):
        chunk = vectors[start : start + 5_000]
        client.insert(
            "items",
            [{"id": start + i, "emb": v.tolist()} for i, v in enumerate(chunk)],
        )
    client.close()


async def load_pg(dsn: str, n: int) -> None:
    import asyncpg

    con = await asyncpg.connect(dsn)
    try:
        await con.execute("DROP TABLE IF EXISTS products")
        await con.execute("CREATE TABLE products (id bigint PRIMARY KEY, bucket int)")
        await con.copy_records_to_table(
            "products", records=[(i, i % 100) for i in range(n)], columns=["id", "bucket"]
        )
        await con.execute("ANALYZE products")
    finally:
        await con.close()


def truth(vectors: np.ndarray, q: np.ndarray, s: int) -> list[int]:
    ids = np.arange(len(vectors))[np.arange(len(vectors)) % 100 < s]
    dist = np.linalg.norm(vectors[ids].astype(np.float64) - q.astype(np.float64), axis=1)
    return ids[np.argsort(dist, kind="stable")[:K]].tolist()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def run(args: argparse.Namespace) -> dict[str, Any]:
    import servers

    import federator

    rng = np.random.default_rng(42)
    vectors = rng.normal(size=(args.rows, DIM)).astype(np.float32)
    queries = rng.normal(size=(args.queries, DIM)).astype(np.float32)
    folder = tempfile.mkdtemp(prefix="federator-bench-vectors-")
    uri = str(Path(folder) / "vectors.db")
    t0 = time.perf_counter()
    pg = servers.start_postgres() if args.pg is None else None
    dsn = args.pg or pg.dsn  # type: ignore[union-attr]
    try:
        load_milvus(uri, vectors)
        asyncio.run(load_pg(dsn, args.rows))
        print(
            f"loaded {args.rows:,} x {DIM} vectors in {time.perf_counter() - t0:.1f} s", flush=True
        )
        results: dict[str, Any] = {"rows": args.rows, "dim": DIM, "k": K, "cases": []}
        for mode in MODES:
            catalog = {
                "sources": {
                    "m": {"kind": "milvus", "uri": uri},
                    "pg": {"kind": "postgres", "dsn": dsn},
                },
                "planner": {"vector_filter": mode, "bind_max_keys": args.rows},
            }
            with federator.connect(catalog, timeout=300) as fed:
                fed.sql(SQL, {"q": queries[0], "s": 50}).to_arrow()  # warm up: pools, load
                for s in SELECTIVITIES:
                    times, chosen, correct = [], set(), 0
                    for q in queries:
                        started = time.perf_counter()
                        result = fed.sql(SQL, {"q": q, "s": s})
                        got = result.to_arrow().column("id").to_pylist()
                        times.append((time.perf_counter() - started) * 1000)
                        correct += got == truth(vectors, q, s)
                        text = result.explain(analyze=True)
                        chosen.add("pre" if "pre-filter:" in text else "post")
                    case = {
                        "mode": mode,
                        "selectivity_pct": s,
                        "p50_ms": round(statistics.median(times), 2),
                        "p99_ms": round(percentile(times, 99), 2),
                        "chosen": "/".join(sorted(chosen)),
                        "exact": f"{correct}/{len(queries)}",
                    }
                    results["cases"].append(case)
                    print(
                        f"{mode:>5} {s:>3}%  p50 {case['p50_ms']:9.2f} ms  "
                        f"p99 {case['p99_ms']:9.2f} ms  ran {case['chosen']:<8} "
                        f"exact {case['exact']}",
                        flush=True,
                    )
        return results
    finally:
        if pg is not None:
            pg.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=20_000, help="vectors (default 20,000)")
    parser.add_argument("--full", action="store_true", help="100,000 vectors (the issue's size)")
    parser.add_argument("--queries", type=int, default=20, help="queries per case")
    parser.add_argument("--pg", help="PostgreSQL DSN to use instead of starting one")
    parser.add_argument("--json", help="write the figures to this file")
    args = parser.parse_args(argv)
    if args.full:
        args.rows = 100_000
    results = run(args)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
