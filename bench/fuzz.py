"""``python -m bench.fuzz --queries 10000 --seed S``: the differential fuzzer's long run.

Starts PostgreSQL, MariaDB and a MongoDB-wire server as the tests do (tests/servers.py), loads
the conformance data set into every source kind, runs the seeded queries (tests/fuzz/fuzz_gen.py)
and prints the report: queries tried, outcome counts per check (truth, ternary partitioning,
pushdown disabled, bind joins forced on/off), then each wrong answer or crash with its seed,
index and minimized query. Exit status 1 when a failure is not a known one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for sub in ("tests", "tests/conformance", "tests/fuzz"):
    sys.path.insert(0, str(ROOT / sub))

import servers  # noqa: E402  (tests/servers.py)
from conform_data import load_all, truth  # noqa: E402
from fuzz_gen import known, open_federations, run  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--metamorphic-every", type=int, default=1, help="1: on every query")
    ap.add_argument(
        "--progress-every", type=int, default=500, help="print the counts so far every N queries"
    )
    args = ap.parse_args(argv)
    pool = servers.ServerPool()
    pool.prestart(["postgres", "mariadb", "mongo", "pgvector", "redis", "falkordb"])
    try:
        kinds = ("postgres", "mariadb", "mongo", "pgvector", "redis", "falkordb")
        pg, my, mongo, pgv, kv, g = (pool.get(k).dsn for k in kinds)
        with tempfile.TemporaryDirectory() as folder:
            catalog = load_all(
                pg, my, mongo, Path(folder), "fuzz", pgvector_dsn=pgv, redis_url=kv, falkordb_url=g
            )
            feds = open_federations(catalog)
            con = truth()
            started = time.monotonic()
            try:
                report = run(
                    feds,
                    con,
                    args.queries,
                    args.seed,
                    args.metamorphic_every,
                    progress=lambda so_far: print(
                        f"[{time.monotonic() - started:.0f} s] {so_far.text()}", flush=True
                    ),
                    progress_every=args.progress_every,
                )
            finally:
                feds.close()
                con.close()
    finally:
        pool.stop()
    print(report.text())
    print(f"{time.monotonic() - started:.1f} s")
    return 1 if any(not known(f) for f in report.failures) else 0


if __name__ == "__main__":
    sys.exit(main())
