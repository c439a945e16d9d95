"""Row estimates from the sources themselves, on real servers: PostgreSQL's EXPLAIN and
MariaDB's EXPLAIN FORMAT=JSON (with its histograms) estimate a 1 % filter that the catalog's
fixed selectivity guesses at 40 %; EXPLAIN names each estimate's origin and, after ANALYZE,
its error; a source that does not answer in time leaves the catalog's estimate."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

import federator
from federator.config import parse_dsn

N = 10_000
ROWS = [(i, i % 1000, f"item{i}") for i in range(N)]
SQL = (
    "SELECT p.id, p.name FROM pg.se_items p JOIN my.{table} m ON m.id = p.id "
    "WHERE p.v < 10 AND m.v < 10"
)
TRUE_ROWS = N // 100  # v < 10 keeps 1 %


async def _load_pg(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS se_items")
        await conn.execute("CREATE TABLE se_items (id int PRIMARY KEY, v int, name text)")
        await conn.copy_records_to_table("se_items", records=ROWS)
        await conn.execute("ANALYZE se_items")
    finally:
        await conn.close()


async def _load_mysql(dsn: str) -> None:
    import aiomysql

    d = parse_dsn(dsn)
    conn = await aiomysql.connect(
        host=d.host, port=d.port, user=d.user, db=d.database, autocommit=True
    )
    try:
        async with conn.cursor() as cur:
            for table in ("se_items", "se_plain"):
                await cur.execute(f"DROP TABLE IF EXISTS {table}")
                await cur.execute(
                    f"CREATE TABLE {table} (id INT PRIMARY KEY, v INT, name VARCHAR(16))"
                )
                await cur.executemany(f"INSERT INTO {table} VALUES (%s, %s, %s)", ROWS)
            await cur.execute("ANALYZE TABLE se_items PERSISTENT FOR ALL")  # histograms
            await cur.execute("ANALYZE TABLE se_plain")  # none: MariaDB guesses the filter
    finally:
        conn.close()


@pytest.fixture(scope="module")
def catalog(pg_dsn: str, mysql_dsn: str) -> dict[str, Any]:
    asyncio.run(_load_pg(pg_dsn))
    asyncio.run(_load_mysql(mysql_dsn))
    return {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg_dsn},
            "my": {"kind": "mysql", "dsn": mysql_dsn},
        }
    }


@pytest.fixture(scope="module")
def fed(catalog: dict[str, Any]) -> Iterator[Any]:
    with federator.connect(catalog) as f:
        yield f


def _estimates(plan: str) -> dict[str, tuple[int, str]]:
    """(estimated rows, origin) per source, from EXPLAIN's fragment lines."""
    found = re.findall(r"source (\w+) \(\w+\), estimated rows ([\d,]+) \(([^)]*)\)", plan)
    return {source: (int(rows.replace(",", "")), origin) for source, rows, origin in found}


@pytest.mark.parametrize("source", ["pg", "my"])
def test_each_server_estimates_its_fragment(fed: Any, source: str) -> None:
    sql = SQL.format(table="se_items")
    assert fed.sql(sql).to_arrow().num_rows == TRUE_ROWS
    plan = fed.explain(sql, analyze=True)
    rows, origin = _estimates(plan)[source]
    assert origin == "source EXPLAIN", plan
    assert TRUE_ROWS / 3 <= rows <= TRUE_ROWS * 3, plan  # the catalog's guess: 4,000
    assert re.search(r"estimate (error [\d.]+x too (high|low)|exact)", plan), plan


def test_mariadb_without_histograms_leaves_the_catalogs_estimate(fed: Any) -> None:
    plan = fed.explain(SQL.format(table="se_plain"))
    assert _estimates(plan)["my"][1] == "catalog stats x default selectivities", plan
    assert _estimates(plan)["pg"][1] == "source EXPLAIN", plan


def test_a_source_late_with_its_estimate_leaves_the_catalogs(catalog: dict[str, Any]) -> None:
    late = {**catalog, "planner": {"source_estimate_seconds": 0.000_001}}
    with federator.connect(late) as f:
        sql = SQL.format(table="se_items")
        assert f.sql(sql).to_arrow().num_rows == TRUE_ROWS
        origins = {o for _, o in _estimates(f.explain(sql)).values()}
    assert origins == {"catalog stats x default selectivities"}
