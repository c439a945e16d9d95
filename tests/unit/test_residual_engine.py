"""The residual engine: one DuckDB database, a cursor per residual, worker threads (no servers)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import sqlglot

import federator
from federator.execute.residual import (
    ResidualEngine,
    default_engine,
    engine_for,
    joins_several,
    register_tables,
)


def _own_fragment(engine: ResidualEngine, n: int) -> list[tuple[int, int]]:
    """Register ``f0`` holding n, n+1, n+2 on a fresh cursor and read it back."""
    con = engine.cursor()
    try:
        con.register("f0", pa.table({"x": [n, n + 1, n + 2]}))
        return con.sql("SELECT min(x), count(*) FROM f0").fetchall()
    finally:
        engine.release(con)


def test_concurrent_cursors_each_see_only_their_own_fragments() -> None:
    engine = ResidualEngine(workers=2)
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda n: _own_fragment(engine, n), range(0, 4000, 10)))
        assert answers == [[(n, 3)] for n in range(0, 4000, 10)]
    finally:
        engine.close()


def test_fragments_go_away_with_their_cursor() -> None:
    engine = ResidualEngine()
    try:
        _own_fragment(engine, 1)
        con = engine.cursor()
        try:
            with pytest.raises(Exception, match="f0"):
                con.sql("SELECT * FROM f0").fetchall()
        finally:
            engine.release(con)
    finally:
        engine.close()


async def test_residuals_run_at_once_on_the_worker_threads() -> None:
    """Two residuals that each wait for the other to have started finish only if they run
    concurrently (on one thread at a time, the first would wait forever)."""
    engine = ResidualEngine(workers=2)
    import threading

    barrier = threading.Barrier(2, timeout=10)

    def meet(tag: int) -> int:
        barrier.wait()
        return tag

    try:
        cons = [engine.cursor(), engine.cursor()]
        tags = await asyncio.gather(*(engine.run(c, meet, i) for i, c in enumerate(cons)))
        assert tags == [0, 1]
        for c in cons:
            engine.release(c)
    finally:
        engine.close()


async def test_cancelling_interrupts_a_running_residual() -> None:
    engine = ResidualEngine()
    con = engine.cursor()
    long = "SELECT sum(a.range * b.range) FROM range(200000) a, range(200000) b"
    try:
        task = asyncio.ensure_future(engine.run(con, lambda: con.sql(long).fetchall()))
        await asyncio.sleep(0.3)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 30)  # a bound, not a speed check
        engine.release(con)
        assert _own_fragment(engine, 5) == [(5, 3)]  # the engine still serves
    finally:
        engine.close()


async def test_cancelling_a_residual_still_waiting_for_a_thread_drops_it() -> None:
    """With every worker busy, a cancelled residual is dropped from the queue: its
    cancellation does not wait for the busy worker, and it never runs."""
    engine = ResidualEngine(workers=2)
    import threading

    release = threading.Event()
    ran: list[str] = []

    def busy() -> None:
        release.wait(30)

    def queued() -> None:
        ran.append("queued")

    cons = [engine.cursor() for _ in range(3)]
    try:
        blockers = [asyncio.ensure_future(engine.run(c, busy)) for c in cons[:2]]
        waiting = asyncio.ensure_future(engine.run(cons[2], queued))
        await asyncio.sleep(0.2)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(waiting, 10)  # a bound: it must not wait for the workers
        assert not release.is_set()  # the workers were busy all along
        release.set()
        await asyncio.gather(*blockers)
        assert ran == []
    finally:
        release.set()
        for c in cons:
            engine.release(c)
        engine.close()


def test_a_used_database_is_replaced_and_closed_with_its_last_cursor() -> None:
    """Every ``recycle_after`` cursors a fresh database takes over (a long-lived one grows by
    about 1 KB per statement); a cursor of the old one keeps working until it is released."""
    engine = ResidualEngine(recycle_after=3)
    try:
        held = engine.cursor()
        held.register("f0", pa.table({"x": [10, 20]}))
        first = engine._current().database
        answers = [_own_fragment(engine, n) for n in range(10)]
        assert answers == [[(n, 3)] for n in range(10)]
        assert engine._current().database is not first
        assert first.open == 1  # only the held cursor: the old database is still open
        assert held.sql("SELECT sum(x) FROM f0").fetchall() == [(30,)]
        engine.release(held)
        assert first.open == 0
        with pytest.raises(Exception, match=r"(?i)closed"):
            first.connection.cursor()
    finally:
        engine.close()


def test_the_default_engine_warms_and_answers() -> None:
    engine = default_engine()
    engine.warm()
    assert _own_fragment(engine, 7) == [(7, 3)]


def _setting(engine: ResidualEngine, name: str) -> str:
    con = engine.cursor()
    try:
        return con.sql(f"SELECT current_setting('{name}')").fetchall()[0][0]
    finally:
        engine.release(con)


def test_a_memory_limit_gets_a_database_of_its_own() -> None:
    """DuckDB sets memory_limit per database: a limited engine must not change the default's."""
    unlimited = _setting(default_engine(), "memory_limit")
    limited = engine_for("300MB")
    assert engine_for("300MB") is limited and engine_for(None) is default_engine()
    assert _setting(limited, "memory_limit") == "286.1 MiB"  # 300e6 bytes, as DuckDB shows it
    assert _setting(default_engine(), "memory_limit") == unlimited != "286.1 MiB"


JOIN = (
    "SELECT s.g AS g, list(b.v) AS vs FROM a.big AS b JOIN c.small AS s ON b.k = s.k GROUP BY s.g"
)


@pytest.fixture(scope="module")
def join_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    folder = tmp_path_factory.mktemp("limit")
    for name in ("a", "c"):
        (folder / name).mkdir()
    rows = np.arange(300_000)
    pq.write_table(pa.table({"k": rows % 1000, "v": rows}), folder / "a" / "big.parquet")
    small = np.arange(1000)
    pq.write_table(pa.table({"k": small, "g": small % 7}), folder / "c" / "small.parquet")
    return {n: {"kind": "files", "path": str(folder / n)} for n in ("a", "c")}


def test_the_in_process_residual_runs_under_the_catalogs_memory_limit(
    join_sources: dict[str, dict[str, str]],
) -> None:
    """A residual needing more than ``[execution] memory_limit`` fails with DuckDB's
    out-of-memory error; the same query without the limit answers as DuckDB does."""
    limited = {"sources": join_sources, "execution": {"memory_limit": "4MB"}}
    with federator.connect(limited) as fed, pytest.raises(federator.SourceError, match="Memory"):
        fed.sql(JOIN).to_arrow()
    with federator.connect({"sources": join_sources}) as fed:
        got = {r["g"]: sorted(r["vs"]) for r in fed.sql(JOIN).to_arrow().to_pylist()}
    big = pq.read_table(f"{join_sources['a']['path']}/big.parquet")  # noqa: F841 (DuckDB reads it)
    small = pq.read_table(f"{join_sources['c']['path']}/small.parquet")  # noqa: F841
    truth = duckdb.sql(
        "SELECT s.g AS g, list(b.v) AS vs FROM big AS b JOIN small AS s ON b.k = s.k GROUP BY s.g"
    ).fetchall()
    assert got == {g: sorted(vs) for g, vs in truth}


FORK_SCRIPT = """
import os, signal, sys
from federator.execute.residual import default_engine

engine = default_engine()
engine.warm()  # the parent's database and threads exist before the fork
pid = os.fork()
if pid == 0:
    signal.alarm(30)  # a hang fails the test instead of stalling it
    if sys.argv[1] == "use":
        con = engine.cursor()
        assert con.sql("SELECT 42").fetchall() == [(42,)]
        engine.release(con)
    sys.exit(0)  # a normal exit: the interpreter finalizes what it inherited
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("child", ["use", "exit"])
def test_a_forked_child_opens_its_own_database_and_exits_cleanly(child: str) -> None:
    """DataLoader workers fork: the child must neither use nor free its parent's database
    (freeing it crashes, using it hangs), and must get one of its own."""
    done = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT, child], capture_output=True, timeout=120
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]


def test_a_script_that_connects_and_exits_at_once_exits_cleanly() -> None:
    """The warm-up runs on a thread of its own; exiting while it is inside DuckDB must neither
    abort the interpreter nor hang it."""
    code = (
        "import federator\n"
        "federator.connect({'sources': {'s': {'kind': 'sqlite', 'path': ':memory:'}}})\n"
    )
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()[-2000:]


@pytest.mark.parametrize(
    ("sql", "several"),
    [
        ("SELECT * FROM f0", False),
        ("SELECT * FROM f0 JOIN f1 ON f0.k = f1.k", False),
        ("SELECT * FROM f0 UNION ALL SELECT * FROM f1 UNION ALL SELECT * FROM f2", False),
        ("SELECT * FROM f0, f1, f2 WHERE f0.k = f1.k AND f1.j = f2.j", True),
        (
            "SELECT * FROM f0 JOIN (SELECT * FROM f1 JOIN f2 ON f1.j = f2.j"
            " LEFT JOIN f3 USING (j)) AS s ON TRUE",
            True,
        ),
    ],
)
def test_joins_several_finds_a_select_joining_three_relations(sql: str, several: bool) -> None:
    assert joins_several(sqlglot.parse_one(sql, read="duckdb")) is several


def _q05_shaped() -> dict[str, pa.Table]:
    """Customers' orders and suppliers on a 5-valued nation key, and lines on both: joining
    the first two on the nation key first makes 5,000 x 200 / 5 = 200,000 rows."""
    rng = np.random.default_rng(5)
    orders = pa.table({"nation": rng.integers(0, 5, 5_000), "order": np.arange(5_000)})
    suppliers = pa.table({"s_nation": rng.integers(0, 5, 200), "supp": np.arange(200)})
    lines = pa.table(
        {"l_order": rng.integers(0, 5_000, 20_000), "l_supp": rng.integers(0, 200, 20_000)}
    )
    return {"f0": orders, "f1": lines, "f2": suppliers}


Q05_SHAPED = (
    "SELECT f2.s_nation, count(*) AS n FROM f0, f1, f2 WHERE f1.l_order = f0.order "
    "AND f0.nation = f2.s_nation AND f1.l_supp = f2.supp GROUP BY 1 ORDER BY 1"
)


def _largest_operator(con: duckdb.DuckDBPyConnection) -> int:
    """The most rows any operator of the q05-shaped join put out (EXPLAIN ANALYZE)."""
    plan = con.sql("EXPLAIN ANALYZE " + Q05_SHAPED).fetchall()[0][1]
    rows = [int(r.replace(",", "")) for r in re.findall(r"([\d,]+) rows", plan)]
    return max(rows)


def test_tables_with_statistics_answer_the_same_and_go_away_with_their_cursor() -> None:
    engine = ResidualEngine(workers=1)
    try:
        answers = []
        for with_statistics in (False, True):
            con = engine.cursor()
            try:
                register_tables(con, _q05_shaped(), with_statistics=with_statistics)
                kinds = con.sql(
                    "SELECT table_name FROM duckdb_tables() WHERE temporary ORDER BY 1"
                ).fetchall()
                assert kinds == ([("f0",), ("f1",), ("f2",)] if with_statistics else [])
                answers.append(con.sql(Q05_SHAPED).fetchall())
                if with_statistics:  # joined on the order key first: never above the lines
                    assert _largest_operator(con) <= 20_000
            finally:
                engine.release(con)
        assert answers[0] == answers[1]
        con = engine.cursor()
        try:
            assert con.sql("SELECT count(*) FROM duckdb_tables() WHERE temporary").fetchall() == [
                (0,)
            ]
        finally:
            engine.release(con)
    finally:
        engine.close()
