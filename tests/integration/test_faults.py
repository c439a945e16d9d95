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
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
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
ROWS = 100_000  # a result of about 4 MB: it outgrows socket buffers, so a fault lands mid-result
FREEZE_AFTER = 200_000  # bytes from the server before the proxy stalls or cuts a connection
USER = "fault_user"  # federator's sessions here run as this user, so they can be told apart
PW_USER, PW_OLD, PW_NEW = "fault_pw", "old-Secret-1", "new-Secret-2"

PATHS = {  # adapter path -> (kind, options)
    "pg-row": ("postgres", {"bulk_rows": -1}),
    "pg-copy": ("postgres", {"bulk_rows": 0}),
    "my-row": ("mysql", {"bulk_rows": -1}),
    "my-cx": ("mysql", {"bulk_rows": 0}),
}
SCAN = "SELECT id, pad FROM s.fault_rows"
# Runs for minutes on either server unless cancelled.
ENDLESS = "SELECT count(*) AS n FROM s.fault_rows AS a CROSS JOIN s.fault_rows AS b"


# ---- servers, users, proxies ----------------------------------------------------------------
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


def _as_user(dsn: str, user: str, password: str | None = None) -> str:
    d = parse_dsn(dsn)
    scheme = "postgresql" if dsn.startswith("postgres") else "mysql"
    auth = user if password is None else f"{user}:{password}"
    return f"{scheme}://{auth}@{d.host}:{d.port}/{d.database}"


@pytest.fixture(scope="module")
def pg_admin(pg_dsn: str) -> str:
    """The superuser DSN, with fault_rows loaded, ``fault_user`` (trust) and ``fault_pw``
    (password checked: a pg_hba.conf line for that user alone) able to read it."""
    _run(
        _pg(
            pg_dsn,
            "DROP TABLE IF EXISTS fault_rows; "
            "CREATE TABLE fault_rows AS SELECT g AS id, md5(g::text) AS pad "
            f"FROM generate_series(1, {ROWS}) g; ANALYZE fault_rows; "
            f"DO $$ BEGIN CREATE ROLE {USER} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL;"
            f" END $$; DO $$ BEGIN CREATE ROLE {PW_USER} LOGIN;"
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$; "
            f"GRANT SELECT ON fault_rows TO {USER}, {PW_USER}",
        )
    )
    [row] = _run(_pg(pg_dsn, "SHOW hba_file"))
    path = Path(row[0])
    rule = f"host all {PW_USER} 127.0.0.1/32 scram-sha-256\n"
    if rule not in path.read_text():
        path.write_text(rule + path.read_text())
        _run(_pg(pg_dsn, "SELECT pg_reload_conf()"))
    return pg_dsn


@pytest.fixture(scope="module")
def my_admin(mysql_dsn: str) -> str:
    """The root DSN, with fault_rows loaded and ``fault_user``, ``fault_pw`` able to read it."""
    _my(
        mysql_dsn,
        "DROP TABLE IF EXISTS fault_rows",
        "CREATE TABLE fault_rows (id INT PRIMARY KEY, pad VARCHAR(32))",
        f"INSERT INTO fault_rows SELECT seq, md5(seq) FROM seq_1_to_{ROWS}",
        "ANALYZE TABLE fault_rows",
        f"CREATE USER IF NOT EXISTS '{USER}'@'%'",
        f"CREATE USER IF NOT EXISTS '{PW_USER}'@'%' IDENTIFIED BY '{PW_OLD}'",
        f"GRANT SELECT ON test.* TO '{USER}'@'%', '{PW_USER}'@'%'",
    )
    return mysql_dsn


@pytest.fixture
def admin(request: pytest.FixtureRequest, path: str) -> str:
    return request.getfixturevalue("pg_admin" if path.startswith("pg") else "my_admin")


@pytest.fixture
def proxy(admin: str) -> Iterator[FaultProxy]:
    d = parse_dsn(admin)
    proxy = FaultProxy(d.host, d.port).start()
    yield proxy
    proxy.stop()


def _federation(path: str, dsn: str, timeout: float = TIMEOUT) -> federator.Federation:
    kind, options = PATHS[path]
    source = {"kind": kind, "dsn": dsn, "max_concurrency": 2, **options}
    return federator.connect({"sources": {"s": source}}, timeout=timeout)


# ---- what the server sees -----------------------------------------------------------------
def _server_queries(path: str, admin: str, user: str = USER, running: bool = False) -> list[Any]:
    """Statements of ``user`` on fault_rows still on the server: running, or (PostgreSQL,
    unless ``running``) left idle in an open transaction."""
    if path.startswith("pg"):
        # running: executing for a while (not being prepared, which a cancel would miss)
        state = (
            "state = 'active' AND now() - query_start > interval '0.3 s'"
            if running
            else "state <> 'idle'"
        )
        sql = (
            f"SELECT pid, query FROM pg_stat_activity WHERE usename = $1 AND {state}"
            " AND query LIKE '%fault_rows%' AND backend_type = 'client backend'"
        )
        return _run(_pg(admin, sql, user))
    return _my(
        admin,
        "SELECT ID, INFO FROM information_schema.PROCESSLIST"
        f" WHERE USER = '{user}' AND INFO LIKE '%fault_rows%'"
        + (" AND TIME_MS > 300" if running else ""),
    )


def _sessions(path: str, admin: str, user: str = USER) -> list[int]:
    """Server sessions of ``user`` (federator's pools, its ConnectorX reads)."""
    if path.startswith("pg"):
        sql = "SELECT pid FROM pg_stat_activity WHERE usename = $1"
        return [r[0] for r in _run(_pg(admin, sql, user))]
    sql = f"SELECT ID FROM information_schema.PROCESSLIST WHERE USER = '{user}'"
    return [r[0] for r in _my(admin, sql)]


def _kill_sessions(path: str, admin: str, user: str = USER) -> int:
    """End every session of ``user`` from the server side (idle pooled connections)."""
    if path.startswith("pg"):
        sql = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1"
        return len(_run(_pg(admin, sql, user)))
    ids = _sessions(path, admin, user)
    for i in ids:
        with contextlib.suppress(pymysql.err.MySQLError):
            _my(admin, f"KILL {int(i)}")
    return len(ids)


def _cancel_statement(path: str, admin: str) -> bool:
    """Cancel fault_user's running statement as an operator would (pg_cancel_backend,
    KILL QUERY); False while there is none yet."""
    running = _server_queries(path, admin, running=True)
    for row in running:
        if path.startswith("pg"):
            _run(_pg(admin, "SELECT pg_cancel_backend($1)", row[0]))
        else:
            _my(admin, f"KILL QUERY {int(row[0])}")
    return bool(running)


# ---- helpers --------------------------------------------------------------------------------
def _timed(fn: Callable[[], Any]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        fn()
    except BaseException as e:  # the test inspects it
        return e, time.monotonic() - started
    return None, time.monotonic() - started


def _eventually(check: Callable[[], bool], seconds: float = 1.0) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def _planned(fed: federator.Federation, sql: str) -> federator.Result:
    """``sql`` planned with the catalog already read (under a long timeout of its own), so
    that its run has nearly all of the timeout, which planning and run share."""
    fed.sql(sql, timeout=60)
    return fed.sql(sql)


def _assert_scans(fed: federator.Federation) -> None:
    """The federation answers: every row, ids checked against the loaded range."""
    ids = fed.sql(SCAN, timeout=60).to_arrow().column("id").to_pylist()  # a loaded machine
    assert sorted(ids) == list(range(1, ROWS + 1))


def _assert_closed_cleanly(fed: federator.Federation, path: str, admin: str) -> None:
    """After close, no session of federator's is left on the server."""
    fed.close()
    assert _eventually(lambda: not _sessions(path, admin)), _sessions(path, admin)


# ---- blackhole ------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["pg-row", "my-row"])
def test_blackhole_while_planning(path: str, admin: str, proxy: FaultProxy) -> None:
    """A server that accepts and never answers: planning (catalog read, connect, handshake)
    ends at the timeout with an error naming the source and where it is."""
    proxy.set_mode("blackhole")
    fed = _federation(path, proxy.dsn(_as_user(admin, USER)))
    error, seconds = _timed(lambda: fed.sql(SCAN))
    assert isinstance(error, FederatorError), repr(error)
    assert "'s'" in str(error) and f"127.0.0.1:{proxy.port}" in str(error)
    assert seconds <= TIMEOUT + SLACK
    fed.close()
    assert _eventually(lambda: proxy.open_connections == 0)


@pytest.mark.parametrize("path", ["pg-row", "my-row"])
def test_blackhole_while_reading_the_catalog(path: str, admin: str, proxy: FaultProxy) -> None:
    """Connected, then silent while the catalog is read again: the timeout names that read."""
    fed = _federation(path, proxy.dsn(_as_user(admin, USER)))
    fed.sql(SCAN)
    proxy.set_mode("blackhole")
    fed.catalog.refresh()
    error, seconds = _timed(lambda: fed.sql(SCAN))
    assert isinstance(error, QueryTimeoutError), repr(error)
    assert f"reading the catalog of source 's' at 127.0.0.1:{proxy.port}" in str(error)
    assert seconds <= TIMEOUT + SLACK
    proxy.set_mode("pass")
    _assert_scans(fed)
    _assert_closed_cleanly(fed, path, admin)


@pytest.mark.parametrize("path", list(PATHS))
def test_blackhole_while_running(path: str, admin: str, proxy: FaultProxy) -> None:
    """The catalog is read, then the network goes silent: the query ends at the timeout,
    naming the fragment and source, and the pool serves again once the network is back."""
    fed = _federation(path, proxy.dsn(_as_user(admin, USER)))
    result = _planned(fed, SCAN)
    proxy.set_mode("blackhole")
    error, seconds = _timed(result.to_arrow)
    assert isinstance(error, (QueryTimeoutError, SourceError)), repr(error)
    assert "'s'" in str(error)
    assert seconds <= TIMEOUT + SLACK
    proxy.set_mode("pass")
    _assert_scans(fed)
    _assert_closed_cleanly(fed, path, admin)
    assert _eventually(lambda: proxy.open_connections == 0)


@pytest.mark.parametrize("path", list(PATHS))
def test_slow_planning_and_slow_run_share_one_deadline(
    path: str, admin: str, proxy: FaultProxy
) -> None:
    """The server's answers are held back for two thirds of the timeout while the catalog is
    read, then the statement runs for minutes: planning and the run share one deadline, so
    the error names the running fragment within timeout + 1 s of ``fed.sql()`` (each had a
    full timeout of its own before: about 2x), and the statement is gone from the server."""
    timeout = 3.0
    fed = _federation(path, proxy.dsn(_as_user(admin, USER)), timeout=timeout)
    proxy.set_mode("freeze")  # new connections: held, not dropped, until "pass"
    release = threading.Timer(timeout * 2 / 3, proxy.set_mode, ("pass",))
    release.start()
    try:
        error, seconds = _timed(lambda: fed.sql(ENDLESS).to_arrow())
    finally:
        release.join()
    assert isinstance(error, QueryTimeoutError), repr(error)
    assert "fragment f0 on source 's'" in str(error)  # the run was reached: not a planning error
    assert seconds <= timeout + SLACK
    assert _eventually(lambda: not _server_queries(path, admin)), _server_queries(path, admin)
    _assert_scans(fed)
    _assert_closed_cleanly(fed, path, admin)


# ---- freeze mid-result, server death mid-query -------------------------------------------
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("fault", ["freeze", "close"])
def test_fault_mid_result(path: str, fault: str, admin: str, proxy: FaultProxy) -> None:
    """The network freezes, or the server dies, with part of a large result delivered: a typed
    error within the timeout, the server-side query gone within a second, the pool usable."""
    fed = _federation(path, proxy.dsn(_as_user(admin, USER)))
    result = _planned(fed, SCAN)
    proxy.set_mode(fault, after=FREEZE_AFTER)
    error, seconds = _timed(result.to_arrow)
    expected = QueryTimeoutError if fault == "freeze" else SourceError
    assert isinstance(error, expected), repr(error)
    assert "'s'" in str(error)
    assert seconds <= TIMEOUT + SLACK
    assert _eventually(lambda: not _server_queries(path, admin)), _server_queries(path, admin)
    proxy.set_mode("pass")
    _assert_scans(fed)
    _assert_closed_cleanly(fed, path, admin)


@pytest.mark.parametrize("path", ["pg-row"])  # a cursor: each batch is a round trip
def test_freeze_between_streamed_batches(path: str, admin: str, proxy: FaultProxy) -> None:
    """``to_batches()`` resumes the query for each batch: the timeout holds after the first."""
    kind, options = PATHS[path]
    source = {"kind": kind, "dsn": proxy.dsn(_as_user(admin, USER)), "batch_rows": 5000}
    fed = federator.connect({"sources": {"s": {**source, **options}}}, timeout=TIMEOUT)
    started = time.monotonic()
    reader = fed.sql(SCAN).to_batches()
    assert reader.read_next_batch().num_rows == 5000
    proxy.set_mode("freeze", after=FREEZE_AFTER)
    error, _ = _timed(lambda: sum(b.num_rows for b in reader))
    assert isinstance(error, QueryTimeoutError), repr(error)
    assert time.monotonic() - started <= TIMEOUT + SLACK
    assert _eventually(lambda: not _server_queries(path, admin)), _server_queries(path, admin)
    proxy.set_mode("pass")
    _assert_scans(fed)
    _assert_closed_cleanly(fed, path, admin)


@pytest.mark.parametrize("path", list(PATHS))
def test_consumer_stops_early(path: str, admin: str) -> None:
    """A caller that stops after the first batch: nothing keeps running on the server, the
    session is pooled or closed, the federation answers again."""
    kind, options = PATHS[path]
    source = {"kind": kind, "dsn": _as_user(admin, USER), "batch_rows": 5000, **options}
    fed = federator.connect({"sources": {"s": source}}, timeout=30)

    async def first_batch_only() -> int:
        async with contextlib.aclosing(fed.sql(SCAN).__aiter__()) as batches:
            async for batch in batches:
                return batch.num_rows
        return 0

    assert _run(first_batch_only()) > 0
    assert _eventually(lambda: not _server_queries(path, admin)), _server_queries(path, admin)
    _assert_scans(fed)
    _assert_closed_cleanly(fed, path, admin)


@pytest.mark.parametrize("path", list(PATHS))
def test_reader_closed_early(path: str, admin: str) -> None:
    """``to_batches()``'s reader closed after its first batch (and still referenced): the query
    stops at once, nothing is left on the server, the federation answers again."""
    kind, options = PATHS[path]
    source = {"kind": kind, "dsn": _as_user(admin, USER), "batch_rows": 5000, **options}
    fed = federator.connect({"sources": {"s": source}}, timeout=30)
    reader = fed.sql(SCAN).to_batches()
    assert reader.read_next_batch().num_rows > 0
    reader.close()
    assert _eventually(lambda: not _server_queries(path, admin)), _server_queries(path, admin)
    reader.close()  # twice is fine
    _assert_scans(fed)
    _assert_closed_cleanly(fed, path, admin)
    del reader


# ---- the server cancels the statement ------------------------------------------------------
@pytest.mark.parametrize("path", list(PATHS))
def test_statement_cancelled_by_server(path: str, admin: str) -> None:
    """pg_cancel_backend / KILL QUERY while the query runs: a SourceError naming the source
    within a second (ConnectorX's panic included), nothing left running, the pool usable."""
    fed = _federation(path, _as_user(admin, USER), timeout=30)
    result = fed.sql(ENDLESS)
    outcome: dict[str, Any] = {}

    def run() -> None:
        outcome["error"], _ = _timed(result.to_arrow)
        outcome["at"] = time.monotonic()

    thread = threading.Thread(target=run)
    thread.start()
    assert _eventually(lambda: _cancel_statement(path, admin), seconds=10)
    cancelled_at = time.monotonic()
    thread.join(10)
    assert not thread.is_alive()
    error = outcome["error"]
    assert isinstance(error, SourceError), repr(error)
    assert "'s'" in str(error)
    assert outcome["at"] - cancelled_at <= SLACK
    assert _eventually(lambda: not _server_queries(path, admin))
    _assert_scans(fed)
    _assert_closed_cleanly(fed, path, admin)


# ---- dead idle connections, changed passwords -----------------------------------------------
@pytest.mark.parametrize("path", list(PATHS))
def test_connection_killed_while_idle(path: str, admin: str) -> None:
    """The server ends federator's idle pooled connections (pg_terminate_backend, KILL); the
    next query, sent at once, still answers: the dead connection is replaced, the query sent
    once more (it raced asyncpg's notice of the close about 1 time in 20 before)."""
    fed = _federation(path, _as_user(admin, USER))
    for _ in range(5):
        _assert_scans(fed)
        assert _kill_sessions(path, admin) >= 1
        _assert_scans(fed)
    _assert_closed_cleanly(fed, path, admin)


@pytest.mark.parametrize("path", list(PATHS))
def test_password_changed(path: str, admin: str, capfd: pytest.CaptureFixture[str]) -> None:
    """The password changes while federator runs: pooled sessions go on until the server ends
    them; a new connection fails with a typed error, in time, without the password in it and
    without driver noise on stderr (ConnectorX's Rust logger)."""
    if path.startswith("pg"):
        _run(_pg(admin, f"ALTER ROLE {PW_USER} PASSWORD '{PW_OLD}'"))
    else:
        _my(admin, f"ALTER USER '{PW_USER}'@'%' IDENTIFIED BY '{PW_OLD}'")
    fed = _federation(path, _as_user(admin, PW_USER, PW_OLD))
    _assert_scans(fed)
    if path.startswith("pg"):
        _run(_pg(admin, f"ALTER ROLE {PW_USER} PASSWORD '{PW_NEW}'"))
    else:
        _my(admin, f"ALTER USER '{PW_USER}'@'%' IDENTIFIED BY '{PW_NEW}'")
    if path != "my-cx":  # ConnectorX logs in anew for every read: the pool may stay
        _kill_sessions(path, admin, PW_USER)
    error, seconds = _timed(lambda: fed.sql(SCAN).to_arrow())
    assert isinstance(error, SourceError), repr(error)
    assert "password" in str(error) or "Access denied" in str(error)
    assert "'s'" in str(error)
    assert PW_OLD not in str(error) and PW_NEW not in str(error)
    assert seconds <= TIMEOUT + SLACK
    fed.close()
    assert _eventually(lambda: not _sessions(path, admin, PW_USER))
    err = capfd.readouterr().err
    assert "r2d2" not in err and "Access denied" not in err
