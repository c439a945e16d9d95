"""PostgreSQL through asyncpg: a lazy pool, prepared statements, server-side cursors.

``{"kind": "postgres", "dsn": "postgresql://user:${PGPASSWORD}@host:5432/db"}``

Rows stream from a cursor inside a read-only transaction, ``batch_rows`` at a time, and turn
into Arrow columns with exact types: NUMERIC(p, s) → decimal128(p, s), TIMESTAMPTZ → UTC,
CHAR(n) without its blank padding (PostgreSQL ignores it in comparisons, so joins elsewhere
must too), JSON as text.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import itertools
import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncpg
import pyarrow as pa
from federator.adapters import pgcopy
from federator.adapters.arrowconv import rows_to_batch
from federator.adapters.base import NativeRequest, TableInfo, TableRef
from federator.adapters.sqlbase import BIND_PARAM, ServerSQLAdapter
from sqlglot import exp

from federator.config import SourceConfig
from federator.deadline import CLEANUP_SECONDS, cleanup
from federator.errors import SourceError
from federator.plan.model import bind_batches
from federator.sql.dialect import vector_text

if TYPE_CHECKING:
    from federator.plan.model import Fragment

_BULK_BLOCK_BYTES = 4 << 20  # decode the COPY stream in blocks of about this size
BIND_BULK_KEYS = 1_000  # a bound fetch of at least this many keys may take the COPY path
_LOW, _HIGH = "__ctid_low__", "__ctid_high__"  # parameters of a partition's ctid range
_MAX_BLOCK = 2**32 - 1  # a tid's block number is 32 bits: the open end of the last range
_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f-]+")
_BEGIN = "BEGIN READ ONLY"
_BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"
# What a pooled connection the server closed while it sat idle fails with on its first command
# (asyncpg notices the close a moment later: "cannot switch to state 15" is that race).
_DEAD_CONNECTION = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
)

# A relation's kind and current size in pages (not relpages: that is as of the last ANALYZE).
_PAGES_SQL = """
SELECT c.relkind AS kind,
       pg_catalog.pg_relation_size(c.oid) / current_setting('block_size')::bigint AS pages
FROM pg_catalog.pg_class c
WHERE c.oid = to_regclass($1::text)
"""

_CATALOG_SQL = """
SELECT n.nspname, c.relname, a.attname, t.typname, a.atttypmod,
       CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint ELSE s.n_live_tup END AS rows
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_stat_all_tables s ON s.relid = c.oid
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%'
  AND has_schema_privilege(n.oid, 'USAGE')
ORDER BY n.nspname, c.relname, a.attnum
"""

# Column sets unique on their own: primary keys and unique indexes without predicate or expression.
_UNIQUE_SQL = """
SELECT n.nspname, c.relname,
       array_agg(a.attname::text ORDER BY k.ord) AS cols
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
GROUP BY n.nspname, c.relname, i.indexrelid
"""

# Freshness tokens (see PostgresAdapter.freshness_token).
_SNAPSHOT_SQL = "SELECT pg_catalog.pg_current_snapshot()::text"
_TABLE_STATS_SQL = """
SELECT string_agg(
         c.oid::text || ':' || c.relfilenode::text || ':'
           || coalesce(s.n_tup_ins + s.n_tup_upd + s.n_tup_del, -1)::text,
         ',' ORDER BY c.oid) AS token,
       bool_and(c.relkind IN ('r', 'p')) AS plain
FROM unnest($1::text[], $2::text[]) AS w(nsp, rel)
JOIN pg_catalog.pg_namespace n ON n.nspname = w.nsp
JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = w.rel
LEFT JOIN pg_catalog.pg_stat_all_tables s ON s.relid = c.oid
"""

_SIMPLE_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "oid": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "text": pa.string(),
    "varchar": pa.string(),
    "bpchar": pa.string(),
    "name": pa.string(),
    "char": pa.string(),
    "uuid": pa.string(),
    "json": pa.string(),
    "jsonb": pa.string(),
    "xml": pa.string(),
    "inet": pa.string(),
    "cidr": pa.string(),
    "citext": pa.string(),
    "bytea": pa.binary(),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "interval": pa.month_day_nano_interval(),
}
_ARRAYS = {f"_{name}": pa.list_(t) for name, t in _SIMPLE_TYPES.items()}


def pg_arrow_type(typname: str, typmod: int = -1) -> pa.DataType | None:
    """Arrow type of a PostgreSQL type; None where only the values can tell (bare NUMERIC).

    >>> pg_arrow_type("numeric", (15 << 16) + 2 + 4)
    Decimal128Type(decimal128(15, 2))
    """
    if typname == "numeric":
        if typmod < 4:
            return None
        precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
        return (
            pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
        )
    if typname == "vector":
        return VECTOR
    return _SIMPLE_TYPES.get(typname) or _ARRAYS.get(typname) or pa.string()


VECTOR = pa.list_(pa.float32())  # pgvector's vector


def _vector_lists(batch: pa.RecordBatch, vectors: list[bool]) -> pa.RecordBatch:
    """pgvector columns, text ('[1,2,3]') on the wire and in COPY, as list<float32>."""
    if not any(vectors):
        return batch
    import pyarrow.compute as pc

    arrays = [
        pc.split_pattern(pc.utf8_trim(col, "[]"), ",").cast(VECTOR) if is_vector else col
        for col, is_vector in zip(batch.columns, vectors, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


class PostgresAdapter(ServerSQLAdapter):
    """PostgreSQL source; options: ``dsn``, ``max_concurrency`` (pool size), ``batch_rows``,
    ``bulk_rows`` (fragments estimated at this many rows or more stream through binary COPY,
    decoded by :mod:`federator.adapters.pgcopy`; ``0`` always, ``-1`` never; default from the
    environment variable ``FEDERATOR_BULK_ROWS``, else 50,000), ``scan_partitions`` (whole-table
    scans estimated at ``partition_rows`` or more, default 1,000,000, run as this many parallel
    ctid-range COPYs in one exported snapshot; default 1: off, as it did not pay on 2 cores).

    >>> from federator.config import SourceConfig
    >>> a = PostgresAdapter(SourceConfig("pg", "postgres", {"dsn": "postgresql://u@h/db"}))
    >>> a.scan_partitions, a.partition_rows
    (1, 1000000)
    """

    kind = "postgres"
    dialect = "postgres"
    param_style = "dollar"
    bind_style = "array"
    default_schema = "public"
    case_insensitive_columns = False

    default_port = 5432
    connect_errors = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)

    def __init__(self, config: SourceConfig):
        super().__init__(config)
        self.default_schema = str(config.options.get("schema", "public"))
        # Parallel ctid-range scans of whole tables: off unless scan_partitions >= 2 (they
        # did not pay on a 2-core machine, see bench/results); only for fragments estimated
        # at partition_rows or more.
        self.scan_partitions = int(config.options.get("scan_partitions", 1))
        self.partition_rows = int(config.options.get("partition_rows", 1_000_000))

    # ---- pool ------------------------------------------------------------------------
    async def _connect_pool(self) -> asyncpg.Pool:
        d = self.dsn
        pool = await asyncpg.create_pool(
            host=d.host,
            port=d.port,
            user=d.user,
            password=d.password,
            database=d.database,
            min_size=0,
            max_size=self.max_concurrency,
            timeout=self.connect_timeout,
            statement_cache_size=256,
            # Read-only sessions: even a statement that slipped past the planner cannot write.
            server_settings={
                "application_name": "federator",
                "default_transaction_read_only": "on",
            },
        )
        async with pool.acquire() as conn:  # fail here, not in the middle of a query
            await conn.execute("SELECT 1")
        return pool

    async def _close_pool(self, pool: asyncpg.Pool) -> None:
        try:
            await asyncio.wait_for(pool.close(), timeout=5)
        except TimeoutError:
            pool.terminate()

    # ---- freshness (federator.cache) ------------------------------------------------
    async def freshness_token(self, tables: Sequence[TableRef]) -> str | None:
        """A string that changes whenever the data of ``tables`` may have changed.

        Default (``cache_tokens = true`` or ``"snapshot"``): the server's current snapshot —
        every start or end of a writing transaction anywhere in the cluster changes it, so it
        is exact but coarse. ``cache_tokens = "stats"``: per-table write counters and file
        node — fine-grained, but PostgreSQL publishes counters up to ~10 s late, so a write
        may stay unseen that long (use invalidation for exactness)."""
        pool = await self._get_pool()
        mode = self.config.options.get("cache_tokens", True)
        snapshot = await pool.fetchval(_SNAPSHOT_SQL)
        if mode != "stats" or not tables:
            return f"snapshot:{snapshot}"
        row = await pool.fetchrow(
            _TABLE_STATS_SQL, [t.schema for t in tables], [t.name for t in tables]
        )
        if row is None or not row["plain"]:
            return f"snapshot:{snapshot}"  # views and the like: no counters of their own
        return f"stats:{row['token']}"

    # ---- catalog ---------------------------------------------------------------------
    async def tables(self) -> list[TableInfo]:
        rows = await self._fetch(_CATALOG_SQL)
        unique: dict[tuple[str, str], list[tuple[str, ...]]] = {}
        for r in await self._fetch(_UNIQUE_SQL):
            unique.setdefault((r["nspname"], r["relname"]), []).append(tuple(r["cols"]))
        grouped: dict[tuple[str, str], list[Any]] = {}
        for r in rows:
            grouped.setdefault((r["nspname"], r["relname"]), []).append(r)
        infos = []
        for (schema, name), cols in grouped.items():
            fields = [
                pa.field(
                    c["attname"],
                    pg_arrow_type(c["typname"], c["atttypmod"]) or pa.decimal128(38, 10),
                )
                for c in cols
            ]
            infos.append(
                TableInfo(
                    self.name,
                    TableRef(schema, name),
                    pa.schema(fields),
                    cols[0]["rows"],
                    tuple(unique.get((schema, name), ())),
                )
            )
        return infos

    # ---- bulk path -------------------------------------------------------------------
    def translate(self, fragment: Fragment) -> NativeRequest:
        request = super().translate(fragment)
        if fragment.bind is not None and self.uses_bulk(fragment.estimated_rows):
            request.payload.bound_bulk = True
            note = (
                f"bound keys (from {BIND_BULK_KEYS:,}) through binary COPY: estimated "
                f"{fragment.estimated_rows or 0:,} rows >= bulk_rows {self.bulk_rows:,}"
            )
            if note not in fragment.notes:
                fragment.notes.append(note)
        if self.uses_bulk(fragment.estimated_rows):
            # A filtered fragment's estimate is a guess: the server's own estimate (EXPLAIN,
            # same connection, parameters bound) confirms it before paying for COPY.
            verify = self.bulk_rows > 0 and _filtered(fragment.query)
            request.payload.bulk = "verify" if verify else True
            est = fragment.estimated_rows
            note = (
                "bulk: binary COPY decoded into Arrow ("
                + (f"estimated {est:,} rows >= " if est is not None else "")
                + f"bulk_rows {self.bulk_rows:,}"
                + ("; confirmed by PostgreSQL's estimate at run time" if verify else "")
                + ("; when the bind join is dropped at run time" if fragment.bind else "")
                + ")"
            )
            partitioned = not verify and self._partitioned_scan(fragment)
            if partitioned:
                request.payload.partitioned = partitioned
                note += (
                    f"; {partitioned.partitions} parallel ctid-range partitions (estimated "
                    f"{est or 0:,} rows >= partition_rows {self.partition_rows:,}), one "
                    f"connection each, all in one exported snapshot"
                )
            if note not in fragment.notes:
                fragment.notes.append(note)
        return request

    def _partitioned_scan(self, fragment: Fragment) -> PartitionedScan | None:
        """A whole-table scan split into ctid ranges, when configured and large enough."""
        n = min(self.scan_partitions, self.max_concurrency)
        if n < 2 or (fragment.estimated_rows or 0) < self.partition_rows:
            return None
        tree = self.localize(self.rules.rewrite(fragment.query))
        if not _plain_scan(tree):
            return None
        table = next(tree.find_all(exp.Table))
        ctid = exp.column("ctid", table=table.alias_or_name, quoted=True)
        ranged = tree.copy().where(
            exp.and_(
                exp.GTE(this=ctid.copy(), expression=exp.Placeholder(this=_LOW)),
                exp.LT(this=ctid, expression=exp.Placeholder(this=_HIGH)),
            )
        )
        text, names = self.render(ranged)
        name = exp.table_(table.name, db=table.db or None).sql(dialect="postgres", identify=True)
        return PartitionedScan(name, text, names, n)

    def uses_bulk(self, estimated_rows: int | None) -> bool:
        """Whether a fragment of this estimated size takes the binary COPY path."""
        if self.bulk_rows < 0:
            return False
        return self.bulk_rows == 0 or (estimated_rows or 0) >= self.bulk_rows

    async def execute(
        self, request: NativeRequest, bind_values: Sequence[Any] | None = None
    ) -> AsyncIterator[pa.RecordBatch]:
        payload = request.payload
        partitioned = getattr(payload, "partitioned", None)
        if getattr(payload, "bulk", False) and (request.bind is None or bind_values is None):
            values = dict(zip(request.param_names, request.params, strict=True))
            params = [values[n] for n in payload.unbound_names]
            if partitioned is not None:
                source = self.run_partitioned(
                    partitioned, values, payload.unbound_text, params, request.schema
                )
            else:
                source = self.run_bulk(
                    payload.unbound_text, params, request.schema, verify=payload.bulk == "verify"
                )
        elif getattr(payload, "bound_bulk", False) and len(bind_values or ()) >= BIND_BULK_KEYS:
            source = self._run_bound_bulk(request, list(bind_values or ()))
        else:
            source = super().execute(request, bind_values)
        async with contextlib.aclosing(source) as batches:
            async for batch in batches:
                yield batch

    async def _run_bound_bulk(
        self, request: NativeRequest, keys: list[Any]
    ) -> AsyncIterator[pa.RecordBatch]:
        """A bound fetch of many keys through binary COPY. The keys array travels like every
        COPY parameter (a transaction-local setting), so the predicate becomes a semi-join on
        ``unnest`` of it: ``= ANY`` over a non-constant array would scan the array per row."""
        assert request.bind is not None
        number = request.param_names.index(BIND_PARAM) + 1
        values = dict(zip(request.param_names, request.params, strict=True))
        start = 0
        for size in bind_batches(len(keys), request.bind.batch_size):
            chunk = keys[start : start + size]
            start += size
            params = [chunk if n == BIND_PARAM else values[n] for n in request.param_names]
            bulk = self.run_bulk(request.text, params, request.schema, semi_join=number)
            async with contextlib.aclosing(bulk) as rows:
                async for batch in rows:
                    yield batch

    async def run_bulk(
        self,
        text: str,
        params: list[Any],
        schema: pa.Schema | None,
        verify: bool = False,
        semi_join: int | None = None,
    ) -> AsyncIterator[pa.RecordBatch]:
        """Run a SELECT through binary COPY and decode it into Arrow without row objects.

        COPY takes no parameters, so bound values travel as parameters of ``set_config``
        (transaction-local settings) and the query reads them back with ``current_setting``
        cast to the parameter's type: no value is ever written into the SQL text.
        """
        pool = await self._get_pool()
        conn = await self._begin(pool)
        outcome: BaseException | None = None
        try:
            stmt = await conn.prepare(text)
            ptypes = stmt.get_parameters()
            if verify and await self._server_estimate(conn, text, params, ptypes) < self.bulk_rows:
                # A small answer, often of a large query (an aggregate): fetched whole, so that
                # PostgreSQL may run it with parallel workers, as it never does for a cursor.
                small = self._rows(conn, stmt, params, schema, whole=True)
                async with contextlib.aclosing(small) as rows:
                    async for batch in rows:
                        yield batch
            else:
                copied = self._copy(conn, stmt, text, params, schema, semi_join)
                async with contextlib.aclosing(copied) as batches:
                    async for batch in batches:
                        yield batch
            await conn.execute("COMMIT")
        except BaseException as e:
            outcome = e
            raise
        finally:
            await self._release(pool, conn, _copy_outcome(outcome))

    async def run_partitioned(
        self,
        scan: PartitionedScan,
        values: dict[str, Any],
        whole_text: str,
        whole_params: list[Any],
        schema: pa.Schema | None,
    ) -> AsyncIterator[pa.RecordBatch]:
        """A whole-table scan as ``scan.partitions`` COPYs of ctid ranges at once, one
        connection each, every transaction in the snapshot the first one exports (so the
        partitions add up to exactly one consistent table). Falls back to one COPY where the
        table has too few pages or is not a plain table (views have no ctid)."""
        pool = await self._get_pool()
        conns: list[Any] = []
        tasks: list[asyncio.Task[None]] = []
        outcome: BaseException | None = None
        try:
            conns.append(await self._begin(pool, _BEGIN_SNAPSHOT))
            lead = conns[0]
            row = await lead.fetchrow(_PAGES_SQL, scan.table)
            pages = int(row["pages"]) if row is not None and row["kind"] in ("r", "m") else 0
            n = min(scan.partitions, pages)
            if n < 2:
                stmt = await lead.prepare(whole_text)
                async with contextlib.aclosing(
                    self._copy(lead, stmt, whole_text, whole_params, schema)
                ) as batches:
                    async for batch in batches:
                        yield batch
            else:
                snapshot = await lead.fetchval("SELECT pg_catalog.pg_export_snapshot()")
                for _ in range(n - 1):
                    conn = await self._begin(pool, _BEGIN_SNAPSHOT)
                    conns.append(conn)
                    await conn.execute(f"SET TRANSACTION SNAPSHOT {_snapshot_literal(snapshot)}")
                queue: asyncio.Queue[pa.RecordBatch | BaseException | None] = asyncio.Queue(
                    maxsize=2 * n
                )
                for i, (low, high) in enumerate(ctid_ranges(pages, n)):
                    params = [{_LOW: low, _HIGH: high}.get(k, values.get(k)) for k in scan.names]
                    tasks.append(
                        asyncio.get_running_loop().create_task(
                            self._copy_into(conns[i], scan.text, params, schema, queue)
                        )
                    )
                async with contextlib.aclosing(_drain(queue, n)) as batches:
                    async for batch in batches:
                        yield batch
            for conn in conns:
                await conn.execute("COMMIT")
        except BaseException as e:
            outcome = e
            raise
        finally:
            for task in tasks:
                if not task.done():
                    task.cancel()
            for task in tasks:
                await cleanup(task)
            await asyncio.gather(
                *(self._release(pool, c, _copy_outcome(outcome)) for c in conns),
                return_exceptions=True,
            )

    async def _copy_into(
        self,
        conn: Any,
        text: str,
        params: list[Any],
        schema: pa.Schema | None,
        queue: asyncio.Queue[pa.RecordBatch | BaseException | None],
    ) -> None:
        """One partition's COPY into the shared queue: its batches, then None or its error."""
        try:
            stmt = await conn.prepare(text)
            async with contextlib.aclosing(self._copy(conn, stmt, text, params, schema)) as rows:
                async for batch in rows:
                    await queue.put(batch)
        except Exception as e:  # handed to the reader, which raises it
            await queue.put(e)
            return
        await queue.put(None)

    async def _copy(
        self,
        conn: Any,
        stmt: Any,
        text: str,
        params: list[Any],
        schema: pa.Schema | None,
        semi_join: int | None = None,
    ) -> AsyncIterator[pa.RecordBatch]:
        """The COPY of a prepared SELECT on ``conn`` (in a transaction), decoded in blocks.
        ``semi_join``: the number of an array parameter compared by ``= ANY``, rewritten to
        ``IN (SELECT unnest(...))`` once its type is known from the prepared statement."""
        ptypes = stmt.get_parameters()
        attrs = stmt.get_attributes()
        if semi_join is not None:
            text = text.replace(
                f"= ANY(${semi_join})", f"IN (SELECT pg_catalog.unnest(${semi_join}))"
            )
        if params:
            params = _coerce_params(params, [p.name for p in ptypes])
            names = [f"federator.p{i}" for i in range(1, len(params) + 1)]
            sets = ", ".join(
                f"set_config(${2 * i + 1}::text, (${2 * i + 2}::{_type_sql(t)})::text, true)"
                for i, t in enumerate(ptypes)
            )
            args = [v for pair in zip(names, params, strict=True) for v in pair]
            await conn.execute(f"SELECT {sets}", *args)
            text = replace_parameters(text, [_setting_sql(i, t) for i, t in enumerate(ptypes, 1)])
        known = {f.name: f.type for f in schema} if schema is not None else {}
        specs, casts = pgcopy.plan_columns(
            [a.name for a in attrs], [a.type.name for a in attrs], known
        )
        decoder = pgcopy.CopyDecoder(specs)
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=4)
        pending: list[bytes] = []
        size = 0

        async def sink(chunk: bytes) -> None:
            nonlocal size
            pending.append(chunk)
            size += len(chunk)
            if size >= _BULK_BLOCK_BYTES:
                block = b"".join(pending)
                pending.clear()
                size = 0
                await queue.put(block)

        async def copy() -> None:
            await conn.copy_from_query(
                pgcopy.copy_query(text.rstrip().rstrip(";"), casts),
                output=sink,
                format="binary",
            )
            if pending:
                await queue.put(b"".join(pending))
            await queue.put(None)

        task = asyncio.get_running_loop().create_task(copy())
        getter: asyncio.Future[bytes | None] | None = None
        try:
            yielded = False
            while True:
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    task.result()  # raises the COPY's error
                    continue
                block = getter.result()
                final = block is None
                if block is not None:
                    decoder.feed(block)
                batch = await asyncio.to_thread(_decode, decoder, final)
                if batch is not None:
                    batch = _vector_lists(batch, [a.type.name == "vector" for a in attrs])
                if batch is not None and (batch.num_rows or not yielded):
                    yielded = True
                    for piece in _split(batch, self.batch_rows):
                        yield piece
                if final:
                    break
            await task
            if not yielded:
                yield pa.RecordBatch.from_pylist(
                    [], schema=pa.schema([pa.field(s.name, _empty_type(s)) for s in specs])
                )
        finally:
            if getter is not None and not getter.done():
                getter.cancel()
            if not task.done():
                task.cancel()
                await cleanup(task)

    # ---- execution -------------------------------------------------------------------
    async def run(
        self, text: str, params: list[Any], schema: pa.Schema | None
    ) -> AsyncIterator[pa.RecordBatch]:
        pool = await self._get_pool()
        conn = await self._begin(pool)
        outcome: BaseException | None = None
        try:
            stmt = await conn.prepare(text)
            async with contextlib.aclosing(self._rows(conn, stmt, params, schema)) as rows:
                async for batch in rows:
                    yield batch
            await conn.execute("COMMIT")
        except BaseException as e:
            outcome = e
            raise
        finally:
            await self._release(pool, conn, outcome)

    # ---- connections: dead ones replaced, interrupted ones torn down with their backend --------
    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        """Every row of one statement, in its own transaction (see :meth:`_begin`)."""
        pool = await self._get_pool()
        conn = await self._begin(pool)
        outcome: BaseException | None = None
        try:
            rows = await conn.fetch(sql, *args)
            await conn.execute("COMMIT")
            return rows
        except BaseException as e:
            outcome = e
            raise
        finally:
            await self._release(pool, conn, outcome)

    async def _begin(self, pool: asyncpg.Pool, begin: str = _BEGIN) -> Any:
        """A pooled connection inside a new read-only transaction. A connection the server
        closed while idle in the pool fails on this first command: it is dropped and the
        transaction begun once more on another (nothing of the query was sent yet)."""
        for attempt in (1, 2):
            conn = await pool.acquire()
            try:
                await conn.execute(begin)
                return conn
            except _DEAD_CONNECTION:
                _close_now(conn)
                await pool.release(conn)
                if attempt == 2:
                    raise
            except BaseException as e:
                await self._release(pool, conn, e)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _release(self, pool: asyncpg.Pool, conn: Any, outcome: BaseException | None) -> None:
        """Give ``conn`` back. After a clean end, an error the server reported, or a consumer
        that stopped between two cursor fetches (GeneratorExit; the COPY path never passes it
        here), the connection is healthy: rolled back and pooled. After anything else (a
        timeout, a cancel, a lost or frozen connection, a half-read COPY) the server may still
        be working on it: the connection is closed at once and its backend terminated from
        another connection, all within :data:`CLEANUP_SECONDS`."""
        if (
            outcome is None
            or isinstance(outcome, GeneratorExit)  # row path: the server waits between fetches
            or (
                isinstance(outcome, asyncpg.PostgresError)
                and not isinstance(outcome, _DEAD_CONNECTION)
            )
        ):
            try:
                if outcome is not None:
                    await asyncio.wait_for(conn.execute("ROLLBACK"), CLEANUP_SECONDS)
                await asyncio.wait_for(pool.release(conn), CLEANUP_SECONDS)
                return
            except (Exception, asyncio.CancelledError):
                pass  # fall through: tear it down
        pid = _close_now(conn)
        await pool.release(conn)
        if pid is not None:
            await cleanup(self._terminate_backend(pid))

    async def _terminate_backend(self, pid: int) -> None:
        """End the server process of an abandoned connection (its query with it): a cancel
        request would not stop a backend blocked writing to a frozen socket; this does."""
        d = self.dsn
        conn = await asyncpg.connect(
            host=d.host,
            port=d.port,
            user=d.user,
            password=d.password,
            database=d.database,
            timeout=CLEANUP_SECONDS,
            server_settings={"application_name": "federator-cancel"},
        )
        try:
            await conn.fetchval("SELECT pg_catalog.pg_terminate_backend($1)", pid)
        finally:
            conn.terminate()

    async def _rows(
        self,
        conn: Any,
        stmt: Any,
        params: list[Any],
        schema: pa.Schema | None,
        whole: bool = False,
    ) -> AsyncIterator[pa.RecordBatch]:
        """The row path: a server-side cursor, ``batch_rows`` Python rows at a time; or, for
        an answer known to be small, one fetch of it ``whole`` (a cursor's partial fetches
        keep PostgreSQL from using parallel workers)."""
        params = _coerce_params(params, [p.name for p in stmt.get_parameters()])
        attrs = stmt.get_attributes()
        names = [a.name for a in attrs]
        vectors = [a.type.name == "vector" for a in attrs]
        types = [
            pa.string() if v else _output_type(a.name, a.type.name, schema)
            for a, v in zip(attrs, vectors, strict=True)
        ]
        padded = [a.type.name == "bpchar" for a in attrs]
        if whole:
            rows = await stmt.fetch(*params)
            for start in range(0, max(len(rows), 1), self.batch_rows):
                chunk = rows[start : start + self.batch_rows]
                yield _vector_lists(_to_batch(chunk, names, types, padded), vectors)
            return
        cursor = await stmt.cursor(*params)
        first = True
        while True:
            rows = await cursor.fetch(self.batch_rows)
            if rows or first:
                yield _vector_lists(_to_batch(rows, names, types, padded), vectors)
            first = False
            if len(rows) < self.batch_rows:
                break

    async def _server_estimate(self, conn: Any, text: str, params: list[Any], ptypes: Any) -> float:
        """PostgreSQL's row estimate for a query (EXPLAIN with the parameters bound)."""
        values = _coerce_params(params, [p.name for p in ptypes])
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {text}", *values)
        return float(json.loads(plan)[0]["Plan"]["Plan Rows"])


def _close_now(conn: Any) -> int | None:
    """Close a pooled connection without a word to the server; its backend's pid, or None
    when asyncpg had already closed it (and handed it back to the pool)."""
    try:
        pid = conn.get_server_pid()
        conn.terminate()
    except asyncpg.InterfaceError:
        return None
    return pid


def _copy_outcome(outcome: BaseException | None) -> BaseException | None:
    """How a COPY ended, for :meth:`PostgresAdapter._release`: an error of ours (a decode
    error, a non-finite NUMERIC) leaves the COPY half-read, so the connection is torn down."""
    if outcome is None or isinstance(outcome, asyncpg.PostgresError):
        return outcome
    return asyncio.CancelledError()


@dataclass(frozen=True)
class PartitionedScan:
    """A whole-table scan run as ctid ranges: the table, the SELECT with its range as two
    parameters, the parameter names in order, and how many partitions."""

    table: str  # quoted name for to_regclass
    text: str
    names: list[str]
    partitions: int


def ctid_ranges(pages: int, partitions: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """``[low, high)`` tid ranges covering a table of ``pages`` pages in ``partitions`` even
    parts; the last is open-ended, so rows in pages added since the size was read count too.

    >>> ctid_ranges(10, 3)
    [((0, 0), (3, 0)), ((3, 0), (6, 0)), ((6, 0), (4294967295, 0))]
    """
    bounds = [pages * i // partitions for i in range(partitions)] + [_MAX_BLOCK]
    return [((lo, 0), (hi, 0)) for lo, hi in itertools.pairwise(bounds)]


def _plain_scan(tree: exp.Expression) -> bool:
    """A SELECT of columns of one table: no join, grouping, ordering, limit or nesting."""
    if not isinstance(tree, exp.Select):
        return False
    if any(tree.args.get(k) for k in ("joins", "group", "having", "order", "limit", "offset")):
        return False
    if tree.args.get("distinct") or tree.find(exp.AggFunc, exp.Window) is not None:
        return False
    tables = list(tree.find_all(exp.Table))
    return len(tables) == 1 and len(list(tree.find_all(exp.Select))) == 1


def _snapshot_literal(snapshot: str) -> str:
    """A snapshot id as a SQL literal (SET TRANSACTION SNAPSHOT takes no parameters)."""
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise SourceError(f"unexpected snapshot id from pg_export_snapshot(): {snapshot!r}")
    return f"'{snapshot}'"


async def _drain(
    queue: asyncio.Queue[pa.RecordBatch | BaseException | None], partitions: int
) -> AsyncIterator[pa.RecordBatch]:
    """Batches from the partitions' queue until each has finished; the first failure raises."""
    left = partitions
    while left:
        item = await queue.get()
        if item is None:
            left -= 1
        elif isinstance(item, BaseException):
            raise item
        else:
            yield item


def _output_type(name: str, typname: str, schema: pa.Schema | None) -> pa.DataType | None:
    if schema is not None and name in schema.names:
        return schema.field(name).type
    return pg_arrow_type(typname)


def _to_batch(
    rows: list[Any], names: list[str], types: list[pa.DataType | None], padded: list[bool]
) -> pa.RecordBatch:
    if any(padded) and rows:
        rows = [
            tuple(
                v.rstrip(" ") if p and v is not None else v for v, p in zip(r, padded, strict=True)
            )
            for r in rows
        ]
    for i, t in enumerate(types):
        if t is not None and pa.types.is_decimal(t) and rows:
            _check_finite_decimals(rows, i, names[i])
    return rows_to_batch(rows, names, types)


def _check_finite_decimals(rows: list[Any], i: int, name: str) -> None:
    for r in rows:
        v = r[i]
        if v is not None and not v.is_finite():
            raise SourceError(
                f"column {name!r} holds NUMERIC {v}, which decimal128 cannot hold; "
                f"cast it to double precision in the query"
            )


def _coerce_params(params: list[Any], types: list[str]) -> list[Any]:
    """asyncpg wants Python values of the parameter's server type; accept text for dates,
    timestamps and numbers as PostgreSQL itself would."""
    return [_coerce(v, t) for v, t in zip(params, types, strict=False)]


def _coerce(value: Any, typname: str) -> Any:
    if typname == "vector":  # pgvector: asyncpg has no codec for it and sends text
        return vector_text(value)
    if not isinstance(value, str):
        if typname == "numeric" and isinstance(value, (int, float)):
            return decimal.Decimal(str(value))
        if typname in ("float4", "float8") and isinstance(value, decimal.Decimal):
            return float(value)
        return value
    try:
        if typname == "date":
            return dt.date.fromisoformat(value)
        if typname in ("timestamp", "timestamptz"):
            parsed = dt.datetime.fromisoformat(value)
            if typname == "timestamptz" and parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            return parsed
        if typname in ("int2", "int4", "int8"):
            return int(value)
        if typname in ("float4", "float8"):
            return float(value)
        if typname == "numeric":
            return decimal.Decimal(value)
    except (ValueError, decimal.InvalidOperation):
        from federator.errors import ParameterError

        raise ParameterError(f"parameter value {value!r} is not a valid {typname}") from None
    return value


def _filtered(query: Any) -> bool:
    """Whether a fragment's row count depends on predicates, joins, grouping or a limit."""
    from sqlglot import exp

    return any(query.find(kind) is not None for kind in (exp.Where, exp.Join, exp.Group, exp.Limit))


def _decode(decoder: pgcopy.CopyDecoder, final: bool) -> pa.RecordBatch | None:
    try:
        return decoder.decode(final)
    except pgcopy.CopyDecodeError as e:
        raise SourceError(str(e)) from None


def _split(batch: pa.RecordBatch, rows: int) -> list[pa.RecordBatch]:
    if batch.num_rows <= rows:
        return [batch]
    return [batch.slice(i, rows) for i in range(0, batch.num_rows, rows)]


def _empty_type(spec: pgcopy.ColumnSpec) -> pa.DataType:
    return pa.decimal128(38, 0) if pa.types.is_null(spec.type) else spec.type


def _setting_sql(number: int, t: Any) -> str:
    """Parameter ``$number`` read back from its setting, once per query: as a scalar subquery
    (an initplan; an expression would be re-read and re-parsed for every row). An array's
    subquery is cast again, so that ``= ANY(...)`` takes it as an array, not as a subquery's
    rows.

    >>> from types import SimpleNamespace as T
    >>> print(_setting_sql(1, T(schema=None, name="int4")))
    (SELECT current_setting('federator.p1')::"pg_catalog"."int4")
    >>> print(_setting_sql(2, T(schema=None, name="int8[]")))
    ((SELECT current_setting('federator.p2')::"pg_catalog"."int8"[])::"pg_catalog"."int8"[])
    """
    type_sql = _type_sql(t)
    read = f"(SELECT current_setting('federator.p{number}')::{type_sql})"
    return f"({read}::{type_sql})" if str(t.name).endswith("[]") else read


def _type_sql(t: Any) -> str:
    """A parameter's type as SQL: schema-qualified, quoted (asyncpg names arrays ``elem[]``).

    >>> from types import SimpleNamespace as T
    >>> _type_sql(T(schema="pg_catalog", name="int8[]")), _type_sql(T(schema=None, name="date"))
    ('"pg_catalog"."int8"[]', '"pg_catalog"."date"')
    """
    schema = str(t.schema or "pg_catalog").replace('"', '""')
    name = str(t.name)
    suffix = "[]" if name.endswith("[]") else ""
    name = name.removesuffix("[]").replace('"', '""')
    return f'"{schema}"."{name}"{suffix}'


def replace_parameters(text: str, replacements: list[str]) -> str:
    r"""``$n`` placeholders in SQL text replaced, skipping string literals, quoted identifiers,
    comments and dollar-quoted strings.

    >>> replace_parameters("SELECT '$1', \"$1\", $1 -- $1", ["x"])
    'SELECT \'$1\', "$1", x -- $1'
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "'" or c == '"':
            backslash = (
                c == "'"
                and i > 0
                and text[i - 1] in "eE"
                and not (i > 1 and (text[i - 2].isalnum() or text[i - 2] == "_"))
            )
            j = i + 1
            while j < n:
                if backslash and text[j] == "\\":
                    j += 2
                    continue
                if text[j] == c:
                    if j + 1 < n and text[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(text[i:j])
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(text[i:j])
            i = j
        elif c == "$":
            j = i + 1
            while j < n and text[j].isdigit():
                j += 1
            if j > i + 1 and not (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
                out.append(replacements[int(text[i + 1 : j]) - 1])
                i = j
                continue
            k = text.find("$", i + 1)
            tag = text[i : k + 1] if k >= 0 else ""
            if tag and all(ch.isalnum() or ch == "_" for ch in tag[1:-1]):
                end = text.find(tag, k + 1)
                end = n if end < 0 else end + len(tag)
                out.append(text[i:end])
                i = end
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)
