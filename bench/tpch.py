"""TPC-H split across PostgreSQL and MariaDB (the tests' "split"): federator against DuckDB
attaching both servers (bench/duckdb_peer.py), the glue baseline (each referenced table read
whole with ConnectorX, joined in DuckDB) and the same query on one PostgreSQL holding every
table, which also gives the answer every method is checked against."""

from __future__ import annotations

import asyncio
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import sqlglot

import federator

from . import duckdb_peer
from .env import Env
from .scan import _cx_uri

SPLIT = "split"
REPEAT_UNDER_S = 30.0  # a method's runs of one query stop repeating once they took this long
T = TypeVar("T")


@dataclass
class QueryResult:
    qid: str
    federator_s: float | None = None
    glue_s: float | None = None
    duck_s: float | None = None
    single_pg_s: float | None = None
    correct: bool = False
    glue_correct: bool = False
    duck_correct: bool = False
    moved: dict[str, tuple[int, int]] = field(default_factory=dict)  # source → (rows, bytes)
    fragments: list[dict[str, Any]] = field(default_factory=list)  # per fragment, see _fragments
    residual_ms: float = 0.0
    result_rows: int = 0
    error: str = ""


@dataclass
class Run:
    """The TPC-H part of a bench run: per-query results and how the peer fared."""

    results: list[QueryResult]
    peer_note: str = ""  # why DuckDB attach was not measured, when it was not


def _tp() -> Any:
    import integration.tpch as tp  # tests/integration/tpch (tests/ is on sys.path via env)

    return tp


def load(env: Env, scale: float) -> dict[str, float]:
    """Generate SF ``scale`` and bulk-load the truth and the split concurrently; seconds per step
    (``generate``, each database, ``total``)."""
    tp = _tp()
    t0 = time.perf_counter()
    folder = tp.generate(Path(tempfile.mkdtemp(prefix="federator-bench-tpch-")), scale)
    seconds = {"generate": time.perf_counter() - t0}

    async def timed(name: str, job: Any) -> None:
        t = time.perf_counter()
        await job
        seconds[name] = time.perf_counter() - t

    async def run() -> None:
        await asyncio.gather(
            timed(f"PostgreSQL {tp.TRUTH_DB} (8 tables)",
                  tp.load_postgres(env.pg_dsn, tp.TRUTH_DB, folder, tp.TABLES)),
            timed(f"PostgreSQL {tp.PG_DB[SPLIT]} ({', '.join(tp.PG_SIDE[SPLIT])})",
                  tp.load_postgres(env.pg_dsn, tp.PG_DB[SPLIT], folder, tp.PG_SIDE[SPLIT])),
            timed(f"MariaDB {tp.MY_DB[SPLIT]} ({', '.join(tp.mysql_side(SPLIT))})",
                  tp.load_mysql(env.mysql_dsn, tp.MY_DB[SPLIT], folder, tp.mysql_side(SPLIT))),
        )  # fmt: skip

    asyncio.run(run())
    shutil.rmtree(folder, ignore_errors=True)
    seconds["total"] = time.perf_counter() - t0
    return seconds


def _best(fn: Callable[[], T], repeats: int) -> tuple[float, T]:
    """Best wall time of up to ``repeats`` runs and that run's output; runs stop repeating once
    they took REPEAT_UNDER_S (a long run's noise is small against its length)."""
    best, best_out, total = math.inf, None, 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        took = time.perf_counter() - t0
        if took < best:
            best, best_out = took, out
        del out
        total += took
        if total > REPEAT_UNDER_S:
            break
    return best, best_out  # type: ignore[return-value]


def run(env: Env, repeats: int, timeout: float, peer: bool = True) -> Run:
    """Every query by every method; one method's error or timeout is noted and the run goes on."""
    tp = _tp()
    queries = tp.load_queries()
    pg_db = tp._with_db(env.pg_dsn, tp.PG_DB[SPLIT])
    my_db = tp._with_db(env.mysql_dsn, tp.MY_DB[SPLIT])
    catalog = {"sources": {"pg": {"kind": "postgres", "dsn": pg_db},
                           "my": {"kind": "mysql", "dsn": my_db}}}  # fmt: skip
    out = Run([])
    if peer:
        try:
            duckdb_peer.python()
        except Exception as e:
            out.peer_note = f"unavailable: {e}"
    else:
        out.peer_note = "skipped (--no-peer)"
    loop = asyncio.new_event_loop()
    truth_conn = loop.run_until_complete(
        asyncpg.connect(tp._with_db(env.pg_dsn, tp.TRUTH_DB), command_timeout=timeout)
    )
    scratch = Path(tempfile.mkdtemp(prefix="federator-bench-peer-"))
    with federator.connect(catalog, timeout=timeout) as fed:
        for qid in sorted(queries):
            q = queries[qid]
            r = QueryResult(qid)
            out.results.append(r)
            try:
                r.single_pg_s, truth = _best(
                    lambda q=q: loop.run_until_complete(tp.truth_answer(truth_conn, q)), repeats
                )
            except Exception as e:
                r.error = f"single PG: {_why(e)}"
                continue
            fed_sql = q.sql(tp.federated_names(SPLIT))
            try:
                r.federator_s, res = _best(lambda s=fed_sql: _federator(fed, s), repeats)
                r.result_rows = res[1].num_rows
                r.correct = tp.compare(q, truth, tp.arrow_answer(res[1])) is None
                ex = res[0].last_execution
                r.moved, r.fragments = _moved(ex), _fragments(ex)
                r.residual_ms = ex.residual_stats.ms
            except Exception as e:
                r.error += f" federator: {_why(e)}"
            try:
                r.glue_s, glue = _best(lambda q=q: _glue(tp, q, pg_db, my_db), repeats)
                r.glue_correct = tp.compare(q, truth, tp.arrow_answer(glue)) is None
            except Exception as e:
                r.error += f" glue: {_why(e)}"
            if not out.peer_note:
                try:
                    r.duck_s, answer = _peer(fed_sql, pg_db, my_db, repeats, scratch / qid, timeout)
                    r.duck_correct = tp.compare(q, truth, tp.arrow_answer(answer)) is None
                except Exception as e:
                    r.error += f" DuckDB attach: {_why(e)}"
            _log(r)
    loop.run_until_complete(truth_conn.close())
    loop.close()
    shutil.rmtree(scratch, ignore_errors=True)
    return out


def _federator(fed: Any, sql: str) -> tuple[Any, pa.Table]:
    res = fed.sql(sql)
    return res, res.to_arrow()


def _moved(ex: Any) -> dict[str, tuple[int, int]]:
    """Rows and bytes each source sent for one execution."""
    moved: dict[str, tuple[int, int]] = {}
    for frag in ex.plan.fragments:
        s = ex.stats[frag.id]
        rows, nbytes = moved.get(frag.source, (0, 0))
        moved[frag.source] = (rows + s.rows, nbytes + s.bytes)
    return moved


def _fragments(ex: Any) -> list[dict[str, Any]]:
    """Each fragment of one execution: where it ran, what it moved and how long it took."""
    out = []
    for frag in ex.plan.fragments:
        s = ex.stats[frag.id]
        out.append(
            {"id": frag.id, "source": frag.source, "estimated_rows": frag.estimated_rows,
             "rows": s.rows, "bytes": s.bytes, "ms": s.ms, "bound_keys": s.bound_keys,
             "bind": frag.bind is not None, "note": s.note}
        )  # fmt: skip
    return out


def _peer(
    sql: str, pg_db: str, my_db: str, repeats: int, scratch: Path, timeout: float
) -> tuple[float, pa.Table]:
    """DuckDB attaching both servers, in its own process; its answer with CHAR padding trimmed
    like the truth's (the postgres scanner keeps PostgreSQL's blanks)."""
    duck_sql = sqlglot.transpile(sql, read="postgres", write="duckdb")[0]
    stats = duckdb_peer.run_query(
        pg_db, my_db, duck_sql, repeats, scratch.with_suffix(".arrow"), timeout, REPEAT_UNDER_S
    )
    with pa.memory_map(str(scratch.with_suffix(".arrow"))) as src:
        table = pa.ipc.open_file(src).read_all()
    return min(stats["seconds"]), _rtrim_text(table, _char_columns())


def _why(e: BaseException) -> str:
    if isinstance(e, subprocess.TimeoutExpired | TimeoutError | asyncio.TimeoutError):
        return f"timed out ({type(e).__name__})"
    return f"{type(e).__name__}: {str(e)[:200]}"


def _log(r: QueryResult) -> None:
    f = lambda v: f"{v:.3f}" if v else "-"  # noqa: E731
    print(
        f"[bench] {r.qid}: single PG {f(r.single_pg_s)} s, federator {f(r.federator_s)} "
        f"({'ok' if r.correct else 'WRONG'}), glue {f(r.glue_s)}, DuckDB attach {f(r.duck_s)} "
        f"({'ok' if r.duck_correct else 'wrong'}){'  ' + r.error if r.error else ''}",
        file=sys.stderr,
        flush=True,
    )


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
    cols = [pc.cast(c, pa.float64()) if pa.types.is_decimal(c.type) else c for c in table.columns]
    return _rtrim_text(pa.table(cols, names=table.column_names))


def _rtrim_text(table: pa.Table, only: frozenset[str] | None = None) -> pa.Table:
    """Text columns (those named in ``only`` when given) without trailing blanks: PostgreSQL's
    CHAR(n) padding."""
    cols = [
        pc.utf8_rtrim(c, characters=" ")
        if (pa.types.is_string(c.type) or pa.types.is_large_string(c.type))
        and (only is None or name in only)
        else c
        for name, c in zip(table.column_names, table.columns, strict=True)
    ]
    return pa.table(cols, names=table.column_names)


def _char_columns() -> frozenset[str]:
    """The TPC-H CHAR(n) columns, whose values PostgreSQL pads."""
    tp = _tp()
    return frozenset(c for cols in tp.TABLES.values() for c, t in cols if t.startswith("CHAR"))
