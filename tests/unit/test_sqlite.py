"""The SQLite source end to end, checked against the same queries run with sqlite3 directly."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pyarrow as pa
import pytest
from _data import ORDERS, USERS, normalize, rows_of
from federator.adapters.sqlite import sqlite_type

import federator

# Federated SQL and the same query for sqlite3 (names without the source).
QUERIES = [
    "SELECT id, name FROM {s}users WHERE country = 'GB' ORDER BY id",
    "SELECT id, name FROM {s}users WHERE score IS NULL OR score > 7 ORDER BY id",
    "SELECT country, count(*) AS n, avg(score) AS mean FROM {s}users GROUP BY country "
    "HAVING count(*) >= 1 ORDER BY country",
    "SELECT status, sum(qty) AS q, min(id) AS first FROM {s}orders GROUP BY status ORDER BY status",
    "SELECT u.name, count(o.id) AS n FROM {s}users AS u LEFT JOIN {s}orders AS o "
    "ON o.user_id = u.id AND o.status = 'shipped' GROUP BY u.name ORDER BY n DESC, u.name",
    "SELECT id FROM {s}orders WHERE product_id IN (10, 12) AND qty BETWEEN 2 AND 3 ORDER BY id",
    "SELECT id, qty * 2 + 1 AS x, CASE WHEN qty > 2 THEN 'many' ELSE 'few' END AS size "
    "FROM {s}orders ORDER BY id LIMIT 7",
    "SELECT name FROM {s}users WHERE name LIKE 'a%' ORDER BY name",
    "SELECT upper(name) AS n, length(name) AS l FROM {s}users ORDER BY id",
    "WITH big AS (SELECT user_id, sum(qty) AS q FROM {s}orders GROUP BY user_id) "
    "SELECT u.name, big.q FROM {s}users AS u JOIN big ON big.user_id = u.id "
    "ORDER BY big.q DESC, u.name",
    "SELECT name FROM {s}users "
    "WHERE id IN (SELECT user_id FROM {s}orders WHERE status = 'cancelled') ORDER BY name",
    "SELECT DISTINCT status FROM {s}orders ORDER BY status",
    "SELECT id FROM {s}orders ORDER BY ordered_at DESC, id LIMIT 3",
]


@pytest.mark.parametrize("query", QUERIES)
def test_matches_sqlite3(fed: federator.Federation, shop_db: Path, query: str) -> None:
    got = fed.sql(query.format(s="shop.")).to_arrow()
    with sqlite3.connect(shop_db) as con:
        cur = con.execute(query.format(s=""))
        want = cur.fetchall()
        names = [d[0] for d in cur.description]
    con.close()
    assert got.column_names == names
    assert normalize(rows_of(got)) == normalize(want)


def test_single_source_query_has_no_residual(fed: federator.Federation) -> None:
    result = fed.sql("SELECT u.name, sum(o.qty) AS q FROM shop.users AS u JOIN shop.orders AS o "
                     "ON o.user_id = u.id GROUP BY u.name ORDER BY q DESC LIMIT 2")  # fmt: skip
    plan = result.plan
    assert plan.residual is None and len(plan.fragments) == 1
    text = result.explain()
    assert "no residual" in text
    assert 'GROUP BY "u"."name"' in text and "LIMIT 2" in text


def test_params_are_bound_not_interpolated(fed: federator.Federation) -> None:
    q = "SELECT id, name FROM shop.users WHERE country = :c AND id > :lo ORDER BY id"
    result = fed.sql(q, {"c": "GB", "lo": 1})
    assert result.to_arrow().to_pylist() == [{"id": 2, "name": "alan"}]
    text = result.explain()
    assert '"country" = ? AND "users"."id" > ?' in text
    assert "params: $1 = 'GB', $2 = 1" in text
    # A value that would break an interpolated query is just a value.
    evil = "x' OR '1'='1"
    assert (
        fed.sql("SELECT id FROM shop.users WHERE name = :n", {"n": evil}).to_arrow().num_rows == 0
    )
    assert fed.sql("SELECT id FROM shop.users WHERE name = :n", {"n": "o'neil"}).to_arrow()[
        "id"
    ].to_pylist() == [6]


def test_types_from_declared_columns(fed: federator.Federation) -> None:
    table = fed.sql("SELECT * FROM shop.users ORDER BY id").to_arrow()
    assert table.schema == pa.schema([
        ("id", pa.int64()), ("name", pa.string()), ("country", pa.string()),
        ("signup", pa.date32()), ("score", pa.float64()),
    ])  # fmt: skip
    assert table.column("signup").to_pylist()[:2] == [dt.date(2024, 1, 5), dt.date(2024, 2, 11)]
    assert table.column("signup")[4].as_py() is None
    ordered = fed.sql("SELECT ordered_at FROM shop.orders WHERE id = 1").to_arrow()
    assert ordered.schema.field("ordered_at").type == pa.timestamp("us")
    assert ordered.column(0).to_pylist() == [dt.datetime.fromisoformat(ORDERS[0][5])]


def test_empty_result_keeps_schema(fed: federator.Federation) -> None:
    table = fed.sql("SELECT id, name FROM shop.users WHERE id < 0").to_arrow()
    assert table.num_rows == 0
    assert table.schema.names == ["id", "name"]
    assert table.schema.field("id").type == pa.int64()


def test_batches_stream(tmp_path: Path, shop_db: Path) -> None:
    catalog = {"sources": {"shop": {"kind": "sqlite", "path": str(shop_db), "batch_rows": 16}}}
    with federator.connect(catalog) as fed:
        reader = fed.sql("SELECT id FROM shop.orders ORDER BY id").to_batches()
        sizes = [b.num_rows for b in reader]
        assert sizes == [16, 16, 16, 12]
        batches = list(fed.sql("SELECT id FROM shop.orders ORDER BY id"))
        assert pa.Table.from_batches(batches).column("id").to_pylist() == list(range(1, 61))


def test_arrow_c_stream_and_pandas(fed: federator.Federation) -> None:
    result = fed.sql("SELECT id, name FROM shop.users ORDER BY id")
    assert pa.table(result).num_rows == len(USERS)
    pd = pytest.importorskip("pandas")
    frame = fed.sql("SELECT id, score FROM shop.users ORDER BY id").to_pandas()
    assert isinstance(frame, pd.DataFrame)
    assert list(frame["id"]) == [u[0] for u in USERS]


async def test_async_api(catalog: dict[str, object]) -> None:
    async with federator.connect(catalog) as fed:
        result = await fed.sql_async(
            "SELECT count(*) AS n FROM shop.orders WHERE qty = :q", {"q": 1}
        )
        table = await result.to_arrow_async()
        assert table.to_pylist() == [{"n": sum(1 for o in ORDERS if o[3] == 1)}]
        batches = [b async for b in result]
        assert sum(b.num_rows for b in batches) == 1


def test_missing_database_file(tmp_path: Path) -> None:
    catalog = {"sources": {"s": {"kind": "sqlite", "path": str(tmp_path / "missing.db")}}}
    missing = pytest.raises(federator.CatalogError, match="does not exist")
    with federator.connect(catalog) as fed, missing:
        fed.sql("SELECT * FROM s.t")


@pytest.mark.parametrize(
    ("declared", "arrow"),
    [
        ("INTEGER", pa.int64()),
        ("BIGINT", pa.int64()),
        ("VARCHAR(20)", pa.string()),
        ("TEXT", pa.string()),
        ("", pa.string()),
        ("BLOB", pa.binary()),
        ("REAL", pa.float64()),
        ("DOUBLE PRECISION", pa.float64()),
        ("BOOLEAN", pa.bool_()),
        ("DATE", pa.date32()),
        ("DATETIME", pa.timestamp("us")),
        ("TIMESTAMP", pa.timestamp("us")),
        ("DECIMAL(10, 2)", pa.decimal128(10, 2)),
        ("NUMERIC", pa.float64()),
    ],
)
def test_sqlite_type_mapping(declared: str, arrow: pa.DataType) -> None:
    assert sqlite_type(declared) == arrow


def test_positional_parameters_follow_the_text_order(tmp_path) -> None:
    """Placeholders at different depths of the tree still get their own values (qmark)."""
    import sqlite3

    path = tmp_path / "p.db"
    con = sqlite3.connect(path)
    con.executescript("CREATE TABLE t (id INTEGER); INSERT INTO t VALUES (1), (2), (3), (4), (5);")
    con.commit()
    truth = con.execute("SELECT id FROM t WHERE (id % 3 + 1) % 3 = 2 ORDER BY id").fetchall()
    with federator.connect({"sources": {"s": {"kind": "sqlite", "path": str(path)}}}) as fed:
        got = fed.sql(
            "SELECT id FROM s.t WHERE (id % :m + :k) % :m = :r ORDER BY id",
            {"m": 3, "k": 1, "r": 2},
        ).to_arrow()
    assert [(r["id"],) for r in got.to_pylist()] == truth


SLOW_SQL = (
    "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000000)"
    " SELECT count(*) AS n FROM c"
)


def test_a_stopped_query_is_interrupted_and_its_connection_closed_after(
    fed: federator.Federation,
) -> None:
    """A running statement stopped by a cancel is interrupted in SQLite (it ran on in its
    thread before), and the connection is closed only once that thread let go of it
    (closing it under the running call crashed the process)."""
    import asyncio
    import threading
    import time

    adapter = fed.catalog.adapters["shop"]
    workers_before = threading.active_count()

    async def stop_after(seconds: float) -> float:
        async def consume() -> None:
            async for _ in adapter.run(SLOW_SQL, [], None):
                pass

        task = asyncio.ensure_future(consume())
        await asyncio.sleep(seconds)
        task.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    for _ in range(5):
        assert fed._loop.run(stop_after(0.2)) < 1.0
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:  # the interrupted statements end within moments
        busy = [t for t in threading.enumerate() if t.name.startswith("asyncio_")]
        if not any(getattr(t, "_target", None) for t in busy):
            break
        time.sleep(0.05)
    rows = fed.sql("SELECT count(*) AS n FROM shop.users").to_arrow().to_pylist()
    assert rows == [{"n": len(USERS)}]
    assert threading.active_count() <= workers_before + 8  # the loop's thread pool, no pile-up


def test_a_timed_out_sqlite_query_stops_in_time(tmp_path: Path, shop_db: Path) -> None:
    import time

    with federator.connect(
        {"sources": {"shop": {"kind": "sqlite", "path": str(shop_db)}}}, timeout=0.5
    ) as fed:
        adapter = fed.catalog.adapters["shop"]

        async def consume() -> None:
            async for _ in adapter.run(SLOW_SQL, [], None):
                pass

        import asyncio

        started = time.monotonic()
        with pytest.raises(TimeoutError):
            fed._loop.run(asyncio.wait_for(consume(), 0.5))
        assert time.monotonic() - started < 1.5
