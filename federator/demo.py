"""``federator demo``: a sample dataset on two embedded sources and one query across them.

It writes a SQLite database (``shop.db``: users, orders) and a folder of files (``lake/``:
products.parquet, events.csv), builds a catalog with both, and runs a query that joins,
filters and aggregates across them, printing the plan (every native request) and the result.
Nothing to install and no server to start.

>>> import io, tempfile
>>> table = run_demo(tempfile.mkdtemp(), out=io.StringIO())
>>> table.column_names
['category', 'country', 'orders', 'revenue']
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import random
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

DEMO_QUERY = """\
SELECT p.category,
       u.country,
       count(*)                  AS orders,
       sum(o.quantity * p.price) AS revenue
FROM shop.orders AS o
JOIN shop.users AS u ON u.id = o.user_id
JOIN lake.products AS p ON p.id = o.product_id
WHERE o.status = 'shipped'
  AND p.category IN ('books', 'games')
GROUP BY p.category, u.country
ORDER BY revenue DESC, p.category, u.country
LIMIT 10"""

COUNTRIES = ("DE", "FR", "GB", "JP", "US")
CATEGORIES = ("books", "games", "garden", "kitchen")
STATUSES = ("shipped", "shipped", "shipped", "pending", "cancelled")
FIRST_NAMES = (
    "ada",
    "alan",
    "barbara",
    "claude",
    "donald",
    "edsger",
    "frances",
    "grace",
    "john",
    "ken",
    "leslie",
    "margaret",
    "niklaus",
    "radia",
    "tim",
    "yukihiro",
)


def write_demo_data(folder: str | Path, *, seed: int = 7) -> dict[str, Any]:
    """Write the sample sources into ``folder`` and return their catalog (also saved as
    ``folder/federator.toml``). The data is the same for the same ``seed``."""
    root = Path(folder).resolve()
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    db_path = root / "shop.db"
    lake = root / "lake"
    lake.mkdir(exist_ok=True)
    _write_shop(db_path, rng)
    _write_lake(lake, rng)
    catalog = {
        "sources": {
            "shop": {"kind": "sqlite", "path": str(db_path)},
            "lake": {"kind": "files", "path": str(lake)},
        }
    }
    (root / "federator.toml").write_text(catalog_toml(catalog))
    return catalog


def catalog_toml(catalog: dict[str, Any]) -> str:
    """A catalog dict of plain string settings as TOML text."""
    lines: list[str] = []
    for name, spec in catalog["sources"].items():
        lines.append(f"[sources.{name}]")
        lines.extend(f"{key} = {json.dumps(str(value))}" for key, value in spec.items())
        lines.append("")
    return "\n".join(lines)


def _write_shop(path: Path, rng: random.Random) -> None:
    path.unlink(missing_ok=True)
    start = dt.date(2024, 1, 1)
    users = [
        (
            i,
            f"{FIRST_NAMES[i % len(FIRST_NAMES)]}{i}",
            rng.choice(COUNTRIES),
            (start + dt.timedelta(days=rng.randrange(365))).isoformat(),
        )
        for i in range(1, 41)
    ]
    orders = []
    for i in range(1, 401):
        at = dt.datetime(2025, 1, 1) + dt.timedelta(minutes=rng.randrange(60 * 24 * 180))
        orders.append(
            (
                i,
                rng.randint(1, 40),
                rng.randint(1, 24),
                rng.randint(1, 5),
                rng.choice(STATUSES),
                at.isoformat(sep=" "),
            )
        )
    with sqlite3.connect(path) as con:
        con.execute(
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
            "country TEXT, signed_up DATE)"
        )
        con.execute(
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL, "
            "product_id INTEGER NOT NULL, quantity INTEGER NOT NULL, status TEXT, "
            "ordered_at TIMESTAMP)"
        )
        con.executemany("INSERT INTO users VALUES (?, ?, ?, ?)", users)
        con.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?)", orders)
    con.close()


def _write_lake(folder: Path, rng: random.Random) -> None:
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    ids = list(range(1, 25))
    products = pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "name": [f"{CATEGORIES[(i - 1) % 4]}-item-{i}" for i in ids],
            "category": [CATEGORIES[(i - 1) % 4] for i in ids],
            "price": pa.array(
                [decimal.Decimal(rng.randint(199, 9999)) / 100 for _ in ids], pa.decimal128(8, 2)
            ),
        }
    )
    pq.write_table(products, folder / "products.parquet")
    base = dt.datetime(2025, 1, 1)
    n = 1000
    events = pa.table(
        {
            "user_id": pa.array([rng.randint(1, 40) for _ in range(n)], pa.int64()),
            "product_id": pa.array([rng.randint(1, 24) for _ in range(n)], pa.int64()),
            "kind": [rng.choice(("view", "view", "view", "click", "cart")) for _ in range(n)],
            "at": pa.array(
                [base + dt.timedelta(seconds=rng.randrange(86400 * 180)) for _ in range(n)],
                pa.timestamp("s"),
            ),
        }
    )
    pcsv.write_csv(events, folder / "events.csv")


def run_demo(folder: str | Path | None = None, *, out: IO[str] | None = None) -> pa.Table:
    """Write the sample data (into ``folder``, else a temporary folder removed afterwards), run
    :data:`DEMO_QUERY` across both sources and print the catalog, the plan and the result."""
    out = out if out is not None else sys.stdout
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="federator-demo-") as tmp:
            return _run(Path(tmp), out, keep=False)
    return _run(Path(folder), out, keep=True)


def _run(folder: Path, out: IO[str], keep: bool) -> pa.Table:
    import federator
    from federator.cli import write_table

    catalog = write_demo_data(folder)

    def say(text: str = "") -> None:
        out.write(text + "\n")

    say("federator demo: one SQL query over two embedded sources")
    say("")
    say("Sources (catalog):")
    for name, spec in catalog["sources"].items():
        say(f"  {name:<5} {spec['kind']:<7} {spec['path']}")
    say("    shop: SQLite database with tables users, orders")
    say("    lake: folder of files: products.parquet, events.csv")
    say("")
    say("Query:")
    say("\n".join("  " + line for line in DEMO_QUERY.splitlines()))
    say("")
    with federator.connect(catalog) as fed:
        result = fed.sql(DEMO_QUERY)
        say("EXPLAIN ANALYZE (what was sent to each source, and what ran on DuckDB):")
        say("\n".join("  " + line for line in result.explain(analyze=True).splitlines()))
        say("")
        table = result.to_arrow()
    say("Result:")
    write_table(table.to_batches(), out, schema=table.schema)
    say("")
    if keep:
        toml = folder.resolve() / "federator.toml"
        say(f"The data and a catalog stay in {folder.resolve()}; try:")
        say(f"  federator sources --tables --catalog {toml}")
        example = "SELECT kind, count(*) AS n FROM lake.events GROUP BY kind"
        say(f'  federator query --catalog {toml} "{example}"')
    else:
        say(
            "Run `federator demo --dir DIR` to keep the data and a catalog to query it with "
            "`federator query`."
        )
    return table
