"""TPC-H split across PostgreSQL and MariaDB (the tests' "split"): federator against the glue
baseline (each referenced table read whole with ConnectorX, joined in DuckDB) and against the
same query on one PostgreSQL holding every table."""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot

import federator

from .env import Env
from .scan import _cx_uri

SPLIT = "split"


@dataclass
class QueryResult:
    qid: str
    federator_s: float | None = None
    glue_s: float | None = None
    single_pg_s: float | None = None
    correct: bool = False
    glue_correct: bool = False
    moved: dict[str, tuple[int, int]] = field(default_factory=dict)  # source → (rows, bytes)
    result_rows: int = 0
    error: str = ""


def _tp() -> Any:
    import integration.tpch as tp  # tests/integration/tpch (tests/ is on sys.path via env)

    return tp


def load(env: Env, scale: float) -> float:
    tp = _tp()
    t0 = time.perf_counter()
    folder = tp.generate(Path(tempfile.mkdtemp(prefix="federator-bench-tpch-")), scale)
    data = {t: tp.read_table(folder, t) for t in tp.TABLES}

    async def run() -> None:
        await asyncio.gather(
            tp.load_postgres(env.pg_dsn, tp.TRUTH_DB, data, tp.TABLES),
            tp.load_postgres(env.pg_dsn, tp.PG_DB[SPLIT], data, tp.PG_SIDE[SPLIT]),
            tp.load_mysql(env.mysql_dsn, tp.MY_DB[SPLIT], data, tp.mysql_side(SPLIT)),
        )

    asyncio.run(run())
    return time.perf_counter() - t0


def run(env: Env, repeats: int) -> list[QueryResult]:
    tp = _tp()
    queries = tp.load_queries()
    truth = asyncio.run(tp.truth_answers(env.pg_dsn, queries))
    pg_db = tp._with_db(env.pg_dsn, tp.PG_DB[SPLIT])
    my_db = tp._with_db(env.mysql_dsn, tp.MY_DB[SPLIT])
    catalog = {"sources": {"pg": {"kind": "postgres", "dsn": pg_db},
                           "my": {"kind": "mysql", "dsn": my_db}}}  # fmt: skip
    results = []
    loop = asyncio.new_event_loop()
    truth_conn = loop.run_until_complete(asyncpg.connect(tp._with_db(env.pg_dsn, tp.TRUTH_DB)))
    with federator.connect(catalog, timeout=300) as fed:
        for qid in sorted(queries):
            q = queries[qid]
            r = QueryResult(qid)
            sql = q.sql(tp.federated_names(SPLIT))
            try:
                best = float("inf")
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    res = fed.sql(sql)
                    table = res.to_arrow()
                    best = min(best, time.perf_counter() - t0)
                r.federator_s = best
                r.result_rows = table.num_rows
                r.correct = tp.compare(q, truth[qid], tp.arrow_answer(table)) is None
                ex = res.last_execution
                for frag in ex.plan.fragments:
                    s = ex.stats[frag.id]
                    rows, nbytes = r.moved.get(frag.source, (0, 0))
                    r.moved[frag.source] = (rows + s.rows, nbytes + s.bytes)
            except Exception as e:
                r.error = f"federator: {type(e).__name__}: {str(e)[:200]}"
            truth_sql = q.sql(tp.TRUTH_NAMES)
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                loop.run_until_complete(truth_conn.fetch(truth_sql))
                best = min(best, time.perf_counter() - t0)
            r.single_pg_s = best
            try:
                best = float("inf")
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    glue = _glue(tp, q, pg_db, my_db)
                    best = min(best, time.perf_counter() - t0)
                r.glue_s = best
                r.glue_correct = tp.compare(q, truth[qid], tp.arrow_answer(glue)) is None
            except Exception as e:
                r.error += f" glue: {type(e).__name__}: {str(e)[:200]}"
            results.append(r)
    loop.run_until_complete(truth_conn.close())
    loop.close()
    return results


def _glue(tp: Any, q: Any, pg_db: str, my_db: str) -> pa.Table:
    """What a user writes by hand: read every referenced table whole, join in DuckDB.

    ConnectorX returns PostgreSQL NUMERIC as decimal128(38, 10), whose SUMs overflow in DuckDB,
    and keeps CHAR(n) padding: the glue casts decimals to double and trims text to be usable.
    """
    names = {t: t for t in tp.TABLES}
    text = q.sql(names)
    used = [t for t in tp.TABLES if re.search(rf"\b{t}\b", text)]
    con = duckdb.connect()
    for t in used:
        dsn = pg_db if t in tp.PG_SIDE[SPLIT] else my_db
        import connectorx as cx

        table = cx.read_sql(_cx_uri(dsn), f"SELECT * FROM {t}", return_type="arrow")
        table = _usable(table)
        con.register(t, table)
    duck_sql = sqlglot.transpile(text, read="postgres", write="duckdb")[0]
    out = con.sql(duck_sql).to_arrow_table()
    con.close()
    return out


def _usable(table: pa.Table) -> pa.Table:
    cols = []
    for col in table.columns:
        if pa.types.is_decimal(col.type):
            col = pc.cast(col, pa.float64())
        elif pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
            col = pc.utf8_rtrim(col, characters=" ")
        cols.append(col)
    return pa.table(cols, names=table.column_names)
