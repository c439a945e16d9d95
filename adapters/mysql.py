"""MySQL and MariaDB through aiomysql: a lazy pool and unbuffered (server-side) cursors.

``{"kind": "mysql", "dsn": "mysql://user:${MYSQL_PASSWORD}@host:3306/shop"}``

The DSN's database is the default namespace (``my.orders`` means ``shop.orders``); other
databases are reached as ``my.otherdb.table``. Sessions run with ``time_zone = '+00:00'`` so
TIMESTAMP columns arrive as UTC. TINYINT(1) is MySQL's BOOLEAN and comes back as bool.

Every session is read-only (``SET SESSION TRANSACTION READ ONLY``) and takes one statement per
request (multi-statements off); parameters are written as literals that need no escaping
(:mod:`federator.adapters.mysql_literals`), so no ``sql_mode`` can turn a value into SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import struct
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import aiomysql
import pyarrow as pa
import pymysql
from federator.adapters.arrowconv import conform, rows_to_batch
from federator.adapters.base import (
    NativeRequest,
    Split,
    TableInfo,
    TableRef,
    failure_reason,
    whole_split,
)
from federator.adapters.cxworker import CXWorkers
from federator.adapters.mysql_literals import inline
from federator.adapters.splits import describe_range, integer_cuts, splittable_tree
from federator.adapters.sqlbase import ServerSQLAdapter
from federator.rules.sql import collation_note
from sqlglot import exp

from federator.config import SourceConfig
from federator.deadline import CLEANUP_SECONDS, bound, cleanup
from federator.errors import SourceError, SourceUnreachableError
from federator.plan.model import WINDOW_PARAM

if TYPE_CHECKING:
    from federator.plan.model import Fragment

# The session settings of the aiomysql pool, repeated for ConnectorX's connection.
_SESSION = [
    "SET time_zone = '+00:00'",
    "SET div_precision_increment = 16",
    "SET SESSION TRANSACTION READ ONLY",
]
_MULTI_STATEMENTS_OFF = 1  # COM_SET_OPTION's MYSQL_OPTION_MULTI_STATEMENTS_OFF

_SYSTEM = ("information_schema", "mysql", "performance_schema", "sys")
_CATALOG_SQL = """
SELECT c.TABLE_SCHEMA, c.TABLE_NAME, c.COLUMN_NAME, c.DATA_TYPE, c.COLUMN_TYPE, t.TABLE_ROWS,
       c.COLUMN_KEY, c.COLLATION_NAME, t.TABLE_TYPE
FROM information_schema.COLUMNS c
JOIN information_schema.TABLES t ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME
WHERE c.TABLE_SCHEMA NOT IN ('information_schema', 'mysql', 'performance_schema', 'sys')
ORDER BY c.TABLE_SCHEMA, c.TABLE_NAME, c.ORDINAL_POSITION
"""

# Column sets unique on their own (primary key, unique indexes), column order within each.
_UNIQUE_SQL = """
SELECT TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, COLUMN_NAME
FROM information_schema.STATISTICS
WHERE NON_UNIQUE = 0
  AND TABLE_SCHEMA NOT IN ('information_schema', 'mysql', 'performance_schema', 'sys')
ORDER BY TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, SEQ_IN_INDEX
"""

# Freshness token (see MySQLAdapter.freshness_token); {pairs} is placeholders only.
_TOKEN_SQL = """
SELECT TABLE_SCHEMA, TABLE_NAME, TABLE_TYPE, UPDATE_TIME,
       COALESCE(UPDATE_TIME >= NOW(), 0) AS unsettled
FROM information_schema.TABLES
WHERE {pairs}
ORDER BY TABLE_SCHEMA, TABLE_NAME
"""

# Server threads running a tagged statement (an interrupted ConnectorX read's), never this one.
_TAGGED_SQL = """
SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE %s AND ID <> CONNECTION_ID()
"""

_INTEGERS = {
    "tinyint": (pa.int8(), pa.uint8()),
    "smallint": (pa.int16(), pa.uint16()),
    "mediumint": (pa.int32(), pa.uint32()),
    "int": (pa.int32(), pa.uint32()),
    "integer": (pa.int32(), pa.uint32()),
    "bigint": (pa.int64(), pa.uint64()),
}
_OTHERS: dict[str, pa.DataType] = {
    "float": pa.float32(),
    "double": pa.float64(),
    "real": pa.float64(),
    "date": pa.date32(),
    "datetime": pa.timestamp("us"),
    "timestamp": pa.timestamp("us", tz="UTC"),
    "time": pa.duration("us"),
    "year": pa.int16(),
    "bit": pa.binary(),
    "binary": pa.binary(),
    "varbinary": pa.binary(),
    "tinyblob": pa.binary(),
    "blob": pa.binary(),
    "mediumblob": pa.binary(),
    "longblob": pa.binary(),
}


def mysql_arrow_type(data_type: str, column_type: str) -> pa.DataType:
    """Arrow type of a column from information_schema's DATA_TYPE and COLUMN_TYPE.

    >>> mysql_arrow_type("tinyint", "tinyint(1)")
    DataType(bool)
    >>> mysql_arrow_type("decimal", "decimal(12,2)")
    Decimal128Type(decimal128(12, 2))
    """
    data_type, column_type = data_type.lower(), column_type.lower()
    if data_type == "tinyint" and column_type.startswith("tinyint(1)"):
        return pa.bool_()
    if data_type in _INTEGERS:
        signed, unsigned = _INTEGERS[data_type]
        return unsigned if "unsigned" in column_type else signed
    if data_type in ("decimal", "numeric"):
        m = re.search(r"\((\d+)(?:,(\d+))?\)", column_type)
        precision, scale = (int(m.group(1)), int(m.group(2) or 0)) if m else (10, 0)
        return (
            pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
        )
    return _OTHERS.get(data_type, pa.string())


_FT = pymysql.constants.FIELD_TYPE
_RESULT_TYPES: dict[int, pa.DataType] = {
    _FT.TINY: pa.int8(),
    _FT.SHORT: pa.int16(),
    _FT.INT24: pa.int32(),
    _FT.LONG: pa.int64(),
    _FT.LONGLONG: pa.int64(),
    _FT.FLOAT: pa.float32(),
    _FT.DOUBLE: pa.float64(),
    _FT.DATE: pa.date32(),
    _FT.NEWDATE: pa.date32(),
    _FT.DATETIME: pa.timestamp("us"),
    _FT.TIMESTAMP: pa.timestamp("us", tz="UTC"),
    _FT.TIME: pa.duration("us"),
    _FT.YEAR: pa.int16(),
    _FT.JSON: pa.string(),
    _FT.ENUM: pa.string(),
    _FT.SET: pa.string(),
    _FT.VARCHAR: pa.string(),
    _FT.BIT: pa.binary(),
}


def result_type(description: tuple[Any, ...]) -> pa.DataType | None:
    """Arrow type of a result column from the cursor description; None: infer from values."""
    _, code, _, internal_size, _, scale, _ = description
    if code in (_FT.DECIMAL, _FT.NEWDECIMAL):
        digits = max(1, (internal_size or 0) - 1 - (1 if scale else 0))
        return pa.decimal128(min(38, max(digits, scale or 0)), min(scale or 0, 38))
    if code == _FT.TINY and internal_size == 1:
        return pa.bool_()
    return _RESULT_TYPES.get(code)


class MySQLAdapter(ServerSQLAdapter):
    """MySQL/MariaDB source; options: ``dsn``, ``max_concurrency`` (pool size), ``batch_rows``,
    ``bulk_rows`` (fragments estimated at this many rows or more, without parameters, whose
    output types ConnectorX carries exactly, stream through ConnectorX's Arrow reader; ``0``
    always, ``-1`` never; default ``FEDERATOR_BULK_ROWS`` or 50,000)."""

    kind = "mysql"
    dialect = "mysql"
    param_style = "format"
    bind_style = "in_list"

    default_port = 3306
    connect_errors = (OSError, TimeoutError, pymysql.err.MySQLError)

    def __init__(self, config: SourceConfig):
        super().__init__(config)
        self.default_schema = self.dsn.database or ""
        self.scan_partitions = int(config.options.get("scan_partitions", 2))
        self.avoid_group_by_index = bool(config.options.get("avoid_group_by_index", True))
        self._views: set[tuple[str, str]] = set()  # (schema, name), lower case: take no index hint
        self._primary: dict[tuple[str, str], tuple[str, ...]] = {}  # its columns, in order
        self._int_keys: dict[tuple[str, str], str] = {}  # single-column integer primary keys
        # (schema, table, column) -> collation of each text column, lower case (EXPLAIN notes)
        self._collations: dict[tuple[str, str, str], str] = {}
        self._locked_down: weakref.WeakSet[aiomysql.Connection] = weakref.WeakSet()
        self._cx = CXWorkers(self.max_concurrency)  # ConnectorX worker processes

    async def close(self) -> None:
        await super().close()
        await self._cx.close()

    # ---- pool ------------------------------------------------------------------------
    async def _connect_pool(self) -> aiomysql.Pool:
        d = self.dsn
        pool = await aiomysql.create_pool(
            host=d.host,
            port=d.port or 3306,
            user=d.user or "root",
            password=d.password or "",
            db=d.database,
            minsize=0,
            maxsize=self.max_concurrency,
            autocommit=True,
            connect_timeout=self.connect_timeout,
            charset="utf8mb4",
            # UTC timestamps; AVG and division 16 places finer than the input, not MySQL's
            # default of 4 (AVG(DECIMAL(15,2)) to 6 places); more (30) made AVG of an INT or a
            # DECIMAL(12,2) wider than decimal128's 38 digits.
            init_command="SET time_zone = '+00:00', div_precision_increment = 16",
        )
        async with pool.acquire() as conn:  # fail here, not in the middle of a query
            await self._lock_down(conn)
        return pool

    async def _lock_down(self, conn: aiomysql.Connection) -> None:
        """Once per physical connection: one statement per request, and no writes.

        aiomysql always asks for multi-statements at the handshake; COM_SET_OPTION turns them
        off for the session (aiomysql has no public call for it). A read-only session refuses
        INSERT, DDL and the rest even if some text ever slipped through.
        """
        if conn in self._locked_down:
            return
        await conn._execute_command(
            pymysql.constants.COMMAND.COM_SET_OPTION, struct.pack("<H", _MULTI_STATEMENTS_OFF)
        )
        await conn._read_packet()  # EOF on success; an error packet raises
        async with conn.cursor() as cur:
            await cur.execute("SET SESSION TRANSACTION READ ONLY")
        self._locked_down.add(conn)

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[aiomysql.Connection]:
        """A pooled connection, locked down (see :meth:`_lock_down`); torn down with its
        server thread if the work on it is interrupted (see :meth:`_release`)."""
        pool = await self._get_pool()
        conn = await self._acquire(pool)
        outcome: BaseException | None = None
        try:
            yield conn
        except BaseException as e:
            outcome = e
            raise
        finally:
            await self._release(pool, conn, outcome)

    async def _acquire(self, pool: aiomysql.Pool) -> aiomysql.Connection:
        """A pooled connection, locked down (torn down again if that fails)."""
        conn = await pool.acquire()
        try:
            await self._lock_down(conn)
        except BaseException as e:
            await self._release(pool, conn, e)
            raise
        return conn

    async def _fetchall(self, sql: str) -> list[tuple[Any, ...]]:
        """Every row of one statement, on a pooled connection (see :meth:`_start`)."""
        pool = await self._get_pool()
        conn, cur = await self._start(pool, sql)
        outcome: BaseException | None = None
        try:
            rows = list(await cur.fetchall())
            await cur.close()
            return rows
        except BaseException as e:
            outcome = e
            raise
        finally:
            await self._release(pool, conn, outcome)

    async def _start(
        self, pool: aiomysql.Pool, text: str
    ) -> tuple[aiomysql.Connection, aiomysql.SSCursor]:
        """A pooled connection with ``text`` started on an unbuffered cursor. A connection the
        server closed while it sat idle in the pool (KILL, wait_timeout, a restart) fails on
        this first use: it is dropped and the statement sent once more on another."""
        for attempt in (1, 2):
            conn = await self._acquire(pool)
            try:
                cur = await conn.cursor(aiomysql.SSCursor)
                await cur.execute(text)
                return conn, cur
            except BaseException as e:
                await self._release(pool, conn, e)
                if attempt == 2 or not _connection_lost(e):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _release(
        self, pool: aiomysql.Pool, conn: aiomysql.Connection, outcome: BaseException | None
    ) -> None:
        """Give ``conn`` back after a clean end. After an error the server reported or a lost
        connection, the connection is closed (an unbuffered result left unread poisons it).
        After anything else (a timeout, a cancel, a frozen network, a consumer that stopped
        midway) the server may still be running the statement: the socket is closed at once and
        the server thread killed from another connection, within :data:`CLEANUP_SECONDS`."""
        if outcome is None:
            pool.release(conn)
            return
        thread = conn.thread_id() if conn.server_thread_id else None
        _drop(conn)
        pool.release(conn)
        if thread is not None and not isinstance(outcome, pymysql.err.MySQLError):
            await cleanup(self._kill(thread))

    async def _kill(self, thread: int | None = None, tag: str | None = None) -> None:
        """KILL server threads of ours (statement and session) from a new connection: one by
        id, or every one whose statement carries ``tag`` (the ConnectorX reads)."""
        async with self._side_connection(CLEANUP_SECONDS) as conn, conn.cursor() as cur:
            threads = [thread] if thread is not None else []
            if tag is not None:
                await cur.execute(inline(_TAGGED_SQL, [f"%{tag}%"]))
                threads += [int(r[0]) for r in await cur.fetchall()]
            for t in threads:
                with contextlib.suppress(pymysql.err.MySQLError):  # already gone: 1094
                    await cur.execute(f"KILL {int(t)}")

    @contextlib.asynccontextmanager
    async def _side_connection(self, timeout: float) -> AsyncIterator[aiomysql.Connection]:
        """A new connection outside the pool (a KILL, a login check), closed on the way out."""
        d = self.dsn
        conn = aiomysql.Connection(
            host=d.host,
            port=d.port or 3306,
            user=d.user or "root",
            password=d.password or "",
            connect_timeout=timeout,
            autocommit=True,
        )
        try:
            await conn._connect()  # aiomysql.connect() leaves the socket open when cancelled
            yield conn
        finally:
            _drop(conn)

    async def _check_login(self) -> None:
        """Log in once, as ConnectorX is about to: it retries a refused login for 30 s
        (a changed password, say), where this answers at once with the server's reason."""
        try:
            async with self._side_connection(bound(self.connect_timeout) or 10):
                pass
        except (OSError, pymysql.err.MySQLError) as e:
            reason = failure_reason(e, self.dsn.password)
            raise SourceUnreachableError(self.name, self.where, reason) from None

    def _pool_in_use(self, pool: aiomysql.Pool) -> int:
        return pool.size - pool.freesize

    async def _close_pool(self, pool: aiomysql.Pool) -> None:
        pool.close()
        try:
            await asyncio.wait_for(pool.wait_closed(), timeout=5)
        except TimeoutError:
            pool.terminate()

    # ---- freshness (federator.cache) ------------------------------------------------
    async def freshness_token(self, tables: Sequence[TableRef]) -> str | None:
        """A string that changes whenever the data of ``tables`` may have changed: each
        table's UPDATE_TIME (set at commit; one-second resolution, so a table written within
        the current second gives an unsettled token). None — TTL and invalidation only — for
        views and for a table whose UPDATE_TIME is NULL: InnoDB keeps it in memory only, so it
        reads NULL again after a restart and cannot prove the absence of a write."""
        if not tables:
            return None
        pairs = " OR ".join(["(TABLE_SCHEMA = %s AND TABLE_NAME = %s)"] * len(tables))
        args = [v for t in tables for v in (t.schema, t.name)]
        async with self._connection() as conn, conn.cursor() as cur:
            if "mariadb" not in conn.get_server_info().lower():
                # MySQL 8 caches information_schema statistics for a day by default.
                await cur.execute("SET SESSION information_schema_stats_expiry = 0")
            await cur.execute(inline(_TOKEN_SQL.replace("{pairs}", pairs), args))
            rows = await cur.fetchall()
        if len(rows) < len({(t.schema, t.name) for t in tables}):
            return None
        if any(r[2] != "BASE TABLE" for r in rows):
            return None
        if any(r[4] for r in rows):
            return f"~written-this-second:{os.urandom(8).hex()}"
        if any(r[3] is None for r in rows):
            return None  # not written since the server (or its table cache) loaded it
        return ",".join(f"{r[0]}.{r[1]}:{r[3]}" for r in rows)

    # ---- catalog ---------------------------------------------------------------------
    async def tables(self) -> list[TableInfo]:
        async with self._connection() as conn, conn.cursor() as cur:
            await cur.execute(_CATALOG_SQL)
            rows = await cur.fetchall()
            await cur.execute(_UNIQUE_SQL)
            index_rows = await cur.fetchall()
        indexes: dict[tuple[str, str, str], list[str]] = {}
        for schema, name, index, column in index_rows:
            indexes.setdefault((schema, name, index), []).append(column)
        unique: dict[tuple[str, str], list[tuple[str, ...]]] = {}
        for (schema, name, _), columns in indexes.items():
            unique.setdefault((schema, name), []).append(tuple(columns))
        grouped: dict[tuple[str, str], list[Any]] = {}
        for r in rows:
            grouped.setdefault((r[0], r[1]), []).append(r)
        self._collations = {
            (r[0].lower(), r[1].lower(), r[2].lower()): r[7].lower() for r in rows if r[7]
        }
        self._views = {(r[0].lower(), r[1].lower()) for r in rows if r[8] == "VIEW"}
        self._primary = {
            (schema.lower(), name.lower()): tuple(c.lower() for c in columns)
            for (schema, name, index), columns in indexes.items()
            if index == "PRIMARY"
        }
        self._int_keys = {
            (schema, name): keys[0][2]
            for (schema, name), cols in grouped.items()
            if len(keys := [c for c in cols if c[6] == "PRI"]) == 1
            and keys[0][3].lower() in _INTEGERS
        }
        return [
            TableInfo(
                self.name,
                TableRef(schema, name),
                pa.schema([pa.field(c[2], mysql_arrow_type(c[3], c[4])) for c in cols]),
                int(cols[0][5]) if cols[0][5] is not None else None,
                tuple(unique.get((schema, name), ())),
            )
            for (schema, name), cols in grouped.items()
        ]

    def localize(self, tree: exp.Expression) -> exp.Expression:
        tree = super().localize(tree)
        if not self.avoid_group_by_index:
            return tree
        return without_group_by_index(
            tree, lambda t: self._is_view(t.db, t.name), lambda t: self._primary_key(t.db, t.name)
        )

    def _is_view(self, schema: str, name: str) -> bool:
        return ((schema or self.default_schema).lower(), name.lower()) in self._views

    def _primary_key(self, schema: str, name: str) -> tuple[str, ...]:
        return self._primary.get(((schema or self.default_schema).lower(), name.lower()), ())

    # ---- bulk path (ConnectorX) ---------------------------------------------------------
    def translate(self, fragment: Fragment) -> NativeRequest:
        request = super().translate(fragment)
        semantics = collation_note(fragment.query, self._collations or None)
        if semantics is not None and semantics not in fragment.notes:
            fragment.notes.append(semantics)
        est = fragment.estimated_rows
        wanted = self.bulk_rows == 0 or (self.bulk_rows > 0 and (est or 0) >= self.bulk_rows)
        # bound: when the bind is dropped at run time; an ASOF join's time window is written in
        # as literals at run time (mysql_literals: no value can turn into SQL)
        if wanted and all(n.startswith(WINDOW_PARAM) for n in request.param_names):
            why = _connectorx_refusal(fragment)
            if why is None:
                request.payload.bulk = True
                key = self._partition_key(fragment)
                request.payload.partition = key
                note = "bulk: ConnectorX Arrow stream" + (
                    f" (estimated {est:,} rows >= bulk_rows {self.bulk_rows:,})"
                    if est is not None
                    else ""
                )
                if key is not None:
                    note += (
                        f"; {self.scan_partitions} parallel range partitions on primary key"
                        f" {key} (one connection each, no shared snapshot)"
                    )
                if fragment.bind is not None:
                    note += "; when the bind join is dropped at run time"
            else:
                note = f"no bulk path: {why}"
            if note not in fragment.notes:
                fragment.notes.append(note)
        return request

    async def execute(
        self, request: NativeRequest, bind_values: Sequence[Any] | None = None
    ) -> AsyncIterator[pa.RecordBatch]:
        payload = request.payload
        if getattr(payload, "bulk", False) and (request.bind is None or bind_values is None):
            values = dict(zip(request.param_names, request.params, strict=True))
            text = inline(payload.unbound_text, [values[n] for n in payload.unbound_names])
            source = self.run_bulk(
                text,
                request.schema,
                getattr(payload, "partition", None),
            )
        else:
            source = super().execute(request, bind_values)
        async with contextlib.aclosing(source) as batches:
            async for batch in batches:
                yield batch

    def _partition_key(self, fragment: Fragment) -> str | None:
        """The output column to range-partition a whole-table scan on: the table's integer
        primary key, when the fragment is a plain scan that outputs it (None otherwise)."""
        q = fragment.query
        if self.scan_partitions < 2 or not isinstance(q, exp.Select):
            return None
        if any(q.args.get(k) for k in ("where", "joins", "group", "limit", "order", "distinct")):
            return None
        tables = list(q.find_all(exp.Table))
        if len(tables) != 1 or len(list(q.find_all(exp.Select))) != 1:
            return None
        t = tables[0]
        key = self._int_keys.get((t.db or self.default_schema, t.name))
        for sel in q.selects:
            inner = sel.unalias()
            if isinstance(inner, exp.Column) and inner.name == key:
                return sel.alias_or_name
        return None

    async def run_bulk(
        self, text: str, schema: pa.Schema | None, partition: str | None = None
    ) -> AsyncIterator[pa.RecordBatch]:
        """A parameterless query through ConnectorX's Arrow stream (Rust, no Python row
        objects), in the same session settings as the pool; columns cast to the exact types.

        The read runs in a worker process (:mod:`federator.adapters.cxworker`). Its statements
        carry a tag comment, so that an interrupted read's server threads are found in the
        process list and killed."""
        d = self.dsn
        auth = quote(d.user or "root", safe="") + ":" + quote(d.password or "", safe="")
        uri = f"mysql://{auth}@{d.host}:{d.port or 3306}/{quote(d.database or '', safe='')}"
        # The Rust driver switches a loopback connection to the server's Unix socket unless told
        # not to: keep to the host:port the catalog names (as aiomysql does).
        uri += "?prefer_socket=false"
        tag = f"federator-cx {os.urandom(8).hex()}"
        await self._check_login()
        queries = [text] if partition is None else await self._partitions(text, partition)
        read = self._cx.read(uri, [f"/* {tag} */ {q}" for q in queries], self.batch_rows, _SESSION)
        finished = False
        try:
            yielded = False
            async with contextlib.aclosing(read) as batches:
                async for batch in batches:
                    if batch.num_rows or not yielded:
                        yielded = True
                        yield conform(batch, schema, strict=True)
            finished = True
        except SourceError as e:
            reason = failure_reason(e, d.password).removeprefix("SourceError: ")
            if d.password:  # as written in the URI, too
                reason = reason.replace(quote(d.password, safe=""), "***")
            raise SourceError(f"source {self.name!r} at {self.where}: {reason}") from None
        finally:
            if not finished:
                await cleanup(self._kill(tag=tag))

    async def _partitions(self, text: str, key: str) -> list[str]:
        """``text`` cut into ``scan_partitions`` ranges of the integer column ``key`` (as
        ConnectorX's own partitioning does), read at once on one connection each."""
        column = "`" + key.replace("`", "``") + "`"
        sql = f"SELECT MIN({column}), MAX({column}) FROM ({text}) AS federator_range"
        [(low, high)] = await self._fetchall(sql)
        if low is None or high is None:
            return [text]
        n = self.scan_partitions
        bounds = [int(low) + (int(high) - int(low) + 1) * i // n for i in range(n)]
        bounds.append(int(high) + 1)
        part = f"federator_part.{column}"
        return [
            f"SELECT * FROM ({text}) AS federator_part WHERE {lo} <= {part} AND {part} < {hi}"
            for lo, hi in itertools.pairwise(bounds)
            if hi > lo
        ]

    # ---- estimates -------------------------------------------------------------------
    async def estimate_rows(self, fragment: Fragment, request: NativeRequest) -> int | None:
        """MariaDB/MySQL's estimate of the request's rows (``EXPLAIN FORMAT=JSON``: each
        table's rows x filtered, multiplied along the join; histograms where collected). None
        for what it does not estimate (groups, DISTINCT, LIMIT, subqueries) and where it
        did not estimate a condition (kept at 100 %)."""
        if not _explain_estimates(fragment.query):
            return None
        payload = request.payload
        values = dict(zip(request.param_names, request.params, strict=True))
        text = inline(payload.unbound_text, [values[n] for n in payload.unbound_names])
        [(plan,)] = await self._fetchall("EXPLAIN FORMAT=JSON " + text)
        return explained_rows(json.loads(plan))

    # ---- splits (a distributed engine's scan) ----------------------------------------
    @contextlib.asynccontextmanager
    async def split_scan(self, request: NativeRequest, n: int) -> AsyncIterator[list[Split]]:
        """A plain scan of a table with a one-column integer primary key as at most ``n``
        ranges of that key, cut evenly between its minimum and maximum (the first range open
        below, the last open above). No snapshot is shared: each split reads the table as it
        is when it runs. Other requests, and empty tables, are one split."""
        tree = splittable_tree(request)
        found = await self._key_bounds(tree) if tree is not None and n > 1 else None
        if tree is None or found is None:
            yield [whole_split(self.name, request)]
            return
        column, low, high, rows = found
        cuts = integer_cuts(low, high, min(n, rows))
        requests = self.range_requests(request, tree, column, cuts)
        yield [
            Split(self.name, i, len(requests), r, None, describe_range(column.name, cuts, i))
            for i, r in enumerate(requests)
        ]

    async def _key_bounds(self, tree: exp.Query) -> tuple[exp.Column, int, int, int] | None:
        """The scanned table's integer primary key (as the tree names it), its minimum and
        maximum, and the table's rows; None without such a key or rows."""
        table = next(tree.find_all(exp.Table))
        if not self._int_keys:
            await self.tables()
        key = self._int_keys.get((table.db or self.default_schema, table.name))
        if key is None:
            return None
        column = exp.column(key, table=table.alias_or_name, quoted=True)
        bare = exp.column(key, quoted=True)
        query = exp.select(
            exp.Min(this=bare), exp.Max(this=bare.copy()), exp.Count(this=exp.Star())
        ).from_(exp.table_(table.name, db=table.db or None))
        [(low, high, rows)] = await self._fetchall(query.sql(dialect=self.dialect, identify=True))
        if low is None:
            return None
        return column, int(low), int(high), int(rows)

    # ---- execution -------------------------------------------------------------------
    async def run(
        self, text: str, params: list[Any], schema: pa.Schema | None
    ) -> AsyncIterator[pa.RecordBatch]:
        text = inline(text, params)  # also turns the SQL's %% escapes into %
        pool = await self._get_pool()
        conn, cur = await self._start(pool, text)
        outcome: BaseException | None = None
        try:
            names = [d[0] for d in cur.description]
            types = [
                schema.field(d[0]).type
                if schema is not None and d[0] in schema.names
                else result_type(d)
                for d in cur.description
            ]
            first = True
            while True:
                rows = await cur.fetchmany(self.batch_rows)
                if rows or first:
                    yield rows_to_batch(rows, names, types)
                first = False
                if len(rows) < self.batch_rows:
                    break
            await cur.close()
        except BaseException as e:
            outcome = e
            raise
        finally:
            await self._release(pool, conn, outcome)


# Client and server errors of a connection that is gone: server gone away, lost connection
# during query, packet sequence broken, connection killed.
_LOST = {2006, 2013, 2014, 2055, 1927}


def without_group_by_index(
    tree: exp.Expression,
    is_view: Callable[[exp.Table], bool] = lambda t: False,
    primary_key: Callable[[exp.Table], tuple[str, ...]] = lambda t: (),
) -> exp.Expression:
    """``tree`` with ``USE INDEX FOR GROUP BY ()`` on each table (not a view: ``is_view``, which
    takes no index hint) that a GROUP BY reads columns of beyond its group keys, unless its
    group keys lead its primary key (``primary_key``, lower case, in order).

    MariaDB 10.11 resolves such a GROUP BY by walking a secondary index on the group key and
    fetching every row through the clustered index: TPC-H q15's revenue per supplier took over
    600 s that way at SF 1 and 2 s as a scan and a grouping table. An index that covers the
    query (only group keys read) is still allowed, as is any index for the WHERE. Grouped by
    the leading columns of the primary key (InnoDB's clustered index), walking it is the scan,
    with the groups in order: TPC-H q18's lineitem per order takes 0.8 s that way, 7.8 s with
    a grouping table.

    >>> from sqlglot import parse_one
    >>> q = parse_one("SELECT t.k, SUM(t.v) AS s FROM t AS t GROUP BY t.k", read="mysql")
    >>> without_group_by_index(q).sql("mysql")
    'SELECT t.k, SUM(t.v) AS s FROM t AS t USE INDEX FOR GROUP BY () GROUP BY t.k'
    >>> without_group_by_index(q, primary_key=lambda t: ("k", "n")).sql("mysql")
    'SELECT t.k, SUM(t.v) AS s FROM t AS t GROUP BY t.k'
    """
    tree = tree.copy()
    for select in tree.find_all(exp.Select):
        group = select.args.get("group")
        if group is None:
            continue
        keys = {(c.table, c.name) for c in group.find_all(exp.Column)}
        for table in _tables_read_by(select):
            if is_view(table) or _covered_by_group_keys(select, table.alias_or_name, keys):
                continue
            own = {name.lower() for alias, name in keys if alias == table.alias_or_name}
            if own and own == set(primary_key(table)[: len(own)]):
                continue
            hints = table.args.get("hints") or []
            if not any(isinstance(h, exp.IndexTableHint) for h in hints):
                hint = exp.IndexTableHint(this="USE", target="GROUP BY", expressions=[])
                table.set("hints", [*hints, hint])
    return tree


def _tables_read_by(select: exp.Select) -> list[exp.Table]:
    """The base tables in ``select``'s own FROM and JOINs (not those of its subqueries)."""
    sources = [select.args.get("from_") or select.args.get("from")]
    sources += [join for join in select.args.get("joins") or []]
    return [s.this for s in sources if s is not None and isinstance(s.this, exp.Table)]


def _covered_by_group_keys(select: exp.Select, alias: str, keys: set[tuple[str, str]]) -> bool:
    used = {(c.table, c.name) for c in select.find_all(exp.Column) if c.table in (alias, "")}
    return used <= keys


def _connection_lost(error: BaseException) -> bool:
    """Whether ``error`` says the connection is gone (not that the statement failed)."""
    if isinstance(error, (ConnectionError, pymysql.err.InterfaceError)):
        return True
    return isinstance(error, pymysql.err.OperationalError) and bool(
        error.args and error.args[0] in _LOST
    )


def _drop(conn: aiomysql.Connection) -> None:
    """Close a connection's socket now, without flushing (the network may be frozen)."""
    writer = conn._writer
    if writer is not None:
        writer.transport.abort()
    conn.close()


def _connectorx_refusal(fragment: Fragment) -> str | None:
    """Why ConnectorX could not carry this fragment's output exactly (None: it can).

    ConnectorX reads every DECIMAL as decimal128(38, 10) through a 28-digit decimal, so wider
    or finer decimals (and AVG/division, whose scale MariaDB extends) stay on aiomysql.
    """
    try:
        import connectorx  # noqa: F401
    except ImportError:
        return "connectorx is not installed"
    if any(c not in fragment.types for c in fragment.columns):
        return "output types not all known"
    for c in fragment.columns:
        t = fragment.types[c]
        if pa.types.is_decimal(t) and (t.precision > 28 or t.scale > 10):
            return f"column {c!r} is {t}, finer than ConnectorX's decimal128(38, 10)"
        if pa.types.is_duration(t):
            return f"column {c!r} is TIME (ConnectorX reads it as a time of day)"
    if fragment.query.find(exp.Div, exp.Avg) is not None:
        return "division or AVG (MariaDB's result scale exceeds ConnectorX's)"
    return None


def _explain_estimates(query: exp.Expression) -> bool:
    """Whether MariaDB's EXPLAIN estimates the rows ``query`` returns: a plain SELECT of
    tables joined and filtered, no grouping, DISTINCT, LIMIT or subquery."""
    if not isinstance(query, exp.Select) or len(list(query.find_all(exp.Select))) != 1:
        return False
    if any(query.args.get(k) for k in ("group", "having", "distinct", "limit", "order")):
        return False
    return not any(isinstance(s.unalias(), exp.AggFunc) for s in query.selects)


def explained_rows(plan: dict[str, Any]) -> int | None:
    """Rows of a MariaDB/MySQL ``EXPLAIN FORMAT=JSON`` plan: the product of each table's
    rows x filtered %; None when a table's condition went unestimated (kept at 100 %: no
    histogram told the optimizer its selectivity; ``ANALYZE TABLE … PERSISTENT FOR ALL``
    collects them).

    >>> explained_rows({"query_block": {"table": {"rows": 1000, "filtered": 25.0}}})
    250
    >>> explained_rows({"query_block": {"table": {"access_type": "ALL", "rows": 1000,
    ...     "filtered": 100, "attached_condition": "o.d < '1995-01-01'"}}})
    """
    block = plan.get("query_block", {})
    steps = block.get("nested_loop", [block] if "table" in block else [])
    tables = [s.get("table") or s.get("block-nl-join", {}).get("table") for s in steps]
    if not tables or None in tables:
        return None
    if any(s.get("block-nl-join", {}).get("attached_condition") for s in steps):
        return None  # a join condition checked on the join buffer: its selectivity not estimated
    rows = 1.0
    for t in tables:
        filtered = float(t.get("filtered", 100))
        if t.get("attached_condition") and filtered >= 100:
            return None
        rows *= float(t.get("rows", 0)) * filtered / 100
    return max(1, round(rows))
