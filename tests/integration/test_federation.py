"""PostgreSQL and MariaDB through the public API: pushdown, bind joins, errors, secrets."""

from __future__ import annotations

import asyncio
import decimal

import asyncpg
import pytest

import federator
from federator.config import parse_dsn

N_USERS = 2_000
N_EVENTS = 20_000


async def _load_pg(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS events; DROP TABLE IF EXISTS app_users")
        await conn.execute(
            "CREATE TABLE events"
            " (id bigint PRIMARY KEY, user_id int, kind text, amount numeric(10,2))"
        )
        await conn.copy_records_to_table(
            "events",
            records=[
                (i, i % N_USERS, ("click", "view", "buy")[i % 3], decimal.Decimal(i % 997) / 100)
                for i in range(N_EVENTS)
            ],
        )
        await conn.execute("CREATE TABLE app_users (id int PRIMARY KEY, name text, tier text)")
        await conn.copy_records_to_table(
            "app_users",
            records=[(i, f"user{i}", "gold" if i % 50 == 0 else "basic") for i in range(N_USERS)],
        )
        await conn.execute("ANALYZE")
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
            await cur.execute("DROP TABLE IF EXISTS app_users")
            await cur.execute(
                "CREATE TABLE app_users (id INT PRIMARY KEY, name VARCHAR(20), tier VARCHAR(10))"
            )
            await cur.executemany(
                "INSERT INTO app_users VALUES (%s, %s, %s)",
                [(i, f"user{i}", "gold" if i % 50 == 0 else "basic") for i in range(N_USERS)],
            )
            await cur.execute("ANALYZE TABLE app_users")
    finally:
        conn.close()


@pytest.fixture(scope="module")
def fed(pg_dsn: str, mysql_dsn: str):
    asyncio.run(_load_pg(pg_dsn))
    asyncio.run(_load_mysql(mysql_dsn))
    catalog = {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg_dsn},
            "my": {"kind": "mysql", "dsn": mysql_dsn},
        }
    }
    with federator.connect(catalog) as f:
        yield f


async def _pg_truth(dsn: str, sql: str) -> list[dict]:
    conn = await asyncpg.connect(dsn)
    try:
        return [dict(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


CROSS = """
SELECT u.tier, e.kind, count(*) AS n, sum(e.amount) AS total
FROM my.app_users u JOIN pg.events e ON e.user_id = u.id
WHERE u.tier = 'gold'
GROUP BY u.tier, e.kind ORDER BY e.kind
"""
SAME = """
SELECT u.tier, e.kind, count(*) AS n, sum(e.amount) AS total
FROM app_users u JOIN events e ON e.user_id = u.id
WHERE u.tier = 'gold'
GROUP BY u.tier, e.kind ORDER BY e.kind
"""


def test_cross_source_join_binds_the_small_side(fed, pg_dsn: str) -> None:
    result = fed.sql(CROSS)
    rows = result.to_arrow().to_pylist()
    assert rows == asyncio.run(_pg_truth(pg_dsn, SAME))
    text = result.explain(analyze=True)
    assert "= ANY($1)" in text  # keys of the 40 gold users pushed into PostgreSQL
    assert "bind join" in text and "bound keys 40" in text
    assert "actual rows" in text


def test_reverse_bind_join_uses_in_lists(fed, pg_dsn: str) -> None:
    sql = (
        "SELECT e.id, u.name FROM pg.events e JOIN my.app_users u ON u.id = e.user_id "
        "WHERE e.id IN (3, 5, 8, 13) AND e.kind = 'view' ORDER BY e.id"
    )
    fed_rows = fed.sql(sql).to_arrow().to_pylist()
    truth = asyncio.run(_pg_truth(pg_dsn, sql.replace("pg.", "").replace("my.", "")))
    assert fed_rows == truth
    text = fed.explain(sql)
    assert "IN (%s, ... up to" in text


def test_single_source_query_goes_whole(fed, pg_dsn: str) -> None:
    sql = (
        "SELECT kind, count(*) AS n FROM pg.events WHERE amount > :a"
        " GROUP BY kind HAVING count(*) > 10 ORDER BY kind LIMIT 2"
    )
    text = fed.explain(sql, {"a": 5})
    assert "no residual" in text and "GROUP BY" in text and "LIMIT 2" in text
    assert "$1 = 5" in text
    got = fed.sql(sql, {"a": 5}).to_arrow().to_pylist()
    want = asyncio.run(_pg_truth(pg_dsn, sql.replace("pg.", "").replace(":a", "5")))
    assert got == want


def test_params_are_bound_never_interpolated(fed) -> None:
    evil = "x' OR '1'='1"
    text = fed.explain("SELECT id FROM my.app_users WHERE name = :n", {"n": evil})
    assert "OR '1'='1" not in text.split("params:")[0]
    assert (
        fed.sql("SELECT id FROM my.app_users WHERE name = :n", {"n": evil}).to_arrow().num_rows == 0
    )


def test_streaming_batches(fed) -> None:
    reader = fed.sql("SELECT id FROM pg.events").to_batches()
    assert isinstance(reader, federator.BatchReader)  # a RecordBatchReader's interface
    assert reader.schema.names == ["id"]
    assert sum(b.num_rows for b in reader) == N_EVENTS


def test_timeout_names_the_fragment_and_pool_survives(fed) -> None:
    with pytest.raises(federator.QueryTimeoutError, match="fragment f0 on source 'pg'"):
        fed.sql("SELECT count(*) AS n FROM pg.events a, pg.events b", timeout=0.5).to_arrow()
    assert (
        fed.sql("SELECT count(*) AS n FROM pg.app_users").to_arrow().column("n")[0].as_py()
        == N_USERS
    )


def test_source_error_then_pool_still_usable(fed) -> None:
    with pytest.raises(federator.FederatorError):
        fed.sql("SELECT 1 / (id - id) AS boom FROM pg.app_users").to_arrow()
    assert (
        fed.sql("SELECT count(*) AS n FROM my.app_users").to_arrow().column("n")[0].as_py()
        == N_USERS
    )


def test_unknown_names_suggest(fed) -> None:
    with pytest.raises(federator.UnknownTableError, match="app_users"):
        fed.sql("SELECT * FROM pg.app_user")
    with pytest.raises(federator.UnknownColumnError, match="tier"):
        fed.sql("SELECT tierr FROM my.app_users")
    with pytest.raises(federator.UnknownSourceError, match="did you mean 'pg'"):
        fed.sql("SELECT * FROM pgg.app_users")


def test_unreachable_source_names_host_and_hides_password() -> None:
    catalog = {
        "sources": {"pg": {"kind": "postgres", "dsn": "postgresql://u:hunter2@127.0.0.1:9/db"}}
    }
    with federator.connect(catalog) as f:
        with pytest.raises(federator.SourceUnreachableError) as info:
            f.sql("SELECT * FROM pg.t")
        assert "127.0.0.1:9" in str(info.value) and "'pg'" in str(info.value)
        assert "hunter2" not in str(info.value)
        assert "hunter2" not in repr(f) and "hunter2" not in str(f.sources())


def test_password_never_in_explain(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FED_TEST_PW", "s3cr3t-pw")
    conn = asyncio.run(_pg_truth(pg_dsn, "ALTER USER postgres PASSWORD 's3cr3t-pw'"))
    del conn
    d = parse_dsn(pg_dsn)
    dsn = f"postgresql://postgres:${{FED_TEST_PW}}@{d.host}:{d.port}/{d.database}"
    with federator.connect({"sources": {"pg": {"kind": "postgres", "dsn": dsn}}}) as f:
        text = f.explain("SELECT id FROM pg.app_users WHERE id = :x", {"x": 1}, analyze=True)
        assert "s3cr3t-pw" not in text and "s3cr3t-pw" not in repr(f.catalog.adapters["pg"])
        assert "s3cr3t-pw" not in repr(f.config)


def test_async_api(fed, pg_dsn: str) -> None:
    async def go() -> int:
        result = await fed.sql_async(
            "SELECT count(*) AS n FROM pg.events WHERE kind = :k", {"k": "buy"}
        )
        table = await result.to_arrow_async()
        return table.column("n")[0].as_py()

    truth = asyncio.run(_pg_truth(pg_dsn, "SELECT count(*) AS n FROM events WHERE kind = 'buy'"))
    assert asyncio.run(go()) == truth[0]["n"]


def test_case_rules_of_each_backend(pg_dsn: str, mysql_dsn: str) -> None:
    """PostgreSQL matches quoted names exactly and folds unquoted ones to lower case; MySQL
    matches column names in any case."""

    async def setup() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(
                'DROP TABLE IF EXISTS "Mixed"; CREATE TABLE "Mixed" ("userId" int, plain int);'
                'INSERT INTO "Mixed" VALUES (1, 2)'
            )
        finally:
            await conn.close()

    asyncio.run(setup())
    asyncio.run(_load_mysql(mysql_dsn))
    catalog = {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg_dsn},
            "my": {"kind": "mysql", "dsn": mysql_dsn},
        }
    }
    with federator.connect(catalog) as f:
        assert f.sql('SELECT "userId", plain FROM pg."Mixed"').to_arrow().to_pylist() == [
            {"userId": 1, "plain": 2}
        ]
        with pytest.raises(federator.UnknownColumnError, match="userId"):
            f.sql('SELECT userId FROM pg."Mixed"')
        rows = f.sql(
            'SELECT m."userId", u.NAME FROM pg."Mixed" m JOIN my.APP_USERS u ON u.ID = m."userId"'
        )
        assert rows.to_arrow().to_pylist() == [{"userId": 1, "name": "user1"}]
