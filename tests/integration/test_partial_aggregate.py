"""Aggregate before the join on real servers: sales on PostgreSQL (or MariaDB) joined with
shops on the other server, grouped by the shop's region. Each answer equals the same query on
one PostgreSQL holding both tables, and its Arrow types equal those of the unrewritten plan
(``[planner] partial_aggregate = false``). NULL amounts, a shop with no sale, a region whose
amounts are all NULL, HAVING, integer and decimal sums and a global aggregate are covered."""

from __future__ import annotations

import asyncio
import decimal
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

import federator
from federator.config import parse_dsn

N_SALES = 3_000
N_SHOPS = 40


def _sales() -> list[tuple[Any, ...]]:
    rows = []
    for i in range(N_SALES):
        shop = i % (N_SHOPS - 1)  # the last shop has no sale
        amount = None if i % 7 == 0 or shop == 5 else decimal.Decimal(i % 1000) / 100
        rows.append((i, shop, i % 13 - 3 if i % 11 else None, amount))
    return rows


def _shops() -> list[tuple[Any, ...]]:
    return [(s, f"r{s % 4}", f"shop{s}") for s in range(N_SHOPS)]


_SALES_DDL = "CREATE TABLE pa_sales (id int PRIMARY KEY, shop int, qty int, amount numeric(9,2))"
_SHOPS_DDL = "CREATE TABLE pa_shops (id int PRIMARY KEY, region varchar(8), name varchar(16))"


async def _load_pg(dsn: str, tables: tuple[str, ...]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS pa_sales; DROP TABLE IF EXISTS pa_shops")
        if "sales" in tables:
            await conn.execute(_SALES_DDL)
            await conn.copy_records_to_table("pa_sales", records=_sales())
        if "shops" in tables:
            await conn.execute(_SHOPS_DDL)
            await conn.copy_records_to_table("pa_shops", records=_shops())
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def _load_mysql(dsn: str, tables: tuple[str, ...]) -> None:
    import aiomysql

    d = parse_dsn(dsn)
    conn = await aiomysql.connect(
        host=d.host, port=d.port, user=d.user, db=d.database, autocommit=True
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute("DROP TABLE IF EXISTS pa_sales, pa_shops")
            if "sales" in tables:
                await cur.execute(_SALES_DDL.replace("numeric", "DECIMAL"))
                await cur.executemany("INSERT INTO pa_sales VALUES (%s, %s, %s, %s)", _sales())
            if "shops" in tables:
                await cur.execute(_SHOPS_DDL)
                await cur.executemany("INSERT INTO pa_shops VALUES (%s, %s, %s)", _shops())
            await cur.execute("ANALYZE TABLE pa_sales, pa_shops PERSISTENT FOR ALL")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def truth_dsn(pg_dsn: str) -> str:
    """Both tables in one PostgreSQL database of their own."""
    dsn = f"{pg_dsn.rpartition('/')[0]}/pa_truth"

    async def create() -> None:
        admin = await asyncpg.connect(pg_dsn)
        try:
            await admin.execute("DROP DATABASE IF EXISTS pa_truth")
            await admin.execute("CREATE DATABASE pa_truth")
        finally:
            await admin.close()
        await _load_pg(dsn, ("sales", "shops"))

    asyncio.run(create())
    return dsn


@pytest.fixture(scope="module", params=["sales on pg", "sales on my"])
def feds(request: Any, pg_dsn: str, mysql_dsn: str) -> Iterator[tuple[Any, Any, str]]:
    """(rewritten, unrewritten) federations over one placement of the two tables."""
    sales_on_pg = request.param == "sales on pg"
    asyncio.run(_load_pg(pg_dsn, ("sales",) if sales_on_pg else ("shops",)))
    asyncio.run(_load_mysql(mysql_dsn, ("shops",) if sales_on_pg else ("sales",)))
    sources = {
        "pg": {"kind": "postgres", "dsn": pg_dsn},
        "my": {"kind": "mysql", "dsn": mysql_dsn},
    }
    names = ("pg", "my") if sales_on_pg else ("my", "pg")
    with (
        federator.connect({"sources": sources}) as on,
        federator.connect({"sources": sources, "planner": {"partial_aggregate": False}}) as off,
    ):
        yield on, off, names


QUERIES = {
    "sums, counts, averages, extremes by region": """
        SELECT h.region, sum(s.amount) AS total, sum(s.qty) AS qty, count(*) AS n,
               count(s.amount) AS priced, avg(s.amount) AS mean, avg(s.qty) AS mean_qty,
               min(s.amount) AS low, max(s.qty) AS top
        FROM {sales}pa_sales s JOIN {shops}pa_shops h ON h.id = s.shop
        GROUP BY h.region ORDER BY h.region""",
    "a group whose amounts are all NULL": """
        SELECT h.name, sum(s.amount) AS total, count(s.amount) AS priced, avg(s.amount) AS mean
        FROM {sales}pa_sales s JOIN {shops}pa_shops h ON h.id = s.shop
        WHERE h.id IN (4, 5) GROUP BY h.name ORDER BY h.name""",
    "HAVING on a finished aggregate": """
        SELECT h.region, sum(s.amount) AS total
        FROM {sales}pa_sales s JOIN {shops}pa_shops h ON h.id = s.shop
        GROUP BY h.region HAVING sum(s.amount) > 1800 AND count(*) > 10 ORDER BY h.region""",
    "a global aggregate": """
        SELECT count(*) AS n, sum(s.qty) AS qty, avg(s.amount) AS mean
        FROM {sales}pa_sales s JOIN {shops}pa_shops h ON h.id = s.shop
        WHERE h.region = 'r1'""",
    "a global aggregate over no row": """
        SELECT count(*) AS n, count(s.amount) AS priced, sum(s.amount) AS total, max(s.qty) AS top
        FROM {sales}pa_sales s JOIN {shops}pa_shops h ON h.id = s.shop
        WHERE h.region = 'nowhere'""",
    "group keys from both sides": """
        SELECT h.region, s.qty, sum(s.amount) AS total, count(*) AS n
        FROM {sales}pa_sales s JOIN {shops}pa_shops h ON h.id = s.shop
        GROUP BY h.region, s.qty ORDER BY h.region, s.qty NULLS FIRST""",
}


@pytest.mark.parametrize("name", list(QUERIES))
def test_answers_like_one_database_with_the_unrewritten_types(
    feds: tuple[Any, Any, tuple[str, str]], truth_dsn: str, name: str
) -> None:
    on, off, (sales, shops) = feds
    sql = QUERIES[name].format(sales=f"{sales}.", shops=f"{shops}.")
    got = on.sql(sql).to_arrow()
    plain = off.sql(sql).to_arrow()
    truth = asyncio.run(_truth(truth_dsn, QUERIES[name].format(sales="", shops="")))
    assert _rows(got) == _rows_of(truth), on.explain(sql)
    assert got.schema == plain.schema
    plan = on.explain(sql)
    assert "note: partial aggregate before the join: grouped by" in plan, plan
    assert "partial aggregate" not in off.explain(sql)


async def _truth(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    conn = await asyncpg.connect(dsn)
    try:
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def _rows(table: Any) -> list[tuple[Any, ...]]:
    return _rows_of(list(zip(*(c.to_pylist() for c in table.columns), strict=True)))


def _rows_of(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Rows with floats rounded (AVG is a double here and a numeric on PostgreSQL)."""
    return [
        tuple(round(float(v), 9) if isinstance(v, float | decimal.Decimal) else v for v in r)
        for r in rows
    ]
