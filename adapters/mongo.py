"""MongoDB through motor: collections as tables, one aggregation pipeline per fragment.

Catalog entry::

    [sources.mongo]
    kind = "mongo"
    url = "mongodb://127.0.0.1:27017/?directConnection=true"
    database = "shop"          # optional: the namespace of unqualified names (mongo.orders)
    databases = ["shop"]       # optional: which databases to list (default: all but system ones)
    sample_size = 1000         # documents sampled per collection for an undeclared schema
    connect_timeout = 10       # seconds to wait for a usable server (`timeout` is its old name)
    [sources.mongo.tables."shop.orders".columns]   # optional declared schema
    _id = "objectid"
    amount = "decimal(12,2)"
    "address.city" = "string"

Tables are ``source.database.collection``. An undeclared schema is sampled and unified per field;
embedded documents become struct columns *and* dotted leaf columns (``"address.city"``), arrays
become lists, ``_id`` is the ObjectId's hex string. Values convert as: ObjectId → string,
Decimal128 → decimal128, dates → timestamp[ms, UTC], int32/int64 → int64, double → float64.
A column declared ``json`` holds the embedded document as a JSON string.

``translate`` is pure: it turns the fragment's SELECT into a pipeline (the rule set in
:mod:`federator.rules.mongo` guarantees it can), which EXPLAIN prints in shell notation
(:mod:`federator.adapters.mongo_pipeline`; column types and BSON values are
:mod:`federator.adapters.mongo_types`).
``execute`` streams the cursor in batches; bind-join keys arrive as a leading ``$in`` match.
A running aggregation has no driver-side timeout (no socket timeout, no heartbeat that may
interrupt it): only the query's ``timeout`` ends it, with a ``QueryTimeoutError``. The server
is told the query's remaining time as ``maxTimeMS``, and an interrupted aggregation (timeout,
cancel, a result closed early) has its cursor killed and its operation killed (``killOp``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pyarrow as pa
from federator.adapters.arrowconv import to_array
from federator.adapters.base import (
    Adapter,
    BindSpec,
    NativeRequest,
    Split,
    TableInfo,
    TableRef,
    whole_split,
)
from federator.adapters.budget import query_timeout, server_ms, teardown
from federator.adapters.mongo_pipeline import BindKeys, Param, Pipeline, Translator, substitute
from federator.adapters.mongo_types import (
    Collection,
    FieldSpec,
    decimal_array,
    declared_fields,
    from_bson,
    sampled_fields,
    to_bson,
)
from federator.adapters.splits import describe_range, integer_cuts
from federator.rules import mongo as _mongo_rules  # noqa: F401  (registers the rule set)
from federator.rules.mongo import latest_per_key
from sqlglot import exp

from federator.config import SourceConfig, redact_dsn
from federator.errors import (
    CatalogError,
    QueryTimeoutError,
    SourceError,
    SourceUnreachableError,
    UnsupportedError,
)
from federator.plan.model import Fragment
from federator.telemetry import bind_batch

SYSTEM_DATABASES = ("admin", "local", "config")
DEFAULT_SAMPLE = 1000
DEFAULT_BIND_BATCH = 10_000


# ---- the adapter ------------------------------------------------------------------------------
class MongoAdapter(Adapter):
    """``{"kind": "mongo", "url": "mongodb://host:port/", "database": "shop"}``"""

    kind = "mongo"
    document_params = True  # a dict parameter binds as a document

    def __init__(self, config: SourceConfig):
        super().__init__(config)
        opts = config.options
        url = opts.get("url") or opts.get("dsn")
        if not url:
            raise CatalogError(f"source {config.name!r} (mongo) needs a 'url' (mongodb://...)")
        self.url = str(url)
        self.default_schema = str(opts.get("database", ""))
        databases = opts.get("databases")
        if databases is None and self.default_schema:
            databases = [self.default_schema]
        self.databases: list[str] | None = list(databases) if databases is not None else None
        self.sample_size = int(opts.get("sample_size", DEFAULT_SAMPLE))
        self.discover = bool(opts.get("discover", True))
        self.bind_batch_size = int(opts.get("bind_batch_size", DEFAULT_BIND_BATCH))
        self.connect_timeout = connect_timeout(config)
        self.declared: dict[TableRef, Collection] = {}
        for key, spec in (opts.get("tables") or {}).items():
            db, _, coll = str(key).partition(".")
            if not coll:
                if not self.default_schema:
                    raise CatalogError(
                        f"source {config.name!r}: table {key!r} must be 'database.collection'"
                    )
                db, coll = self.default_schema, db
            ref = TableRef(db, coll)
            spec = spec or {}
            fields = declared_fields(spec.get("columns") or {})
            if "_id" not in fields and spec.get("columns"):
                fields = {"_id": FieldSpec("_id", pa.string(), "objectid"), **fields}
            rows = spec.get("rows")
            self.declared[ref] = Collection(ref, fields, int(rows) if rows is not None else None)
        self.collections: dict[TableRef, Collection] = dict(self.declared)
        self._client: Any = None
        self._checkouts: Any = None  # a pool listener, made with the client

    @property
    def where(self) -> str:
        return redact_dsn(self.url)

    async def open(self) -> None:
        if self._client is not None:
            return
        from motor.motor_asyncio import AsyncIOMotorClient

        # Only the query's timeout ends a running aggregation (QueryTimeoutError). The driver
        # waits connect_timeout for a usable server, and nothing on a socket: its monitors use
        # connectTimeoutMS as their socket timeout too, and a heartbeat that times out while
        # the server is busy interrupts every running operation on that server.
        self._checkouts = _checked_out_listener()
        self._client = AsyncIOMotorClient(
            self.url,
            tz_aware=True,
            serverSelectionTimeoutMS=int(self.connect_timeout * 1000),
            connectTimeoutMS=None,
            socketTimeoutMS=None,
            maxPoolSize=max(self.max_concurrency, 1),
            event_listeners=[self._checkouts],
        )

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def connections_in_use(self) -> int | None:
        return None if self._client is None else self._checkouts.in_use

    async def _call(self, what: str, coro: Any) -> Any:
        from pymongo.errors import ConnectionFailure, PyMongoError, ServerSelectionTimeoutError

        try:
            return await coro
        except (ServerSelectionTimeoutError, ConnectionFailure) as e:
            raise SourceUnreachableError(self.name, self.where, str(e).split(",")[0]) from None
        except PyMongoError as e:
            raise SourceError(f"source {self.name!r} (mongo): {what} failed: {e}") from None

    # ---- metadata ------------------------------------------------------------------------
    async def tables(self) -> list[TableInfo]:
        refs = list(self.declared)
        if self.discover or any(c.rows is None or not c.fields for c in self.declared.values()):
            await self.open()
        if self.discover:
            names = self.databases
            if names is None:
                names = [
                    d
                    for d in await self._call("list databases", self._client.list_database_names())
                    if d not in SYSTEM_DATABASES
                ]
            for db in names:
                colls = await self._call(
                    "list collections", self._client[db].list_collection_names()
                )
                for coll in sorted(colls):
                    if coll.startswith("system."):
                        continue
                    ref = TableRef(db, coll)
                    if ref not in refs:
                        refs.append(ref)
        infos = []
        for ref in refs:
            collection = await self._describe(ref)
            self.collections[ref] = collection
            infos.append(TableInfo(self.name, ref, collection.schema(), collection.rows))
        return infos

    async def _describe(self, ref: TableRef) -> Collection:
        declared = self.declared.get(ref)
        fields = declared.fields if declared is not None and declared.fields else None
        rows = declared.rows if declared is not None else None
        coll = None if self._client is None else self._client[ref.schema][ref.name]
        if fields is None:
            docs = await self._call(f"sampling {ref}", self._sample(coll))
            fields = sampled_fields(docs) or {"_id": FieldSpec("_id", pa.string(), "objectid")}
        if rows is None and coll is not None:
            rows = await self._call(f"counting {ref}", coll.estimated_document_count())
        return Collection(ref, fields, rows)

    async def _sample(self, coll: Any) -> list[dict[str, Any]]:
        from pymongo.errors import OperationFailure

        try:
            cursor = coll.aggregate([{"$sample": {"size": self.sample_size}}])
            return await cursor.to_list(length=self.sample_size)
        except OperationFailure:
            return await coll.find().limit(self.sample_size).to_list(length=self.sample_size)

    # ---- translate (pure) ----------------------------------------------------------------
    def translate(self, fragment: Fragment) -> NativeRequest:
        query = self.rules.rewrite(fragment.query)  # rules may write a node as another
        latest = latest_per_key(query)
        read = latest.inner if latest is not None else query
        if not isinstance(read, exp.Select) or not isinstance(
            read.args.get("from_") and read.args["from_"].this, exp.Table
        ):
            why = self.rules.refusal(query) or "it does not read one collection"
            raise UnsupportedError(
                f"source {self.name!r} (mongo) cannot run this as one pipeline ({why}): "
                f"{query.sql()}"
            )
        table = read.args["from_"].this
        ref = TableRef(table.db, table.name)
        collection = self.collections.get(ref) or Collection(ref, {})
        translator = Translator(query, collection)
        pipe = translator.pipeline()
        request = NativeRequest(source=self.name, text="", payload=pipe)
        request.param_names = sorted({p.name for p in _walk_params(pipe.stages)})
        if fragment.bind is not None:
            # Before any $unwind: on an element's field (items.product_id) it keeps documents
            # with some matching element; the residual's join drops the other elements.
            spec = translator.spec(fragment.bind.key)
            pipe.bind_field, pipe.bind_spec = spec.path, spec
            pipe.stages.insert(0, {"$match": {spec.path: {"$in": BindKeys()}}})
            request.bind = BindSpec(column=spec.path, style="$in", batch_size=self.bind_batch_size)
        request.text = pipe.text(self.bind_batch_size)
        types = dict(fragment.types)
        schema = []
        for column, _, spec in pipe.outputs:
            t = types.get(column)
            if t is None and spec is not None:
                t = spec.type
            if t is not None:
                schema.append((column, t))
        request.schema = pa.schema(schema)
        return request

    # ---- splits (a distributed engine's scan) --------------------------------------------
    @contextlib.asynccontextmanager
    async def split_scan(self, request: NativeRequest, n: int) -> AsyncIterator[list[Split]]:
        """A pipeline of per-document stages ($match, $project, …) as at most ``n`` ranges of
        ``_id``, cut evenly between the collection's least and greatest ``_id`` (ObjectIds as
        96-bit numbers, so ids made in one second split too), at most one per document; the
        first range is open below, the last open above. Only when every ``_id`` is of one
        BSON type (the least and greatest are: types sort apart) and it is an ObjectId or a
        number, since a range matches one type only. Otherwise one split."""
        pipe: Pipeline = request.payload
        cuts = await self._id_cuts(pipe, n) if _per_document(request) and n > 1 else []
        if not cuts:
            yield [whole_split(self.name, request)]
            return
        splits = []
        for i in range(len(cuts) + 1):
            bounds: dict[str, Any] = {}
            if i > 0:
                bounds["$gte"] = cuts[i - 1]
            if i < len(cuts):
                bounds["$lt"] = cuts[i]
            ranged = dataclasses.replace(pipe, stages=[{"$match": {"_id": bounds}}, *pipe.stages])
            part = dataclasses.replace(request, payload=ranged, text=ranged.text())
            shown = describe_range("_id", [str(c) for c in cuts], i)
            splits.append(Split(self.name, i, len(cuts) + 1, part, None, shown))
        yield splits

    async def _id_cuts(self, pipe: Pipeline, n: int) -> list[Any]:
        """Inner ``_id`` bounds for at most ``n`` even ranges (see :meth:`split_scan`)."""
        from bson import ObjectId

        await self.open()
        coll = self._client[pipe.database][pipe.collection]
        what = f"split of {pipe.database}.{pipe.collection}"
        ends = []
        for order in (1, -1):
            docs = await self._call(
                what, coll.find({}, {"_id": 1}).sort("_id", order).limit(1).to_list(length=1)
            )
            ends.append(docs[0]["_id"] if docs else None)
        low, high = ends
        count = await self._call(what, coll.estimated_document_count())
        if isinstance(low, ObjectId) and isinstance(high, ObjectId):
            cuts = integer_cuts(_oid_int(low), _oid_int(high), min(n, count))
            return [ObjectId(c.to_bytes(12, "big")) for c in cuts]
        if _whole_number(low) and _whole_number(high):
            return integer_cuts(int(low), int(high), min(n, count))
        return []

    # ---- execute -------------------------------------------------------------------------
    async def execute(
        self, request: NativeRequest, bind_values: Sequence[Any] | None = None
    ) -> AsyncIterator[pa.RecordBatch]:
        pipe: Pipeline = request.payload
        await self.open()
        coll = self._client[pipe.database][pipe.collection]
        params = dict(zip(request.param_names, request.params, strict=True))
        stages = substitute(pipe.stages, params)
        if pipe.bind_field is not None:
            rest = stages[1:]  # stages[0] is the $match that shows where the keys go
            if bind_values is None:
                runs = [rest]
            else:
                keys = [to_bson(k, pipe.bind_spec) for k in bind_values]
                size = self.bind_batch_size
                runs = [
                    [{"$match": {pipe.bind_field: {"$in": keys[i : i + size]}}}, *rest]
                    for i in range(0, len(keys), size)
                ] or [[{"$match": {pipe.bind_field: {"$in": []}}}, *rest]]
        else:
            runs = [stages]
        rows = 0
        bound = pipe.bind_field is not None and bind_values is not None
        for stages_run in runs:
            keys = len(stages_run[0]["$match"][pipe.bind_field]["$in"]) if bound else None
            with bind_batch(keys) as traced:
                async for batch in self._run(coll, pipe, stages_run, request.schema):
                    rows += batch.num_rows
                    traced.rows += batch.num_rows
                    yield batch
        if rows == 0 and pipe.global_defaults is not None:
            yield self._batch(pipe, [dict(pipe.global_defaults)], request.schema)

    async def _run(
        self, coll: Any, pipe: Pipeline, stages: list[dict[str, Any]], schema: pa.Schema | None
    ) -> AsyncIterator[pa.RecordBatch]:
        from pymongo.errors import ExecutionTimeout, PyMongoError

        # The comment names the operation for a killOp; maxTimeMS makes the server itself end
        # it just after the query's deadline, should no kill reach it (a frozen network).
        comment = f"federator {uuid.uuid4().hex}"
        options: dict[str, Any] = {"batchSize": min(self.batch_rows, 10_000), "comment": comment}
        limit = server_ms()
        if limit is not None:
            options["maxTimeMS"] = limit
        cursor = coll.aggregate(stages, **options)
        yielded = finished = False
        try:
            while True:  # one Arrow batch per batch_rows documents, never the whole result
                docs = await cursor.to_list(length=self.batch_rows)
                if not docs:
                    break
                yield self._batch(pipe, docs, schema)
                yielded = True
                if len(docs) < self.batch_rows and not cursor.alive:
                    break
            finished = True
        except ExecutionTimeout:
            raise QueryTimeoutError(
                query_timeout() or 0,
                f"aggregate on {pipe.database}.{pipe.collection} (source {self.name!r})",
            ) from None
        except PyMongoError as e:
            raise SourceError(
                f"source {self.name!r} (mongo): aggregate on "
                f"{pipe.database}.{pipe.collection} failed: {e}"
            ) from None
        finally:
            if finished:
                await cursor.close()
            else:  # a timeout, a cancel, a closed result, an error: stop the server's work
                await teardown(self._stop(cursor, comment))
        if not yielded:
            yield self._batch(pipe, [], schema)

    async def _stop(self, cursor: Any, comment: str) -> None:
        """End an interrupted aggregation on the server: kill its cursor (killCursors) and,
        while the aggregate command itself still runs, the operation (killOp, found by its
        comment through $currentOp). Both at once: closing a cursor whose aggregate command
        has not answered waits for that answer, which the killOp is there to cut short. A
        server without these answers with errors, which are ignored: maxTimeMS still bounds
        the work (CongoDB, the test server, has no killOp and no $currentOp stage and runs an
        aggregation it started to its end)."""
        await asyncio.gather(self._close_cursor(cursor), self._kill_by_comment(comment))

    @staticmethod
    async def _close_cursor(cursor: Any) -> None:
        from pymongo.errors import PyMongoError

        with contextlib.suppress(PyMongoError):
            await cursor.close()

    async def _kill_by_comment(self, comment: str) -> None:
        from pymongo.errors import PyMongoError

        admin = self._client.admin
        with contextlib.suppress(PyMongoError):
            ops = await admin.aggregate(
                [{"$currentOp": {}}, {"$match": {"command.comment": comment}}]
            ).to_list(length=None)
            for op in ops:
                await admin.command("killOp", op=op["opid"])

    def _batch(
        self, pipe: Pipeline, docs: list[dict[str, Any]], schema: pa.Schema | None
    ) -> pa.RecordBatch:
        arrays, names = [], []
        for column, out, spec in pipe.outputs:
            t = schema.field(column).type if schema is not None and column in schema.names else None
            if t is not None and _native(t) and (spec is None or spec.bson == "plain"):
                try:  # values the driver already decoded to what Arrow takes
                    arrays.append(pa.array([d.get(out) for d in docs], type=t))
                    names.append(column)
                    continue
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
                    pass
            if t is not None and pa.types.is_decimal(t) and t.bit_width == 128:
                fast = decimal_array([d.get(out) for d in docs], t)
                if fast is not None:
                    arrays.append(fast)
                    names.append(column)
                    continue
            values = [from_bson(d.get(out), spec) for d in docs]
            if t is not None and pa.types.is_decimal(t):  # a server that sums decimals as double
                values = [round(v, t.scale) if isinstance(v, float) else v for v in values]
            try:
                arrays.append(to_array(values, t))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
                where = spec.path if spec is not None else column
                raise SourceError(
                    f"source {self.name!r} (mongo): field {where!r} of "
                    f"{pipe.database}.{pipe.collection} does not convert to {t}: {e}; "
                    f"declare its type in the catalog"
                ) from None
            names.append(column)
        return pa.RecordBatch.from_arrays(arrays, names=names)


_PER_DOCUMENT = {"$match", "$project", "$addFields", "$set", "$unset", "$unwind"}


def _per_document(request: NativeRequest) -> bool:
    """Whether each document's rows come from that document alone (no grouping, sorting,
    limit or lookup), so documents may be read in parts."""
    pipe = request.payload
    return (
        isinstance(pipe, Pipeline)
        and request.bind is None
        and pipe.bind_field is None
        and pipe.global_defaults is None
        and all(set(stage) <= _PER_DOCUMENT for stage in pipe.stages)
    )


def _oid_int(oid: Any) -> int:
    return int.from_bytes(oid.binary, "big")


def _whole_number(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def connect_timeout(config: SourceConfig) -> float:
    """Seconds a request waits for a usable server (connecting included): the catalog's
    ``connect_timeout`` (``timeout`` is its older name), default 10. A running aggregation has
    no driver timeout; the query's own ``timeout`` ends it.

    >>> connect_timeout(SourceConfig("m", "mongo", {"url": "mongodb://h", "timeout": 3}))
    3.0
    """
    opts = config.options
    if "read_timeout" in opts or "socket_timeout" in opts:
        raise CatalogError(
            f"source {config.name!r} (mongo): a running aggregation has no socket timeout; "
            "remove 'read_timeout'/'socket_timeout' and give the query a 'timeout' "
            "(federator.connect(..., timeout=S) or fed.sql(..., timeout=S))"
        )
    value = opts.get("connect_timeout", opts.get("timeout", 10.0))
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0:
        raise CatalogError(
            f"source {config.name!r} (mongo): 'connect_timeout' must be a positive number of "
            f"seconds, not {value!r}"
        )
    return seconds


def _native(t: pa.DataType) -> bool:
    """Arrow types whose values pymongo already decodes to matching Python objects."""
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_string(t)
        or (pa.types.is_timestamp(t) and t.tz is not None)
    )


def _walk_params(value: Any) -> list[Param]:
    if isinstance(value, Param):
        return [value]
    if isinstance(value, dict):
        return [p for v in value.values() for p in _walk_params(v)]
    if isinstance(value, list):
        return [p for v in value for p in _walk_params(v)]
    return []


def _checked_out_listener() -> Any:
    """A pymongo pool listener counting connections checked out (motor's pool tells no count)."""
    from pymongo import monitoring

    class CheckedOut(monitoring.ConnectionPoolListener):
        def __init__(self) -> None:
            self.in_use = 0

        def connection_checked_out(self, event: Any) -> None:
            self.in_use += 1

        def connection_checked_in(self, event: Any) -> None:
            self.in_use -= 1

        def pool_created(self, event: Any) -> None: ...
        def pool_ready(self, event: Any) -> None: ...
        def pool_cleared(self, event: Any) -> None: ...
        def pool_closed(self, event: Any) -> None: ...
        def connection_created(self, event: Any) -> None: ...
        def connection_ready(self, event: Any) -> None: ...
        def connection_closed(self, event: Any) -> None: ...
        def connection_check_out_started(self, event: Any) -> None: ...
        def connection_check_out_failed(self, event: Any) -> None: ...

    return CheckedOut()
