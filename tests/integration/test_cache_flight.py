"""The result cache under load and failure, against real PostgreSQL and Redis: concurrent
identical cold queries run the source query once (counted by PostgreSQL itself), also while
the machine is loaded and when freshness tokens cannot be read; a failed or cancelled leader
hands its fetch to one follower; freshness tokens are read once per interval; invalidations
survive a Redis restart and FLUSHALL."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pytest
import servers

import federator
from federator.embedded import redis_ping
from federator.errors import SourceError

N_ROWS = 3_000
TABLE = "flight_items"
QUERY = f"SELECT id, name FROM pg.{TABLE} WHERE grp = :grp ORDER BY id"
ONE = f"SELECT name FROM pg.{TABLE} WHERE id = 1"


async def _pg(dsn: str, sql: str) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def pg(pg_dsn: str) -> str:
    """``flight_items`` without an index on ``grp``: every run of QUERY is one sequential scan,
    which PostgreSQL counts in pg_stat_user_tables.seq_scan."""
    asyncio.run(_pg(pg_dsn, f"DROP TABLE IF EXISTS {TABLE}"))
    asyncio.run(
        _pg(
            pg_dsn,
            f"CREATE TABLE {TABLE} AS SELECT g AS id, 'item' || g AS name, g % 10 AS grp "
            f"FROM generate_series(1, {N_ROWS}) g",
        )
    )
    return pg_dsn


def seq_scans(dsn: str) -> int:
    rows = asyncio.run(
        _pg(dsn, f"SELECT seq_scan FROM pg_stat_user_tables WHERE relname = '{TABLE}'")
    )
    return int(rows[0]["seq_scan"])


def scans_since(dsn: str, before: int) -> int:
    """Sequential scans of the table since ``before``, once every backend reported its
    counters (a backend reports within about a second of going idle, and when it exits)."""
    deadline = time.monotonic() + 15
    while seq_scans(dsn) == before and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # any other backend's report arrives meanwhile
    return seq_scans(dsn) - before


def truth(dsn: str, grp: int) -> list[dict[str, Any]]:
    rows = asyncio.run(_pg(dsn, f"SELECT id, name FROM {TABLE} WHERE grp = {grp} ORDER BY id"))
    return [dict(r) for r in rows]


def catalog(dsn: str, **cache: Any) -> dict[str, Any]:
    return {
        "sources": {"pg": {"kind": "postgres", "dsn": dsn}},
        "cache": {"enabled": True, **cache},
    }


def concurrently(fed: federator.Federation, n: int, query: str = QUERY) -> list[Any]:
    """``n`` identical queries started at once on the federation's loop; tables or errors."""

    async def one() -> pa.Table:
        result = await fed.sql_async(query, {"grp": 3})
        return await result.to_arrow_async()

    async def run() -> list[Any]:
        return await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True)

    return fed._loop.run(run())


@pytest.fixture
def busy_machine() -> Iterator[None]:
    """Two processes spinning on the CPU (this machine has two cores) while the test runs."""
    spin = "import time\nend = time.time() + 120\nwhile time.time() < end: pass"
    procs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait(5)


# ---- single flight ---------------------------------------------------------------------------
@pytest.mark.parametrize("n", [50, 500])
def test_concurrent_cold_queries_run_the_source_query_once(pg: str, n: int) -> None:
    expected = truth(pg, 3)  # a scan of its own: before counting
    before = seq_scans(pg)
    with federator.connect(catalog(pg)) as fed:
        answers = concurrently(fed, n)
        stats = fed.cache.stats()
    assert all(isinstance(a, pa.Table) for a in answers), [a for a in answers][:3]
    assert answers[0].to_pylist() == expected
    assert all(a.equals(answers[0]) for a in answers)
    assert scans_since(pg, before) == 1
    assert stats["misses"] == 1 and stats["shared_fetches"] == n - 1


def test_single_flight_holds_on_a_loaded_machine(pg: str, busy_machine: None) -> None:
    expected = truth(pg, 3)  # a scan of its own: before counting
    before = seq_scans(pg)
    with federator.connect(catalog(pg)) as fed:
        answers = concurrently(fed, 200)
    assert all(isinstance(a, pa.Table) and a.equals(answers[0]) for a in answers)
    assert answers[0].to_pylist() == expected
    assert scans_since(pg, before) == 1


def test_an_unreadable_token_does_not_bypass_single_flight(pg: str) -> None:
    expected = truth(pg, 3)  # a scan of its own: before counting
    before = seq_scans(pg)
    with federator.connect(catalog(pg, token_timeout=1e-6)) as fed:  # every token read times out
        answers = concurrently(fed, 50)
        result = fed.sql(QUERY, {"grp": 3})
        result.to_arrow()
        note = result.explain(analyze=True)
        stats = fed.cache.stats()
    assert all(isinstance(a, pa.Table) and a.equals(answers[0]) for a in answers)
    assert answers[0].to_pylist() == expected
    assert "not cached: source 'pg' is being written (freshness token unsettled)" in note
    assert stats["stores"] == 0 and stats["shared_fetches"] == 49 and stats["errors"] >= 1
    assert scans_since(pg, before) == 3  # the 50 at once, then each of the two later runs


def delayed_source(fed: federator.Federation, fail_first: bool = False) -> list[str]:
    """Calls of the pg adapter's execute: each waits 0.3 s first (so followers queue up), and
    with ``fail_first`` the first one fails."""
    adapter = fed.catalog.adapter("pg")
    original = adapter.execute
    calls: list[str] = []

    async def slow(request: Any, keys: Any = None) -> Any:
        calls.append(request.text)
        first = len(calls) == 1
        await asyncio.sleep(0.3)
        if fail_first and first:
            raise SourceError("injected failure on source pg")
        async for batch in original(request, keys):
            yield batch

    adapter.execute = slow  # type: ignore[method-assign]
    return calls


def test_a_failed_leader_hands_over_to_one_follower(pg: str) -> None:
    with federator.connect(catalog(pg, tokens=False)) as fed:
        calls = delayed_source(fed, fail_first=True)
        answers = concurrently(fed, 20)
        stats = fed.cache.stats()
    errors = [a for a in answers if not isinstance(a, pa.Table)]
    assert len(errors) == 1 and isinstance(errors[0], SourceError)
    tables = [a for a in answers if isinstance(a, pa.Table)]
    assert len(tables) == 19 and all(t.to_pylist() == truth(pg, 3) for t in tables)
    assert len(calls) == 2  # the failed leader, then one follower for all the others
    assert stats["shared_fetches"] == 18


def test_a_cancelled_leader_hands_over_to_one_follower(pg: str) -> None:
    with federator.connect(catalog(pg, tokens=False)) as fed:
        calls = delayed_source(fed)

        async def run() -> list[Any]:
            results = [await fed.sql_async(QUERY, {"grp": 3}) for _ in range(20)]
            tasks = [asyncio.ensure_future(r.to_arrow_async()) for r in results]
            while not calls:
                await asyncio.sleep(0.01)
            tasks[0].cancel()  # the first started leads
            return await asyncio.gather(*tasks, return_exceptions=True)

        answers = fed._loop.run(run())
        assert isinstance(answers[0], asyncio.CancelledError)
        assert all(isinstance(a, pa.Table) and a.to_pylist() == truth(pg, 3) for a in answers[1:])
        assert len(calls) == 2
        assert fed.cache.stats()["shared_fetches"] == 18


# ---- freshness tokens, amortized -------------------------------------------------------------
def test_tokens_are_read_once_per_interval_and_shared(pg: str) -> None:
    with federator.connect(catalog(pg, token_interval=30)) as fed:
        adapter = fed.catalog.adapter("pg")
        original = adapter.freshness_token
        reads: list[float] = []

        async def counted(tables: Any) -> Any:
            reads.append(time.monotonic())
            return await original(tables)

        adapter.freshness_token = counted  # type: ignore[method-assign]
        concurrently(fed, 30)
        assert len(reads) == 1  # one read for 30 concurrent lookups
        for _ in range(5):
            result = fed.sql(QUERY, {"grp": 3})
            assert result.to_arrow().to_pylist() == truth(pg, 3)
        assert len(reads) == 1
        text = result.explain(analyze=True)
        assert "cache hit" in text and "freshness token read" in text
        assert "reused for up to 30 s: a write since may be unseen" in text
        assert "freshness tokens read at most every 30 s" in fed.sql(QUERY, {"grp": 3}).explain()
        fed.sql(QUERY, {"grp": 3}, max_staleness=0.5)  # a bound below the interval ...
        time.sleep(0.6)
        fed.sql(QUERY, {"grp": 3}, max_staleness=0.5).to_arrow()
        assert len(reads) == 2  # ... reads the token again once the bound has passed


def test_default_interval_sees_a_write_within_a_second(pg: str) -> None:
    with federator.connect(catalog(pg)) as fed:
        assert fed.sql(ONE).to_arrow().column(0)[0].as_py() == "item1"
        asyncio.run(_pg(pg, f"UPDATE {TABLE} SET name = 'changed' WHERE id = 1"))
        try:
            time.sleep(1.1)
            assert fed.sql(ONE).to_arrow().column(0)[0].as_py() == "changed"
        finally:
            asyncio.run(_pg(pg, f"UPDATE {TABLE} SET name = 'item1' WHERE id = 1"))


# ---- invalidation survives a Redis restart -----------------------------------------------------
@pytest.fixture
def own_redis(redis_dsn: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A redis-server of this test's own that the test may restart on the same port."""
    server = servers.start_redis()
    state: dict[str, Any] = {"server": server, "proc": None}

    def restart() -> None:
        server.stop()  # no persistence: it comes back empty
        argv = ["redis-server", "--port", str(server.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        state["proc"] = proc
        deadline = time.monotonic() + 20
        while not redis_ping(server.port):
            assert time.monotonic() < deadline and proc.poll() is None, "redis did not restart"
            time.sleep(0.05)

    state["restart"] = restart
    try:
        yield state
    finally:
        server.stop()
        if state["proc"] is not None:
            os.kill(state["proc"].pid, signal.SIGTERM)
            state["proc"].wait(10)


def redis_catalog(pg: str, redis_url: str) -> dict[str, Any]:
    prefix = f"test:{uuid.uuid4().hex[:8]}"
    return catalog(
        pg, tokens=False, redis=redis_url, redis_prefix=prefix, redis_wait=5.0, redis_cooldown=0.2
    )


@pytest.mark.parametrize("how", ["restart", "flushall"])
def test_invalidation_survives_a_redis_restart(
    pg: str, own_redis: dict[str, Any], how: str
) -> None:
    import redis

    url = own_redis["server"].dsn
    cat = redis_catalog(pg, url)
    try:
        with federator.connect(cat) as writer, federator.connect(cat) as reader:
            assert writer.sql(ONE).to_arrow().column(0)[0].as_py() == "item1"
            assert reader.sql(ONE).to_arrow().column(0)[0].as_py() == "item1"  # from Redis
            assert reader.cache.stats()["redis_hits"] == 1
            asyncio.run(_pg(pg, f"UPDATE {TABLE} SET name = 'changed' WHERE id = 1"))
            writer.cache.invalidate(source="pg", table=TABLE)
            if how == "restart":
                own_redis["restart"]()
            else:
                client = redis.Redis.from_url(url)
                client.flushall()
                client.close()
            # The reader still holds its copy from before; the counters that said it is stale
            # are gone. A new epoch tells it that it cannot know: it fetches again.
            result = reader.sql(ONE)
            assert result.to_arrow().column(0)[0].as_py() == "changed"
            assert result.last_execution is not None
            (stats,) = result.last_execution.stats.values()
            assert "cache hit" not in stats.note
            # After a restart that first operation met a closed connection and the tier was
            # skipped for redis_cooldown; now it reconnects and finds no epoch and no counters.
            time.sleep(0.3)
            assert reader.sql(ONE).to_arrow().column(0)[0].as_py() == "changed"
            assert writer.sql(ONE).to_arrow().column(0)[0].as_py() == "changed"
            assert reader.sql(ONE).to_arrow().column(0)[0].as_py() == "changed"
    finally:
        asyncio.run(_pg(pg, f"UPDATE {TABLE} SET name = 'item1' WHERE id = 1"))


def test_an_epoch_is_shared_by_every_process(pg: str, own_redis: dict[str, Any]) -> None:
    import redis

    url = own_redis["server"].dsn
    cat = redis_catalog(pg, url)
    with federator.connect(cat) as fed:
        fed.sql(ONE).to_arrow()
    client = redis.Redis.from_url(url)
    try:
        gens = client.hgetall(f"{cat['cache']['redis_prefix']}:gens")
        assert set(gens) == {b"@epoch"}  # nothing invalidated yet; an epoch set once
        epoch = gens[b"@epoch"]
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, repr(cat)], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["item1", "1"]  # a Redis hit in the other process
        assert client.hget(f"{cat['cache']['redis_prefix']}:gens", "@epoch") == epoch
    finally:
        client.close()


_CHILD = """
import ast, sys, federator
with federator.connect(ast.literal_eval(sys.argv[1])) as fed:
    name = fed.sql("SELECT name FROM pg.flight_items WHERE id = 1").to_arrow().column(0)[0]
    print(name.as_py(), fed.cache.stats()["redis_hits"])
"""
