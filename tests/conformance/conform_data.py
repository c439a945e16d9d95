"""The conformance data set, loaded into every source kind, and DuckDB over it as the truth.

Two small tables with the awkward values real data has: NULLs in every column, duplicates,
ties, empty strings, unicode, case variants ('bob'/'Bob'), extreme integers and decimals,
dates and timestamps.

- ``people``: id, name, city, n (int, ties and extremes), score (decimal(12,2)), x (double),
  born (date), seen (timestamp), active (boolean)
- ``orders``: oid, pid (refers to people.id; NULLs and a dangling 99), qty, amount
  (decimal(12,2)), note

:func:`load_all` puts both tables into a database ``conform`` on PostgreSQL and MariaDB, a
SQLite file, a folder of Parquet files and a MongoDB database (and where given pgvector,
Redis, FalkorDB, Milvus, FalkorDB's Bolt endpoint and a Qdrant folder), and returns the catalog
of one federation over all of them (sources ``pg``, ``my``, ``lite``, ``files``, ``mongo``,
``pgv``, ``kv``, ``g``, ``mv``, ``gb``, ``qd``).
:func:`truth` is DuckDB with the same Arrow tables loaded directly.

>>> sorted(TABLES)
['orders', 'people']
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import json
import math
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

DB = "conform"
D = decimal.Decimal

PEOPLE_SCHEMA = pa.schema(
    [
        ("id", pa.int32()),
        ("name", pa.string()),
        ("city", pa.string()),
        ("n", pa.int32()),
        ("score", pa.decimal128(12, 2)),
        ("x", pa.float64()),
        ("born", pa.date32()),
        ("seen", pa.timestamp("us")),
        ("active", pa.bool_()),
    ]
)
ORDERS_SCHEMA = pa.schema(
    [
        ("oid", pa.int32()),
        ("pid", pa.int32()),
        ("qty", pa.int32()),
        ("amount", pa.decimal128(12, 2)),
        ("note", pa.string()),
    ]
)


def _ts(day: int, hour: int = 0, minute: int = 0) -> dt.datetime:
    return dt.datetime(2024, 1, day, hour, minute)


_PEOPLE = [
    # id, name, city, n, score, x, born, seen, active
    (1, "alice", "Berlin", 10, D("12.50"), 0.5, dt.date(1990, 5, 1), _ts(1, 9), True),
    (2, "bob", "Berlin", 10, D("-3.25"), -1.5, dt.date(1985, 12, 31), _ts(1, 23, 59), False),
    (3, "Bob", "Paris", 7, D("0.00"), 0.0, None, _ts(2), True),
    (4, "", "Paris", None, D("99999999.99"), 1e300, dt.date(2000, 2, 29), None, None),
    (5, None, None, 2147483647, None, None, dt.date(1970, 1, 1), _ts(3, 12), False),
    (
        6,
        "Zoë",
        "Zürich",
        -2147483648,
        D("-99999999.99"),
        -1e-300,
        dt.date(2024, 1, 1),
        _ts(5),
        True,
    ),
    (7, "élan", "Berlin", 7, D("12.50"), 2.25, dt.date(1999, 12, 31), _ts(4, 6, 30), True),
    (8, "O'Brien", "Lima", 0, D("7.10"), 3.0, dt.date(1990, 5, 1), _ts(2, 18), False),
    (9, "carol", "", 3, D("0.01"), None, None, _ts(6), None),
    (10, "dave", "lima", 3, D("1000.00"), 1.0, dt.date(2010, 7, 15), _ts(1, 9), True),
    (11, "100%_sure", "Paris", -1, D("5.55"), -0.25, dt.date(1960, 3, 3), _ts(7, 1), False),
    (12, "alice", None, 10, D("12.50"), 0.5, dt.date(1990, 5, 1), _ts(1, 9), True),
]
_ORDERS = [
    # oid, pid, qty, amount, note
    (100, 1, 2, D("10.00"), "first"),
    (101, 1, 1, D("5.50"), None),
    (102, 2, 5, D("100.00"), "bulk"),
    (103, 3, 1, D("0.99"), ""),
    (104, 3, 1, D("0.99"), ""),
    (105, 5, None, D("20.00"), "null qty"),
    (106, 6, 3, None, "null amount"),
    (107, None, 1, D("1.00"), "orphan"),
    (108, 99, 4, D("40.00"), "dangling"),
    (109, 7, 2, D("-5.00"), "refund"),
    (110, 8, 10, D("999999.99"), "big"),
    (111, 10, 1, D("3.33"), "ünïcode"),
    (112, 10, 2, D("3.33"), "x"),
    (113, 12, 7, D("12.00"), "Bulk"),
    (114, 1, 3, D("7.25"), "first"),
    (115, None, None, None, None),
]


def _table(rows: Sequence[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(schema.names, r, strict=True)) for r in rows], schema)


TABLES: dict[str, pa.Table] = {
    "people": _table(_PEOPLE, PEOPLE_SCHEMA),
    "orders": _table(_ORDERS, ORDERS_SCHEMA),
}

# ---- SQL DDL per backend ---------------------------------------------------------------------
_SQL_TYPES = {
    "postgres": {
        "int32": "INTEGER",
        "string": "TEXT",
        "decimal128(12, 2)": "NUMERIC(12, 2)",
        "double": "DOUBLE PRECISION",
        "date32[day]": "DATE",
        "timestamp[us]": "TIMESTAMP",
        "bool": "BOOLEAN",
    },
    "mysql": {
        "int32": "INT",
        "string": "VARCHAR(100)",
        "decimal128(12, 2)": "DECIMAL(12, 2)",
        "double": "DOUBLE",
        "date32[day]": "DATE",
        "timestamp[us]": "DATETIME(6)",
        "bool": "BOOLEAN",
    },
    "sqlite": {
        "int32": "INTEGER",
        "string": "TEXT",
        "decimal128(12, 2)": "NUMERIC(12, 2)",
        "double": "REAL",
        "date32[day]": "DATE",
        "timestamp[us]": "TIMESTAMP",
        "bool": "BOOLEAN",
    },
}


def _ddl(kind: str, name: str, schema: pa.Schema, quote: str) -> str:
    cols = ", ".join(f"{quote}{f.name}{quote} {_SQL_TYPES[kind][str(f.type)]}" for f in schema)
    return f"CREATE TABLE {quote}{name}{quote} ({cols})"


def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) for r in table.to_pylist()]


async def load_postgres(dsn: str, db: str = DB) -> str:
    """Tables into database ``db`` (created fresh); returns its DSN."""
    import asyncpg
    from servers import dsn_with_database

    con = await asyncpg.connect(dsn)
    try:
        await con.execute(f"DROP DATABASE IF EXISTS {db}")
        await con.execute(f"CREATE DATABASE {db}")
    finally:
        await con.close()
    target = dsn_with_database(dsn, db)
    con = await asyncpg.connect(target)
    try:
        for name, table in TABLES.items():
            await con.execute(_ddl("postgres", name, table.schema, '"'))
            await con.copy_records_to_table(name, records=_rows(table))
    finally:
        await con.close()
    return target


def load_mysql(dsn: str, db: str = DB) -> str:
    """Tables into database ``db`` (created fresh); returns its DSN."""
    from urllib.parse import urlparse

    import pymysql
    from servers import dsn_with_database

    url = urlparse(dsn)
    con = pymysql.connect(
        host=url.hostname, port=url.port, user=url.username or "root", password=url.password or ""
    )
    try:
        with con.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS {db}")
            cur.execute(f"CREATE DATABASE {db} CHARACTER SET utf8mb4")
            cur.execute(f"USE {db}")
            for name, table in TABLES.items():
                cur.execute(_ddl("mysql", name, table.schema, "`"))
                marks = ", ".join(["%s"] * table.num_columns)
                cur.executemany(f"INSERT INTO `{name}` VALUES ({marks})", _rows(table))
        con.commit()
    finally:
        con.close()
    return dsn_with_database(dsn, db)


def write_sqlite(path: Path) -> Path:
    """Tables into a SQLite file: decimals as REAL-free text-exact NUMERIC, dates as ISO text."""
    con = sqlite3.connect(path)
    try:
        for name, table in TABLES.items():
            con.execute(_ddl("sqlite", name, table.schema, '"'))
            marks = ", ".join(["?"] * table.num_columns)
            rows = [tuple(_sqlite_value(v) for v in r) for r in _rows(table)]
            con.executemany(f'INSERT INTO "{name}" VALUES ({marks})', rows)
        con.commit()
    finally:
        con.close()
    return path


def _sqlite_value(v: Any) -> Any:
    if isinstance(v, D):
        return float(v)
    if isinstance(v, dt.datetime):
        return v.isoformat(sep=" ")
    if isinstance(v, dt.date):
        return v.isoformat()
    return v


def write_files(folder: Path) -> Path:
    """One Parquet file per table."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in TABLES.items():
        pq.write_table(table, folder / f"{name}.parquet")
    return folder


def load_mongo(url: str, db: str = DB) -> None:
    """One collection per table in database ``db``; NULL stored as null."""
    from bson import Decimal128
    from pymongo import MongoClient

    client = MongoClient(url, serverSelectionTimeoutMS=10_000)
    try:
        client.drop_database(db)
        for name, table in TABLES.items():
            docs = [
                {k: _mongo_value(v, Decimal128) for k, v in r.items()} for r in table.to_pylist()
            ]
            client[db][name].insert_many(docs)
    finally:
        client.close()


def _mongo_value(v: Any, decimal128: Any) -> Any:
    if isinstance(v, D):
        return decimal128(v)
    if isinstance(v, dt.date) and not isinstance(v, dt.datetime):
        return dt.datetime(v.year, v.month, v.day)
    return v


# Redis: one JSON object per row, keyed by the table's first column; declared column types
_REDIS_TYPES = {
    "int32": "int32",
    "string": "string",
    "decimal128(12, 2)": "decimal(12,2)",
    "double": "float64",
    "date32[day]": "date",
    "timestamp[us]": "timestamp",
    "bool": "bool",
}


def load_redis(url: str, db: str = DB) -> dict[str, Any]:
    """Rows as JSON strings under ``{db}:{table}:{key}`` in Redis database 5; the source."""
    import redis

    url = url.rsplit("/", 1)[0] + "/5"
    client = redis.Redis.from_url(url)
    tables: dict[str, Any] = {}
    try:
        for key in client.scan_iter(f"{db}:*"):
            client.delete(key)
        for name, table in TABLES.items():
            key_col = table.schema.names[0]
            pipe = client.pipeline(transaction=False)
            for row in table.to_pylist():
                pipe.set(f"{db}:{name}:{row[key_col]}", json.dumps(row, default=_json_value))
            pipe.execute()
            tables[name] = {
                "key": f"{db}:{name}:{{{key_col}}}",
                "type": "json",
                "columns": {f.name: _REDIS_TYPES[str(f.type)] for f in table.schema},
            }
    finally:
        client.close()
    return {"kind": "redis", "url": url, "tables": tables}


def _json_value(v: Any) -> Any:
    if isinstance(v, D):
        return str(v)
    if isinstance(v, dt.datetime):
        return v.isoformat() + "Z"
    if isinstance(v, dt.date):
        return v.isoformat()
    raise TypeError(type(v))


def load_falkordb(url: str, graph: str = DB, temporal: bool = True) -> dict[str, Any]:
    """One label per table (``people``, ``orders``), a node per row, NULL properties left out
    (Cypher's NULL); dates and timestamps as FalkorDB's date()/localdatetime(), or as ISO text
    without ``temporal``. The source."""
    from urllib.parse import urlsplit

    from falkordb import FalkorDB

    parts = urlsplit(url)
    client = FalkorDB(
        host=parts.hostname, port=parts.port, socket_timeout=30, socket_connect_timeout=10
    )
    g = client.select_graph(graph)
    with contextlib.suppress(Exception):  # a fresh server has no such graph yet
        g.delete()
    for name, table in TABLES.items():
        rows = [
            {k: _graph_value(v) for k, v in row.items() if v is not None}
            for row in table.to_pylist()
        ]
        temporal = [
            f"n.{f.name} = {'date' if pa.types.is_date(f.type) else 'localdatetime'}(r.{f.name})"
            for f in table.schema
            if temporal and (pa.types.is_date(f.type) or pa.types.is_timestamp(f.type))
        ]
        set_temporal = f" SET {', '.join(temporal)}" if temporal else ""
        g.query(f"UNWIND $rows AS r CREATE (n:{name}) SET n = r{set_temporal}", {"rows": rows})
    return {"kind": "falkordb", "url": f"redis://{parts.hostname}:{parts.port}", "graph": graph}


def _graph_value(v: Any) -> Any:
    if isinstance(v, D):
        return float(v)  # Cypher has no decimal type
    if isinstance(v, (dt.date, dt.datetime)):
        return v.isoformat()
    return v


# Milvus: people and orders as collections (the first column the primary key, every other field
# nullable, a 2-dimensional dummy vector "_vec" because a collection needs one). Milvus has no
# decimal, date or timestamp type: decimals as DOUBLE (as in the graph), dates and timestamps as
# ISO text ("1990-05-01", "2024-01-01 09:00:00"), which sorts and compares as they do.
_MILVUS_TYPES = {
    "int32": "INT32",
    "string": "VARCHAR",
    "decimal128(12, 2)": "DOUBLE",
    "double": "DOUBLE",
    "date32[day]": "VARCHAR",
    "timestamp[us]": "VARCHAR",
    "bool": "BOOL",
}


def load_milvus(url: str) -> dict[str, Any]:
    """``people`` and ``orders`` as collections of the Milvus server at ``url``; the source."""
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(url)
    try:
        for name, table in TABLES.items():
            if client.has_collection(name):
                client.drop_collection(name)
            key = table.schema.names[0]
            schema = client.create_schema(auto_id=False)
            schema.add_field(key, DataType.INT64, is_primary=True)
            for f in table.schema:
                if f.name != key:
                    kind = _MILVUS_TYPES[str(f.type)]
                    extra = {"max_length": 100} if kind == "VARCHAR" else {}
                    schema.add_field(f.name, getattr(DataType, kind), nullable=True, **extra)
            schema.add_field("_vec", DataType.FLOAT_VECTOR, dim=2)
            index = client.prepare_index_params()
            index.add_index("_vec", index_type="FLAT", metric_type="L2")
            client.create_collection(name, schema=schema, index_params=index)
            rows = [
                {k: _milvus_value(v) for k, v in row.items()} | {"_vec": [0.0, 0.0]}
                for row in table.to_pylist()
            ]
            client.insert(name, rows)
    finally:
        client.close()
    return {"kind": "milvus", "uri": url}


def _milvus_value(v: Any) -> Any:
    if isinstance(v, D):
        return float(v)
    if isinstance(v, (dt.date, dt.datetime)):
        return v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v.isoformat()
    return v


# Qdrant (local mode on a folder): people and orders as collections, every column a payload field
# (the point id is the row's key, shown as column "_point"), a 2-dimensional dummy vector
# because a collection needs one; decimals as numbers, dates and timestamps as ISO text, as for
# Milvus.
def load_qdrant(folder: Path) -> dict[str, Any]:
    """``people`` and ``orders`` as collections of a local-mode folder; the source."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(path=str(folder))
    try:
        for name, table in TABLES.items():
            vectors = models.VectorParams(size=2, distance=models.Distance.EUCLID)
            client.create_collection(name, vectors_config=vectors)
            key = table.schema.names[0]
            points = [
                models.PointStruct(
                    id=row[key],
                    vector=[0.0, 0.0],
                    payload={k: _milvus_value(v) for k, v in row.items()},
                )
                for row in table.to_pylist()
            ]
            client.upsert(name, points)
    finally:
        client.close()
    return {"kind": "qdrant", "path": str(folder), "id_column": "_point"}


BOLT_GRAPH = "falkordb"  # FalkorDB's Bolt endpoint serves this graph whatever database is named


def load_bolt(falkordb_url: str) -> dict[str, Any]:
    """The graph of :func:`load_falkordb` as graph ``falkordb`` (the one FalkorDB's Bolt
    endpoint serves), read over Bolt with the neo4j driver; the source. Dates and timestamps
    are ISO text there: FalkorDB's Bolt endpoint crashes sending a temporal value."""
    from urllib.parse import parse_qs, urlsplit

    load_falkordb(falkordb_url, BOLT_GRAPH, temporal=False)
    parts = urlsplit(falkordb_url)
    port = parse_qs(parts.query)["bolt_port"][0]
    return {"kind": "neo4j", "url": f"bolt://{parts.hostname}:{port}"}


def load_all(
    pg_dsn: str,
    mysql_dsn: str,
    mongo_url: str,
    folder: Path,
    db: str = DB,
    *,
    pgvector_dsn: str | None = None,
    redis_url: str | None = None,
    falkordb_url: str | None = None,
    milvus_url: str | None = None,
    bolt: bool = False,
    qdrant: bool = False,
) -> dict[str, Any]:
    """Load every kind (databases named ``db``); the catalog of one federation over all.
    PostgreSQL 16 with pgvector (source ``pgv``), Redis (``kv``), FalkorDB (``g``), Milvus
    (``mv``) where given, with ``bolt`` FalkorDB's graph over Bolt (``gb``) and with ``qdrant``
    a Qdrant local-mode folder (``qd``)."""
    extra: dict[str, Any] = {}
    if milvus_url is not None:
        extra["mv"] = load_milvus(milvus_url)
    if bolt and falkordb_url is not None:
        extra["gb"] = load_bolt(falkordb_url)
    if qdrant:
        extra["qd"] = load_qdrant(folder / f"{db}_qdrant")
    if pgvector_dsn is not None:
        extra["pgv"] = {"kind": "postgres", "dsn": asyncio.run(load_postgres(pgvector_dsn, db))}
    if redis_url is not None:
        extra["kv"] = load_redis(redis_url, db)
    if falkordb_url is not None:
        extra["g"] = load_falkordb(falkordb_url, db)
    pg = asyncio.run(load_postgres(pg_dsn, db))
    my = load_mysql(mysql_dsn, db)
    lite = write_sqlite(folder / f"{db}.db")
    files = write_files(folder / f"{db}_files")
    load_mongo(mongo_url, db)
    return {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg},
            "my": {"kind": "mysql", "dsn": my},
            "lite": {"kind": "sqlite", "path": str(lite)},
            "files": {"kind": "files", "path": str(files)},
            "mongo": {"kind": "mongo", "url": mongo_url, "databases": [db], "database": db},
            **extra,
        }
    }


def truth():
    """DuckDB with ``people`` and ``orders`` loaded directly from the Arrow tables."""
    import duckdb

    con = duckdb.connect()
    # the federated dialect orders NULLs as PostgreSQL does: last ascending, first descending
    con.execute("SET default_null_order = 'nulls_last_on_asc_first_on_desc'")
    for name, table in TABLES.items():
        con.register(f"_{name}", table)
        con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM "_{name}"')
        con.unregister(f"_{name}")
    return con


# ---- comparing answers -----------------------------------------------------------------------
REL_TOL = 1e-9


def normalize(value: Any) -> Any:
    """A value in a form every source agrees on: numbers as floats (decimals exact enough at
    these sizes), booleans as 0/1, dates as midnight datetimes, aware datetimes as naive UTC."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float, D)):
        f = float(value)
        return None if math.isnan(f) else f
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day)
    return value


def rows_of(table: pa.Table) -> list[tuple[Any, ...]]:
    return [tuple(normalize(v) for v in row.values()) for row in table.to_pylist()]


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-300)
    return a == b


def _row_close(a: tuple[Any, ...], b: tuple[Any, ...]) -> bool:
    return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))


def _key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is None, type(v).__name__, v if v is not None else 0) for v in row)


def same_answer(
    got: Iterable[tuple[Any, ...]], want: Iterable[tuple[Any, ...]], ordered: bool
) -> bool:
    """Bags equal (floats within REL_TOL), in the same order where ``ordered``."""
    got, want = list(got), list(want)
    if len(got) != len(want):
        return False
    if not ordered:
        got, want = sorted(got, key=_key), sorted(want, key=_key)
    return all(_row_close(a, b) for a, b in zip(got, want, strict=True))
