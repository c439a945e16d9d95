"""Injection: the classic payloads as parameters, in IN lists and as bind-join keys, on every
relational adapter, under MariaDB's default ``sql_mode`` and under ``NO_BACKSLASH_ESCAPES``.

Each query must answer exactly the rows whose value equals the payload (computed here in
Python), and nothing may be written: a canary table keeps its rows on every server. Sessions
are read-only and take one statement per request, so even text that reached a server as SQL
could not write; that is tested on its own through each adapter.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pymysql
import pytest

import federator
from federator.config import parse_dsn
from federator.errors import FederatorError, ParameterError

pytestmark = pytest.mark.integration

TEXT_PAYLOADS = [
    "x'; DROP TABLE canary; -- ",
    "y' OR 1=1 -- ",
    "' OR '1'='1",
    "\\' OR 1=1 #",
    "\\",
    "\\\\'",
    "''",
    '"; DROP TABLE canary; --',
    "a' UNION SELECT id FROM canary -- ",
    "1; SELECT SLEEP(5)",
    "/* */'",
    "%s %% %(x)s {0}",
    "nul\x00byte",
    "e\u0301t\u00e9 \U0001f600",
    "\u00bf'",  # the multibyte trick, as text
    "",
]
BYTES_PAYLOADS = [p.encode("utf-8") for p in TEXT_PAYLOADS] + [
    b"\xbf'",  # 0xbf27: a quote hidden in a GBK lead byte
    b"\xbf\\' OR 1=1 -- ",
    b"\x00'\x1a\\",
    b"\xff\xfe'",
]


def _mysql_conn(dsn: str) -> pymysql.Connection:
    d = parse_dsn(dsn)
    return pymysql.connect(
        host=d.host, port=d.port, user=d.user, database=d.database, autocommit=True
    )


def _load_mysql(dsn: str) -> None:
    conn = _mysql_conn(dsn)
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS inj_items, canary")
        cur.execute("CREATE TABLE canary (id INT PRIMARY KEY)")
        cur.execute("INSERT INTO canary VALUES (1), (2), (3)")
        cur.execute(
            "CREATE TABLE inj_items (id INT PRIMARY KEY, t VARCHAR(100) COLLATE utf8mb4_bin,"
            " b VARBINARY(100))"
        )
        rows = [(i, p, p.encode()) for i, p in enumerate(TEXT_PAYLOADS)]
        rows += [(100 + i, None, p) for i, p in enumerate(BYTES_PAYLOADS)]
        rows += [(1000 + i, f"filler{i}", f"filler{i}".encode()) for i in range(2000)]
        cur.executemany("INSERT INTO inj_items VALUES (%s, %s, %s)", rows)
        cur.execute("ANALYZE TABLE inj_items")
        cur.execute("DROP TABLE IF EXISTS inj_types")
        cur.execute(
            "CREATE TABLE inj_types (id INT PRIMARY KEY, d DATE, ts DATETIME(6), n DECIMAL(20,6),"
            " f DOUBLE, tm TIME(6), ok BOOLEAN, big BIGINT)"
        )
        cur.execute(
            "INSERT INTO inj_types VALUES (1, '2026-03-01', '2026-03-01 12:30:45.123456',"
            " -12345678901234.5, 0.1, '-01:02:03.5', TRUE, -9223372036854775808)"
        )
    conn.close()


async def _load_pg(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS inj_items, inj_keys, canary")
        await conn.execute("CREATE TABLE canary (id int PRIMARY KEY)")
        await conn.execute("INSERT INTO canary VALUES (1), (2), (3)")
        await conn.execute("CREATE TABLE inj_items (id int PRIMARY KEY, t text, b bytea)")
        pg_text = [p.replace("\x00", "") for p in TEXT_PAYLOADS]  # text cannot hold NUL
        rows = [(i, p, p.encode()) for i, p in enumerate(pg_text)]
        rows += [(100 + i, None, p) for i, p in enumerate(BYTES_PAYLOADS)]
        rows += [(1000 + i, f"filler{i}", f"filler{i}".encode()) for i in range(2000)]
        await conn.copy_records_to_table("inj_items", records=rows)
        # the second-order source: payloads stored in PostgreSQL, then used as bind keys
        await conn.execute("CREATE TABLE inj_keys (k int PRIMARY KEY, t text, b bytea)")
        await conn.copy_records_to_table(
            "inj_keys",
            records=[(i, None, p) for i, p in enumerate(BYTES_PAYLOADS)]
            + [(500 + i, p, None) for i, p in enumerate(pg_text)],
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def _load_sqlite(path: Path) -> None:
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE canary (id INTEGER PRIMARY KEY)")
    con.executemany("INSERT INTO canary VALUES (?)", [(1,), (2,), (3,)])
    con.execute("CREATE TABLE inj_items (id INTEGER PRIMARY KEY, t TEXT, b BLOB)")
    rows = [(i, p, p.encode()) for i, p in enumerate(TEXT_PAYLOADS)]
    rows += [(100 + i, None, p) for i, p in enumerate(BYTES_PAYLOADS)]
    con.executemany("INSERT INTO inj_items VALUES (?, ?, ?)", rows)
    con.commit()
    con.close()


def _mysql_canary_intact(dsn: str) -> bool:
    conn = _mysql_conn(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM canary")
            return cur.fetchone()[0] == 3
    except pymysql.err.ProgrammingError:
        return False
    finally:
        conn.close()


async def _pg_canary_intact(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval("SELECT count(*) FROM canary") == 3
    except asyncpg.UndefinedTableError:
        return False
    finally:
        await conn.close()


@pytest.fixture(scope="module", params=["default", "no_backslash_escapes"])
def sql_mode(request: pytest.FixtureRequest, mysql_dsn: str) -> Iterator[str]:
    """MariaDB's global sql_mode for new sessions; restored after the module's tests."""
    conn = _mysql_conn(mysql_dsn)
    with conn.cursor() as cur:
        cur.execute("SELECT @@GLOBAL.sql_mode")
        before = cur.fetchone()[0]
        if request.param == "no_backslash_escapes":
            cur.execute("SET GLOBAL sql_mode = CONCAT(@@GLOBAL.sql_mode, ',NO_BACKSLASH_ESCAPES')")
    try:
        yield request.param
    finally:
        with conn.cursor() as cur:
            cur.execute("SET GLOBAL sql_mode = %s", (before,))
        conn.close()


@pytest.fixture(scope="module")
def fed(sql_mode: str, pg_dsn: str, mysql_dsn: str, tmp_path_factory: pytest.TempPathFactory):
    _load_mysql(mysql_dsn)
    asyncio.run(_load_pg(pg_dsn))
    path = tmp_path_factory.mktemp(f"inj-{sql_mode}") / "lite.db"
    _load_sqlite(path)
    catalog = {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg_dsn},
            "my": {"kind": "mysql", "dsn": mysql_dsn, "bulk_rows": -1},
            "lite": {"kind": "sqlite", "path": str(path)},
        }
    }
    with federator.connect(catalog, timeout=30) as f:
        yield f
    assert _mysql_canary_intact(mysql_dsn)
    assert asyncio.run(_pg_canary_intact(pg_dsn))


def _ids(fed: federator.Federation, sql: str, params: dict) -> list[int]:
    return sorted(r["id"] for r in fed.sql(sql, params=params).to_arrow().to_pylist())


def _expected(column: str, value: object, source: str) -> list[int]:
    """Ids whose ``column`` equals ``value``, from the lists the tables were loaded from."""
    texts = TEXT_PAYLOADS
    if source == "pg":
        texts = [p.replace("\x00", "") for p in TEXT_PAYLOADS]
    if column == "t":
        return [i for i, p in enumerate(texts) if p == value]
    by_bytes = [(i, p.encode()) for i, p in enumerate(texts)]
    by_bytes += [(100 + i, p) for i, p in enumerate(BYTES_PAYLOADS)]
    return sorted(i for i, p in by_bytes if p == value)


@pytest.mark.parametrize("source", ["my", "pg", "lite"])
def test_text_payloads_as_parameters(fed, source: str, mysql_dsn: str) -> None:
    for payload in TEXT_PAYLOADS:
        if source == "pg" and "\x00" in payload:
            with pytest.raises(FederatorError):  # PostgreSQL text cannot hold NUL
                _ids(fed, f"SELECT id FROM {source}.inj_items WHERE t = :p", {"p": payload})
            continue
        got = _ids(fed, f"SELECT id FROM {source}.inj_items WHERE t = :p", {"p": payload})
        assert got == _expected("t", payload, source), payload
    assert _mysql_canary_intact(mysql_dsn)


@pytest.mark.parametrize("source", ["my", "pg", "lite"])
def test_bytes_payloads_as_parameters(fed, source: str, mysql_dsn: str) -> None:
    for payload in BYTES_PAYLOADS:
        got = _ids(fed, f"SELECT id FROM {source}.inj_items WHERE b = :p", {"p": payload})
        assert got == _expected("b", payload, source), payload
    assert _mysql_canary_intact(mysql_dsn)


@pytest.mark.parametrize("source", ["my", "pg", "lite"])
def test_payloads_in_in_lists(fed, source: str, mysql_dsn: str) -> None:
    first, second = BYTES_PAYLOADS[0], BYTES_PAYLOADS[-4]
    got = _ids(
        fed,
        f"SELECT id FROM {source}.inj_items WHERE b IN (:a, :b, :c)",
        {"a": first, "b": second, "c": b"no such value"},
    )
    assert got == sorted(_expected("b", first, source) + _expected("b", second, source))
    assert _mysql_canary_intact(mysql_dsn)


def test_second_order_bytes_bind_keys_into_mariadb(fed, mysql_dsn: str) -> None:
    """BYTEA values stored in PostgreSQL become MariaDB IN-list keys: they must match as
    values, never run as SQL (this dropped the MariaDB table before)."""
    sql = "SELECT i.id FROM pg.inj_keys k JOIN my.inj_items i ON i.b = k.b"
    assert "bind join" in fed.explain(sql)
    got = _ids(fed, sql, {})
    assert got == sorted({i for p in BYTES_PAYLOADS for i in _expected("b", p, "my")})
    assert _mysql_canary_intact(mysql_dsn)


def test_second_order_text_bind_keys_into_mariadb(fed, mysql_dsn: str) -> None:
    sql = "SELECT i.id FROM pg.inj_keys k JOIN my.inj_items i ON i.t = k.t"
    pg_text = {p.replace("\x00", "") for p in TEXT_PAYLOADS}
    got = _ids(fed, sql, {})
    assert got == sorted(i for i, p in enumerate(TEXT_PAYLOADS) if p in pg_text)
    assert _mysql_canary_intact(mysql_dsn)


def test_second_order_bytes_bind_keys_into_postgres(fed, pg_dsn: str) -> None:
    sql = "SELECT i.id FROM lite.inj_items k JOIN pg.inj_items i ON i.b = k.b WHERE k.id >= 100"
    got = _ids(fed, sql, {})
    assert got == sorted({i for p in BYTES_PAYLOADS for i in _expected("b", p, "pg")})
    assert asyncio.run(_pg_canary_intact(pg_dsn))


def test_unbindable_parameter_is_a_parameter_error(fed) -> None:
    with pytest.raises(ParameterError, match="object"):
        fed.sql("SELECT id FROM my.inj_items WHERE t = :p", params={"p": object()}).to_arrow()


@pytest.mark.parametrize(
    "statement",
    ["DROP TABLE canary", "INSERT INTO canary VALUES (9)", "CREATE TABLE inj_new (id int)"],
)
@pytest.mark.parametrize("source", ["my", "pg"])
def test_sessions_are_read_only(fed, source: str, statement: str, mysql_dsn: str) -> None:
    """Defence in depth: text sent straight through an adapter still cannot write."""
    adapter = fed.catalog.adapters[source]

    async def run() -> None:
        async for _ in adapter.run(statement, [], None):
            pass

    with pytest.raises(Exception, match=r"(?i)read.only"):
        fed._loop.run(run())
    assert _mysql_canary_intact(mysql_dsn)


def test_mariadb_takes_one_statement_per_request(fed) -> None:
    adapter = fed.catalog.adapters["my"]

    async def run() -> list:
        return [b async for b in adapter.run("SELECT 1; SELECT 2", [], None)]

    with pytest.raises(Exception, match=r"(?i)syntax"):
        fed._loop.run(run())
    # the connection that refused it still serves queries
    assert _ids(fed, "SELECT id FROM my.canary", {}) == [1, 2, 3]


def test_every_parameter_type_matches_its_column_on_mariadb(fed) -> None:
    """The literals written for each Python type compare equal to the stored values."""
    import datetime as dt
    import decimal

    utc_plus_2 = dt.timezone(dt.timedelta(hours=2))
    cases = {
        "d": dt.date(2026, 3, 1),
        "ts": dt.datetime(2026, 3, 1, 12, 30, 45, 123456),
        "n": decimal.Decimal("-12345678901234.500000"),
        "f": 0.1,
        "tm": -dt.timedelta(hours=1, minutes=2, seconds=3, microseconds=500000),
        "ok": True,
        "big": -9223372036854775808,
    }
    for column, value in cases.items():
        sql = f"SELECT id FROM my.inj_types WHERE {column} = :v"
        assert _ids(fed, sql, {"v": value}) == [1], column
    aware = dt.datetime(2026, 3, 1, 14, 30, 45, 123456, tzinfo=utc_plus_2)
    assert _ids(fed, "SELECT id FROM my.inj_types WHERE ts = :v", {"v": aware}) == [1]
