"""Small embedded sources: a SQLite shop and a folder of files, with their rows as Python data.

The rows live here as plain Python lists, so tests can compute the truth independently
(with sqlite3 or DuckDB directly, or by hand) and compare it with federator's answer.
"""

from __future__ import annotations

import datetime as dt
import decimal
import sqlite3
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.feather as feather
import pyarrow.parquet as pq

USERS = [
    # id, name, country, signup, score
    (1, "ada", "GB", "2024-01-05", 9.5),
    (2, "alan", "GB", "2024-02-11", None),
    (3, "grace", "US", "2024-03-20", 8.0),
    (4, "edsger", "NL", "2024-03-21", 7.25),
    (5, "barbara", "US", None, 6.0),
    (6, "o'neil", "IE", "2024-06-30", 5.5),
]
PRODUCTS = [
    # id, name, category, price
    (10, "sicp", "books", decimal.Decimal("45.00")),
    (11, "taocp", "books", decimal.Decimal("199.99")),
    (12, "tetris", "games", decimal.Decimal("9.90")),
    (13, "zelda", "games", decimal.Decimal("59.00")),
    (14, "rake", "garden", decimal.Decimal("15.50")),
]
STATUSES = ("shipped", "pending", "shipped", "cancelled", "shipped")
ORDERS = [
    # id, user_id, product_id, qty, status, ordered_at
    (
        i,
        (i * 7) % 6 + 1,
        10 + (i * 3) % 5,
        i % 4 + 1,
        STATUSES[i % 5],
        f"2025-01-{i % 28 + 1:02d} {i % 24:02d}:15:00",
    )
    for i in range(1, 61)
]
EVENTS = [
    # user_id, kind, at
    (
        (i * 5) % 7 + 1,
        ("view", "click", "view", "cart")[i % 4],
        dt.datetime(2025, 2, 1) + dt.timedelta(hours=i),
    )
    for i in range(40)
]
RATINGS = [(10, 5), (11, 4), (12, 3), (13, 5), (10, 4), (12, 2)]


def write_shop(path: Path) -> Path:
    with sqlite3.connect(path) as con:
        con.execute(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT, country TEXT, "
            "signup DATE, score REAL)"
        )
        con.execute(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER, product_id INTEGER, "
            "qty INTEGER, status TEXT, ordered_at TIMESTAMP)"
        )
        con.executemany("INSERT INTO users VALUES (?, ?, ?, ?, ?)", USERS)
        con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", ORDERS)
    con.close()
    return path


def products_table() -> pa.Table:
    return pa.table(
        {
            "id": pa.array([p[0] for p in PRODUCTS], pa.int64()),
            "name": [p[1] for p in PRODUCTS],
            "category": [p[2] for p in PRODUCTS],
            "price": pa.array([p[3] for p in PRODUCTS], pa.decimal128(8, 2)),
        }
    )


def write_lake(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(products_table(), folder / "products.parquet")
    events = pa.table(
        {
            "user_id": pa.array([e[0] for e in EVENTS], pa.int64()),
            "kind": [e[1] for e in EVENTS],
            "at": pa.array([e[2] for e in EVENTS], pa.timestamp("s")),
        }
    )
    pcsv.write_csv(events, folder / "events.csv")
    ratings = pa.table(
        {
            "product_id": pa.array([r[0] for r in RATINGS], pa.int64()),
            "stars": pa.array([r[1] for r in RATINGS], pa.int32()),
        }
    )
    feather.write_feather(ratings, folder / "ratings.arrow")
    (folder / "notes.txt").write_text("not a table\n")
    return folder


def truth_db(path: Path) -> sqlite3.Connection:
    """One SQLite database holding every table of both sources: the truth for cross-source
    queries (the same SQL with the source names dropped)."""
    write_shop(path)
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE products (id INTEGER, name TEXT, category TEXT, price REAL)")
    con.executemany(
        "INSERT INTO products VALUES (?, ?, ?, ?)", [(a, b, c, float(d)) for a, b, c, d in PRODUCTS]
    )
    con.execute("CREATE TABLE events (user_id INTEGER, kind TEXT, at TIMESTAMP)")
    con.executemany(
        "INSERT INTO events VALUES (?, ?, ?)", [(u, k, a.isoformat(sep=" ")) for u, k, a in EVENTS]
    )
    con.execute("CREATE TABLE ratings (product_id INTEGER, stars INTEGER)")
    con.executemany("INSERT INTO ratings VALUES (?, ?)", RATINGS)
    con.commit()
    return con


def normalize(rows: list[tuple[Any, ...]], digits: int = 6) -> list[tuple[Any, ...]]:
    """Rows with numbers as rounded floats, so SQLite REAL and Arrow decimals compare."""

    def norm(v: Any) -> Any:
        if isinstance(v, bool) or v is None:
            return v
        if isinstance(v, (int, float, decimal.Decimal)):
            return round(float(v), digits)
        return v

    return [tuple(norm(v) for v in row) for row in rows]


def rows_of(table: pa.Table) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) for r in table.to_pylist()]
