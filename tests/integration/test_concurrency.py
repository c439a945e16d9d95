"""Many cross-source queries at once (PostgreSQL x MariaDB): every answer right, none mixed up
with another's, nothing left open. The truth is the same join on PostgreSQL, which holds a copy
of the MariaDB table."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiomysql
import asyncpg
import pytest

import federator
from federator.config import parse_dsn

N_CUSTOMERS = 600
N_ORDERS = 6_000
CONCURRENT = 50

FEDERATED = """
SELECT c.segment, count(*) AS n, sum(o.qty) AS q, min(o.id) AS first_order
FROM pg.conc_customers c JOIN my.conc_orders o ON o.customer_id = c.id
WHERE c.id BETWEEN :lo AND :hi
GROUP BY c.segment ORDER BY c.segment
"""
TRUTH = """
SELECT c.segment, count(*) AS n, sum(o.qty) AS q, min(o.id) AS first_order
FROM conc_customers c JOIN conc_orders o ON o.customer_id = c.id
WHERE c.id BETWEEN $1 AND $2
GROUP BY c.segment ORDER BY c.segment
"""
ORDERS = [(i, (i * 7) % N_CUSTOMERS, i % 5) for i in range(N_ORDERS)]


def _ranges() -> list[tuple[int, int]]:
    """Ranges of every width and place, some past the data (an empty answer)."""
    return [(17 * i % N_CUSTOMERS, 17 * i % N_CUSTOMERS + i % 9) for i in range(CONCURRENT - 2)] + [
        (N_CUSTOMERS + 10, N_CUSTOMERS + 20),
        (0, N_CUSTOMERS),
    ]


async def _load(pg_dsn: str, mysql_dsn: str) -> None:
    pg = await asyncpg.connect(pg_dsn)
    try:
        await pg.execute("DROP TABLE IF EXISTS conc_customers, conc_orders")
        await pg.execute("CREATE TABLE conc_customers (id int PRIMARY KEY, segment text)")
        await pg.execute("CREATE TABLE conc_orders (id int PRIMARY KEY, customer_id int, qty int)")
        await pg.copy_records_to_table(
            "conc_customers", records=[(i, "abcde"[i % 5]) for i in range(N_CUSTOMERS)]
        )
        await pg.copy_records_to_table("conc_orders", records=ORDERS)
        await pg.execute("ANALYZE conc_customers; ANALYZE conc_orders")
    finally:
        await pg.close()
    d = parse_dsn(mysql_dsn)
    my = await aiomysql.connect(
        host=d.host, port=d.port, user=d.user, password=d.password or "", db=d.database,
        autocommit=True,
    )  # fmt: skip
    try:
        async with my.cursor() as cur:
            await cur.execute("DROP TABLE IF EXISTS conc_orders")
            await cur.execute(
                "CREATE TABLE conc_orders (id INT PRIMARY KEY, customer_id INT, qty INT,"
                " KEY (customer_id))"
            )
            await cur.executemany("INSERT INTO conc_orders VALUES (%s, %s, %s)", ORDERS)
            await cur.execute("ANALYZE TABLE conc_orders")
    finally:
        my.close()


async def _truths(pg_dsn: str, ranges: list[tuple[int, int]]) -> list[list[tuple[Any, ...]]]:
    pg = await asyncpg.connect(pg_dsn)
    try:
        return [[tuple(r) for r in await pg.fetch(TRUTH, lo, hi)] for lo, hi in ranges]
    finally:
        await pg.close()


def _rows(table: Any) -> list[tuple[Any, ...]]:
    """Rows with whole numbers as int (PostgreSQL's SUM is bigint, the residual's HUGEINT)."""
    columns = [c.to_pylist() for c in table.columns]
    return [
        tuple(int(v) if hasattr(v, "as_integer_ratio") else v for v in row)
        for row in zip(*columns, strict=True)
    ]


async def _pg_connections(pg_dsn: str) -> int:
    pg = await asyncpg.connect(pg_dsn)
    try:
        return await pg.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await pg.close()


@pytest.fixture(scope="module")
def loaded(pg_dsn: str, mysql_dsn: str) -> dict[str, Any]:
    asyncio.run(_load(pg_dsn, mysql_dsn))
    ranges = _ranges()
    return {
        "catalog": {
            "sources": {
                "pg": {"kind": "postgres", "dsn": pg_dsn},
                "my": {"kind": "mysql", "dsn": mysql_dsn},
            },
            "timeout": 120,
        },
        "ranges": ranges,
        "truths": asyncio.run(_truths(pg_dsn, ranges)),
    }


def test_concurrent_cross_source_queries_each_get_their_own_answer(
    loaded: dict[str, Any], pg_dsn: str
) -> None:
    ranges, truths = loaded["ranges"], loaded["truths"]
    assert truths[-2] == [] and len(truths[-1]) == 5  # the empty and the whole answer

    async def all_at_once(fed: federator.Federation) -> list[Any]:
        async def one(lo: int, hi: int) -> Any:
            result = await fed.sql_async(FEDERATED, {"lo": lo, "hi": hi})
            return await result.to_arrow_async()

        return await asyncio.gather(*(one(lo, hi) for lo, hi in ranges))

    with federator.connect(loaded["catalog"]) as fed:  # the first queries meet the warm-up
        for _ in range(2):
            answers = asyncio.run(all_at_once(fed))
            assert [_rows(a) for a in answers] == truths
    assert asyncio.run(_pg_connections(pg_dsn)) == 0  # every pooled connection closed


def test_concurrent_cross_source_queries_from_threads(loaded: dict[str, Any]) -> None:
    ranges, truths = loaded["ranges"], loaded["truths"]
    with federator.connect(loaded["catalog"]) as fed:

        def one(bounds: tuple[int, int]) -> list[tuple[Any, ...]]:
            lo, hi = bounds
            return _rows(fed.sql(FEDERATED, {"lo": lo, "hi": hi}).to_arrow())

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(one, ranges))
    assert answers == truths


def test_a_cancelled_query_leaves_the_others_right(loaded: dict[str, Any]) -> None:
    """Queries cancelled midway (their residual interrupted or never started) do not disturb
    the ones running beside them."""
    ranges, truths = loaded["ranges"], loaded["truths"]

    async def run(fed: federator.Federation) -> list[Any]:
        async def one(lo: int, hi: int) -> Any:
            result = await fed.sql_async(FEDERATED, {"lo": lo, "hi": hi})
            return await result.to_arrow_async()

        tasks = [asyncio.ensure_future(one(lo, hi)) for lo, hi in ranges]
        await asyncio.sleep(0.05)
        for task in tasks[::3]:
            task.cancel()
        return await asyncio.gather(*tasks, return_exceptions=True)

    with federator.connect(loaded["catalog"]) as fed:
        answers = asyncio.run(run(fed))
        for i, (answer, truth) in enumerate(zip(answers, truths, strict=True)):
            if i % 3 == 0 and isinstance(answer, asyncio.CancelledError):
                continue
            assert _rows(answer) == truth
        lo, hi = ranges[0]  # and the federation still answers
        assert _rows(fed.sql(FEDERATED, {"lo": lo, "hi": hi}).to_arrow()) == truths[0]
