"""Bulk scans into Arrow: federator against the drivers and tools a user would pick instead."""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Callable
from typing import Any

import aiomysql
import asyncpg
import pyarrow as pa

from .env import SCAN_TABLE, Env, mysql_args, psql_copy_to_devnull
from .timing import Measure, best_of

PAGE = 10_000
SHAPES = {
    "full scan": f"SELECT * FROM {SCAN_TABLE}",
    "1% filter": f"SELECT * FROM {SCAN_TABLE} WHERE k < 10",
    "one column": f"SELECT x FROM {SCAN_TABLE}",
}


def _rows(out: Any) -> int:
    return out if isinstance(out, int) else len(out)


def _records_to_arrow(records: list[Any], names: list[str]) -> pa.Table:
    return pa.table({n: [r[i] for r in records] for i, n in enumerate(names)})


def _fed_query(sql: str, source: str) -> str:
    return sql.replace(f"FROM {SCAN_TABLE}", f"FROM {source}.{SCAN_TABLE}")


def postgres(
    env: Env, fed: Any, fed_rows: Any, repeats: int, paging_rows: int
) -> list[tuple[str, list[Measure]]]:
    out = []
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(env.pg_dsn))
    try:
        for shape, sql in SHAPES.items():
            ms: list[Measure] = []
            if env.psql:
                ms.append(
                    best_of(
                        "binary COPY to /dev/null (psql): wire limit",
                        lambda sql=sql: psql_copy_to_devnull(env, sql) or _count(loop, conn, sql),
                        repeats,
                        _rows,
                    )
                )
            ms.append(
                best_of(
                    "asyncpg copy_from_query binary, not decoded",
                    lambda sql=sql: _copy_raw(loop, conn, sql),
                    repeats,
                    _rows,
                )
            )
            ms.append(
                best_of(
                    "federator (bulk path)",
                    lambda sql=sql: fed.sql(_fed_query(sql, "pg")).to_arrow(),
                    repeats,
                    _rows,
                )
            )
            ms.append(
                best_of(
                    "federator (row path, bulk off)",
                    lambda sql=sql: fed_rows.sql(_fed_query(sql, "pg")).to_arrow(),
                    repeats,
                    _rows,
                )
            )
            ms.append(
                best_of(
                    "asyncpg fetch → pa.table",
                    lambda sql=sql: _asyncpg_fetch(loop, conn, sql),
                    repeats,
                    _rows,
                )
            )
            ms.append(
                best_of(
                    "ConnectorX, 2 partitions", lambda sql=sql: _cx(env.pg_dsn, sql), repeats, _rows
                )
            )
            ms.append(
                best_of(
                    "ADBC (adbc-driver-postgresql)",
                    lambda sql=sql: _adbc(env.pg_dsn, sql),
                    repeats,
                    _rows,
                )
            )
            ms.append(
                best_of(
                    "pandas.read_sql (psycopg2)",
                    lambda sql=sql: _pandas_pg(env.pg_dsn, sql),
                    1,
                    _rows,
                )
            )
            if shape == "full scan":
                ms.append(
                    best_of(
                        f"LIMIT/OFFSET pages of {PAGE:,} (first {paging_rows:,} rows)",
                        lambda: _paging_pg(loop, conn, paging_rows),
                        1,
                        _rows,
                    )
                )
            out.append((shape, ms))
    finally:
        loop.run_until_complete(conn.close())
        loop.close()
    return out


def mariadb(env: Env, fed: Any, repeats: int, paging_rows: int) -> list[tuple[str, list[Measure]]]:
    out = []
    loop = asyncio.new_event_loop()
    try:
        for shape, sql in SHAPES.items():
            ms: list[Measure] = []
            ms.append(
                best_of(
                    "federator",
                    lambda sql=sql: fed.sql(_fed_query(sql, "my")).to_arrow(),
                    repeats,
                    _rows,
                )
            )
            ms.append(
                best_of(
                    "aiomysql SSCursor fetch → pa.table",
                    lambda sql=sql: loop.run_until_complete(_aiomysql(env.mysql_dsn, sql)),
                    repeats,
                    _rows,
                )
            )
            ms.append(
                best_of(
                    "ConnectorX, 2 partitions",
                    lambda sql=sql: _cx(env.mysql_dsn, sql),
                    repeats,
                    _rows,
                )
            )
            ms.append(
                best_of(
                    "pandas.read_sql (pymysql)",
                    lambda sql=sql: _pandas_my(env.mysql_dsn, sql),
                    1,
                    _rows,
                )
            )
            if shape == "full scan":
                ms.append(
                    best_of(
                        f"LIMIT/OFFSET pages of {PAGE:,} (first {paging_rows:,} rows)",
                        lambda: loop.run_until_complete(_paging_my(env.mysql_dsn, paging_rows)),
                        1,
                        _rows,
                    )
                )
            out.append((shape, ms))
    finally:
        loop.close()
    return out


# ---- the alternatives ---------------------------------------------------------------------
def _count(loop: asyncio.AbstractEventLoop, conn: asyncpg.Connection, sql: str) -> int:
    return loop.run_until_complete(conn.fetchval(f"SELECT count(*) FROM ({sql}) q"))


def _copy_raw(loop: asyncio.AbstractEventLoop, conn: asyncpg.Connection, sql: str) -> int:
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(data)

    status = loop.run_until_complete(conn.copy_from_query(sql, output=sink, format="binary"))
    return int(status.split()[-1])


def _asyncpg_fetch(loop: asyncio.AbstractEventLoop, conn: asyncpg.Connection, sql: str) -> pa.Table:
    async def run() -> pa.Table:
        stmt = await conn.prepare(sql)
        names = [a.name for a in stmt.get_attributes()]
        return _records_to_arrow(await stmt.fetch(), names)

    return loop.run_until_complete(run())


def _paging_pg(loop: asyncio.AbstractEventLoop, conn: asyncpg.Connection, limit_rows: int) -> int:
    async def run() -> int:
        parts = []
        stmt = await conn.prepare(f"SELECT * FROM {SCAN_TABLE} ORDER BY id LIMIT $1 OFFSET $2")
        names = [a.name for a in stmt.get_attributes()]
        for offset in range(0, limit_rows, PAGE):
            records = await stmt.fetch(PAGE, offset)
            parts.append(_records_to_arrow(records, names))
            if len(records) < PAGE:
                break
        return sum(p.num_rows for p in parts)

    return loop.run_until_complete(run())


def _cx_uri(dsn: str) -> str:
    return dsn.replace("postgresql://postgres@", "postgresql://postgres:@").replace(
        "mysql://root@", "mysql://root:@"
    )


def _cx(dsn: str, sql: str) -> Any:
    import connectorx as cx

    partition = {"partition_on": "id", "partition_num": 2} if " x FROM" not in sql else {}
    if "WHERE" in sql:
        partition = {}
    return cx.read_sql(_cx_uri(dsn), sql, return_type="arrow", **partition)


def _adbc(dsn: str, sql: str) -> pa.Table:
    import adbc_driver_postgresql.dbapi as adbc

    with adbc.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table()


def _pandas_pg(dsn: str, sql: str) -> Any:
    import pandas as pd
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pd.read_sql(sql, conn)
    finally:
        conn.close()


def _pandas_my(dsn: str, sql: str) -> Any:
    import pandas as pd
    import pymysql

    args = mysql_args(dsn)
    conn = pymysql.connect(
        host=args["host"],
        port=args["port"],
        user=args["user"],
        password=args["password"],
        database=args["db"],
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return pd.read_sql(sql, conn)
    finally:
        conn.close()


async def _aiomysql(dsn: str, sql: str) -> pa.Table:
    conn = await aiomysql.connect(**mysql_args(dsn))
    try:
        cur = await conn.cursor(aiomysql.SSCursor)
        await cur.execute(sql)
        names = [d[0] for d in cur.description]
        rows = await cur.fetchall()
        await cur.close()
        return _records_to_arrow(rows, names)
    finally:
        conn.close()


async def _paging_my(dsn: str, limit_rows: int) -> int:
    conn = await aiomysql.connect(**mysql_args(dsn))
    try:
        parts = []
        async with conn.cursor() as cur:
            for offset in range(0, limit_rows, PAGE):
                await cur.execute(
                    f"SELECT * FROM {SCAN_TABLE} ORDER BY id LIMIT %s OFFSET %s", (PAGE, offset)
                )
                names = [d[0] for d in cur.description]
                rows = await cur.fetchall()
                parts.append(_records_to_arrow(list(rows), names))
                if len(rows) < PAGE:
                    break
        return sum(p.num_rows for p in parts)
    finally:
        conn.close()


Runner = Callable[[], Any]
