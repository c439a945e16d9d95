"""SQLite: an embedded source from the standard library (the demo's default)."""

from __future__ import annotations

import asyncio
import decimal
import re
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow as pa
from federator.adapters.arrowconv import rows_to_batch
from federator.adapters.base import TableInfo, TableRef
from federator.adapters.sqlbase import SQLAdapter

from federator.config import SourceConfig
from federator.errors import CatalogError


def sqlite_type(declared: str) -> pa.DataType:
    """Arrow type from a declared SQLite column type (SQLite's affinity rules, plus dates)."""
    d = declared.upper()
    if "INT" in d:
        return pa.int64()
    if "BOOL" in d:
        return pa.bool_()
    if any(k in d for k in ("CHAR", "CLOB", "TEXT")):
        return pa.string()
    if "BLOB" in d or not d:
        return pa.binary() if "BLOB" in d else pa.string()
    if any(k in d for k in ("REAL", "FLOA", "DOUB")):
        return pa.float64()
    if "TIMESTAMP" in d or "DATETIME" in d:
        return pa.timestamp("us")
    if "DATE" in d:
        return pa.date32()
    m = re.search(r"(?:DECIMAL|NUMERIC)\s*\((\d+)\s*,\s*(\d+)\)", d)
    if m:
        return pa.decimal128(int(m.group(1)), int(m.group(2)))
    return pa.float64()


def sqlite_param(value: Any) -> Any:
    """A parameter as SQLite binds it. SQLite has no decimal type (a DECIMAL column holds
    integers and doubles), so a ``Decimal`` binds as the number SQLite would store for it: an
    integer when it is whole and fits 64 bits, else the nearest double; it then compares as a
    number with columns and expressions alike (text would sort after every number).

    >>> from decimal import Decimal
    >>> sqlite_param(Decimal("9.99")), sqlite_param(Decimal("20.00")), sqlite_param("x")
    (9.99, 20, 'x')
    """
    if isinstance(value, decimal.Decimal):
        if value.is_finite() and value == value.to_integral_value() and abs(value) < 2**63:
            return int(value)
        return float(value)
    return value


def _case_sensitive_like(con: sqlite3.Connection) -> sqlite3.Connection:
    """LIKE as the federated dialect means it: case-sensitive (SQLite's own LIKE folds ASCII
    case; found by the fuzzer: 'O''Brien' NOT LIKE '%o%' was false)."""
    con.execute("PRAGMA case_sensitive_like = ON")
    return con


class SQLiteAdapter(SQLAdapter):
    """``{"kind": "sqlite", "path": "shop.db"}``"""

    kind = "sqlite"
    dialect = "sqlite"
    param_style = "qmark"
    bind_style = "in_list"
    keep_schema = False
    default_schema = "main"

    def __init__(self, config: SourceConfig):
        super().__init__(config)
        if "path" not in config.options:
            raise CatalogError(f"source {config.name!r} (sqlite) needs a 'path'")
        self.path = str(config.options["path"])
        self._memory: sqlite3.Connection | None = None

    @property
    def where(self) -> str:
        return self.path

    def _connect(self) -> sqlite3.Connection:
        if self.path == ":memory:":
            if self._memory is None:
                self._memory = _case_sensitive_like(
                    sqlite3.connect(":memory:", check_same_thread=False)
                )
            return self._memory
        if not Path(self.path).exists():
            raise CatalogError(f"source {self.name!r}: SQLite file {self.path!r} does not exist")
        con = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        return _case_sensitive_like(con)

    async def tables(self) -> list[TableInfo]:
        return await asyncio.to_thread(self._tables)

    def _tables(self) -> list[TableInfo]:
        con = self._connect()
        try:
            names = [
                r[0]
                for r in con.execute(
                    "SELECT name FROM sqlite_master"
                    " WHERE type IN ('table','view') AND name NOT LIKE 'sqlite_%'"
                )
            ]
            infos = []
            for name in names:
                cols = con.execute(
                    "SELECT name, type FROM pragma_table_info(?)", (name,)
                ).fetchall()
                schema = pa.schema([(c, sqlite_type(t or "")) for c, t in cols])
                rows = con.execute(
                    f'SELECT count(*) FROM "{name.replace(chr(34), chr(34) * 2)}"'
                ).fetchone()[0]
                infos.append(TableInfo(self.name, TableRef("main", name), schema, rows))
            return infos
        finally:
            if con is not self._memory:
                con.close()

    async def run(
        self, text: str, params: list[Any], schema: pa.Schema | None
    ) -> AsyncIterator[pa.RecordBatch]:
        con = await asyncio.to_thread(self._connect)
        calls = _ThreadCalls(con)
        try:
            cur = await calls.run(con.execute, text, [sqlite_param(v) for v in params])
            names = [d[0] for d in cur.description]
            types = [
                schema.field(n).type if schema is not None and n in schema.names else None
                for n in names
            ]
            first = True
            while True:
                rows = await calls.run(cur.fetchmany, self.batch_rows)
                if not rows and not first:
                    break
                yield rows_to_batch(rows, names, types)
                first = False
                if len(rows) < self.batch_rows:
                    break
        finally:
            calls.finish(close=con is not self._memory)

    async def close(self) -> None:
        if self._memory is not None:
            self._memory.close()
            self._memory = None


class _ThreadCalls:
    """Runs one connection's blocking calls in a worker thread, one at a time, and ends them
    safely: a call still running when the query stops (a timeout, a cancel, another fragment's
    failure) is interrupted (``sqlite3.Connection.interrupt`` is thread-safe) and the
    connection is closed only after that thread has let go of it. Closing it under a running
    call crashed the process."""

    def __init__(self, con: sqlite3.Connection):
        self.con = con
        self.inflight: asyncio.Future[Any] | None = None

    async def run(self, fn: Any, *args: Any) -> Any:
        self.inflight = asyncio.ensure_future(asyncio.to_thread(fn, *args))
        return await asyncio.shield(self.inflight)

    def finish(self, *, close: bool) -> None:
        inflight = self.inflight
        if inflight is None or inflight.done():
            if close:
                self.con.close()
            return
        self.con.interrupt()

        def after(done: asyncio.Future[Any]) -> None:
            if not done.cancelled():
                done.exception()  # retrieved: the interrupt's OperationalError is expected
            if close:
                self.con.close()

        inflight.add_done_callback(after)
