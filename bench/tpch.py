"""TPC-H split across PostgreSQL and MariaDB (the tests' "split"): federator against DuckDB
attaching both servers (bench/duckdb_peer.py), the glue baseline (each referenced table read
whole with ConnectorX, joined in DuckDB) and the same query on one PostgreSQL holding every
table, which also gives the answer every method is checked against."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
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


def load_all(env: Env, scale: float) -> float:
    """Generate SF ``scale`` and bulk-load the truth and both splits; seconds taken."""
    tp = _tp()
    t0 = time.perf_counter()
    folder = tp.generate(Path(tempfile.mkdtemp(prefix="federator-bench-tpch-")), scale)
    try:
        asyncio.run(tp.load_all(folder, env.pg_dsn, env.mysql_dsn))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return time.perf_counter() - t0


def split_catalog(env: Env, split: str) -> dict[str, Any]:
    """The catalog of ``split``'s two databases: sources ``pg`` and ``my``."""
    tp = _tp()
    return {"sources": {
        "pg": {"kind": "postgres", "dsn": tp._with_db(env.pg_dsn, tp.PG_DB[split])},
        "my": {"kind": "mysql", "dsn": tp._with_db(env.mysql_dsn, tp.MY_DB[split])}}}  # fmt: skip


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


METHODS = ("pg", "federator", "glue", "duckdb")  # "pg": the query on one PostgreSQL (the truth)


@dataclass
class MethodResult:
    """One method's run of one query: best seconds, whether it answered right, what it moved."""

    method: str
    seconds: float | None = None
    correct: bool | None = None  # against the truth; None for the truth itself or no answer
    result_rows: int = 0
    moved: dict[str, tuple[int, int]] = field(default_factory=dict)  # source → (rows, bytes)
    fragments: list[dict[str, Any]] = field(default_factory=list)  # federator's, see _fragments
    residual_ms: float = 0.0
    error: str = ""
    timed_out: bool = False


class Measurer:
    """Runs the 22 queries of one split by each method, one (query, method) at a time; a
    method's error or timeout becomes its result's ``error``. Use as a context manager. The
    glue runs in a spawned worker process, which imports the ``__main__`` module again: a script
    using this class needs the ``if __name__ == "__main__":`` guard.

    >>> with Measurer(env, "reverse", repeats=1, timeout=300) as m:  # doctest: +SKIP
    ...     pg_s, truth = m.truth("q01")
    ...     m.measure("federator", "q01", truth).seconds
    0.41
    """

    def __init__(self, env: Env, split: str, repeats: int, timeout: float):
        tp = _tp()
        self.split, self.repeats, self.timeout = split, repeats, timeout
        self.queries = tp.load_queries()
        catalog = split_catalog(env, split)
        self.pg_db, self.my_db = (catalog["sources"][s]["dsn"] for s in ("pg", "my"))
        self.fed = federator.connect(catalog, timeout=timeout)
        self._loop = asyncio.new_event_loop()
        self._truth_conn = self._loop.run_until_complete(
            asyncpg.connect(tp._with_db(env.pg_dsn, tp.TRUTH_DB), command_timeout=timeout)
        )
        self._scratch = Path(tempfile.mkdtemp(prefix="federator-bench-peer-"))
        self._glue_pool: Any = None

    def __enter__(self) -> Measurer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.fed.close()
        self._loop.run_until_complete(self._truth_conn.close())
        self._loop.close()
        if self._glue_pool is not None:
            self._glue_pool.terminate()
            self._glue_pool.join()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def truth(self, qid: str) -> tuple[MethodResult, Any]:
        """The query on one PostgreSQL holding every table: its timing and its answer (None
        when it failed)."""
        tp, q = _tp(), self.queries[qid]
        r = MethodResult("pg")
        try:
            r.seconds, answer = _best(
                lambda: self._loop.run_until_complete(tp.truth_answer(self._truth_conn, q)),
                self.repeats,
            )
        except Exception as e:
            r.error, r.timed_out = _why(e), _is_timeout(e)
            return r, None
        r.result_rows = len(answer.rows)
        return r, answer

    def measure(self, method: str, qid: str, truth: Any) -> MethodResult:
        """``method`` ("federator", "glue" or "duckdb") on ``qid``, checked against ``truth``."""
        tp, q = _tp(), self.queries[qid]
        r = MethodResult(method)
        try:
            table = getattr(self, f"_{method}")(r, q)
        except Exception as e:
            r.error, r.timed_out = _why(e), _is_timeout(e)
            return r
        r.result_rows = table.num_rows
        r.correct = tp.compare(q, truth, tp.arrow_answer(table)) is None
        return r

    def _federator(self, r: MethodResult, q: Any) -> pa.Table:
        sql = q.sql(_tp().federated_names(self.split))
        r.seconds, (res, table) = _best(lambda: _federator(self.fed, sql), self.repeats)
        ex = res.last_execution  # the timed run's plan and stats
        r.moved, r.fragments, r.residual_ms = _moved(ex), _fragments(ex), ex.residual_stats.ms
        return table

    def _glue(self, r: MethodResult, q: Any) -> pa.Table:
        """In a worker process, so that a timeout can stop it (ConnectorX cannot be cancelled)."""
        if self._glue_pool is None:
            self._glue_pool = multiprocessing.get_context("spawn").Pool(1)
        job = self._glue_pool.apply_async(
            _glue_best, (q.qid, self.split, self.pg_db, self.my_db, self.repeats)
        )
        try:
            r.seconds, table = job.get(self.timeout)
        except multiprocessing.TimeoutError:
            self._glue_pool.terminate()
            self._glue_pool.join()
            self._glue_pool = None
            raise TimeoutError(f"glue ran past {self.timeout:g} s") from None
        return table

    def _duckdb(self, r: MethodResult, q: Any) -> pa.Table:
        sql = q.sql(_tp().federated_names(self.split))
        r.seconds, table = _peer(
            sql, self.pg_db, self.my_db, self.repeats, self._scratch / q.qid, self.timeout
        )
        return table


def run(env: Env, repeats: int, timeout: float, peer: bool = True, split: str = SPLIT) -> Run:
    """Every query of ``split`` by every method; one method's error or timeout is noted and the
    run goes on."""
    out = Run([])
    if peer:
        try:
            duckdb_peer.python()
        except Exception as e:
            out.peer_note = f"unavailable: {e}"
    else:
        out.peer_note = "skipped (--no-peer)"
    methods = ["federator", "glue"] + ([] if out.peer_note else ["duckdb"])
    with Measurer(env, split, repeats, timeout) as m:
        for qid in sorted(m.queries):
            pg, truth = m.truth(qid)
            r = QueryResult(qid, single_pg_s=pg.seconds)
            out.results.append(r)
            if truth is None:
                r.error = f"single PG: {pg.error}"
                continue
            for method in methods:
                _merge(r, m.measure(method, qid, truth))
            _log(r)
    return out


def _merge(r: QueryResult, m: MethodResult) -> None:
    """One method's figures into the query's row of the ``python -m bench`` report."""
    if m.error:
        r.error += f" {_LABELS[m.method]}: {m.error}"
    if m.method == "federator":
        r.federator_s, r.correct, r.result_rows = m.seconds, bool(m.correct), m.result_rows
        r.moved, r.fragments, r.residual_ms = m.moved, m.fragments, m.residual_ms
    elif m.method == "glue":
        r.glue_s, r.glue_correct = m.seconds, bool(m.correct)
    else:
        r.duck_s, r.duck_correct = m.seconds, bool(m.correct)


_LABELS = {"pg": "single PG", "federator": "federator", "glue": "glue", "duckdb": "DuckDB attach"}


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


def _is_timeout(e: BaseException) -> bool:
    timeouts = subprocess.TimeoutExpired | TimeoutError | asyncio.TimeoutError
    return isinstance(e, timeouts | federator.errors.QueryTimeoutError)


def _why(e: BaseException) -> str:
    if _is_timeout(e):
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


def _glue_best(
    qid: str, split: str, pg_db: str, my_db: str, repeats: int
) -> tuple[float, pa.Table]:
    """The glue's best time on ``qid`` and its answer (runs in the Measurer's worker process)."""
    tp = _tp()
    q = tp.load_queries()[qid]
    return _best(lambda: _glue(tp, q, split, pg_db, my_db), repeats)


def _glue(tp: Any, q: Any, split: str, pg_db: str, my_db: str) -> pa.Table:
    """What a user writes by hand: read every referenced table whole, join in DuckDB.

    ConnectorX returns PostgreSQL NUMERIC as decimal128(38, 10), whose SUMs overflow in DuckDB,
    and keeps CHAR(n) padding: the glue casts decimals to double and trims text to be usable.
    """
    names = {t: t for t in tp.TABLES}
    text = q.sql(names)
    used = [t for t in tp.TABLES if re.search(rf"\b{t}\b", text)]
    con = duckdb.connect()
    for t in used:
        dsn = pg_db if t in tp.PG_SIDE[split] else my_db
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
