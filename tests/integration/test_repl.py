"""The REPL driven in a real terminal (a pty, with pexpect): a query and its table, completion,
\\d, errors, EXPLAIN, Ctrl-C cancelling a slow query (DuckDB over files; ``pg_sleep`` on a
real PostgreSQL, cancelled on the server), history and Ctrl-D."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from federator.demo import catalog_toml, write_demo_data

pexpect = pytest.importorskip("pexpect")
pytest.importorskip("prompt_toolkit")

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\x1b[=>]")
PROMPT = "federator>"


def plain(text: str) -> str:
    return ANSI.sub("", text).replace("\r", "")


class Terminal:
    """A REPL process on a pty, 120 columns wide."""

    def __init__(self, catalog: Path, history: Path, *args: str):
        env = {
            **os.environ,
            "TERM": "xterm",
            "PROMPT_TOOLKIT_NO_CPR": "1",  # no cursor-position replies from pexpect
            "NO_COLOR": "1",
            "COLUMNS": "120",
            "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        }
        self.child = pexpect.spawn(
            sys.executable,
            ["-m", "federator.cli", "repl", str(catalog), "--history", str(history), *args],
            encoding="utf-8",
            timeout=20,
            dimensions=(50, 120),
            env=env,
            cwd=str(catalog.parent),
        )
        self.expect(PROMPT)

    def expect(self, pattern: str, timeout: float | None = None) -> str:
        """Wait for a regular expression; return the plain text before it and the match."""
        self.child.expect(pattern, timeout=timeout if timeout is not None else -1)
        return plain(self.child.before + self.child.after)

    def run(self, text: str, until: str) -> str:
        """Type ``text`` and Enter; wait for ``until`` then the next prompt."""
        self.child.send(text + "\r")
        out = self.expect(until)
        self.child.expect(PROMPT, timeout=-1)
        return out + plain(self.child.before)

    def settle(self, quiet: float = 0.5) -> None:
        """Read output until the terminal has been quiet for ``quiet`` seconds."""
        while True:
            try:
                self.child.read_nonblocking(size=65536, timeout=quiet)
            except pexpect.TIMEOUT:
                return

    def close(self) -> None:
        if self.child.isalive():
            self.child.sendcontrol("d")
            try:
                self.child.expect(pexpect.EOF, timeout=5)
            except pexpect.TIMEOUT:
                self.child.terminate(force=True)


def make_sample(folder: Path) -> Path:
    """The demo's SQLite shop and files lake, plus a table big enough for a slow cross join."""
    write_demo_data(folder)
    pq.write_table(pa.table({"x": list(range(4000))}), folder / "lake" / "big.parquet")
    return folder / "federator.toml"


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    return make_sample(tmp_path)


@pytest.fixture(scope="module")
def term(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Terminal]:
    """One REPL shared by the tests that leave it as they found it (starting one takes a second)."""
    folder = tmp_path_factory.mktemp("repl")
    t = Terminal(make_sample(folder), folder / "history")
    yield t
    t.close()


def test_query_prints_a_table(term: Terminal) -> None:
    out = term.run(
        "SELECT id, name, NULL AS nothing FROM shop.users ORDER BY id LIMIT 3;", r"rows\)"
    )
    assert re.search(r"id\s.*name\s.*nothing", out)
    assert re.search(r"int64\s.*string", out)  # types in the header
    assert re.search(r"1\s.*alan1\s.*NULL", out)  # NULL shown as such
    assert re.search(r"\(3 rows\) in [\d.]+ (ms|s)", out)


def test_multi_line_statement_ends_at_semicolon(term: Terminal) -> None:
    term.child.send("SELECT count(*) AS n\r")
    term.expect(r"\.\.\.>")  # a continuation line, not run yet
    out = term.run("FROM lake.products;", r"\(1 row\)")
    assert "24" in out


def test_completion_of_tables_and_columns(term: Terminal) -> None:
    # The screen is redrawn in pieces, so completion is checked by running what it produced:
    # an uncompleted name would be an unknown table or column.
    term.child.send("SELECT id FROM shop.us")
    term.child.send("\t")  # -> shop.users
    term.child.send(" AS u WHERE u.signed_")
    term.child.send("\t")  # -> u.signed_up (a column of the table aliased u)
    term.child.send(" IS NOT NULL AND countr")
    term.child.send("\t")  # -> country (a column of a table the statement names)
    out = term.run(" = 'GB' ORDER BY id LIMIT 1;", r"\(1 row\)")
    assert "error" not in out
    term.child.send("\\sour")
    term.child.send("\t")  # meta commands complete too
    out = term.run("", r"sqlite")
    assert "files" in out


def test_describe_and_sources(term: Terminal) -> None:
    out = term.run("\\d shop.users", r"about 40 rows")
    assert re.search(r"signed_up\s.*date32", out)
    out = term.run("\\d", r"shop\.users.*\n.*\n")
    assert "lake.products" in out
    out = term.run("\\sources", r"sqlite")
    assert "files" in out
    out = term.run("\\?", r"\\q")
    assert "\\format" in out and "\\cache" in out


def test_syntax_error_is_one_message_with_a_caret(term: Terminal) -> None:
    out = term.run("SELEC id FROM shop.users;", r"\^")
    assert "error: SQL syntax error (line 1, column" in out
    assert "Traceback" not in out
    out = term.run("SELECT nope FROM shop.users;", r"error: [^\n]*\n")
    assert "unknown column" in out and "Traceback" not in out


def test_explain_and_explain_analyze(term: Terminal) -> None:
    out = term.run("EXPLAIN SELECT name FROM shop.users WHERE id = 2;", r"Fragment f0[^\n]*\n.*\n")
    assert "source shop (sqlite)" in out
    out = term.run("EXPLAIN ANALYZE SELECT name FROM shop.users WHERE id = 2;", r"actual rows 1")
    assert "analyze:" in out


def test_meta_commands_change_output(term: Terminal, tmp_path: Path) -> None:
    term.run("\\format csv", "format is csv")
    out = term.run("SELECT id, name FROM shop.users ORDER BY id LIMIT 2;", r"rows\)")
    assert "id,name\n1,alan1\n2,barbara2" in out
    term.run("\\timing off", "timing is off")
    out = term.run("SELECT id FROM shop.users LIMIT 1;", r"\(1 row\)[^\n]*\n")
    assert not re.search(r"\(1 row\) in", out)
    target = tmp_path / "out.parquet"
    term.run(f"\\o {target}", "results go to")
    term.run("SELECT id FROM shop.users;", r"wrote 40 rows")
    assert pq.read_table(target).num_rows == 40
    term.run("\\o", "terminal")
    out = term.run("\\cache", r"cache not configured|enabled|hits")
    assert "Traceback" not in out
    term.run("\\format table", "format is table")
    term.run("\\timing on", "timing is on")


def test_ctrl_c_cancels_a_slow_query_then_the_next_query_runs(term: Terminal) -> None:
    slow = (
        "SELECT count(*) AS n FROM lake.big AS a, lake.big AS b, lake.big AS c "
        "WHERE (a.x * 7 + b.x * 3001 + c.x) % 1000003 = 17;"
    )
    term.child.send(slow + "\r")
    term.expect(r"running [\d.]+s .*lake: ")  # the progress line
    started = time.monotonic()
    term.child.sendintr()
    term.expect("cancelled")
    term.expect(PROMPT)
    assert time.monotonic() - started < 10
    out = term.run("SELECT count(*) AS n FROM shop.users;", r"\(1 row\)")
    assert "40" in out


def test_ctrl_c_at_the_prompt_keeps_the_repl_and_ctrl_d_exits(sample: Path, tmp_path: Path) -> None:
    term = Terminal(sample, tmp_path / "history")
    try:
        term.run("SELECT 1 AS one FROM shop.users LIMIT 1;", r"\(1 row\)")
        term.child.send("SELECT half a line")
        term.expect("line")
        term.child.sendintr()
        term.settle()  # the redraws of the aborted line also show the prompt text: wait them out
        out = term.run("SELECT 2 AS two FROM shop.users LIMIT 1;", r"\(1 row\)")
        assert "two" in out and "half" not in out  # the half line was forgotten
        term.settle()
        term.child.sendcontrol("d")
        term.child.expect(pexpect.EOF, timeout=10)
        term.child.close()
        assert term.child.exitstatus == 0
    finally:
        term.close()
    assert "SELECT 1 AS one FROM shop.users LIMIT 1;" in (tmp_path / "history").read_text()


def test_history_is_recalled_in_a_new_session(sample: Path, tmp_path: Path) -> None:
    history = tmp_path / "history"
    first = Terminal(sample, history)
    try:
        first.run("SELECT 42 AS answer FROM shop.users LIMIT 1;", r"\(1 row\)")
        first.child.send("\\q\r")
        first.child.expect(pexpect.EOF)
    finally:
        first.close()
    second = Terminal(sample, history)
    try:
        second.child.send("\x1b[A\x1b[A")  # up arrow twice: before \\q
        second.expect("answer")  # (highlighting puts escapes between the words)
        out = second.run("", r"\(1 row\)")
        assert "42" in out
    finally:
        second.close()


def test_unreadable_catalog_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[sources\n")
    child = pexpect.spawn(
        sys.executable,
        ["-m", "federator.cli", "repl", str(bad)],
        encoding="utf-8",
        timeout=20,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 1
    assert "is not valid TOML" in child.before and "Traceback" not in child.before


# ---- PostgreSQL: Ctrl-C cancels pg_sleep on the server ----------------------------------------
SLEEP_RULES = """
from federator.rules import Rule

def federator_rules(fed):
    fed.rules.add(Rule("PG_SLEEP"), kind="postgres")
"""


async def _pg(dsn: str, sql: str) -> list[object]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        if ";" in sql:  # a script
            await conn.execute(sql)
            return []
        return list(await conn.fetch(sql))
    finally:
        await conn.close()


def test_ctrl_c_cancels_pg_sleep_on_the_server(pg_dsn: str, tmp_path: Path) -> None:
    asyncio.run(
        _pg(pg_dsn, "DROP TABLE IF EXISTS repl_sleep; CREATE TABLE repl_sleep AS SELECT 1 AS x")
    )
    (tmp_path / "sleep_rules.py").write_text(SLEEP_RULES)
    catalog = tmp_path / "catalog.toml"
    catalog.write_text(
        'rules = ["sleep_rules.py"]\n'
        + catalog_toml({"sources": {"pg": {"kind": "postgres", "dsn": pg_dsn}}})
    )
    term = Terminal(catalog, tmp_path / "history")
    try:
        term.child.send("SELECT x FROM pg.repl_sleep WHERE pg_sleep(60) IS NOT NULL;\r")
        term.expect(r"running [\d.]+s .*pg: ")
        active = "SELECT count(*) AS n FROM pg_stat_activity WHERE query LIKE '%PG_SLEEP(60)%' "
        active += "AND state = 'active' AND pid <> pg_backend_pid()"
        assert asyncio.run(_pg(pg_dsn, active))[0]["n"] == 1  # type: ignore[index]
        term.child.sendintr()
        term.expect("cancelled", timeout=15)
        term.expect(PROMPT)
        deadline = time.monotonic() + 5
        while asyncio.run(_pg(pg_dsn, active))[0]["n"]:  # type: ignore[index]
            assert time.monotonic() < deadline, "pg_sleep still running on the server"
            time.sleep(0.2)
        out = term.run("SELECT x FROM pg.repl_sleep;", r"\(1 row\)")
        assert re.search(r"\b1\b", out)
    finally:
        term.close()
