"""``federator query``'s progress line on stderr: on a terminal (a pty, with pexpect) a query
running past a second shows rows per source, and Ctrl-C then stops it; where stderr is not a
terminal nothing is written there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from federator.demo import write_demo_data

pexpect = pytest.importorskip("pexpect")

ROOT = Path(__file__).resolve().parents[2]
SLOW = (  # a slow three-way cross join on the files source, joined with SQLite on DuckDB
    "SELECT u.name, count(*) AS n FROM lake.big AS a, lake.big AS b, lake.big AS c, "
    "shop.users AS u WHERE (a.x * 7 + b.x * 3001 + c.x) % 1000003 = 17 AND u.id = c.x "
    "GROUP BY u.name"
)


@pytest.fixture
def catalog(tmp_path: Path) -> Path:
    """The demo's SQLite shop and files lake, plus a table big enough for a slow cross join."""
    write_demo_data(tmp_path)
    pq.write_table(pa.table({"x": list(range(4000))}), tmp_path / "lake" / "big.parquet")
    return tmp_path / "federator.toml"


def env() -> dict[str, str]:
    return {
        **os.environ,
        "TERM": "xterm",
        "COLUMNS": "120",
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }


def test_slow_query_shows_progress_per_source_after_a_second_and_ctrl_c_stops_it(
    catalog: Path,
) -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "federator.cli", "query", "--catalog", str(catalog), SLOW],
        encoding="utf-8",
        timeout=60,
        dimensions=(40, 120),
        env=env(),
    )
    try:
        child.expect(r"running (\d+\.\d)s · ([^\r\n]*?)Ctrl-C cancels")
        shown_at = float(child.match.group(1))
        assert shown_at >= 1.0  # nothing before the first second
        line = child.match.group(2)
        for part in (r"lake: [\d,]+ rows", r"shop: [\d,]+ rows", r"residual: [\d,]+ rows"):
            assert re.search(part, line), line
        started = time.monotonic()
        child.sendintr()
        child.expect(pexpect.EOF, timeout=30)
        assert time.monotonic() - started < 10
        child.close()
        assert child.exitstatus == 130
    finally:
        if child.isalive():
            child.terminate(force=True)


def test_no_progress_where_stderr_is_not_a_terminal(catalog: Path) -> None:
    query = ["query", "--catalog", str(catalog), "--format", "csv"]
    proc = subprocess.run(
        [sys.executable, "-m", "federator.cli", *query, "SELECT count(*) AS n FROM shop.users"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout.splitlines() == ["n", "40"]  # write_demo_data writes 40 users
