"""Type round trips: every supported column type, with NULLs and edge values, compared value by
value against what the database's own driver returns."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import math
import uuid

import aiomysql
import asyncpg
import pyarrow as pa
import pytest

import federator
from federator.config import parse_dsn

D = decimal.Decimal
UTC = dt.UTC

PG_TABLE = """
CREATE TABLE types_rt (
    id bigint PRIMARY KEY, i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision,
    n numeric(12, 2), n38 numeric(38, 10), b boolean, c char(6), v varchar(20), t text,
    d date, ts timestamp, tstz timestamptz, by bytea, j json, jb jsonb, u uuid
)"""
PG_ROWS = [
    (
        1,
        -32768,
        -2147483648,
        -9223372036854775808,
        1.5,
        math.nan,
        D("-9999999999.99"),
        D("1234567890123456789012345678.0123456789"),
        True,
        "ab",
        "héllo",
        "a\nb 'quoted'",
        dt.date(1, 1, 1),
        dt.datetime(1970, 1, 1),
        dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        b"\x00\x01\xff",
        '{"a": [1, 2]}',
        '{"k": "v"}',
        uuid.UUID(int=1),
    ),
    (
        2,
        32767,
        2147483647,
        9223372036854775807,
        -0.0,
        math.inf,
        D("9999999999.99"),
        D("-0.0000000001"),
        False,
        "abcdef",
        "",
        "",
        dt.date(9999, 12, 31),
        dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
        dt.datetime(1999, 12, 31, 23, 0, tzinfo=UTC),
        b"",
        "null",
        "[]",
        uuid.UUID(int=2**128 - 1),
    ),
    (
        3,
        None,
        None,
        None,
        None,
        -math.inf,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    ),
]


def _expected_pg(value: object, column: str) -> object:
    if column == "c" and value is not None:
        return value.rstrip(" ")  # CHAR(n) without its blank padding
    if column == "tstz" and value is not None:
        return value.astimezone(UTC)
    if column in ("j", "jb", "u") and value is not None:
        return str(value)
    return value


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, dt.datetime) and isinstance(b, dt.datetime) and a.tzinfo and b.tzinfo:
        return a == b
    return a == b and type(a) is type(b)


async def _pg_setup(dsn: str) -> list[dict[str, object]]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS types_rt")
        await conn.execute(PG_TABLE)
        await conn.executemany(
            f"INSERT INTO types_rt VALUES ({', '.join(f'${i}' for i in range(1, 20))})", PG_ROWS
        )
        await conn.execute("ANALYZE types_rt")
        records = await conn.fetch("SELECT * FROM types_rt ORDER BY id")
        return [dict(r) for r in records]
    finally:
        await conn.close()


def test_postgres_types_round_trip(pg_dsn: str) -> None:
    truth = asyncio.run(_pg_setup(pg_dsn))
    with federator.connect({"sources": {"pg": {"kind": "postgres", "dsn": pg_dsn}}}) as fed:
        table = fed.sql("SELECT * FROM pg.types_rt ORDER BY id").to_arrow()
    schema = table.schema
    assert schema.field("n").type == pa.decimal128(12, 2)
    assert schema.field("n38").type == pa.decimal128(38, 10)
    assert schema.field("tstz").type == pa.timestamp("us", tz="UTC")
    assert schema.field("ts").type == pa.timestamp("us")
    assert schema.field("d").type == pa.date32()
    assert schema.field("b").type == pa.bool_()
    assert schema.field("by").type == pa.binary()
    assert schema.field("i2").type == pa.int16()
    assert schema.field("f4").type == pa.float32()
    rows = table.to_pylist()
    assert len(rows) == len(truth)
    for got, want in zip(rows, truth, strict=True):
        for column, value in want.items():
            expected = _expected_pg(value, column)
            actual = got[column]
            if column == "f4" and expected is not None:
                assert actual == pytest.approx(expected), column
            elif column in ("j", "jb") and expected is not None:
                assert actual.replace(" ", "") == expected.replace(" ", ""), column
            else:
                assert _same(actual, expected), (column, actual, expected)


def test_postgres_char_padding_joins_like_the_database(pg_dsn: str, mysql_dsn: str) -> None:
    """'ab' in CHAR(6) equals 'ab' in PostgreSQL; the federated join must agree."""
    asyncio.run(_pg_setup(pg_dsn))
    asyncio.run(
        _mysql_exec(
            mysql_dsn,
            [
                "DROP TABLE IF EXISTS codes",
                "CREATE TABLE codes (code VARCHAR(10), label VARCHAR(10))",
                "INSERT INTO codes VALUES ('ab', 'first'), ('abcdef', 'second')",
            ],
        )
    )
    catalog = {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg_dsn},
            "my": {"kind": "mysql", "dsn": mysql_dsn},
        }
    }
    with federator.connect(catalog) as fed:
        rows = (
            fed.sql(
                "SELECT t.id, c.label FROM pg.types_rt t"
                " JOIN my.codes c ON c.code = t.c ORDER BY t.id"
            )
            .to_arrow()
            .to_pylist()
        )
    assert rows == [{"id": 1, "label": "first"}, {"id": 2, "label": "second"}]


MY_TABLE = """
CREATE TABLE types_rt (
    id BIGINT PRIMARY KEY, ti TINYINT, si SMALLINT, mi MEDIUMINT, i INT, bi BIGINT,
    ubi BIGINT UNSIGNED, f FLOAT, dbl DOUBLE, n DECIMAL(12, 2), n38 DECIMAL(38, 10), b TINYINT(1),
    c CHAR(6), v VARCHAR(20), t TEXT, d DATE, dtm DATETIME(6), ts TIMESTAMP(6) NULL,
    bl BLOB, j JSON
)"""
MY_ROWS = [
    (
        1,
        -128,
        -32768,
        -8388608,
        -2147483648,
        -9223372036854775808,
        18446744073709551615,
        1.5,
        1e308,
        D("-9999999999.99"),
        D("1234567890123456789012345678.0123456789"),
        1,
        "ab",
        "héllo",
        "a\nb 'q' %s",
        dt.date(1000, 1, 1),
        dt.datetime(1970, 1, 1, 0, 0, 0, 1),
        dt.datetime(2024, 1, 2, 3, 4, 5, 123456),
        b"\x00\x01\xff",
        '{"a": [1, 2]}',
    ),
    (
        2,
        127,
        32767,
        8388607,
        2147483647,
        9223372036854775807,
        0,
        -0.0,
        -1e-308,
        D("9999999999.99"),
        D("-0.0000000001"),
        0,
        "abcdef",
        "",
        "",
        dt.date(9999, 12, 31),
        dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
        dt.datetime(2038, 1, 19, 3, 14, 7),
        b"",
        "[]",
    ),
    (3, *([None] * 19)),
]


async def _mysql_exec(
    dsn: str,
    statements: list[str],
    rows: list[tuple] | None = None,
    insert: str | None = None,
    fetch: str | None = None,
) -> list[tuple]:
    d = parse_dsn(dsn)
    conn = await aiomysql.connect(
        host=d.host,
        port=d.port,
        user=d.user,
        password=d.password or "",
        db=d.database,
        autocommit=True,
        init_command="SET time_zone = '+00:00'",
    )
    try:
        async with conn.cursor() as cur:
            for s in statements:
                await cur.execute(s)
            if insert and rows:
                await cur.executemany(insert, rows)
            if fetch:
                await cur.execute(fetch)
                return list(await cur.fetchall())
        return []
    finally:
        conn.close()


def test_mysql_types_round_trip(mysql_dsn: str) -> None:
    names = [
        "id",
        "ti",
        "si",
        "mi",
        "i",
        "bi",
        "ubi",
        "f",
        "dbl",
        "n",
        "n38",
        "b",
        "c",
        "v",
        "t",
        "d",
        "dtm",
        "ts",
        "bl",
        "j",
    ]
    truth = asyncio.run(
        _mysql_exec(
            mysql_dsn,
            ["DROP TABLE IF EXISTS types_rt", MY_TABLE],
            MY_ROWS,
            f"INSERT INTO types_rt VALUES ({', '.join(['%s'] * 20)})",
            "SELECT * FROM types_rt ORDER BY id",
        )
    )
    with federator.connect({"sources": {"my": {"kind": "mysql", "dsn": mysql_dsn}}}) as fed:
        table = fed.sql("SELECT * FROM my.types_rt ORDER BY id").to_arrow()
    s = table.schema
    assert s.field("b").type == pa.bool_()
    assert s.field("ubi").type == pa.uint64()
    assert s.field("n").type == pa.decimal128(12, 2)
    assert s.field("n38").type == pa.decimal128(38, 10)
    assert s.field("ts").type == pa.timestamp("us", tz="UTC")
    assert s.field("dtm").type == pa.timestamp("us")
    assert s.field("bl").type == pa.binary()
    for got, want in zip(table.to_pylist(), truth, strict=True):
        for name, value in zip(names, want, strict=True):
            actual = got[name]
            if value is None:
                assert actual is None, name
            elif name == "b":
                assert actual is bool(value), name
            elif name == "ts":
                assert actual == value.replace(tzinfo=UTC), name
            elif name == "f":
                assert actual == pytest.approx(value), name
            elif name == "j":
                assert actual.replace(" ", "") == value.replace(" ", ""), name
            else:
                assert actual == value and type(actual) is type(value), (name, actual, value)
