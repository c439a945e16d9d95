"""PostgreSQL through asyncpg: a lazy pool, prepared statements, server-side cursors.

``{"kind": "postgres", "dsn": "postgresql://user:${PGPASSWORD}@host:5432/db"}``

Rows stream from a cursor inside a read-only transaction, ``batch_rows`` at a time, and turn
into Arrow columns with exact types: NUMERIC(p, s) → decimal128(p, s), TIMESTAMPTZ → UTC,
CHAR(n) without its blank padding (PostgreSQL ignores it in comparisons, so joins elsewhere
must too), JSON as text.

Here: the adapter (catalog, translation, the row path, the COPY and partitioned-scan runs).
Its connections (pool, read-only transactions, teardown) are :mod:`pg_connections`; type
mapping and row conversion :mod:`pg_types`; the COPY format :mod:`pgcopy` and its SQL
:mod:`pg_bulk`; ctid-range partitions :mod:`pg_partitions` (all in ``federator.adapters``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import asyncpg
import pyarrow as pa
from federator.adapters import pgcopy
from federator.adapters.base import NativeRequest, Split, TableInfo, TableRef, whole_split
from federator.adapters.pg_bulk import (
    _BULK_BLOCK_BYTES,
    _decode,
    _empty_type,
    _filtered,
    _setting_sql,
    _split,
    _type_sql,
    replace_parameters,
)
from federator.adapters.pg_connections import PostgresConnections
from federator.adapters.pg_partitions import (
    _BEGIN_SNAPSHOT,
    _HIGH,
    _LOW,
    _PAGES_SQL,
    PartitionedScan,
    _drain,
    _snapshot_literal,
    ctid_ranges,
)
from federator.adapters.pg_types import (
    _CATALOG_SQL,
    _UNIQUE_SQL,
    _coerce_params,
    _output_type,
    _to_batch,
    _vector_lists,
    pg_arrow_type,
)
from federator.adapters.splits import describe_range, plain_scan, splittable_tree
from federator.adapters.sqlbase import BIND_PARAM
from sqlglot import exp

from federator.config import SourceConfig
from federator.deadline import cleanup
from federator.plan.model import bind_batches, grouped_bind_site
from federator.telemetry import bind_batch

if TYPE_CHECKING:
    from federator.plan.model import Fragment

BIND_BULK_KEYS = 1_000  # a bound fetch of at least this many keys may take the COPY path

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


def _one_row_per_key(tree: exp.Expression, key: exp.Column) -> bool:
    """Whether a fragment bound on ``key`` answers at most one row per key: its bind site
    (``grouped_bind_site``) groups by the key alone.

    >>> from sqlglot import parse_one
    >>> t = parse_one("SELECT t.k, SUM(t.v) AS s FROM t AS t GROUP BY t.k")
    >>> _one_row_per_key(t, exp.column("k", table="t"))
    True
    >>> _one_row_per_key(parse_one("SELECT t.k, t.v FROM t AS t"), exp.column("k", table="t"))
    False
    """
    if not isinstance(tree, exp.Select):
        return False
    site, where = grouped_bind_site(tree.copy(), key)
    group = site.args.get("group")
    keys = group.expressions if group is not None else []
    return len(keys) == 1 and keys[0] == where


class PostgresAdapter(PostgresConnections):
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
    computes_shared_ctes_once = True

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
            self._choose_bound_path(fragment, request)
        return self._bulk_when_unbound(fragment, request)

    def _choose_bound_path(self, fragment: Fragment, request: NativeRequest) -> None:
        """Bound keys of a large fragment go through COPY (as an ``unnest`` semi-join), unless
        the fragment answers one row per key: then the plain query's ``= ANY($1)`` is faster,
        as PostgreSQL hashes a constant array over a parallel scan, where it plans the
        semi-join for unnest's guessed 200 keys (TPC-H Q3's 147 k order keys: index probes,
        1.2 s, against 0.45 s)."""
        assert fragment.bind is not None
        if _one_row_per_key(request.payload.tree, fragment.bind.key):
            note = (
                "bound keys as a plain query (= ANY($1)), not through COPY: grouped by the "
                "key, it answers at most one row per key"
            )
        else:
            request.payload.bound_bulk = True
            note = (
                f"bound keys (from {BIND_BULK_KEYS:,}) through binary COPY: estimated "
                f"{fragment.estimated_rows or 0:,} rows >= bulk_rows {self.bulk_rows:,}"
            )
        if note not in fragment.notes:
            fragment.notes.append(note)

    def _bulk_when_unbound(self, fragment: Fragment, request: NativeRequest) -> NativeRequest:
        """Mark ``request`` for binary COPY where its size calls for it (run bound, only where
        ``bound_bulk`` says so)."""
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
        tree = self.localize(self.rules.rewrite(fragment.query, self.dialect))
        if not plain_scan(tree):
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
            with bind_batch(len(chunk)) as traced:
                async with contextlib.aclosing(bulk) as rows:
                    async for batch in rows:
                        traced.rows += batch.num_rows
                        yield batch

    async def run_bulk(
        self,
        text: str,
        params: list[Any],
        schema: pa.Schema | None,
        verify: bool = False,
        semi_join: int | None = None,
        snapshot: str | None = None,
    ) -> AsyncIterator[pa.RecordBatch]:
        """Run a SELECT through binary COPY and decode it into Arrow without row objects.

        COPY takes no parameters, so bound values travel as parameters of ``set_config``
        (transaction-local settings) and the query reads them back with ``current_setting``
        cast to the parameter's type: no value is ever written into the SQL text.
        ``snapshot``: an exported snapshot the transaction reads (REPEATABLE READ).
        """
        pool = await self._get_pool()
        conn = await (self._begin(pool, _BEGIN_SNAPSHOT) if snapshot else self._begin(pool))
        outcome: BaseException | None = None
        try:
            if snapshot:
                await conn.execute(f"SET TRANSACTION SNAPSHOT {_snapshot_literal(snapshot)}")
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

    # ---- splits (a distributed engine's scan) ----------------------------------------
    @contextlib.asynccontextmanager
    async def split_scan(self, request: NativeRequest, n: int) -> AsyncIterator[list[Split]]:
        """A plain scan of a table as ctid ranges (at most ``n``, at most one per page), all
        read in one snapshot: exported by a transaction held open until the context exits,
        set by each split's own transaction (:meth:`execute_split`). Other requests, and
        views (no ctid), are one split."""
        tree = splittable_tree(request)

        if tree is None:
            yield [whole_split(self.name, request)]
            return
        table = next(tree.find_all(exp.Table))
        name = exp.table_(table.name, db=table.db or None).sql(dialect="postgres", identify=True)
        pool = await self._get_pool()
        lead = await self._begin(pool, _BEGIN_SNAPSHOT)
        outcome: BaseException | None = None
        try:
            row = await lead.fetchrow(_PAGES_SQL, name)
            if row is None or row["kind"] not in ("r", "m"):
                yield [whole_split(self.name, request)]
            else:
                snapshot = await lead.fetchval("SELECT pg_catalog.pg_export_snapshot()")
                _snapshot_literal(snapshot)  # checked here, before any split carries it
                ranges = ctid_ranges(int(row["pages"]), max(1, min(n, int(row["pages"]))))
                cuts = [high for _, high in ranges[:-1]]
                ctid = exp.column("ctid", table=table.alias_or_name, quoted=True)
                requests = self.range_requests(request, tree, ctid, cuts)
                blocks = [block for block, _ in cuts]
                yield [
                    Split(
                        self.name, i, len(requests), r, snapshot, describe_range("ctid", blocks, i)
                    )
                    for i, r in enumerate(requests)
                ]
            await lead.execute("COMMIT")
        except BaseException as e:
            outcome = e
            raise
        finally:
            await self._release(pool, lead, outcome)

    async def execute_split(self, split: Split) -> AsyncIterator[pa.RecordBatch]:
        """One split: a ctid range in its own REPEATABLE READ READ ONLY transaction set to the
        split's snapshot, read through binary COPY; a split without snapshot as a request."""
        request = split.request
        if split.snapshot is None:
            source = self.execute(request)
        else:
            params = list(request.params)
            source = self.run_bulk(request.text, params, request.schema, snapshot=split.snapshot)
        async with contextlib.aclosing(source) as batches:
            async for batch in batches:
                yield batch

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

    async def estimate_rows(self, fragment: Fragment, request: NativeRequest) -> int | None:
        """PostgreSQL's estimate of the request's rows: EXPLAIN with its parameters bound, in a
        read-only transaction of its own (nothing runs)."""
        payload = request.payload
        values = dict(zip(request.param_names, request.params, strict=True))
        params = [values[n] for n in payload.unbound_names]
        pool = await self._get_pool()
        conn = await self._begin(pool)
        outcome: BaseException | None = None
        try:
            stmt = await conn.prepare(payload.unbound_text)
            ptypes = stmt.get_parameters()
            rows = await self._server_estimate(conn, payload.unbound_text, params, ptypes)
            await conn.execute("COMMIT")
            return max(1, round(rows))
        except BaseException as e:
            outcome = e
            raise
        finally:
            await self._release(pool, conn, outcome)

    async def _server_estimate(self, conn: Any, text: str, params: list[Any], ptypes: Any) -> float:
        """PostgreSQL's row estimate for a query (EXPLAIN with the parameters bound)."""
        values = _coerce_params(params, [p.name for p in ptypes])
        plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {text}", *values)
        return float(json.loads(plan)[0]["Plan"]["Plan Rows"])


def _copy_outcome(outcome: BaseException | None) -> BaseException | None:
    """How a COPY ended, for :meth:`PostgresAdapter._release`: an error of ours (a decode
    error, a non-finite NUMERIC) leaves the COPY half-read, so the connection is torn down."""
    if outcome is None or isinstance(outcome, asyncpg.PostgresError):
        return outcome
    return asyncio.CancelledError()
