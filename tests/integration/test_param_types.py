"""An unbindable parameter value on MariaDB and PostgreSQL: a ParameterError naming the
parameter and its type while planning (MariaDB answered an ``object()`` with no rows, silently)."""

from __future__ import annotations

from typing import Any

import pytest

import federator


@pytest.mark.parametrize("value", [object(), {1, 2}, {"a": 1}], ids=["object", "set", "dict"])
@pytest.mark.parametrize("source", ["my", "pg"])
def test_unbindable_value_is_refused_before_sending(
    pg_dsn: str, mysql_dsn: str, source: str, value: Any
) -> None:
    catalog = {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg_dsn},
            "my": {"kind": "mysql", "dsn": mysql_dsn},
        }
    }
    with federator.connect(catalog) as fed:
        query = f"SELECT n FROM {source}.param_t WHERE n = :n"
        with pytest.raises(federator.ParameterError, match=rf":n is a {type(value).__name__},"):
            fed.sql(query, {"n": value})
        assert fed.sql(query, {"n": 2}).to_arrow().to_pylist() == [{"n": 2}]


@pytest.fixture(autouse=True)
def param_tables(pg_dsn: str, mysql_dsn: str) -> None:
    import asyncio

    import aiomysql
    import asyncpg

    from federator.config import parse_dsn

    async def load() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("DROP TABLE IF EXISTS param_t; CREATE TABLE param_t (n int)")
            await conn.execute("INSERT INTO param_t VALUES (1), (2)")
        finally:
            await conn.close()
        d = parse_dsn(mysql_dsn)
        my = await aiomysql.connect(host=d.host, port=d.port, user=d.user, db=d.database)
        try:
            async with my.cursor() as cur:
                await cur.execute("DROP TABLE IF EXISTS param_t")
                await cur.execute("CREATE TABLE param_t (n INT)")
                await cur.execute("INSERT INTO param_t VALUES (1), (2)")
            await my.commit()
        finally:
            my.close()

    asyncio.run(load())
