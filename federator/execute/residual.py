"""The residual engine: one in-process DuckDB database, a cursor per residual, run in a pool of
worker threads sized to the cores, so residuals of concurrent queries run at once (DuckDB
releases the GIL while it works).

A fresh ``duckdb.connect()`` per residual costs about 50 ms, most of a tiny residual's time,
and the first one in a process far more; a cursor of a database that is already open costs
microseconds. Each cursor is a connection of its own: the fragments it registers (``f0``,
``f1``, …) are visible to it alone and go away when it closes. ``Federation`` warms the engine
in a background thread when it is created, so that ``connect()`` stays fast and the first query
does not pay for it.

``[execution] memory_limit`` ("256MB") gives residuals a database of their own with DuckDB's
``memory_limit`` (:func:`engine_for`): DuckDB sets it per database, not per connection, so it
bounds every residual running at once under that limit together, and past it DuckDB spills to
its temporary directory (``.tmp`` of the working directory) or fails with its out-of-memory
error.

The database and the pool belong to one process: after a ``fork`` (DataLoader workers) the
child makes its own, as DuckDB's and the pool's threads do not survive a fork. The child never
frees the parent's: destroying a DuckDB database inherited through ``fork`` waits for threads
that no longer exist, or crashes.

>>> import pyarrow as pa
>>> engine = default_engine()
>>> con = engine.cursor()
>>> _ = con.register("f0", pa.table({"x": [1, 2, 3]}))
>>> con.sql("SELECT sum(x) AS s FROM f0").fetchall()
[(6,)]
>>> engine.release(con)
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import os
import re
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb
import pyarrow as pa
from sqlglot import exp

from federator.errors import CatalogError

if TYPE_CHECKING:
    from federator.plan.model import Plan

T = TypeVar("T")
RECYCLE_AFTER = 5_000  # residuals per DuckDB database, then a fresh one (see cursor())
MEMORY_LIMIT = re.compile(r"\d+(\.\d+)?\s*([KMGT]i?B|B)", re.IGNORECASE)
JOIN_ORDER_RELATIONS = 3  # a SELECT joining this many relations has a join order to choose


def joins_several(query: exp.Expression) -> bool:
    """Whether some SELECT of ``query`` joins three or more relations, so that DuckDB chooses a
    join order, which it can only do well from column statistics.

    >>> import sqlglot
    >>> joins_several(sqlglot.parse_one("SELECT * FROM f0 JOIN f1 ON f0.k = f1.k"))
    False
    >>> joins_several(sqlglot.parse_one("SELECT * FROM f0, f1, f2 WHERE f0.k = f1.k"))
    True
    """
    for select in query.find_all(exp.Select):
        relations = (1 if select.args.get("from_") else 0) + len(select.args.get("joins") or ())
        if relations >= JOIN_ORDER_RELATIONS:
            return True
    return False


def residual_joins_several(plan: Plan) -> bool:
    """Whether ``plan``'s residual joins three or more relations somewhere (:func:`joins_several`),
    worked out once per plan: every run of it, and each of its Ray bucket tasks, reads it."""
    if "residual.joins_several" not in plan.memo:
        several = plan.residual is not None and joins_several(plan.residual)
        plan.memo["residual.joins_several"] = several
    return bool(plan.memo["residual.joins_several"])


def register_tables(
    con: duckdb.DuckDBPyConnection, tables: dict[str, pa.Table], *, with_statistics: bool
) -> None:
    """Make each table queryable by its name on ``con``: a view of the Arrow data, or, with
    ``with_statistics``, a temporary table copied from it.

    DuckDB keeps no statistics for an Arrow scan: it orders a join of several of them as if
    every join key were unique, and on a low-cardinality key (q05's nation key between
    customers and suppliers) builds a join of millions of rows where one of thousands would
    do. The copy gives it distinct counts, for about 30 ms per million rows; a connection's
    temporary tables go away when it closes. A table DuckDB cannot store stays a view.

    >>> con = duckdb.connect()
    >>> register_tables(con, {"f0": pa.table({"x": [1, 2, 3]})}, with_statistics=True)
    >>> con.sql("SELECT sum(x) FROM f0").fetchall()
    [(6,)]
    """
    for name, table in tables.items():
        if with_statistics and _copy_in(con, name, table):
            continue
        con.register(name, table)


def _copy_in(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table) -> bool:
    view = f"{name}__arrow"
    con.register(view, table)
    try:
        con.execute(f'CREATE TEMPORARY TABLE "{name}" AS SELECT * FROM "{view}"')
        return True
    except duckdb.Error:
        return False
    finally:
        con.unregister(view)


def default_workers() -> int:
    """Worker threads for residuals: one per core the process may use (at least 2)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 2
    return max(2, cores)


def checked_memory_limit(value: Any) -> str | None:
    """The catalog's ``[execution] memory_limit`` ("256MB", "2GiB"), checked; None: unset.

    >>> checked_memory_limit("256MB")
    '256MB'
    """
    if value is None:
        return None
    if not isinstance(value, str) or not MEMORY_LIMIT.fullmatch(value):
        raise CatalogError(
            f"[execution] memory_limit {value!r} must be a size such as '256MB' or '2GiB'"
        )
    return value


class _Database:
    """One DuckDB database and the cursors it handed out (all of them, and those still open)."""

    def __init__(self, memory_limit: str | None = None) -> None:
        self.connection = duckdb.connect()
        if memory_limit is not None:  # checked by checked_memory_limit: safe to inline
            self.connection.execute(f"SET memory_limit = '{memory_limit}'")
        self.handed_out = 0
        self.open = 0

    def close(self) -> None:
        with contextlib.suppress(duckdb.Error):
            self.connection.close()


class _ProcessState:
    """What one process owns: the current database, older ones that still have open cursors,
    and the worker threads."""

    def __init__(self, workers: int, memory_limit: str | None = None):
        self.pid = os.getpid()
        self.database = _Database(memory_limit)
        self.owners: dict[int, _Database] = {}  # id(cursor) -> the database it belongs to
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="federator-residual")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        databases = {id(d): d for d in [self.database, *self.owners.values()]}
        self.owners.clear()
        for database in databases.values():
            database.close()


class ResidualEngine:
    """Cursors of one shared DuckDB database and the threads residuals run on."""

    def __init__(
        self,
        workers: int | None = None,
        recycle_after: int = RECYCLE_AFTER,
        memory_limit: str | None = None,
    ):
        self.workers = workers or default_workers()
        self.recycle_after = recycle_after
        self.memory_limit = checked_memory_limit(memory_limit)  # DuckDB's, for the database
        self._lock = threading.Lock()
        self._state: _ProcessState | None = None
        self._warmed = False
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: _forget_parent(ref()))

    def _current(self) -> _ProcessState:
        with self._lock:
            return self._current_locked()

    def _current_locked(self) -> _ProcessState:
        if self._state is not None and self._state.pid != os.getpid():
            _forget_parent(self)  # a fork the hook missed
        if self._state is None:
            self._state = _ProcessState(self.workers, self.memory_limit)
        return self._state

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A connection of its own to the shared database; hand it back with ``release``."""
        with self._lock:
            state = self._current_locked()
            database = state.database
            if database.handed_out >= self.recycle_after:
                # A long-lived DuckDB database keeps ~1 KB per statement it ran; a fresh one
                # every few thousand residuals keeps memory flat. The old one closes with its
                # last cursor.
                state.database = _Database(self.memory_limit)
                if database.open == 0:
                    database.close()
                database = state.database
            con = database.connection.cursor()
            database.handed_out += 1
            database.open += 1
            state.owners[id(con)] = database
        con.execute("SET enable_progress_bar = false")  # per connection; the REPL draws its own
        return con

    def release(self, con: duckdb.DuckDBPyConnection) -> None:
        """Close a cursor from ``cursor()`` (and its database, if it was replaced meanwhile and
        this was its last cursor)."""
        with self._lock:
            state = self._state
            owner = None
            if state is not None and state.pid == os.getpid():
                owner = state.owners.pop(id(con), None)
            con.close()
            if owner is None:
                return
            owner.open -= 1
            if owner.open == 0 and owner is not state.database:
                owner.close()

    async def run(self, con: duckdb.DuckDBPyConnection, fn: Callable[..., T], *args: Any) -> T:
        """Run a DuckDB call on a worker thread; on cancellation drop it if it is still
        waiting for a thread, else interrupt ``con`` and wait for the thread to let go of it,
        so that it can be closed."""
        work = self._current().pool.submit(fn, *args)
        future = asyncio.wrap_future(work)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if not work.cancel():  # running: DuckDB stops at its next check
                con.interrupt()
                with contextlib.suppress(BaseException):
                    await future
            raise

    def warm(self) -> None:
        """Open the database and run one tiny residual through Arrow, paying the first use's
        one-time costs (DuckDB's start, its Arrow scan and export paths) now."""
        state = self._current()
        con = self.cursor()
        try:
            con.register("warm", pa.table({"k": pa.array([1, 2], pa.int64()), "v": ["a", "b"]}))
            reader = con.sql("SELECT v, count(*) AS n FROM warm GROUP BY v").to_arrow_reader(1024)
            reader.read_all()
        finally:
            self.release(con)
        state.pool.submit(int).result()  # start a worker thread too

    def warm_in_background(self) -> None:
        """``warm()`` on a background thread, once per engine and process; errors are left for
        the first real residual to report."""
        with self._lock:
            if self._warmed and self._state is not None and self._state.pid == os.getpid():
                return
            self._warmed = True
        # Not a daemon: one killed inside DuckDB at interpreter exit aborts the process.
        threading.Thread(target=self._warm_quietly, name="federator-warm").start()

    def _warm_quietly(self) -> None:
        with contextlib.suppress(Exception):
            self.warm()

    def close(self) -> None:
        """Close the database and stop the threads (a later use opens them again)."""
        with self._lock:
            state, self._state, self._warmed = self._state, None, False
        if state is not None and state.pid == os.getpid():
            state.close()


_INHERITED: list[_ProcessState] = []  # a forked child's copies of its parent's, never freed


def _forget_parent(engine: ResidualEngine | None) -> None:
    """In a forked child: set the parent's database and threads aside for good, unfreed."""
    if engine is None or engine._state is None or engine._state.pid == os.getpid():
        return
    state, engine._state, engine._warmed = engine._state, None, False
    engine._lock = threading.Lock()  # another thread of the parent may have held it
    _INHERITED.append(state)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(state))  # not even at interpreter exit


_DEFAULT = ResidualEngine()
atexit.register(_DEFAULT.close)  # before DuckDB's own teardown, while threads can still stop


def default_engine() -> ResidualEngine:
    """The process's residual engine, shared by every ``Federation``."""
    return _DEFAULT


_LIMITED: dict[str, ResidualEngine] = {}  # by memory_limit: one database per limit
_LIMITED_LOCK = threading.Lock()


def engine_for(memory_limit: str | None) -> ResidualEngine:
    """The residual engine for ``[execution] memory_limit`` (None: :func:`default_engine`):
    one per limit and process, shared by the federations that set the same limit.

    >>> engine_for(None) is default_engine()
    True
    """
    if memory_limit is None:
        return _DEFAULT
    with _LIMITED_LOCK:
        if memory_limit not in _LIMITED:
            _LIMITED[memory_limit] = ResidualEngine(memory_limit=memory_limit)
            atexit.register(_LIMITED[memory_limit].close)
        return _LIMITED[memory_limit]
