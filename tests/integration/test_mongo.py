"""MongoDB through the public API, against a real MongoDB-wire server (CongoDB; a real MongoDB
when FEDERATOR_TEST_MONGO_URL is set). Every answer is checked against values computed in
Python from the documents that were inserted, never against federator itself."""

from __future__ import annotations

import datetime as dt
import decimal
import random
import re
import socket
import sqlite3
import time
from collections import defaultdict
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from bson import Decimal128, ObjectId
from pymongo import MongoClient

import federator

DB = "fedtest_shop"
N_ORDERS = 600
N_CUSTOMERS = 40
STATUSES = ["new", "paid", "shipped", "cancelled"]
CITIES = ["Berlin", "Bern", "Paris", "Porto", "Lima"]
UTC = dt.UTC


def _orders() -> list[dict[str, Any]]:
    rng = random.Random(7)
    docs = []
    base = dt.datetime(2024, 1, 1, tzinfo=UTC)
    for i in range(N_ORDERS):
        doc: dict[str, Any] = {
            "_id": ObjectId(),
            "n": i,
            "customer_id": rng.randrange(N_CUSTOMERS),
            "amount": Decimal128(decimal.Decimal(rng.randrange(100, 100_000)) / 100),
            "qty": rng.randrange(1, 9),
            "ordered_at": base + dt.timedelta(minutes=37 * i),
            "address": {"city": rng.choice(CITIES), "zip": f"{rng.randrange(10000, 99999)}"},
            "items": [
                {"sku": f"sku-{rng.randrange(30)}", "qty": rng.randrange(1, 4)}
                for _ in range(rng.randrange(1, 4))
            ],
        }
        r = i % 10
        if r == 0:
            doc["status"] = None  # NULL
        elif r != 1:  # r == 1: the field is missing, which SQL also sees as NULL
            doc["status"] = STATUSES[i % len(STATUSES)]
        docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def orders(mongo_dsn: str) -> list[dict[str, Any]]:
    client = MongoClient(mongo_dsn, tz_aware=True, serverSelectionTimeoutMS=10_000)
    try:
        client[DB].orders.drop()
        client[DB].empty.drop()
        docs = _orders()
        client[DB].orders.insert_many([dict(d) for d in docs])
        client[DB].empty.insert_one({"x": 1})
        client[DB].empty.delete_many({})
        return docs
    finally:
        client.close()


@pytest.fixture(scope="module")
def fed(mongo_dsn: str, orders: list[dict[str, Any]], tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("lite") / "crm.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, tier TEXT)")
    con.executemany(
        "INSERT INTO customers VALUES (?, ?, ?)",
        [(i, f"c{i}", "gold" if i % 7 == 0 else "basic") for i in range(N_CUSTOMERS)],
    )
    con.commit()
    con.close()
    catalog = {
        "sources": {
            "mongo": {"kind": "mongo", "url": mongo_dsn, "databases": [DB], "database": DB},
            "crm": {"kind": "sqlite", "path": str(path)},
        }
    }
    with federator.connect(catalog, timeout=60) as f:
        yield f


def rows(result: federator.Result | pa.Table) -> list[dict[str, Any]]:
    table = result if isinstance(result, pa.Table) else result.to_arrow()
    return table.to_pylist()


def dec(value: Decimal128) -> decimal.Decimal:
    return value.to_decimal()


# ---- schema -------------------------------------------------------------------------------
def test_sampled_schema_unifies_types_and_flattens_documents(fed: federator.Federation) -> None:
    result = fed.sql("SELECT * FROM mongo.orders LIMIT 1").to_arrow()
    schema = result.schema
    assert schema.field("_id").type == pa.string()
    assert schema.field("n").type == pa.int64()
    assert pa.types.is_decimal(schema.field("amount").type)
    assert schema.field("ordered_at").type == pa.timestamp("ms", tz="UTC")
    assert pa.types.is_struct(schema.field("address").type)
    assert schema.field("address.city").type == pa.string()
    assert pa.types.is_list(schema.field("items").type)
    assert pa.types.is_struct(schema.field("items").type.value_type)
    assert len(result) == 1


# ---- filters, projection, sort, limit ---------------------------------------------------------
def test_filter_sort_limit_are_one_pipeline(fed: federator.Federation, orders: list) -> None:
    query = """
        SELECT n, amount, "address.city" AS city FROM mongo.orders
        WHERE qty >= 3 AND "address.city" LIKE 'Ber%' AND ordered_at < TIMESTAMP '2024-01-08'
        ORDER BY amount DESC, n LIMIT 7
    """
    plan = fed.explain(query)
    assert "no residual" in plan and "$match" in plan and "$limit" in plan, plan
    want = sorted(
        (
            d
            for d in orders
            if d["qty"] >= 3
            and d["address"]["city"].startswith("Ber")
            and d["ordered_at"] < dt.datetime(2024, 1, 8, tzinfo=UTC)
        ),
        key=lambda d: (-dec(d["amount"]), d["n"]),
    )[:7]
    got = rows(fed.sql(query))
    assert got == [
        {"n": d["n"], "amount": dec(d["amount"]), "city": d["address"]["city"]} for d in want
    ]


def test_null_follows_sql_three_valued_logic(fed: federator.Federation, orders: list) -> None:
    def count(query: str) -> int:
        return rows(fed.sql(query))[0]["c"]

    status = [d.get("status") for d in orders]
    assert count("SELECT count(*) AS c FROM mongo.orders WHERE status <> 'paid'") == sum(
        s is not None and s != "paid" for s in status
    )
    assert count(
        "SELECT count(*) AS c FROM mongo.orders WHERE status NOT IN ('paid', 'new')"
    ) == sum(s is not None and s not in ("paid", "new") for s in status)
    assert count("SELECT count(*) AS c FROM mongo.orders WHERE status IS NULL") == sum(
        s is None for s in status
    )
    assert count("SELECT count(*) AS c FROM mongo.orders WHERE NOT (status = 'new')") == sum(
        s is not None and s != "new" for s in status
    )
    assert count("SELECT count(status) AS c FROM mongo.orders") == sum(
        s is not None for s in status
    )


def test_order_by_puts_nulls_where_sql_does(fed: federator.Federation, orders: list) -> None:
    got = [r["status"] for r in rows(fed.sql("SELECT status FROM mongo.orders ORDER BY status"))]
    non_null = sorted(d["status"] for d in orders if d.get("status") is not None)
    assert got == non_null + [None] * (len(orders) - len(non_null))
    got = [
        r["status"]
        for r in rows(fed.sql("SELECT status FROM mongo.orders ORDER BY status DESC LIMIT 3"))
    ]
    assert got == [None, None, None]


def test_parameters_and_object_ids(fed: federator.Federation, orders: list) -> None:
    doc = orders[17]
    got = rows(
        fed.sql(
            "SELECT _id, n, qty FROM mongo.orders WHERE _id = :id AND qty >= :q",
            {"id": str(doc["_id"]), "q": 0},
        )
    )
    assert got == [{"_id": str(doc["_id"]), "n": 17, "qty": doc["qty"]}]
    picked = [str(orders[i]["_id"]) for i in (3, 5, 8)]
    got = rows(
        fed.sql(
            f"SELECT n FROM mongo.orders WHERE _id IN ('{picked[0]}', '{picked[1]}', "
            f"'{picked[2]}') ORDER BY n"
        )
    )
    assert got == [{"n": 3}, {"n": 5}, {"n": 8}]


# ---- aggregation ---------------------------------------------------------------------------
def test_group_by_aggregates_match_python(fed: federator.Federation, orders: list) -> None:
    query = """
        SELECT status, count(*) AS n, sum(amount) AS total, min(qty) AS lo, max(ordered_at) AS last,
               avg(qty) AS mean, count(DISTINCT customer_id) AS customers
        FROM mongo.orders WHERE qty > 1
        GROUP BY status HAVING count(*) > 5 ORDER BY n DESC, status
    """
    assert "no residual" in fed.explain(query)
    groups: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for d in orders:
        if d["qty"] > 1:
            groups[d.get("status")].append(d)
    want = [
        {
            "status": s,
            "n": len(g),
            "total": sum(dec(d["amount"]) for d in g),
            "lo": min(d["qty"] for d in g),
            "last": max(d["ordered_at"] for d in g),
            "mean": sum(d["qty"] for d in g) / len(g),
            "customers": len({d["customer_id"] for d in g}),
        }
        for s, g in groups.items()
        if len(g) > 5
    ]
    want.sort(key=lambda r: (-r["n"], r["status"] is None, r["status"] or ""))
    got = rows(fed.sql(query))
    for r in got:
        r["mean"] = pytest.approx(r["mean"])
    assert got == want


def test_global_aggregate_over_no_documents_is_one_row(fed: federator.Federation) -> None:
    got = rows(fed.sql("SELECT count(*) AS n, sum(qty) AS s FROM mongo.orders WHERE qty > 1000"))
    assert got == [{"n": 0, "s": None}]


def test_distinct(fed: federator.Federation, orders: list) -> None:
    got = rows(fed.sql('SELECT DISTINCT "address.city" AS city FROM mongo.orders ORDER BY city'))
    assert got == [{"city": c} for c in sorted({d["address"]["city"] for d in orders})]


# ---- what Mongo cannot take stays in the residual ----------------------------------------------
def test_unsupported_function_stays_in_residual(fed: federator.Federation, orders: list) -> None:
    query = "SELECT upper(status) AS s, n FROM mongo.orders WHERE qty = 2 ORDER BY n"
    plan = fed.explain(query)
    assert "residual on DuckDB" in plan and "no rule of 'mongo' pushes Upper" in plan, plan
    assert '"qty": {"$eq": 2}' in plan
    got = rows(fed.sql(query))
    want = [
        {"s": d["status"].upper() if d.get("status") else None, "n": d["n"]}
        for d in orders
        if d["qty"] == 2
    ]
    assert got == want


def test_arrays_and_documents_come_back_as_arrow(fed: federator.Federation, orders: list) -> None:
    got = rows(fed.sql("SELECT n, items, address FROM mongo.orders WHERE n < 3 ORDER BY n"))
    assert got == [{"n": d["n"], "items": d["items"], "address": d["address"]} for d in orders[:3]]


# ---- across sources ----------------------------------------------------------------------
def test_join_with_sqlite_binds_keys_as_in(fed: federator.Federation, orders: list) -> None:
    query = """
        SELECT c.tier, count(*) AS n, sum(o.qty) AS items
        FROM crm.customers AS c JOIN mongo.orders AS o ON o.customer_id = c.id
        WHERE c.tier = 'gold' AND o.status = 'paid'
        GROUP BY c.tier
    """
    plan = fed.explain(query)
    assert "$in" in plan and "bind join" in plan, plan
    gold = {i for i in range(N_CUSTOMERS) if i % 7 == 0}
    matched = [d for d in orders if d["customer_id"] in gold and d.get("status") == "paid"]
    got = rows(fed.sql(query))
    assert got == [{"tier": "gold", "n": len(matched), "items": sum(d["qty"] for d in matched)}]


def test_empty_collection(fed: federator.Federation) -> None:
    got = fed.sql("SELECT count(*) AS n FROM mongo.orders WHERE status = 'nope'").to_arrow()
    assert got.to_pylist() == [{"n": 0}]


def test_more_predicates_against_python(fed: federator.Federation, orders: list) -> None:
    def ns(query: str) -> list[int]:
        plan = fed.explain(query)
        assert "no residual" in plan, plan
        return [r["n"] for r in rows(fed.sql(query))]

    by_n = sorted(orders, key=lambda d: d["n"])
    assert ns("SELECT n FROM mongo.orders WHERE \"address.city\" NOT LIKE 'B%' ORDER BY n") == [
        d["n"] for d in by_n if not d["address"]["city"].startswith("B")
    ]
    assert ns("SELECT n FROM mongo.orders WHERE qty NOT BETWEEN 2 AND 6 ORDER BY n") == [
        d["n"] for d in by_n if not 2 <= d["qty"] <= 6
    ]
    assert ns("SELECT n FROM mongo.orders WHERE qty > customer_id ORDER BY n") == [
        d["n"] for d in by_n if d["qty"] > d["customer_id"]
    ]
    assert ns("SELECT n FROM mongo.orders ORDER BY n LIMIT 5 OFFSET 10") == list(range(10, 15))
    assert ns("SELECT n FROM mongo.orders WHERE status ILIKE 'PA%' ORDER BY n") == [
        d["n"] for d in by_n if (d.get("status") or "").upper().startswith("PA")
    ]


def test_having_on_a_key_and_order_by_an_unselected_aggregate(
    fed: federator.Federation, orders: list
) -> None:
    query = """
        SELECT "address.city" AS city, min(ordered_at) AS first FROM mongo.orders
        GROUP BY "address.city" HAVING "address.city" <> 'Lima'
        ORDER BY sum(qty) DESC LIMIT 3
    """
    assert "no residual" in fed.explain(query)
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in orders:
        groups[d["address"]["city"]].append(d)
    want = sorted(
        ((c, g) for c, g in groups.items() if c != "Lima"),
        key=lambda cg: -sum(d["qty"] for d in cg[1]),
    )[:3]
    got = rows(fed.sql(query))
    assert got == [{"city": c, "first": min(d["ordered_at"] for d in g)} for c, g in want]


def test_declared_schema_with_json_document(mongo_dsn: str, orders: list) -> None:
    import json

    catalog = {
        "sources": {
            "m": {
                "kind": "mongo",
                "url": mongo_dsn,
                "database": DB,
                "discover": False,
                "tables": {
                    f"{DB}.orders": {
                        "columns": {
                            "n": "int64",
                            "address": "json",
                            "amount": "decimal(12,2)",
                            "ordered_at": "timestamp",
                        }
                    }
                },
            }
        }
    }
    with federator.connect(catalog, timeout=60) as fed:
        table = fed.sql("SELECT * FROM m.orders WHERE n < 2 ORDER BY n").to_arrow()
        assert table.schema.names == ["_id", "n", "address", "amount", "ordered_at"]
        assert table.schema.field("amount").type == pa.decimal128(12, 2)
        got = table.to_pylist()
        assert [json.loads(r["address"]) for r in got] == [d["address"] for d in orders[:2]]
        assert [r["_id"] for r in got] == [str(d["_id"]) for d in orders[:2]]
        assert [r["amount"] for r in got] == [dec(d["amount"]) for d in orders[:2]]


def test_fragment_that_needs_no_field(fed: federator.Federation, orders: list) -> None:
    query = """
        SELECT count(*) AS n FROM mongo.orders AS o CROSS JOIN crm.customers AS c
        WHERE c.id < 3 AND o.qty = 1
    """
    assert '{"$literal": 1}' in fed.explain(query)
    assert rows(fed.sql(query)) == [{"n": 3 * sum(d["qty"] == 1 for d in orders)}]


def test_cursor_streams_in_batches(mongo_dsn: str, orders: list) -> None:
    catalog = {
        "sources": {"m": {"kind": "mongo", "url": mongo_dsn, "database": DB, "batch_rows": 100}}
    }
    with federator.connect(catalog, timeout=60) as fed:
        reader = fed.sql("SELECT n FROM m.orders").to_batches()
        sizes = [b.num_rows for b in reader]
    assert sum(sizes) == len(orders) and max(sizes) <= 100 and len(sizes) >= len(orders) // 100


# ---- timeouts: only the query's timeout ends a running aggregation -------------------------
SLOW_DB = "fedtest_slow"
# LIKE '%a%a%a%a%a%b' is the regular expression ^.*a.*a.*a.*a.*a.*b$: on 40 a's without a b it
# backtracks through every way to place five a's, seconds for the collection below.
SLOW_SQL = "SELECT count(*) AS n FROM m.slow WHERE s LIKE '%a%a%a%a%a%b'"


@pytest.fixture(scope="module")
def slow_url(mongo_dsn: str) -> str:
    """A collection that SLOW_SQL takes seconds over; the URL makes the driver's heartbeat
    check the server every 0.5 s (while the server is busy with the aggregation)."""
    client = MongoClient(mongo_dsn, serverSelectionTimeoutMS=10_000)
    try:
        client[SLOW_DB].slow.drop()
        client[SLOW_DB].slow.insert_many([{"s": s} for s in _slow_strings()])
    finally:
        client.close()
    sep = "&" if "?" in mongo_dsn else "?"
    return f"{mongo_dsn}{sep}heartbeatFrequencyMS=500"


def _slow_catalog(url: str, **options: Any) -> dict[str, Any]:
    return {"sources": {"m": {"kind": "mongo", "url": url, "database": SLOW_DB, **options}}}


def test_an_aggregation_longer_than_the_connect_timeout_finishes(slow_url: str) -> None:
    """Issue 12: the source's timeout was also the driver's socket and heartbeat timeout, so a
    busy server's missed heartbeat cancelled the running aggregation ("operation cancelled")."""
    want = sum(re.fullmatch(r".*a.*a.*a.*a.*a.*b", s) is not None for s in _slow_strings())
    # 'timeout' is the older name of 'connect_timeout'
    with federator.connect(_slow_catalog(slow_url, timeout=0.5), timeout=120) as fed:
        started = time.monotonic()
        got = fed.sql(SLOW_SQL).to_arrow().to_pylist()
        took = time.monotonic() - started
    assert got == [{"n": want}] and want == 7
    assert took > 1.0, f"the aggregation took {took:.2f} s: too fast to show anything"


def test_only_the_query_timeout_ends_a_running_aggregation(slow_url: str) -> None:
    with federator.connect(_slow_catalog(slow_url, connect_timeout=0.5), timeout=1) as fed:
        fed.sql("SELECT count(*) AS n FROM m.slow WHERE s = 'x'").to_arrow()  # catalog, warm
        started = time.monotonic()
        with pytest.raises(federator.QueryTimeoutError) as e:
            fed.sql(SLOW_SQL).to_arrow()
        took = time.monotonic() - started
    assert "timed out after 1s while running fragment f0 on source 'm'" in str(e.value)
    assert took < 2.0


def test_timeouts_in_the_catalog() -> None:
    with pytest.raises(federator.CatalogError, match="no socket timeout"):
        federator.connect(_slow_catalog("mongodb://127.0.0.1:1/", read_timeout=5))
    with pytest.raises(federator.CatalogError, match="positive number"):
        federator.connect(_slow_catalog("mongodb://127.0.0.1:1/", connect_timeout="soon"))


def test_an_unreachable_server_fails_after_the_connect_timeout() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    with federator.connect(_slow_catalog(url, connect_timeout=0.5), timeout=60) as fed:
        started = time.monotonic()
        with pytest.raises(federator.SourceUnreachableError) as e:
            fed.sql("SELECT s FROM m.slow").to_arrow()
        took = time.monotonic() - started
    assert f"127.0.0.1:{port}" in str(e.value) and took < 5


def _slow_strings() -> list[str]:
    return ["a" * 40] * 80 + ["aaaaab"] * 7 + ["aaab", "baaaaa"]


# ---- arrays of documents: CROSS JOIN UNNEST(o.items) AS it is $unwind -----------------------
LINES_DB = "fedtest_lines"


def _line_orders() -> list[dict[str, Any]]:
    """Orders with arrays of {product_id, qty, unit_price}: some empty, null or missing, some
    elements without qty."""
    rng = random.Random(12)
    docs: list[dict[str, Any]] = []
    for n in range(150):
        doc: dict[str, Any] = {"n": n, "customer_id": n % N_CUSTOMERS}
        if n % 9 != 4:
            doc["status"] = STATUSES[n % len(STATUSES)]
        items = [
            {"product_id": rng.randrange(10), "qty": rng.randrange(1, 6), "unit_price": p / 4}
            for p in (rng.randrange(4, 400) for _ in range(rng.randrange(0, 5)))
        ]
        for it in items[1:2] if n % 5 == 0 else []:
            del it["qty"]
        if n % 17 == 3:
            doc["items"] = None
        elif n % 13 != 6:  # n % 13 == 6: no items field at all
            doc["items"] = items
        docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def unnest_setup(mongo_dsn: str, tmp_path_factory: pytest.TempPathFactory):
    """The orders in MongoDB and, as the truth, in DuckDB (items as a list of structs);
    customers on SQLite and in DuckDB."""
    docs = _line_orders()
    client = MongoClient(mongo_dsn, serverSelectionTimeoutMS=10_000)
    try:
        client[LINES_DB].lines.drop()
        client[LINES_DB].lines.insert_many([dict(d) for d in docs])
    finally:
        client.close()
    customers = [(i, f"c{i}", "gold" if i % 7 == 0 else "basic") for i in range(N_CUSTOMERS)]
    path = tmp_path_factory.mktemp("lines") / "crm.db"
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, tier TEXT)")
        con.executemany("INSERT INTO customers VALUES (?, ?, ?)", customers)
    con.close()
    duck = duckdb.connect()
    duck.execute("CREATE TABLE customers (id INT, name TEXT, tier TEXT)")
    duck.executemany("INSERT INTO customers VALUES (?, ?, ?)", customers)
    duck.execute(
        "CREATE TABLE lines (n INT, customer_id INT, status TEXT, "
        "items STRUCT(product_id BIGINT, qty BIGINT, unit_price DOUBLE)[])"
    )
    keys = ("product_id", "qty", "unit_price")
    duck.executemany(
        "INSERT INTO lines VALUES (?, ?, ?, ?)",
        [
            (
                d["n"],
                d["customer_id"],
                d.get("status"),
                None
                if d.get("items") is None
                else [{k: i.get(k) for k in keys} for i in d["items"]],
            )
            for d in docs
        ],
    )
    catalog = {
        "sources": {
            "mongo": {"kind": "mongo", "url": mongo_dsn, "database": LINES_DB},
            "crm": {"kind": "sqlite", "path": str(path)},
        }
    }
    with federator.connect(catalog, timeout=60) as fed:
        yield fed, duck


UNNEST_SHAPES = {
    "elements filtered on the document and on themselves": (
        "SELECT o.n, it.product_id, it.qty, it.unit_price FROM mongo.lines AS o "
        "CROSS JOIN UNNEST(o.items) AS it WHERE o.status = 'paid' AND it.qty >= 2",
        "SELECT o.n, it.product_id, it.qty, it.unit_price FROM lines AS o "
        "CROSS JOIN UNNEST(o.items) AS it WHERE o.status = 'paid' AND it.qty >= 2",
    ),
    "grouped per product: SUM, COUNT, AVG, MAX, HAVING, ORDER BY, LIMIT": (
        "SELECT it.product_id, sum(it.qty) AS units, count(*) AS n, count(it.qty) AS with_qty, "
        "avg(it.unit_price) AS mean, max(it.unit_price) AS top FROM mongo.lines AS o, "
        "UNNEST(o.items) AS it GROUP BY it.product_id HAVING count(*) > 3 "
        "ORDER BY units DESC, it.product_id LIMIT 6",
        "SELECT it.product_id, sum(it.qty), count(*), count(it.qty), avg(it.unit_price), "
        "max(it.unit_price) FROM lines AS o, UNNEST(o.items) AS it GROUP BY it.product_id "
        "HAVING count(*) > 3 ORDER BY 2 DESC, 1 LIMIT 6",
    ),
    "revenue per status: arithmetic on elements in the residual": (
        "SELECT o.status, sum(it.qty * it.unit_price) AS revenue FROM mongo.lines AS o "
        "CROSS JOIN UNNEST(o.items) AS it GROUP BY o.status",
        "SELECT o.status, sum(it.qty * it.unit_price) FROM lines AS o "
        "CROSS JOIN UNNEST(o.items) AS it GROUP BY o.status",
    ),
    "count of all elements": (
        "SELECT count(*) AS n FROM mongo.lines AS o CROSS JOIN UNNEST(o.items) AS it",
        "SELECT count(*) FROM lines AS o CROSS JOIN UNNEST(o.items) AS it",
    ),
    "DISTINCT products of large quantities": (
        "SELECT DISTINCT it.product_id FROM mongo.lines AS o CROSS JOIN UNNEST(o.items) AS it "
        "WHERE it.qty > 3",
        "SELECT DISTINCT it.product_id FROM lines AS o CROSS JOIN UNNEST(o.items) AS it "
        "WHERE it.qty > 3",
    ),
    "joined with SQLite customers (keys bound before $unwind)": (
        "SELECT c.name, o.n, it.product_id FROM crm.customers AS c "
        "JOIN mongo.lines AS o ON o.customer_id = c.id CROSS JOIN UNNEST(o.items) AS it "
        "WHERE c.tier = 'gold' AND it.unit_price < 50",
        "SELECT c.name, o.n, it.product_id FROM customers AS c "
        "JOIN lines AS o ON o.customer_id = c.id CROSS JOIN UNNEST(o.items) AS it "
        "WHERE c.tier = 'gold' AND it.unit_price < 50",
    ),
    "joined with SQLite on an element's field (keys bound before $unwind)": (
        "SELECT c.name, o.n, it.qty FROM crm.customers AS c, mongo.lines AS o, "
        "UNNEST(o.items) AS it WHERE it.product_id = c.id AND c.tier = 'gold'",
        "SELECT c.name, o.n, it.qty FROM customers AS c, lines AS o, "
        "UNNEST(o.items) AS it WHERE it.product_id = c.id AND c.tier = 'gold'",
    ),
    "LEFT JOIN UNNEST keeps orders without elements (unnested in the residual)": (
        "SELECT o.n, it.qty FROM mongo.lines AS o LEFT JOIN UNNEST(o.items) AS it ON TRUE",
        "SELECT o.n, it.qty FROM lines AS o LEFT JOIN UNNEST(o.items) AS it ON TRUE",
    ),
}


@pytest.mark.parametrize("name", list(UNNEST_SHAPES))
def test_unnest_arrays_of_documents(unnest_setup, name: str) -> None:
    """Issue 12: ``o.items`` (documents) could not be reached. Equal to DuckDB over the same
    documents; EXPLAIN shows the $unwind wherever MongoDB runs the unnest."""
    fed, duck = unnest_setup
    sql, truth_sql = UNNEST_SHAPES[name]
    plan = fed.explain(sql)
    assert ('{"$unwind": "$items"}' in plan) == ("LEFT JOIN" not in sql), plan
    got = [tuple(r.values()) for r in fed.sql(sql).to_arrow().to_pylist()]
    want = duck.execute(truth_sql).fetchall()
    if "ORDER BY" not in sql:
        got, want = sorted(got, key=repr), sorted(want, key=repr)
    assert len(want) > 1 or name == "count of all elements"
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g == pytest.approx(w, rel=1e-12), (g, w)
