"""The PostgreSQL bulk path (binary COPY → Arrow) against the row path and the driver's values."""

from __future__ import annotations

import asyncio

import asyncpg
import pyarrow as pa
import pytest

import federator

from .test_types import _expected_pg, _pg_setup, _same


def _catalog(dsn: str, bulk_rows: int, **options: object) -> dict[str, object]:
    source = {"kind": "postgres", "dsn": dsn, "bulk_rows": bulk_rows, **options}
    return {"sources": {"pg": source}}


def test_postgres_types_round_trip_through_bulk_path(pg_dsn: str) -> None:
    """The type round trip of test_types with every fragment forced through binary COPY."""
    truth = asyncio.run(_pg_setup(pg_dsn))
    with federator.connect(_catalog(pg_dsn, 0)) as fed:
        query = "SELECT * FROM pg.types_rt ORDER BY id"
        assert "bulk: binary COPY" in fed.explain(query)
        table = fed.sql(query).to_arrow()
    with federator.connect(_catalog(pg_dsn, -1)) as fed:
        rows_path = fed.sql("SELECT * FROM pg.types_rt ORDER BY id").to_arrow()
    assert table.schema == rows_path.schema
    assert table.schema.field("n").type == pa.decimal128(12, 2)
    assert table.schema.field("n38").type == pa.decimal128(38, 10)
    assert table.schema.field("tstz").type == pa.timestamp("us", tz="UTC")
    rows = table.to_pylist()
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


async def _big_table(dsn: str, rows: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS bulk_t")
        await conn.execute(
            "CREATE TABLE bulk_t AS SELECT g::bigint AS id, (g % 7)::int AS k,"
            " CASE WHEN g % 5 = 0 THEN NULL ELSE 'row ' || g END AS t,"
            " (g / 100.0)::numeric(12, 2) AS amount,"
            " timestamptz '2024-01-01 00:00+02' + g * interval '1 minute' AS at,"
            " (g % 3)::numeric AS bare"
            f" FROM generate_series(1, {rows}) g"
        )
        await conn.execute("ANALYZE bulk_t")
    finally:
        await conn.close()


def test_bulk_path_matches_row_path_with_bound_parameters(pg_dsn: str) -> None:
    asyncio.run(_big_table(pg_dsn, 30_000))
    query = (
        "SELECT id, t, amount, at, bare, amount * 2 AS twice FROM pg.bulk_t"
        " WHERE k = :k AND t <> :skip ORDER BY id"
    )
    params = {"k": 3, "skip": "row 10"}
    with federator.connect(_catalog(pg_dsn, 0)) as fed:
        plan = fed.explain(query, params)
        assert (
            "bulk: binary COPY" in plan and "$1" in plan and "row 10" not in plan.split("params")[0]
        )
        bulk = fed.sql(query, params).to_arrow()
    with federator.connect(_catalog(pg_dsn, -1)) as fed:
        rows = fed.sql(query, params).to_arrow()
    assert bulk.num_rows == rows.num_rows > 1000
    assert bulk.equals(rows)


def test_abandoned_bulk_stream_leaves_the_pool_usable(pg_dsn: str) -> None:
    asyncio.run(_big_table(pg_dsn, 200_000))
    with federator.connect(_catalog(pg_dsn, 0, batch_rows=1000, max_concurrency=2)) as fed:
        reader = fed.sql("SELECT id, t FROM pg.bulk_t").to_batches()
        first = reader.read_next_batch()
        assert first.num_rows == 1000
        reader.close()
        for _ in range(3):  # more than one connection's worth of reuse
            n = fed.sql("SELECT count(*) AS n FROM pg.bulk_t").to_arrow()
            assert n.column("n")[0].as_py() == 200_000


def test_filtered_fragment_checks_the_server_estimate(pg_dsn: str) -> None:
    """A point lookup the planner guesses large runs on the row path after PostgreSQL's EXPLAIN
    says it is small; a large filtered result still takes COPY. Both answer the same."""
    asyncio.run(_big_table(pg_dsn, 30_000))
    with federator.connect(_catalog(pg_dsn, 1000)) as fed:
        adapter = fed.catalog.adapter("pg")
        seen: list[str] = []
        run_bulk, rows = adapter.run_bulk, adapter._rows

        def spy_bulk(*a, **k):  # type: ignore[no-untyped-def]
            seen.append("bulk")
            return run_bulk(*a, **k)

        def spy_rows(*a, **k):  # type: ignore[no-untyped-def]
            seen.append("rows")
            return rows(*a, **k)

        adapter.run_bulk, adapter._rows = spy_bulk, spy_rows
        point = fed.sql("SELECT id, t FROM pg.bulk_t WHERE id = :id", {"id": 7}).to_arrow()
        assert point.to_pylist() == [{"id": 7, "t": "row 7"}]
        assert seen == ["bulk", "rows"]
        seen.clear()
        many = fed.sql("SELECT id FROM pg.bulk_t WHERE k = :k", {"k": 2}).to_arrow()
        assert many.num_rows == 30_000 // 7 + 1 - (30_000 % 7 < 2)
        assert seen == ["bulk"]


def test_array_parameter_on_the_copy_path(pg_dsn: str) -> None:
    """A list parameter compared with ``= ANY`` rides the COPY path (read back once, as an
    array) and answers as the row path does."""
    asyncio.run(_big_table(pg_dsn, 30_000))
    ids = list(range(5, 30_000, 3))
    sql = "SELECT id FROM pg.bulk_t WHERE id = ANY(:ids) AND k <> :k"
    with federator.connect(_catalog(pg_dsn, 0)) as fed:
        assert "bulk: binary COPY" in fed.explain(sql, {"ids": ids, "k": 2})
        got = fed.sql(sql, {"ids": ids, "k": 2}).to_arrow()
    with federator.connect(_catalog(pg_dsn, -1)) as fed:
        rows = fed.sql(sql, {"ids": ids, "k": 2}).to_arrow()
    assert sorted(got.column("id").to_pylist()) == sorted(rows.column("id").to_pylist())
    assert got.num_rows == sum(1 for i in ids if i % 7 != 2)


async def _mysql_table(dsn: str) -> None:
    import aiomysql

    from federator.config import parse_dsn

    d = parse_dsn(dsn, default_port=3306)
    conn = await aiomysql.connect(
        host=d.host, port=d.port, user=d.user or "root", db=d.database, autocommit=True
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute("DROP TABLE IF EXISTS bulk_my")
            await cur.execute(
                "CREATE TABLE bulk_my (id BIGINT PRIMARY KEY, k INT, at DATETIME(6),"
                " ts TIMESTAMP(6) NULL, x DOUBLE, t VARCHAR(40), b BOOLEAN, amount DECIMAL(12, 2),"
                " d DATE, bl BLOB, u BIGINT UNSIGNED)"
            )
            await cur.execute(
                "INSERT INTO bulk_my SELECT seq, seq % 7,"
                " TIMESTAMP'2020-01-01 00:00:00' + INTERVAL seq SECOND,"
                " IF(seq % 5 = 0, NULL, TIMESTAMP'2021-06-01 12:00:00.5' + INTERVAL seq MINUTE),"
                " seq * 0.5, IF(seq % 3 = 0, NULL, CONCAT('row ', seq)), seq % 2 = 0,"
                " (seq % 100000) / 100.0 - 300, DATE'2000-01-01' + INTERVAL seq DAY,"
                " UNHEX(HEX(seq)), 18446744073709551615 - seq FROM seq_1_to_20000"
            )
    finally:
        conn.close()


def test_mysql_bulk_path_matches_row_path(mysql_dsn: str) -> None:
    asyncio.run(_mysql_table(mysql_dsn))
    query = "SELECT * FROM my.bulk_my ORDER BY id"
    results = []
    for bulk_rows in (0, -1):
        catalog = {"sources": {"my": {"kind": "mysql", "dsn": mysql_dsn, "bulk_rows": bulk_rows}}}
        with federator.connect(catalog) as fed:
            plan = fed.explain(query)
            assert ("bulk: ConnectorX" in plan) == (bulk_rows == 0)
            results.append(fed.sql(query).to_arrow())
    bulk, rows = results
    assert bulk.num_rows == 20_000
    assert bulk.schema.field("ts").type == pa.timestamp("us", tz="UTC")
    assert bulk.schema.field("amount").type == pa.decimal128(12, 2)
    assert bulk.schema.field("b").type == pa.bool_()
    assert bulk.equals(rows)


def test_explain_says_why_each_join_is_bound_or_not(pg_dsn: str, mysql_dsn: str) -> None:
    asyncio.run(_big_table(pg_dsn, 30_000))
    asyncio.run(_mysql_table(mysql_dsn))
    catalog = {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg_dsn},
            "my": {"kind": "mysql", "dsn": mysql_dsn},
        }
    }
    with federator.connect(catalog) as fed:
        both_large = fed.explain(
            "SELECT p.t, m.x FROM pg.bulk_t p JOIN my.bulk_my m ON p.id = m.id"
        )
        assert "not bound (" in both_large and "rows, not 4x" in both_large
        selective = fed.explain(
            "SELECT p.t, m.x FROM pg.bulk_t p JOIN my.bulk_my m ON p.id = m.id WHERE m.u = 5"
        )
        assert "bind join:" in selective and "bound: " in selective and "keys allowed" in selective
        got = fed.sql(
            "SELECT p.id, m.k FROM pg.bulk_t p JOIN my.bulk_my m ON p.id = m.id WHERE m.k = 3"
        ).to_arrow()
        assert sorted(got.column("id").to_pylist()) == [i for i in range(1, 20_001) if i % 7 == 3]


def test_mysql_whole_table_scan_runs_in_key_range_partitions(mysql_dsn: str) -> None:
    asyncio.run(_mysql_table(mysql_dsn))
    catalog = {"sources": {"my": {"kind": "mysql", "dsn": mysql_dsn, "bulk_rows": 0}}}
    with federator.connect(catalog) as fed:
        query = "SELECT id, t, amount FROM my.bulk_my"
        assert "parallel range partitions on primary key id" in fed.explain(query)
        got = fed.sql(query).to_arrow().sort_by("id")
        assert "partitions" not in fed.explain("SELECT id FROM my.bulk_my WHERE k = 1")
    with federator.connect({"sources": {"my": {"kind": "mysql", "dsn": mysql_dsn}}}) as fed:
        want = fed.sql("SELECT id, t, amount FROM my.bulk_my ORDER BY id").to_arrow()
    assert got.equals(want)
