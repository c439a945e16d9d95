"""A 2 M-row answer over Flight SQL on loopback against the in-process ``to_arrow()``.

    python -m bench.flight [--rows 2000000] [--rounds 3] [--out bench/results/flight-sql.md]

The data is a Parquet file (id int64, x float64, name string) behind a ``files`` source: no
database server, so the figures are federator's own path. In process: ``fed.sql(q).to_arrow()``.
Over Flight SQL: ``federator serve --insecure-local`` in a process of its own (as deployed) and
ADBC's Flight SQL driver ``fetch_arrow_table()`` in this one. The server's peak RSS above its
idle size shows the answer is streamed, not gathered whole, on the server. Best of ``--rounds``
after one warm-up of each.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

import federator

QUERY = "SELECT id, x, name FROM lake.big"


def write_data(folder: Path, rows: int) -> int:
    """The Parquet file; returns the answer's Arrow size in bytes."""
    ids = pa.array(range(rows), pa.int64())
    table = pa.table(
        {
            "id": ids,
            "x": pa.compute.multiply(ids.cast(pa.float64()), 0.5),
            "name": pa.compute.binary_join_element_wise("user-", ids.cast(pa.string()), ""),
        }
    )
    (folder / "lake").mkdir()
    pq.write_table(table, folder / "lake" / "big.parquet", row_group_size=128 * 1024)
    return table.nbytes


def best(fn, rounds: int) -> tuple[float, int]:
    fn()  # warm-up: plans kept, pools and the residual engine started
    times, rows = [], 0
    for _ in range(rounds):
        t = time.perf_counter()
        rows = fn()
        times.append(time.perf_counter() - t)
    return min(times), rows


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_server(catalog: Path) -> tuple[subprocess.Popen[str], int]:
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "federator.cli",
            "serve",
            str(catalog),
            "--port",
            "0",
            "--insecure-local",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stderr is not None
    line = child.stderr.readline()
    if "grpc://127.0.0.1:" not in line:
        child.kill()
        raise SystemExit(f"the server did not start: {line}")
    return child, int(line.split("grpc://127.0.0.1:")[1].split()[0])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default="bench/results/flight-sql.md")
    args = ap.parse_args()
    import adbc_driver_flightsql.dbapi as flightsql

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        nbytes = write_data(folder, args.rows)
        catalog = folder / "catalog.toml"
        catalog.write_text(f'[sources.lake]\nkind = "files"\npath = "{folder / "lake"}"\n')

        with federator.connect(str(catalog)) as fed:
            local_s, local_rows = best(lambda: fed.sql(QUERY).to_arrow().num_rows, args.rounds)

        child, port = start_server(catalog)
        try:
            idle_mb = peak_rss_mb(child.pid)
            conn = flightsql.connect(f"grpc://127.0.0.1:{port}", autocommit=True)

            def over_flight() -> int:
                with conn.cursor() as cur:
                    cur.execute(QUERY)
                    return cur.fetch_arrow_table().num_rows

            flight_s, flight_rows = best(over_flight, args.rounds)
            conn.close()
            server_mb = peak_rss_mb(child.pid)
        finally:
            child.terminate()
            child.wait(timeout=30)
    assert local_rows == flight_rows == args.rows, (local_rows, flight_rows)
    print(report(args, nbytes, local_s, flight_s, idle_mb, server_mb))


def report(
    args: argparse.Namespace,
    nbytes: int,
    local_s: float,
    flight_s: float,
    idle_mb: float,
    server_mb: float,
) -> str:
    mb = nbytes / 2**20
    lines = [
        f"| path | seconds (best of {args.rounds}) | rows/s | MiB/s |",
        "|---|---:|---:|---:|",
        f"| in process `to_arrow()` | {local_s:.3f} | {args.rows / local_s:,.0f} | "
        f"{mb / local_s:,.0f} |",
        f"| Flight SQL, ADBC `fetch_arrow_table()` | {flight_s:.3f} | "
        f"{args.rows / flight_s:,.0f} | {mb / flight_s:,.0f} |",
        "",
        f"Answer: {args.rows:,} rows, {mb:,.1f} MiB of Arrow. Flight SQL / in process: "
        f"{flight_s / local_s:.2f}x. Server peak RSS {server_mb:,.0f} MiB "
        f"({server_mb - idle_mb:+,.0f} MiB over its {idle_mb:,.0f} MiB after start).",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}; pyarrow {pa.__version__}, federator {federator.__version__}.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
