"""Splits of a scan (``Adapter.split_scan`` / ``execute_split``) on real servers.

For each kind: the splits' rows together are the whole request's rows (as multisets, compared
with a direct read through the driver or the file), no row is in two splits; n larger than
the data; an empty table. Each split is pickled and run by a second adapter of the same
source (as a worker process would), while the first holds ``split_scan`` open. PostgreSQL's
splits read one snapshot: rows committed after ``split_scan`` began are in no split.
"""

from __future__ import annotations

import contextlib
import pickle
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import asyncpg
import pyarrow as pa
import pyarrow.csv
import pytest
from federator.adapters import adapter_class
from federator.adapters.base import Split
from servers import dsn_with_database

import federator
from federator.config import SourceConfig

from .conftest import fresh_pg_database, pg_sorted_rows, run_async

ROWS = 3_000


def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    return sorted(tuple(r.values()) for r in table.to_pylist())


def _request(fed: federator.Federation, sql: str, params: dict[str, Any] | None = None) -> Any:
    """The one native request of a one-source query (parameters bound)."""
    from federator.plan.binding import bind_params

    plan = bind_params(fed._loop.run(fed.planner.plan(sql, params or {})), params or {})
    assert len(plan.fragments) == 1 and plan.residual is None, plan.explain()
    return plan.requests[plan.fragments[0].id]


async def _split_and_run(
    config: SourceConfig,
    request: Any,
    n: int,
    during: Callable[[], Awaitable[None]] | None = None,
) -> tuple[list[Split], list[pa.Table]]:
    """Split ``request`` with one adapter and run each split, pickled, with another."""
    driver = adapter_class(config.kind)(config)
    worker = adapter_class(config.kind)(config)
    try:
        async with driver.split_scan(pickle.loads(pickle.dumps(request)), n) as splits:
            if during is not None:
                await during()
            tables = []
            for split in splits:
                copy = pickle.loads(pickle.dumps(split))
                batches = [b async for b in worker.execute_split(copy)]
                tables.append(pa.Table.from_batches(batches))
        return splits, tables
    finally:
        await driver.close()
        await worker.close()


def split_rows(
    fed: federator.Federation,
    source: str,
    sql: str,
    n: int,
    during: Callable[[], Awaitable[None]] | None = None,
) -> tuple[list[Split], list[list[tuple[Any, ...]]]]:
    config = fed.catalog.adapter(source).config
    splits, tables = run_async(_split_and_run(config, _request(fed, sql), n, during))
    return splits, [_rows(t) for t in tables]


def assert_partition(parts: list[list[tuple[Any, ...]]], whole: list[tuple[Any, ...]]) -> None:
    """The parts are disjoint (by the first column, a key) and add up to ``whole``."""
    assert sorted(r for p in parts for r in p) == whole
    keys = [r[0] for p in parts for r in p]
    assert len(keys) == len(set(keys))


# ---- PostgreSQL: ctid ranges in one exported snapshot --------------------------------------
PG_DATABASE = "splits"


PG_SETUP = f"""
CREATE TABLE t AS SELECT g::bigint AS id, 'row ' || g AS name,
    (g % 97 / 10.0)::numeric(8, 2) AS amount
FROM generate_series(1, {ROWS}) g;
DELETE FROM t WHERE id % 7 = 0;  -- holes in some pages
CREATE TABLE empty (id int, name text);
CREATE VIEW v AS SELECT id, name FROM t WHERE id < 100;
"""


def _pg_db(dsn: str) -> str:
    return dsn_with_database(dsn, PG_DATABASE)


def _pg_direct(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    return pg_sorted_rows(_pg_db(dsn), sql)


@pytest.fixture(scope="module")
def pg_fed(pg_dsn: str) -> Iterator[federator.Federation]:
    run_async(fresh_pg_database(pg_dsn, PG_DATABASE, PG_SETUP))
    source = {"kind": "postgres", "dsn": _pg_db(pg_dsn)}
    with federator.connect({"sources": {"pg": source}}) as federation:
        yield federation


@pytest.mark.parametrize("n", [1, 3, 10_000])
def test_pg_splits_add_up_to_the_table(pg_dsn: str, pg_fed: federator.Federation, n: int) -> None:
    splits, parts = split_rows(pg_fed, "pg", "SELECT id, name, amount FROM pg.public.t", n)
    assert_partition(parts, _pg_direct(pg_dsn, "SELECT id, name, amount FROM t"))
    assert 1 <= len(splits) <= n
    assert len({s.snapshot for s in splits}) == 1 and splits[0].snapshot is not None
    assert [s.index for s in splits] == list(range(len(splits)))
    assert all(s.count == len(splits) and "ctid" in s.describe for s in splits)
    if n == 3:
        assert len(splits) == 3 and all(parts)


def test_pg_filtered_scan_splits(pg_dsn: str, pg_fed: federator.Federation) -> None:
    sql = "SELECT id, name FROM pg.public.t WHERE id % 3 = 1 AND name LIKE :p"
    config = pg_fed.catalog.adapter("pg").config
    request = _request(pg_fed, sql, {"p": "row 1%"})
    splits, tables = run_async(_split_and_run(config, request, 4))
    assert len(splits) == 4
    want = _pg_direct(pg_dsn, "SELECT id, name FROM t WHERE id % 3 = 1 AND name LIKE 'row 1%'")
    assert_partition([_rows(t) for t in tables], want)


def test_pg_splits_read_the_snapshot(pg_dsn: str, pg_fed: federator.Federation) -> None:
    before = _pg_direct(pg_dsn, "SELECT id, name FROM t")

    async def insert_and_commit() -> None:
        conn = await asyncpg.connect(_pg_db(pg_dsn))
        try:
            await conn.execute("INSERT INTO t SELECT g, 'late', 0 FROM generate_series(-50, -1) g")
        finally:
            await conn.close()

    try:
        splits, parts = split_rows(
            pg_fed, "pg", "SELECT id, name FROM pg.public.t", 3, during=insert_and_commit
        )
        assert len(splits) == 3
        assert_partition(parts, before)  # the 50 rows committed meanwhile are in no split
        assert len(_pg_direct(pg_dsn, "SELECT id FROM t")) == len(before) + 50
    finally:
        _pg_direct(pg_dsn, "DELETE FROM t WHERE id < 0 RETURNING id")


def test_pg_empty_table_and_view(pg_dsn: str, pg_fed: federator.Federation) -> None:
    splits, parts = split_rows(pg_fed, "pg", "SELECT id, name FROM pg.public.empty", 4)
    assert len(splits) == 1 and parts == [[]]
    splits, parts = split_rows(pg_fed, "pg", "SELECT id, name FROM pg.public.v", 4)
    assert [s.describe for s in splits] == ["whole request"]  # a view has no ctid
    assert parts == [_pg_direct(pg_dsn, "SELECT id, name FROM v")]


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id FROM pg.public.t ORDER BY id LIMIT 5",
        "SELECT count(*) AS n FROM pg.public.t",
        "SELECT name, count(*) AS n FROM pg.public.t GROUP BY name",
    ],
)
def test_pg_requests_that_do_not_split(pg_fed: federator.Federation, sql: str) -> None:
    splits, parts = split_rows(pg_fed, "pg", sql, 4)
    assert len(splits) == 1 and splits[0].describe == "whole request"
    assert _rows(pg_fed.sql(sql).to_arrow()) == parts[0]


# ---- MySQL/MariaDB: integer primary-key ranges ---------------------------------------------
MY_DATABASE = "splits"


def _my_connect(dsn: str, database: str | None = None) -> Any:
    import pymysql

    url = urlparse(dsn)
    return pymysql.connect(
        host=url.hostname,
        port=url.port,
        user=url.username or "root",
        password=url.password or "",
        database=database,
        autocommit=True,
    )


def _my_direct(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    con = _my_connect(dsn, MY_DATABASE)
    try:
        with con.cursor() as cur:
            cur.execute(sql)
            return sorted(tuple(r) for r in cur.fetchall())
    finally:
        con.close()


@pytest.fixture(scope="module")
def my_fed(mysql_dsn: str) -> Iterator[federator.Federation]:
    con = _my_connect(mysql_dsn)
    try:
        with con.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {MY_DATABASE}")
            cur.execute(f"CREATE DATABASE {MY_DATABASE}")
            cur.execute(f"USE {MY_DATABASE}")
            cur.execute("CREATE TABLE t (id BIGINT PRIMARY KEY, name VARCHAR(20), x INT)")
            rows = [(i * 3 - 500, f"row {i}", i % 11) for i in range(ROWS)]
            cur.executemany("INSERT INTO t VALUES (%s, %s, %s)", rows)
            cur.execute("CREATE TABLE s (code VARCHAR(10) PRIMARY KEY, n INT)")
            cur.executemany("INSERT INTO s VALUES (%s, %s)", [(f"c{i}", i) for i in range(50)])
            cur.execute("CREATE TABLE e (id INT PRIMARY KEY, name TEXT)")
            cur.execute("CREATE TABLE few (id SMALLINT PRIMARY KEY, name TEXT)")
            cur.execute("INSERT INTO few VALUES (10, 'a'), (20, 'b'), (900, 'c')")
    finally:
        con.close()
    dsn = f"{mysql_dsn.rpartition('/')[0]}/{MY_DATABASE}"
    with federator.connect({"sources": {"my": {"kind": "mysql", "dsn": dsn}}}) as federation:
        yield federation


@pytest.mark.parametrize("n", [2, 5])
def test_mysql_key_ranges_add_up_to_the_table(
    mysql_dsn: str, my_fed: federator.Federation, n: int
) -> None:
    sql = "SELECT id, name, x FROM my.splits.t WHERE x <> 3"
    splits, parts = split_rows(my_fed, "my", sql, n)
    assert_partition(parts, _my_direct(mysql_dsn, "SELECT id, name, x FROM t WHERE x <> 3"))
    assert len(splits) == n and all(s.snapshot is None for s in splits)
    assert splits[0].describe.startswith("id <") and splits[-1].describe.startswith("id >=")


def test_mysql_other_keys_and_empty_tables_are_one_split(
    mysql_dsn: str, my_fed: federator.Federation
) -> None:
    splits, parts = split_rows(my_fed, "my", "SELECT code, n FROM my.splits.s", 4)
    assert len(splits) == 1 and parts == [_my_direct(mysql_dsn, "SELECT code, n FROM s")]
    splits, parts = split_rows(my_fed, "my", "SELECT id, name FROM my.splits.e", 4)
    assert len(splits) == 1 and parts == [[]]


def test_mysql_n_larger_than_the_rows(mysql_dsn: str, my_fed: federator.Federation) -> None:
    splits, parts = split_rows(my_fed, "my", "SELECT id, name FROM my.splits.few", 1_000)
    assert len(splits) == 3  # at most one per row
    assert_partition(parts, _my_direct(mysql_dsn, "SELECT id, name FROM few"))


# ---- files: Parquet row groups ---------------------------------------------------------------
@pytest.fixture(scope="module")
def files_fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[federator.Federation]:
    import pyarrow.parquet as pq

    folder = tmp_path_factory.mktemp("split_files")
    t = pa.table({"id": range(ROWS), "name": [f"n{i % 13}" for i in range(ROWS)]})
    pq.write_table(t, folder / "t.parquet", row_group_size=ROWS // 5)  # 5 row groups
    pq.write_table(t.slice(0, 0), folder / "empty.parquet")
    pa.csv.write_csv(t.slice(0, 40), folder / "c.csv")
    with federator.connect({"sources": {"lake": {"kind": "files", "path": str(folder)}}}) as fed:
        yield fed


@pytest.mark.parametrize("n", [2, 5, 50])
def test_files_row_group_splits_add_up(files_fed: federator.Federation, n: int) -> None:
    sql = "SELECT id, name FROM lake.t WHERE name <> 'n3'"
    splits, parts = split_rows(files_fed, "lake", sql, n)
    want = [(i, f"n{i % 13}") for i in range(ROWS) if i % 13 != 3]
    assert_partition(parts, want)
    assert len(splits) == min(n, 5) and all(parts)
    assert splits[0].describe.startswith("file t.parquet row groups 0-")


def test_files_that_do_not_split(files_fed: federator.Federation) -> None:
    splits, parts = split_rows(files_fed, "lake", "SELECT id, name FROM lake.empty", 4)
    assert len(splits) == 1 and parts == [[]]
    splits, parts = split_rows(files_fed, "lake", "SELECT id, name FROM lake.c", 4)
    assert len(splits) == 1 and parts == [[(i, f"n{i % 13}") for i in range(40)]]
    splits, _ = split_rows(files_fed, "lake", "SELECT max(id) AS m FROM lake.t", 4)
    assert [s.describe for s in splits] == ["whole request"]


# ---- MongoDB: _id ranges ---------------------------------------------------------------------
MONGO_DB = "splits"


@pytest.fixture(scope="module")
def mongo_fed(mongo_dsn: str) -> Iterator[federator.Federation]:
    from pymongo import MongoClient

    client = MongoClient(mongo_dsn, serverSelectionTimeoutMS=10_000)
    try:
        db = client[MONGO_DB]
        for name in ("oids", "ints", "tiny", "empty"):
            db[name].drop()
        db.oids.insert_many([{"n": i, "name": f"d{i % 7}"} for i in range(ROWS // 3)])
        db.tiny.insert_many([{"n": i} for i in range(6)])
        db.ints.insert_many([{"_id": i * 5 - 100, "n": i} for i in range(400)])
        db.create_collection("empty")
    finally:
        client.close()
    source = {
        "kind": "mongo",
        "url": mongo_dsn,
        "database": MONGO_DB,
        "tables": {"empty": {"columns": {"n": "int64"}}},
    }
    with federator.connect({"sources": {"mongo": source}}) as federation:
        yield federation


def _mongo_direct(mongo_dsn: str, collection: str, query: dict[str, Any]) -> list[tuple]:
    from pymongo import MongoClient

    client = MongoClient(mongo_dsn, serverSelectionTimeoutMS=10_000)
    try:
        return sorted((d["n"],) for d in client[MONGO_DB][collection].find(query))
    finally:
        client.close()


def test_mongo_object_id_ranges_add_up(mongo_dsn: str, mongo_fed: federator.Federation) -> None:
    sql = "SELECT n FROM mongo.splits.oids WHERE name <> 'd2'"
    splits, parts = split_rows(mongo_fed, "mongo", sql, 3)
    assert_partition(parts, _mongo_direct(mongo_dsn, "oids", {"name": {"$ne": "d2"}}))
    assert len(splits) == 3 and all(parts)  # ids made in the same second split too
    assert all(s.describe.startswith("_id") for s in splits)


def test_mongo_n_larger_than_the_documents(mongo_dsn: str, mongo_fed: federator.Federation) -> None:
    splits, parts = split_rows(mongo_fed, "mongo", "SELECT n FROM mongo.splits.tiny", 1_000)
    assert len(splits) == 6  # at most one per document
    assert_partition(parts, _mongo_direct(mongo_dsn, "tiny", {}))


def test_mongo_integer_ids_split(mongo_dsn: str, mongo_fed: federator.Federation) -> None:
    splits, parts = split_rows(mongo_fed, "mongo", "SELECT n FROM mongo.splits.ints", 4)
    assert len(splits) == 4  # (CongoDB stores an integer _id as an ObjectId: split as one)
    assert_partition(parts, _mongo_direct(mongo_dsn, "ints", {}))


def test_mongo_collections_that_do_not_split(
    mongo_dsn: str, mongo_fed: federator.Federation
) -> None:
    splits, parts = split_rows(mongo_fed, "mongo", "SELECT n FROM mongo.splits.empty", 4)
    assert len(splits) == 1 and parts == [[]]
    sql = "SELECT name, count(*) AS c FROM mongo.splits.oids GROUP BY name"
    splits, _ = split_rows(mongo_fed, "mongo", sql, 4)
    assert [s.describe for s in splits] == ["whole request"]


# ---- kinds that read as one split (SQLite here; Milvus, Redis, graphs alike: the default) ----
def test_sqlite_is_one_split(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "one.db"
    with contextlib.closing(sqlite3.connect(path)) as con:
        con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)")
        con.executemany("INSERT INTO t VALUES (?, ?)", [(i, f"n{i}") for i in range(20)])
        con.commit()
    catalog = {"sources": {"lite": {"kind": "sqlite", "path": str(path)}}}
    with federator.connect(catalog) as fed:
        splits, parts = split_rows(fed, "lite", "SELECT id, name FROM lite.t", 4)
    assert [(s.index, s.count, s.snapshot, s.describe) for s in splits] == [
        (0, 1, None, "whole request")
    ]
    assert parts == [[(i, f"n{i}") for i in range(20)]]
