"""Fixtures for integration tests against real servers (see tests/servers.py).

``tpch``: TPC-H generated with tpchgen-cli, loaded into PostgreSQL (``truth``: all 8 tables) and
split across PostgreSQL and MariaDB both ways, with the truth answers of the 22 queries.
``tpch_federation(split)``: a federation over one split's two databases.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from servers import dsn_with_database

from . import tpch as tp

T = TypeVar("T")
QUERY_TIMEOUT = 60.0  # seconds per federated query
_HERE = Path(__file__).parent


async def load_pg_table(dsn: str, name: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    """Table ``name`` (``columns``: its column list) on PostgreSQL holding ``rows``, analyzed."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {name}; CREATE TABLE {name} ({columns})")
        await conn.copy_records_to_table(name, records=rows)
        await conn.execute(f"ANALYZE {name}")
    finally:
        await conn.close()


async def fresh_pg_database(dsn: str, name: str, setup: str) -> str:
    """Database ``name`` on ``dsn``'s server made anew (dropped first if there) with ``setup``
    (SQL statements) run in it, then analyzed; its DSN."""
    import asyncpg

    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {name}")
        await admin.execute(f"CREATE DATABASE {name}")
    finally:
        await admin.close()
    conn = await asyncpg.connect(dsn_with_database(dsn, name))
    try:
        await conn.execute(setup)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return dsn_with_database(dsn, name)


def pg_sorted_rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    """``sql``'s rows on PostgreSQL, sorted: the truth a test compares a federated answer with."""
    import asyncpg

    async def fetch() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(dsn)
        try:
            return sorted(tuple(r) for r in await conn.fetch(sql))
        finally:
            await conn.close()

    return run_async(fetch())


async def load_mysql_table(dsn: str, name: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    """Table ``name`` (``columns``: its SQL column list) on MariaDB holding ``rows``, analyzed."""
    import aiomysql

    from federator.config import parse_dsn

    d = parse_dsn(dsn)
    conn = await aiomysql.connect(
        host=d.host, port=d.port, user=d.user, db=d.database, autocommit=True
    )
    marks = ", ".join(["%s"] * len(rows[0]))
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP TABLE IF EXISTS {name}")
            await cur.execute(f"CREATE TABLE {name} ({columns})")
            await cur.executemany(f"INSERT INTO {name} VALUES ({marks})", rows)
            await cur.execute(f"ANALYZE TABLE {name}")
    finally:
        conn.close()


def load_mongo_collection(url: str, database: str, name: str, docs: list[dict[str, Any]]) -> None:
    """Collection ``database.name`` on MongoDB (CongoDB) holding ``docs``, replaced."""
    from pymongo import MongoClient

    client: MongoClient[dict[str, Any]] = MongoClient(url, serverSelectionTimeoutMS=10_000)
    try:
        client[database][name].drop()
        client[database][name].insert_many(docs)
    finally:
        client.close()


def four_sources(
    pg_dsn: str, mysql_dsn: str, mongo_dsn: str, mongo_db: str, lake: Path
) -> dict[str, Any]:
    """A catalog of ``pg``, ``my``, ``mongo`` (database ``mongo_db``) and ``lake`` (files)."""
    return {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg_dsn},
            "my": {"kind": "mysql", "dsn": mysql_dsn},
            "mongo": {"kind": "mongo", "url": mongo_dsn, "database": mongo_db},
            "lake": {"kind": "files", "path": str(lake)},
        }
    }


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a fresh event loop in its own thread (no clash with pytest-asyncio)."""
    with ThreadPoolExecutor(1) as ex:
        return ex.submit(asyncio.run, coro).result()


@dataclass
class TPCH:
    pg_dsn: str
    mysql_dsn: str
    scale: float
    queries: dict[str, tp.Query]
    truth: dict[str, tp.Answer]
    load_seconds: float

    def catalog(self, split: str) -> dict[str, Any]:
        return {
            "sources": {
                "pg": {"kind": "postgres", "dsn": dsn_with_database(self.pg_dsn, tp.PG_DB[split])},
                "my": {"kind": "mysql", "dsn": dsn_with_database(self.mysql_dsn, tp.MY_DB[split])},
            }
        }


@pytest.fixture(scope="session")
def tpch(pg_dsn: str, mysql_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> TPCH:
    t0 = time.monotonic()
    scale = tp.scale_factor()
    folder = tp.generate(tmp_path_factory.mktemp("tpch"), scale)
    run_async(tp.load_all(folder, pg_dsn, mysql_dsn))
    queries = tp.load_queries()
    truth = run_async(tp.truth_answers(pg_dsn, queries))
    return TPCH(pg_dsn, mysql_dsn, scale, queries, truth, time.monotonic() - t0)


@pytest.fixture(scope="session")
def tpch_federation(tpch: TPCH) -> Iterator[Callable[[str], Any]]:
    """``tpch_federation(split)`` → an open federator.Federation over that split (cached)."""
    import federator

    opened: dict[str, Any] = {}

    def get(split: str) -> Any:
        if split not in opened:
            opened[split] = federator.connect(tpch.catalog(split), timeout=QUERY_TIMEOUT)
        return opened[split]

    yield get
    for fed in opened.values():
        fed.close()
