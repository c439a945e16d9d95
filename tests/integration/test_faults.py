"""Fault injection against the real servers, through a TCP proxy the tests control
(tests/faultproxy.py), for each relational adapter and path: PostgreSQL's row and COPY paths,
MariaDB's row and ConnectorX paths.

Faults: a blackhole (accepts, never answers) while planning and while running, a network freeze
mid-result, the server dying mid-query (the proxy resets every connection), a pooled connection
killed while idle, a changed password, and the server cancelling the query (pg_cancel_backend,
KILL QUERY). Each test checks the typed error, the time to it (timeout + 1 s at most), that the
server-side query is gone within a second, that the same Federation answers afterwards, and that
no connection is left behind. The shared servers are never stopped: "the server dies" is the
proxy cutting every connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import pymysql
import pytest
from faultproxy import FaultProxy

import federator
from federator.config import parse_dsn
from federator.errors import FederatorError, QueryTimeoutError, SourceError

pytestmark = pytest.mark.integration

TIMEOUT = 1.5  # seconds: every query here runs under it
SLACK = 1.0  # the error must come within TIMEOUT + SLACK
ROWS = 300_000  # enough that a result outgrows socket buffers, so a freeze lands mid-result
FREEZE_AFTER = 200_000  # bytes from the server before the proxy stalls or cuts a connection


# ---- servers, proxies, helpers ------------------------------------------------------------
def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _pg(dsn: str, sql: str, *args: Any) -> list[Any]:
    d = parse_dsn(dsn)
    conn = await asyncpg.connect(host=d.host, port=d.port, user=d.user, database=d.database)
    try:
        if not args and ";" in sql:
            await conn.execute(sql)
            return []
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def _my(dsn: str, *sqls: str) -> list[Any]:
    d = parse_dsn(dsn)
    conn = pymysql.connect(
        host=d.host, port=d.port, user=d.user, database=d.database, autocommit=True
    )
    try:
        with conn.cursor() as cur:
            rows: list[Any] = []
            for sql in sqls:
                cur.execute(sql)
                rows = list(cur.fetchall())
            return rows
    finally:
        conn.close()


@pytest.fixture(scope="module")
def pg_data(pg_dsn: str) -> str:
    _run(
        _pg(
            pg_dsn,
            "DROP TABLE IF EXISTS fault_rows; "
            "CREATE TABLE fault_rows AS SELECT g AS id, md5(g::text) AS pad "
            f"FROM generate_series(1, {ROWS}) g; ANALYZE fault_rows",
        )
    )
    return pg_dsn


@pytest.fixture(scope="module")
def my_data(mysql_dsn: str) -> str:
    _my(
        mysql_dsn,
        "DROP TABLE IF EXISTS fault_rows",
        "CREATE TABLE fault_rows (id INT PRIMARY KEY, pad VARCHAR(32))",
        f"INSERT INTO fault_rows SELECT seq, md5(seq) FROM seq_1_to_{ROWS}",
        "ANALYZE TABLE fault_rows",
    )
    return mysql_dsn


def _proxy_for(dsn: str) -> FaultProxy:
    d = parse_dsn(dsn)
    return FaultProxy(d.host, d.port).start()


@pytest.fixture
def pg_proxy(pg_data: str) -> Iterator[FaultProxy]:
    proxy = _proxy_for(pg_data)
    yield proxy
    proxy.stop()


@pytest.fixture
def my_proxy(my_data: str) -> Iterator[FaultProxy]:
    proxy = _proxy_for(my_data)
    yield proxy
    proxy.stop()


PATHS = {  # adapter path -> (kind, options)
    "pg-row": ("postgres", {"bulk_rows": -1}),
    "pg-copy": ("postgres", {"bulk_rows": 0}),
    "my-row": ("mysql", {"bulk_rows": -1}),
    "my-cx": ("mysql", {"bulk_rows": 0}),
}


def _federation(path: str, dsn: str) -> federator.Federation:
    kind, options = PATHS[path]
    source = {"kind": kind, "dsn": dsn, "max_concurrency": 2, **options}
    return federator.connect({"sources": {"s": source}}, timeout=TIMEOUT)


def _timed(fn: Callable[[], Any]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        fn()
    except BaseException as e:  # the test inspects it
        return e, time.monotonic() - started
    return None, time.monotonic() - started


def _server_queries(path: str, dsn: str) -> list[Any]:
    """Queries of federator still running on the server (never the checking session's)."""
    if path.startswith("pg"):
        return _run(
            _pg(
                dsn,
                "SELECT pid, query FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
                " AND state <> 'idle' AND query LIKE '%fault_rows%'",
            )
        )
    return _my(
        dsn,
        "SELECT ID, INFO FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID()"
        " AND INFO LIKE '%fault_rows%'",
    )


def _server_sessions(path: str, dsn: str) -> int:
    """Sessions federator holds on the server (its pools and the ConnectorX reads)."""
    if path.startswith("pg"):
        rows = _run(
            _pg(
                dsn,
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'federator'",
            )
        )
        return int(rows[0][0])
    rows = _my(
        dsn,
        "SELECT count(*) FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID()"
        " AND USER = 'root' AND COMMAND <> 'Daemon'",
    )
    return int(rows[0][0])


def _eventually(check: Callable[[], bool], seconds: float = 1.0) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _assert_answers(fed: federator.Federation) -> None:
    """The federation still works: a whole scan, counted."""
    table = fed.sql("SELECT count(*) AS n FROM s.fault_rows").to_arrow()
    assert table.column("n").to_pylist() == [ROWS]


SCAN = "SELECT id, pad FROM s.fault_rows"


# ---- blackhole ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["pg-row", "my-row"])
def test_blackhole_while_planning(path: str, pg_data: str, my_data: str) -> None:
    """A server that accepts and never answers: planning (catalog read, connect, handshake)
    ends at the timeout with an error naming the source and where it is."""
    dsn = pg_data if path.startswith("pg") else my_data
    proxy = _proxy_for(dsn)
    try:
        proxy.set_mode("blackhole")
        fed = _federation(path, proxy.dsn(dsn))
        error, seconds = _timed(lambda: fed.sql(SCAN))
        assert isinstance(error, FederatorError), repr(error)
        assert "'s'" in str(error) and f"127.0.0.1:{proxy.port}" in str(error)
        assert seconds <= TIMEOUT + SLACK
        fed.close()
        assert _eventually(lambda: proxy.open_connections == 0)
    finally:
        proxy.stop()


@pytest.mark.parametrize("path", list(PATHS))
def test_blackhole_while_running(path: str, pg_data: str, my_data: str) -> None:
    """The catalog is read, then the network goes silent: the query ends at the timeout,
    naming the fragment and source, and the pool serves again once the network is back."""
    dsn = pg_data if path.startswith("pg") else my_data
    proxy = _proxy_for(dsn)
    try:
        fed = _federation(path, proxy.dsn(dsn))
        result = fed.sql(SCAN)
        proxy.set_mode("blackhole")
        error, seconds = _timed(result.to_arrow)
        assert isinstance(error, (QueryTimeoutError, SourceError)), repr(error)
        assert "'s'" in str(error)
        assert seconds <= TIMEOUT + SLACK
        proxy.set_mode("pass")
        _assert_answers(fed)
        fed.close()
        assert _eventually(lambda: proxy.open_connections == 0)
    finally:
        proxy.stop()


# ---- freeze mid-result, server death mid-query -------------------------------------------
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("fault", ["freeze", "close"])
def test_fault_mid_result(path: str, fault: str, pg_data: str, my_data: str) -> None:
    """The network freezes, or the server dies, with part of a large result delivered: a typed
    error within the timeout, the server-side query gone within a second, the pool usable."""
    dsn = pg_data if path.startswith("pg") else my_data
    proxy = _proxy_for(dsn)
    try:
        fed = _federation(path, proxy.dsn(dsn))
        result = fed.sql(SCAN)
        proxy.set_mode(fault, after=FREEZE_AFTER)
        error, seconds = _timed(result.to_arrow)
        expected = QueryTimeoutError if fault == "freeze" else SourceError
        assert isinstance(error, expected), repr(error)
        assert "'s'" in str(error)
        assert seconds <= TIMEOUT + SLACK
        assert _eventually(lambda: not _server_queries(path, dsn)), _server_queries(path, dsn)
        proxy.set_mode("pass")
        _assert_answers(fed)
        fed.close()
        assert _eventually(lambda: proxy.open_connections == 0)
    finally:
        proxy.stop()
