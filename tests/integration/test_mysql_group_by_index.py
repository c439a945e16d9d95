"""A GROUP BY sent to MariaDB keeps it off the group key's secondary index (``USE INDEX FOR
GROUP BY ()``): walking that index fetches every row through the clustered index, which made
TPC-H q15 on the reverse split run past 600 s at SF 1. Views take no index hint; a query that
reads only its group keys keeps the (covering) index, and one grouped by the primary key walks
it; ``avoid_group_by_index = false`` sends the query as written. Answers are checked against
values computed here."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import federator
from federator.config import parse_dsn

ROWS = [(i, i % 17, i % 5, i % 100) for i in range(2_000)]  # id, k, flag, v
HINT = "USE INDEX FOR GROUP BY ()"


async def _load(dsn: str) -> None:
    import aiomysql

    d = parse_dsn(dsn)
    conn = await aiomysql.connect(host=d.host, port=d.port, user=d.user, db=d.database)
    try:
        async with conn.cursor() as cur:
            await cur.execute("DROP VIEW IF EXISTS gbi_view")
            await cur.execute("DROP TABLE IF EXISTS gbi_t")
            await cur.execute(
                "CREATE TABLE gbi_t (id int PRIMARY KEY, k int, flag int, v int, KEY gbi_k (k))"
            )
            await cur.executemany("INSERT INTO gbi_t VALUES (%s, %s, %s, %s)", ROWS)
            await cur.execute("CREATE VIEW gbi_view AS SELECT id, k, flag, v FROM gbi_t")
        await conn.commit()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def feds(mysql_dsn: str) -> Iterator[tuple[Any, Any]]:
    asyncio.run(_load(mysql_dsn))
    on = {"my": {"kind": "mysql", "dsn": mysql_dsn}}
    off = {"my": {"kind": "mysql", "dsn": mysql_dsn, "avoid_group_by_index": False}}
    with federator.connect({"sources": on}) as a, federator.connect({"sources": off}) as b:
        yield a, b


def _sums(flag_below: int) -> list[tuple[int, int]]:
    totals: dict[int, int] = {}
    for _, k, flag, v in ROWS:
        if flag < flag_below:
            totals[k] = totals.get(k, 0) + v
    return sorted(totals.items())


def _answer(fed: Any, sql: str) -> tuple[list[tuple[Any, ...]], str]:
    result = fed.sql(sql)
    rows = sorted(tuple(r.values()) for r in result.to_arrow().to_pylist())
    return rows, result.explain()


@pytest.mark.parametrize("table", ["gbi_t", "gbi_view"])
def test_a_grouped_sum_is_exact_and_only_a_table_takes_the_hint(
    feds: tuple[Any, Any], table: str
) -> None:
    sql = f"SELECT t.k, SUM(t.v) AS s FROM my.{table} AS t WHERE t.flag < 3 GROUP BY t.k"
    rows, explain = _answer(feds[0], sql)
    assert [(k, int(s)) for k, s in rows] == _sums(3)
    assert (HINT in explain) == (table == "gbi_t"), explain


def test_a_query_of_group_keys_only_keeps_the_covering_index(feds: tuple[Any, Any]) -> None:
    rows, explain = _answer(feds[0], "SELECT t.k, COUNT(*) AS n FROM my.gbi_t AS t GROUP BY t.k")
    assert rows == [(k, sum(1 for r in ROWS if r[1] == k)) for k in range(17)]
    assert HINT not in explain, explain


def test_the_option_off_sends_the_group_by_as_written(feds: tuple[Any, Any]) -> None:
    sql = "SELECT t.k, SUM(t.v) AS s FROM my.gbi_t AS t WHERE t.flag < 2 GROUP BY t.k"
    rows, explain = _answer(feds[1], sql)
    assert [(k, int(s)) for k, s in rows] == _sums(2)
    assert HINT not in explain, explain


def test_a_group_by_the_primary_key_walks_it_without_the_hint(feds: tuple[Any, Any]) -> None:
    """Grouped by the primary key (InnoDB's clustered index), walking it is the scan, with the
    groups in order: no hint (TPC-H q18's lineitem per order, 0.8 s against 7.8 s)."""
    sql = "SELECT t.id, SUM(t.v) AS s FROM my.gbi_t AS t GROUP BY t.id HAVING SUM(t.v) > 90"
    rows, explain = _answer(feds[0], sql)
    assert [(i, int(s)) for i, s in rows] == [(i, v) for i, _, _, v in ROWS if v > 90]
    assert HINT not in explain, explain
