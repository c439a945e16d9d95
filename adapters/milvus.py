"""Milvus through pymilvus: collections are tables.

``{"kind": "milvus", "uri": "/path/x.db"}`` opens a milvus-lite file in-process;
``{"kind": "milvus", "uri": "http://host:19530", "token": "${MILVUS_TOKEN}"}`` a server.

A fragment becomes one request (see rules/milvus.py for what is accepted):

- ``ORDER BY <vector> <op> <query vector> LIMIT k`` → ``search`` with the metric of the
  operator (``<->`` L2, ``<=>`` COSINE, ``<#>``/``inner_product`` IP), the WHERE clause as
  Milvus's filter expression, and only the fields the query needs as output fields. Distances
  come back in pgvector's terms: Milvus's squared L2 is square-rooted, cosine similarity
  becomes 1 - similarity, inner product is negated for ``<#>``.
- anything else → ``query`` (a scalar filter), streamed with a query iterator.

Bind joins append ``key in [...]`` to the filter, one request per batch of keys. Milvus has no
filter parameters everywhere (milvus-lite has none): values are rendered into the filter as
JSON literals, never as raw text; EXPLAIN shows the filter with ``:name`` placeholders.

pymilvus's synchronous client runs in worker threads (its async client cannot create
indexes on milvus-lite, and one client serves every call).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from federator.adapters.base import BindSpec, NativeRequest, TableInfo, TableRef
from federator.adapters.budget import server_seconds, teardown
from federator.adapters.threaded import ThreadedClientAdapter
from federator.rules.milvus import order_distance, vector_operands
from sqlglot import exp

from federator.config import SourceConfig
from federator.errors import CatalogError, SourceError, SourceUnreachableError, UnsupportedError
from federator.plan.model import Fragment
from federator.sql.dialect import VectorDistance, nearest, vector_value

METRICS = {"l2": "L2", "cosine": "COSINE", "neg_ip": "IP", "ip": "IP"}
_OPERATOR = {"L2": "<->", "COSINE": "<=>", "IP": "<#>"}  # the operator that searches an index
BIND_BATCH = 5_000


def milvus_arrow_type(field_type: Any, params: dict[str, Any]) -> pa.DataType:
    """Arrow type of a Milvus field type (pymilvus ``DataType``)."""
    name = getattr(field_type, "name", str(field_type)).upper()
    simple = {
        "BOOL": pa.bool_(),
        "INT8": pa.int8(),
        "INT16": pa.int16(),
        "INT32": pa.int32(),
        "INT64": pa.int64(),
        "FLOAT": pa.float32(),
        "DOUBLE": pa.float64(),
        "VARCHAR": pa.string(),
        "STRING": pa.string(),
        "JSON": pa.string(),
        "FLOAT_VECTOR": pa.list_(pa.float32()),
        "FLOAT16_VECTOR": pa.list_(pa.float32()),
        "BFLOAT16_VECTOR": pa.list_(pa.float32()),
    }
    if name in simple:
        return simple[name]
    if name == "ARRAY":
        inner = params.get("element_type")
        return pa.list_(milvus_arrow_type(inner, {}) if inner is not None else pa.string())
    return pa.string()


@dataclass
class Output:
    """One output column: a field, the search distance (``metric`` set), or a constant (the
    planner's ``SELECT 1 FROM t`` when no column is needed, as for ``count(*)``)."""

    name: str
    field: str | None = None
    metric: str | None = None
    constant: Any = None

    def of(self, row: dict[str, Any]) -> Any:
        """This output's value in a row of fields."""
        return self.constant if self.field is None else row.get(self.field)


@dataclass
class MilvusCall:
    """The request, adapter-private: what ``execute`` sends."""

    collection: str
    outputs: list[Output]
    filter: list[str | tuple[str, str]]  # text pieces and ("param", name) holes
    output_fields: list[str]
    anns_field: str | None = None
    metric: str | None = None
    vector: tuple[str, Any] | None = None  # ("param", name) or ("literal", [floats])
    limit: int | None = None
    offset: int = 0
    types: dict[str, pa.DataType] = field(default_factory=dict)
    pk: str | None = None
    index_metric: str | None = None  # set when the field's index has another metric: exact scan


class MilvusAdapter(ThreadedClientAdapter):
    """Milvus source; options: ``uri`` (a ``.db`` path or a server URL), ``token``,
    ``db_name``, ``timeout`` (seconds per call, default 60)."""

    kind = "milvus"
    case_insensitive_columns = False

    def __init__(self, config: SourceConfig):
        import federator.rules.milvus  # noqa: F401  (registers the rule set)

        super().__init__(config)
        if "uri" not in config.options:
            raise CatalogError(f"source {config.name!r} (milvus) needs a 'uri'")
        self.uri = str(config.options["uri"])
        self.db_name = str(config.options.get("db_name", "default"))
        self.default_schema = self.db_name
        self.call_timeout = float(config.options.get("timeout", 60))
        self._loaded: set[str] = set()
        self._schemas: dict[str, tuple[pa.Schema, str | None]] = {}
        self._index_metrics: dict[tuple[str, str], str] = {}  # (collection, field) -> metric

    @property
    def where(self) -> str:
        return self.uri

    # ---- connection ------------------------------------------------------------------
    def _connect(self) -> Any:
        try:
            from pymilvus import MilvusClient
        except ImportError as e:
            raise CatalogError(
                f"source kind 'milvus' needs pymilvus ({e.name}); "
                "install it with: pip install 'federator[milvus]'"
            ) from None
        kwargs: dict[str, Any] = {"timeout": self.call_timeout}
        if "token" in self.config.options:
            kwargs["token"] = str(self.config.options["token"])
        if self.db_name != "default":
            kwargs["db_name"] = self.db_name
        try:
            return MilvusClient(self.uri, **kwargs)
        except Exception as e:  # pymilvus raises its own and gRPC errors
            raise SourceUnreachableError(
                self.name, self.where, f"{type(e).__name__}: {e}"
            ) from None

    def _server_timeout(self) -> float:
        """The gRPC deadline of a request: the query's remaining time, at most the source's
        ``timeout``. At it the request ends and the worker thread waiting for it returns (a
        cancelled request cannot be called back otherwise); a Milvus server cancels the
        request's work, milvus-lite finishes a search it started."""
        return server_seconds(self.call_timeout) or self.call_timeout

    async def _call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        """``client.fn(*args, **kwargs)`` in a worker thread, with the gRPC deadline of
        :meth:`_server_timeout`."""
        client = await self._get_client()
        call = getattr(client, fn)
        return await asyncio.to_thread(call, *args, timeout=self._server_timeout(), **kwargs)

    # ---- catalog ---------------------------------------------------------------------
    async def tables(self) -> list[TableInfo]:
        names = await self._call("list_collections")
        infos = []
        for name in names:
            desc = await self._call("describe_collection", name)
            fields, pk = [], None
            for f in desc["fields"]:
                fields.append(
                    pa.field(f["name"], milvus_arrow_type(f["type"], f.get("params", {})))
                )
                if f.get("is_primary"):
                    pk = f["name"]
            schema = pa.schema(fields)
            self._schemas[name] = (schema, pk)
            await self._read_index_metrics(name)
            stats = await self._call("get_collection_stats", name)
            rows = int(stats.get("row_count", 0)) if isinstance(stats, dict) else None
            infos.append(TableInfo(self.name, TableRef(self.db_name, name), schema, rows))
        return infos

    async def _read_index_metrics(self, collection: str) -> None:
        for index in await self._call("list_indexes", collection):
            desc = await self._call("describe_index", collection, index)
            if desc and desc.get("field_name") and desc.get("metric_type"):
                key = (collection, desc["field_name"])
                self._index_metrics[key] = str(desc["metric_type"]).upper()

    # ---- translate (pure) ------------------------------------------------------------
    def translate(self, fragment: Fragment) -> NativeRequest:
        select = fragment.query
        if not isinstance(select, exp.Select):
            raise UnsupportedError(f"milvus takes one SELECT, not {type(select).__name__}")
        table = select.args["from_"].this
        collection = table.name
        schema, pk = self._schemas.get(collection, (None, None))
        names: list[str] = []
        outputs: list[Output] = []
        found = order_distance(select) if select.args.get("order") else None
        for proj in select.selects:
            inner = proj.unalias()
            if isinstance(inner, exp.Column):
                outputs.append(Output(proj.alias_or_name, field=inner.name))
            elif isinstance(inner, VectorDistance):
                outputs.append(Output(proj.alias_or_name, metric=inner.metric))
            elif isinstance(inner, exp.Literal) and inner.is_number:
                outputs.append(Output(proj.alias_or_name, constant=int(inner.this)))
            else:
                raise UnsupportedError(f"milvus cannot return {inner.sql()}")
        output_fields = sorted({o.field for o in outputs if o.field})
        filt = _filter(select.args.get("where"), names)
        call = MilvusCall(collection, outputs, filt, output_fields, pk=pk)
        limit = select.args.get("limit")
        if limit is not None:
            call.limit = int(limit.expression.this)
        offset = select.args.get("offset")
        if offset is not None:
            call.offset = int(offset.expression.this)
        if found is not None:
            distance, _ = found
            operands = vector_operands(distance)
            assert operands is not None
            col, vec = operands
            call.anns_field = col.name
            call.metric = distance.metric
            indexed = self._index_metrics.get((collection, col.name))
            if indexed is not None and indexed != METRICS[distance.metric]:
                call.index_metric = indexed
            if isinstance(vec, exp.Placeholder):
                call.vector = ("param", vec.name)
                if vec.name not in names:
                    names.append(vec.name)
            else:
                call.vector = ("literal", vector_value(vec.this))
        for o in outputs:
            if o.metric is not None and o.metric != call.metric:
                raise UnsupportedError("milvus returns only the distance it searches by")
        call.types = {o.name: fragment.types[o.name] for o in outputs if o.name in fragment.types}
        if schema is not None:
            call.types.update(
                {
                    o.name: schema.field(o.field).type
                    for o in outputs
                    if o.field and o.field in schema.names
                }
            )
        call.types.update({o.name: pa.float64() for o in outputs if o.metric})
        call.types.update({o.name: pa.int64() for o in outputs if not (o.field or o.metric)})
        request = NativeRequest(source=self.name, text=_describe(call), param_names=names)
        request.payload = call
        if fragment.bind is not None:
            request.bind = BindSpec(
                column=fragment.bind.key.name, style="in_list", batch_size=BIND_BATCH
            )
            request.text += (
                f"\n  bind: {fragment.bind.key.name} in [... up to {BIND_BATCH:,} keys per batch]"
            )
        request.schema = pa.schema([(o.name, call.types.get(o.name, pa.string())) for o in outputs])
        return request

    # ---- execute ---------------------------------------------------------------------
    async def execute(
        self, request: NativeRequest, bind_values: Sequence[Any] | None = None
    ) -> AsyncIterator[pa.RecordBatch]:
        call: MilvusCall = request.payload
        values = dict(zip(request.param_names, request.params, strict=True))
        base = "".join(p if isinstance(p, str) else _literal(values[p[1]]) for p in call.filter)
        await self._load(call.collection)
        if request.bind is None or bind_values is None:
            filters = [base]
        else:
            keys = list(bind_values)
            if not keys:
                yield _empty(request.schema)
                return
            size = request.bind.batch_size
            filters = []
            for start in range(0, len(keys), size):
                chunk = ", ".join(_literal(k) for k in keys[start : start + size])
                clause = f"{request.bind.column} in [{chunk}]"
                filters.append(f"({base}) and {clause}" if base else clause)
        for text in filters:
            if call.anns_field is not None:
                yield await self._search(call, text, values, request.schema)
            else:
                async for batch in self._query(call, text, request.schema):
                    yield batch

    async def _load(self, collection: str) -> None:
        if collection not in self._loaded:
            await self._call("load_collection", collection)
            self._loaded.add(collection)

    async def _search(
        self, call: MilvusCall, text: str, values: dict[str, Any], schema: pa.Schema
    ) -> pa.RecordBatch:
        assert call.vector is not None and call.metric is not None and call.limit is not None
        kind, vec = call.vector
        vector = vector_value(values[vec]) if kind == "param" else vec
        if vector is None:
            raise SourceError(f"the query vector of {call.collection} is not a list of numbers")
        if call.index_metric is not None:
            return await self._exact_search(call, text, vector, schema)
        hits = await self._call(
            "search",
            call.collection,
            data=[vector],
            anns_field=call.anns_field,
            limit=call.limit,
            offset=call.offset,
            filter=text,
            output_fields=call.output_fields or ([call.pk] if call.pk else []),
            search_params={"metric_type": METRICS[call.metric]},
        )
        rows = []
        for hit in hits[0] if hits else []:
            entity = hit.get("entity") or {}
            row = {}
            for o in call.outputs:
                if o.metric is not None:
                    row[o.name] = _distance(o.metric, hit["distance"])
                elif o.field in entity or o.field is None:
                    row[o.name] = o.of(entity)
                else:
                    row[o.name] = hit.get("id") if o.field == call.pk else None
            rows.append(row)
        return _batch(rows, schema)

    async def _exact_search(
        self, call: MilvusCall, text: str, vector: list[float], schema: pa.Schema
    ) -> pa.RecordBatch:
        """The top-k by the operator's own metric over every row the filter keeps: the index
        (built for another metric) would rank by its metric, and servers refuse the mismatch."""
        import numpy as np

        assert call.anns_field is not None and call.metric is not None and call.limit is not None
        fields = sorted({*call.output_fields, call.anns_field, *([call.pk] if call.pk else [])})
        scan = MilvusCall(call.collection, [Output(f, field=f) for f in fields], [], fields)
        scan.pk = call.pk
        known = self._schemas[call.collection][0]
        scan_schema = pa.schema([known.field(f) for f in fields])
        rows: list[dict[str, Any]] = []
        async for batch in self._query(scan, text, scan_schema):
            rows.extend(batch.to_pylist())
        if not rows:
            return _empty(schema)
        matrix = np.asarray([r[call.anns_field] for r in rows], dtype=np.float64)
        out = []
        for i, distance in nearest(call.metric, matrix, vector, call.offset, call.limit):
            row = rows[i]
            out.append(
                {o.name: distance if o.metric is not None else o.of(row) for o in call.outputs}
            )
        return _batch(out, schema)

    async def _query(
        self, call: MilvusCall, text: str, schema: pa.Schema
    ) -> AsyncIterator[pa.RecordBatch]:
        fields = call.output_fields or ([call.pk] if call.pk else [])
        if call.limit is not None:
            rows = await self._call(
                "query",
                call.collection,
                filter=text,
                output_fields=fields,
                limit=call.limit,
                offset=call.offset,
            )
            yield _batch([_project(call, r) for r in rows], schema)
            return
        if not text and call.pk:
            text = f"{call.pk} >= {-(2**63)}" if schema is not None else ""
        iterator = await self._call(
            "query_iterator",
            call.collection,
            filter=text or "",
            output_fields=fields,
            batch_size=min(self.batch_rows, 16_384),
        )
        first = True
        try:
            while True:
                rows = await asyncio.to_thread(iterator.next)
                if not rows:
                    break
                first = False
                yield _batch([_project(call, r) for r in rows], schema)
        finally:
            await teardown(asyncio.to_thread(iterator.close))
        if first:
            yield _empty(schema)


# ---- helpers -------------------------------------------------------------------------------
def _project(call: MilvusCall, row: dict[str, Any]) -> dict[str, Any]:
    return {o.name: o.of(row) for o in call.outputs}


def _distance(metric: str, value: float) -> float:
    if metric == "l2":
        return math.sqrt(max(value, 0.0))  # Milvus reports the squared distance
    if metric == "cosine":
        return 1.0 - value
    if metric == "neg_ip":
        return -value
    return value


def _batch(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(rows, schema=schema)


def _empty(schema: pa.Schema | None) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema or pa.schema([]))


def _literal(value: Any) -> str:
    """A value as a Milvus filter literal (JSON quoting for strings; never raw text)."""
    if value is None:
        raise SourceError("milvus filters cannot compare with NULL values")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return _string(str(value))


def _string(text: str) -> str:
    """A Milvus string literal: JSON quoting with non-ASCII letters as they are (Milvus's
    parser knows no ``\\u`` escapes: ``"Z\\u00fcrich"`` was refused)."""
    return json.dumps(text, ensure_ascii=False)


_OPS = {
    exp.EQ: "==",
    exp.NEQ: "!=",
    exp.GT: ">",
    exp.GTE: ">=",
    exp.LT: "<",
    exp.LTE: "<=",
}


def _filter(where: exp.Expression | None, names: list[str]) -> list[str | tuple[str, str]]:
    """Milvus's boolean expression for a WHERE clause, as text pieces and parameter holes."""
    if where is None:
        return []
    out: list[str | tuple[str, str]] = []

    def emit(node: exp.Expression) -> None:
        if isinstance(node, (exp.Is, exp.Like, exp.ILike)) and node.args.get("negate"):
            plain = node.copy()  # sqlglot writes x IS NOT NULL as Is(negate=True)
            plain.set("negate", None)
            emit(exp.Not(this=plain))
        elif isinstance(node, exp.Where):
            emit(node.this)
        elif isinstance(node, exp.Paren):
            out.append("(")
            emit(node.this)
            out.append(")")
        elif isinstance(node, exp.And | exp.Or):
            out.append("(")
            emit(node.this)
            out.append(" and " if isinstance(node, exp.And) else " or ")
            emit(node.expression)
            out.append(")")
        elif isinstance(node, exp.Not):
            out.append("not (")
            emit(node.this)
            out.append(")")
        elif type(node) in _OPS:
            emit(node.this)
            out.append(f" {_OPS[type(node)]} ")
            emit(node.expression)
        elif isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
            emit(node.this)
            out.append(" is null")
        elif isinstance(node, exp.In) and node.find_ancestor(exp.Not) is not None:
            # Milvus's `in` is false, not unknown, on a NULL value, so `not (x in [..])` kept
            # NULL rows (found by the conformance matrix); `==` is unknown there, as in SQL
            out.append("(")
            for i, e in enumerate(node.expressions):
                if i:
                    out.append(" or ")
                emit(exp.EQ(this=node.this.copy(), expression=e.copy()))
            out.append(")")
        elif isinstance(node, exp.In):
            emit(node.this)
            out.append(" in [")
            for i, e in enumerate(node.expressions):
                if i:
                    out.append(", ")
                emit(e)
            out.append("]")
        elif isinstance(node, exp.Like):
            emit(node.this)
            out.append(" like ")
            emit(node.expression)
        elif isinstance(node, exp.Between):
            out.append("(")
            emit(node.this)
            out.append(" >= ")
            emit(node.args["low"])
            out.append(" and ")
            emit(node.this)
            out.append(" <= ")
            emit(node.args["high"])
            out.append(")")
        elif isinstance(node, exp.Column):
            out.append(node.name)
        elif isinstance(node, exp.Placeholder):
            if node.name not in names:
                names.append(node.name)
            out.append(("param", node.name))
        elif isinstance(node, exp.Literal):
            out.append(_string(node.this) if node.is_string else node.this)
        elif isinstance(node, exp.Boolean):
            out.append("true" if node.this else "false")
        elif isinstance(node, exp.Neg):
            out.append("-")
            emit(node.this)
        else:
            raise UnsupportedError(f"milvus filter cannot express {node.sql()}")

    emit(where)
    return out


def _describe(call: MilvusCall) -> str:
    """The request as EXPLAIN prints it."""
    filt = "".join(p if isinstance(p, str) else f":{p[1]}" for p in call.filter)
    if call.anns_field is not None:
        vec = f":{call.vector[1]}" if call.vector and call.vector[0] == "param" else "literal"
        head = (
            f"search {call.collection}: anns_field={call.anns_field} "
            f"metric={METRICS[call.metric or 'l2']} vector={vec} limit={call.limit}"
        )
    else:
        head = f"query {call.collection}" + (f": limit={call.limit}" if call.limit else "")
    if call.offset:
        head += f" offset={call.offset}"
    lines = [head, f"  filter: {filt or '(none)'}", f"  output_fields: {call.output_fields}"]
    if call.index_metric is not None:
        wanted = METRICS[call.metric or "l2"]
        lines.append(
            f"  exact scan: the index on {call.anns_field} is {call.index_metric}, the operator "
            f"asks {wanted}: every row the filter keeps is read and ranked by {wanted} here "
            f"(create a {wanted} index, or order by {_OPERATOR[call.index_metric]} to search "
            "the index)"
        )
    dist = [o.name for o in call.outputs if o.metric]
    if dist:
        lines.append(f"  distance as: {', '.join(dist)}")
    return "\n".join(lines)
