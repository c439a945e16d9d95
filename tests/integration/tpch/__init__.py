"""TPC-H for correctness tests: data generation, loading, the 22 queries, result comparison.

Data comes from ``tpchgen-cli`` (``.tbl`` files) and is bulk-loaded straight from the files
through the drivers (asyncpg ``COPY ... FROM STDIN``, aiomysql ``LOAD DATA LOCAL INFILE``),
never through federator.

Queries live next to this file as ``qNN.sql`` with table names as ``{lineitem}`` placeholders
and a header of ``--`` lines:

    -- approx: col, ...   output columns compared with a relative tolerance (AVG, division)
    -- order: col [desc], ...   the ORDER BY keys (all are output columns); no line: unordered
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
REL_TOL = 1e-6

# ---- schema -------------------------------------------------------------------------------
# TPC-H types (spec 1.4): identifiers INTEGER (order keys BIGINT, as they outgrow 32 bits at
# large scale factors), DECIMAL(15,2), DATE, CHAR(n), VARCHAR(n). Same DDL for both servers.
TABLES: dict[str, list[tuple[str, str]]] = {
    "region": [
        ("r_regionkey", "INTEGER"),
        ("r_name", "CHAR(25)"),
        ("r_comment", "VARCHAR(152)"),
    ],
    "nation": [
        ("n_nationkey", "INTEGER"),
        ("n_name", "CHAR(25)"),
        ("n_regionkey", "INTEGER"),
        ("n_comment", "VARCHAR(152)"),
    ],
    "part": [
        ("p_partkey", "INTEGER"),
        ("p_name", "VARCHAR(55)"),
        ("p_mfgr", "CHAR(25)"),
        ("p_brand", "CHAR(10)"),
        ("p_type", "VARCHAR(25)"),
        ("p_size", "INTEGER"),
        ("p_container", "CHAR(10)"),
        ("p_retailprice", "DECIMAL(15,2)"),
        ("p_comment", "VARCHAR(23)"),
    ],
    "supplier": [
        ("s_suppkey", "INTEGER"),
        ("s_name", "CHAR(25)"),
        ("s_address", "VARCHAR(40)"),
        ("s_nationkey", "INTEGER"),
        ("s_phone", "CHAR(15)"),
        ("s_acctbal", "DECIMAL(15,2)"),
        ("s_comment", "VARCHAR(101)"),
    ],
    "partsupp": [
        ("ps_partkey", "INTEGER"),
        ("ps_suppkey", "INTEGER"),
        ("ps_availqty", "INTEGER"),
        ("ps_supplycost", "DECIMAL(15,2)"),
        ("ps_comment", "VARCHAR(199)"),
    ],
    "customer": [
        ("c_custkey", "INTEGER"),
        ("c_name", "VARCHAR(25)"),
        ("c_address", "VARCHAR(40)"),
        ("c_nationkey", "INTEGER"),
        ("c_phone", "CHAR(15)"),
        ("c_acctbal", "DECIMAL(15,2)"),
        ("c_mktsegment", "CHAR(10)"),
        ("c_comment", "VARCHAR(117)"),
    ],
    "orders": [
        ("o_orderkey", "BIGINT"),
        ("o_custkey", "INTEGER"),
        ("o_orderstatus", "CHAR(1)"),
        ("o_totalprice", "DECIMAL(15,2)"),
        ("o_orderdate", "DATE"),
        ("o_orderpriority", "CHAR(15)"),
        ("o_clerk", "CHAR(15)"),
        ("o_shippriority", "INTEGER"),
        ("o_comment", "VARCHAR(79)"),
    ],
    "lineitem": [
        ("l_orderkey", "BIGINT"),
        ("l_partkey", "INTEGER"),
        ("l_suppkey", "INTEGER"),
        ("l_linenumber", "INTEGER"),
        ("l_quantity", "DECIMAL(15,2)"),
        ("l_extendedprice", "DECIMAL(15,2)"),
        ("l_discount", "DECIMAL(15,2)"),
        ("l_tax", "DECIMAL(15,2)"),
        ("l_returnflag", "CHAR(1)"),
        ("l_linestatus", "CHAR(1)"),
        ("l_shipdate", "DATE"),
        ("l_commitdate", "DATE"),
        ("l_receiptdate", "DATE"),
        ("l_shipinstruct", "CHAR(25)"),
        ("l_shipmode", "CHAR(10)"),
        ("l_comment", "VARCHAR(44)"),
    ],
}
PRIMARY_KEYS = {
    "region": "r_regionkey",
    "nation": "n_nationkey",
    "part": "p_partkey",
    "supplier": "s_suppkey",
    "partsupp": "ps_partkey, ps_suppkey",
    "customer": "c_custkey",
    "orders": "o_orderkey",
    "lineitem": "l_orderkey, l_linenumber",
}
# Secondary indexes on join keys, as a TPC-H user would have them.
INDEXES = {
    "lineitem": ["l_partkey", "l_suppkey"],
    "orders": ["o_custkey"],
    "partsupp": ["ps_suppkey"],
}

# The two splits: which tables live on PostgreSQL (source "pg"), the rest on MySQL ("my").
PG_SIDE = {
    "split": ("lineitem", "part", "partsupp"),
    "reverse": ("orders", "customer", "supplier", "nation", "region"),
}
SPLITS = tuple(PG_SIDE)
# database names per split on each server
PG_DB = {"split": "split_pg", "reverse": "rev_pg"}
MY_DB = {"split": "split_my", "reverse": "rev_my"}
TRUTH_DB = "truth"


def mysql_side(split: str) -> tuple[str, ...]:
    return tuple(t for t in TABLES if t not in PG_SIDE[split])


def federated_names(split: str) -> dict[str, str]:
    """Placeholder → federated table name for a split (``pg.lineitem``, ``my.orders``...)."""
    return {t: f"pg.{t}" if t in PG_SIDE[split] else f"my.{t}" for t in TABLES}


TRUTH_NAMES = {t: f"public.{t}" for t in TABLES}


# ---- data ---------------------------------------------------------------------------------
def tpchgen_binary() -> str:
    here = Path(sys.executable).parent / "tpchgen-cli"
    found = str(here) if here.exists() else shutil.which("tpchgen-cli")
    if not found:
        raise RuntimeError("tpchgen-cli is not installed: pip install -e '.[dev]'")
    return found


def generate(out: Path, scale: float) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [tpchgen_binary(), "-s", str(scale), "-o", str(out), "-q", "--overwrite"],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


def ddl(table: str, primary_key: bool = False) -> str:
    cols = ", ".join(f"{c} {t} NOT NULL" for c, t in TABLES[table])
    pk = f", PRIMARY KEY ({PRIMARY_KEYS[table]})" if primary_key else ""
    return f"CREATE TABLE {table} ({cols}{pk})"


async def _tbl_chunks(path: Path, size: int = 1 << 22) -> AsyncIterator[bytes]:
    """``<table>.tbl`` as COPY text: each line's trailing ``|`` dropped, whole lines per chunk."""
    rest = b""
    with open(path, "rb") as f:
        while block := f.read(size):
            block = rest + block
            cut = block.rfind(b"\n") + 1
            rest = block[cut:]
            if cut:
                yield block[:cut].replace(b"|\n", b"\n")
    if rest:
        yield rest.removesuffix(b"|") + b"\n"


async def load_postgres(
    server_dsn: str, database: str, folder: Path, tables: Iterable[str]
) -> None:
    """``database`` created afresh with ``tables`` bulk-loaded by ``COPY ... FROM STDIN`` from the
    ``.tbl`` files in ``folder``; primary keys and indexes built after the load, then ANALYZE."""
    import asyncpg

    admin = await asyncpg.connect(server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{database}"')
        await admin.execute(f'CREATE DATABASE "{database}"')
    finally:
        await admin.close()
    conn = await asyncpg.connect(_with_db(server_dsn, database))
    try:
        await conn.execute("SET maintenance_work_mem = '256MB'")
        for t in tables:
            await conn.execute(ddl(t))
            await conn.copy_to_table(
                t, source=_tbl_chunks(folder / f"{t}.tbl"), format="text", delimiter="|"
            )
            await conn.execute(f"ALTER TABLE {t} ADD PRIMARY KEY ({PRIMARY_KEYS[t]})")
            for col in INDEXES.get(t, ()):
                await conn.execute(f"CREATE INDEX {t}_{col} ON {t} ({col})")
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def load_mysql(server_dsn: str, database: str, folder: Path, tables: Iterable[str]) -> None:
    """``database`` created afresh with ``tables`` bulk-loaded by ``LOAD DATA LOCAL INFILE`` from
    the ``.tbl`` files in ``folder`` (the server's default ``local_infile=ON`` is needed).

    Through PyMySQL in a thread: aiomysql sends the file in 16 MB packets and loses the packet
    sequence on files over 16 MB; PyMySQL sends 16 KB packets.
    """
    await asyncio.to_thread(_load_mysql, server_dsn, database, folder, tuple(tables))


def _load_mysql(server_dsn: str, database: str, folder: Path, tables: tuple[str, ...]) -> None:
    # The primary key is in the DDL (InnoDB clusters rows by it; the files come in key order);
    # secondary indexes are built after the load.
    import pymysql

    conn = pymysql.connect(**_mysql_args(server_dsn), autocommit=True, local_infile=True)
    try:
        with conn.cursor() as cur:
            if cur.execute("SHOW DATABASES LIKE %s", (database,)):
                cur.execute(f"DROP DATABASE `{database}`")
            cur.execute(f"CREATE DATABASE `{database}`")
            cur.execute(f"USE `{database}`")
            for t in tables:
                cur.execute(ddl(t, primary_key=True))
                cur.execute(
                    f"LOAD DATA LOCAL INFILE %s INTO TABLE {t} CHARACTER SET utf8mb4 "
                    "FIELDS TERMINATED BY '|' ESCAPED BY '' LINES TERMINATED BY '|\\n'",
                    (str(folder / f"{t}.tbl"),),
                )
                if cur.execute("SHOW WARNINGS"):
                    raise RuntimeError(f"loading {t} into MariaDB: {cur.fetchall()}")
                for col in INDEXES.get(t, ()):
                    cur.execute(f"CREATE INDEX {t}_{col} ON {t} ({col})")
                # histograms too: MariaDB's row estimates of filters need them
                cur.execute(f"ANALYZE TABLE {t} PERSISTENT FOR ALL")
                cur.fetchall()
    finally:
        conn.close()


def _with_db(dsn: str, database: str) -> str:
    return f"{dsn.rpartition('/')[0]}/{database}"


def _mysql_args(dsn: str) -> dict[str, Any]:
    from urllib.parse import unquote, urlsplit

    p = urlsplit(dsn)
    return {
        "host": p.hostname or "127.0.0.1",
        "port": p.port or 3306,
        "user": unquote(p.username or "root"),
        "password": unquote(p.password or ""),
    }


async def load_all(folder: Path, pg_dsn: str, mysql_dsn: str) -> None:
    """Truth (all 8 tables) and both splits on both servers, concurrently."""
    jobs = [load_postgres(pg_dsn, TRUTH_DB, folder, TABLES)]
    for split in SPLITS:
        jobs.append(load_postgres(pg_dsn, PG_DB[split], folder, PG_SIDE[split]))
        jobs.append(load_mysql(mysql_dsn, MY_DB[split], folder, mysql_side(split)))
    await asyncio.gather(*jobs)


# ---- queries ------------------------------------------------------------------------------
@dataclass
class Query:
    qid: str
    template: str
    approx: frozenset[str] = frozenset()
    order: list[tuple[str, bool]] = field(default_factory=list)  # (column, descending)

    def sql(self, names: dict[str, str]) -> str:
        return self.template.format_map(names)


def load_queries() -> dict[str, Query]:
    queries = {}
    for path in sorted(HERE.glob("q*.sql")):
        text = path.read_text()
        approx: set[str] = set()
        order: list[tuple[str, bool]] = []
        for line in text.splitlines():
            m = re.match(r"--\s*(approx|order):\s*(.*)", line)
            if not m:
                continue
            items = [i.strip() for i in m.group(2).split(",") if i.strip()]
            if m.group(1) == "approx":
                approx.update(items)
            else:
                for item in items:
                    col, _, direction = item.partition(" ")
                    order.append((col, direction.strip().lower() == "desc"))
        body = "\n".join(ln for ln in text.splitlines() if not ln.startswith("--")).strip()
        queries[path.stem] = Query(path.stem, body.rstrip(";"), frozenset(approx), order)
    return queries


@dataclass
class Answer:
    """A result as comparable Python rows."""

    columns: list[str]
    rows: list[tuple[Any, ...]]


async def truth_answers(pg_dsn: str, queries: dict[str, Query]) -> dict[str, Answer]:
    """Each query run directly on the truth database; CHAR(n) padding trimmed."""
    import asyncpg

    conn = await asyncpg.connect(_with_db(pg_dsn, TRUTH_DB))
    try:
        return {qid: await truth_answer(conn, q) for qid, q in queries.items()}
    finally:
        await conn.close()


async def truth_answer(conn: Any, query: Query) -> Answer:
    """``query`` on the truth database through an open asyncpg connection, CHAR(n) trimmed."""
    stmt = await conn.prepare(query.sql(TRUTH_NAMES))
    attrs = stmt.get_attributes()
    bpchar = [a.type.name == "bpchar" for a in attrs]
    rows = [
        tuple(
            v.rstrip(" ") if pad and isinstance(v, str) else v
            for v, pad in zip(r, bpchar, strict=True)
        )
        for r in await stmt.fetch()
    ]
    return Answer([a.name for a in attrs], rows)


# ---- comparison ---------------------------------------------------------------------------
def _values_equal(truth: Any, got: Any, approx: bool) -> str | None:
    """None when equal, else why not."""
    if truth is None or got is None:
        return None if truth is got else "NULL mismatch"
    if isinstance(truth, bool) or isinstance(got, bool):
        return None if truth == got and type(truth) is type(got) else "not equal"
    if isinstance(truth, (int, Decimal, float)):
        if not isinstance(got, (int, Decimal, float)):
            return f"type {type(got).__name__}, expected a number"
        if approx:
            a, b = float(truth), float(got)
            ok = math.isclose(a, b, rel_tol=REL_TOL, abs_tol=1e-12)
            return None if ok else "not equal (relative tolerance 1e-6)"
        if isinstance(got, float) and not isinstance(truth, float):
            return f"float {got!r} where an exact {type(truth).__name__} was expected"
        return None if truth == got else "not equal"
    if type(truth) is not type(got):  # date vs datetime is a difference
        return f"type {type(got).__name__}, expected {type(truth).__name__}"
    return None if truth == got else "not equal"


def _row_diff(t: Sequence[Any], g: Sequence[Any], approx: list[bool]) -> str | None:
    if len(t) != len(g):
        return f"{len(g)} columns, expected {len(t)}"
    for i, (a, b, ap) in enumerate(zip(t, g, approx, strict=True)):
        why = _values_equal(a, b, ap)
        if why:
            return f"column {i}: {why}"
    return None


def _canon(v: Any) -> tuple[int, Any]:
    """A sort key that equal values (exactly) share across int/Decimal."""
    if v is None:
        return (0, "")
    if isinstance(v, (int, Decimal)) and not isinstance(v, bool):
        return (1, Decimal(v))
    if isinstance(v, float):
        return (1, Decimal(repr(v)) if math.isfinite(v) else Decimal(0))
    return (2, str(v))


def _multiset_order(rows: list[tuple], approx: list[bool]) -> list[tuple]:
    exact = [i for i, ap in enumerate(approx) if not ap]
    return sorted(rows, key=lambda r: tuple(_canon(r[i]) for i in exact))


def compare(query: Query, truth: Answer, got: Answer) -> str | None:
    """None when ``got`` answers like ``truth``; else a short description of the first difference.

    Ordered queries: rows in the same order, except that rows with equal ORDER BY keys may come
    in any order. Unordered queries: same multiset of rows.
    """
    names_t = [c.lower() for c in truth.columns]
    names_g = [c.lower() for c in got.columns]
    if names_t != names_g:
        return f"columns {names_g}, expected {names_t}"
    approx = [c in query.approx for c in names_t]
    if len(truth.rows) != len(got.rows):
        return f"{len(got.rows)} rows, expected {len(truth.rows)}" + _first_missing(
            truth.rows, got.rows, approx
        )
    if query.order:
        key_idx = [names_t.index(c) for c, _ in query.order]
        groups_t, groups_g = _tie_groups(truth.rows, key_idx), _tie_groups(got.rows, key_idx)
        start = 0
        for gt, gg in zip(groups_t, groups_g, strict=False):
            key_diff = next(
                (
                    f"{names_t[i]}: {why}"
                    for i in key_idx
                    if (why := _values_equal(gt[0][i], gg[0][i], approx[i]))
                ),
                None,
            )
            if key_diff or len(gt) != len(gg):
                why = f"ORDER BY key {key_diff}" if key_diff else "order differs"
                return f"row {start}: {why}\n  got      {gg[0]!r}\n  expected {gt[0]!r}"
            diff = _compare_multiset(gt, gg, approx, start)
            if diff:
                return diff
            start += len(gt)
        return None
    return _compare_multiset(truth.rows, got.rows, approx)


def _tie_groups(rows: list[tuple], key_idx: list[int]) -> list[list[tuple]]:
    groups: list[list[tuple]] = []
    last: object = object()
    for r in rows:
        key = tuple(_canon(r[i]) for i in key_idx)
        if groups and key == last:
            groups[-1].append(r)
        else:
            groups.append([r])
        last = key
    return groups


def _compare_multiset(
    t_rows: list[tuple], g_rows: list[tuple], approx: list[bool], start: int = 0
) -> str | None:
    for i, (a, b) in enumerate(
        zip(_multiset_order(t_rows, approx), _multiset_order(g_rows, approx), strict=True)
    ):
        why = _row_diff(a, b, approx)
        if why:
            return f"row {start + i}: {why}\n  got      {b!r}\n  expected {a!r}"
    return None


def _first_missing(t_rows: list[tuple], g_rows: list[tuple], approx: list[bool]) -> str:
    exact = [i for i, ap in enumerate(approx) if not ap]
    key = lambda r: tuple(_canon(r[i]) for i in exact)  # noqa: E731
    got = {key(r) for r in g_rows}
    want = {key(r) for r in t_rows}
    missing = next((r for r in t_rows if key(r) not in got), None)
    extra = next((r for r in g_rows if key(r) not in want), None)
    out = ""
    if missing is not None:
        out += f"\n  first missing row {missing!r}"
    if extra is not None:
        out += f"\n  first extra row   {extra!r}"
    return out


def arrow_answer(table: Any) -> Answer:
    """An Answer from a pyarrow Table."""
    cols = table.column_names
    data = [table.column(i).to_pylist() for i in range(table.num_columns)]
    return Answer(list(cols), list(zip(*data, strict=True)) if data else [])


def scale_factor() -> float:
    return float(os.environ.get("FEDERATOR_TPCH_SF", "0.02"))
