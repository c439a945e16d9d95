"""Qdrant through qdrant-client: collections are tables, payload fields columns.

``{"kind": "qdrant", "path": "/data/vectors"}`` opens a local-mode folder in-process;
``{"kind": "qdrant", "url": "http://host:6333", "api_key": "${QDRANT_API_KEY}"}`` a server.

A collection's columns: the point id (``id``, or the option ``id_column``), its payload fields
(sampled from the first ``sample_size`` points, 1000, or declared under ``tables.<name>.columns``
as for MongoDB) and its vectors (``list<float32>``: one column per named vector, ``vector``
for an unnamed one). A fragment becomes one request (see rules/qdrant.py for what is accepted):

- ``ORDER BY <vector> <op> <query vector> LIMIT k`` → ``query_points`` with the WHERE clause as
  a Qdrant ``Filter`` and only the payload fields the query needs. Scores come back in
  pgvector's terms: Euclid is the distance itself, Cosine similarity becomes 1 - similarity,
  Dot is negated for ``<#>``. An operator whose metric is not the vector's distance (``<=>``
  on a Euclid vector) is ranked exactly instead, as for Milvus: every point the filter keeps
  is read with its vector and ranked by the operator's metric here (a Cosine vector is stored
  normalized by Qdrant: ``<->`` and ``<#>`` on it see the unit vectors).
- anything else → ``scroll`` with the filter, in pages.

SQL's three-valued logic is kept: a missing, null or empty-list payload value is NULL, a
comparison with it is unknown, so a negated comparison (``NOT x = 1``, ``x <> 1``) also
requires the field (``must_not: [is_empty(x), x = 1]``). Bind joins add ``key in [...]``
(``has_id`` on the point id), one request per batch of keys. Values are set into the filter
when the request runs, as model objects (never text); EXPLAIN shows ``:name`` placeholders.

qdrant-client's synchronous client runs in worker threads; local mode serves one call at a
time (its storage is not thread-safe) and one client per folder (a file lock).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
from federator.adapters.arrowconv import to_array
from federator.adapters.base import BindSpec, NativeRequest, TableInfo, TableRef
from federator.adapters.budget import server_seconds
from federator.adapters.declared import parse_type
from federator.adapters.threaded import ThreadedClientAdapter
from federator.rules.base import Rule
from federator.rules.qdrant import RANGES, column_and_value, numeric_between, numeric_range
from federator.rules.vectors import order_distance, vector_operands
from sqlglot import exp

from federator.config import SourceConfig, redact_dsn
from federator.errors import CatalogError, SourceError, SourceUnreachableError, UnsupportedError
from federator.plan.model import Fragment
from federator.sql.dialect import VectorDistance, nearest, vector_value

# Qdrant's distance of a vector -> the federated metric its search answers (None: no operator)
DISTANCES = {"Euclid": "l2", "Cosine": "cosine", "Dot": "ip", "Manhattan": None}
_SEARCHES = {"l2": "Euclid", "cosine": "Cosine", "neg_ip": "Dot", "ip": "Dot"}
_OPERATOR = {"Euclid": "<->", "Cosine": "<=>", "Dot": "<#>"}
UNNAMED_VECTOR = "vector"
_PAYLOAD = ("payload", "unknown")  # column roles read from the payload
_TIMED = frozenset({"scroll", "query_points"})  # calls that take a server-side timeout
DEFAULT_SAMPLE = 1000
BIND_BATCH = 5_000
FALSE: dict[str, Any] = {"must": [{"has_id": []}]}  # matches no point


# ---- columns ---------------------------------------------------------------------------------
@dataclass
class Column:
    """One column of a collection: the point id, a payload field or a vector."""

    name: str
    type: pa.DataType
    role: str = "payload"  # "id" | "payload" | "vector"
    vector: str | None = None  # the vector's name in Qdrant ("" for the unnamed one)
    distance: str | None = None  # the vector's Qdrant distance


@dataclass
class Collection:
    name: str
    columns: dict[str, Column]
    rows: int | None = None

    def schema(self) -> pa.Schema:
        return pa.schema([(c.name, c.type) for c in self.columns.values()])


def payload_type(values: Sequence[Any]) -> pa.DataType:
    """The Arrow type of sampled payload values: numbers, strings, booleans, lists of one of
    them; anything mixed (or a nested object) is its JSON text.

    >>> payload_type([1, 2.5, None]), payload_type([[1, 2], []]), payload_type([{"a": 1}])
    (DataType(double), ListType(list<item: int64>), DataType(string))
    """
    kinds = {_kind(v) for v in values} - {"null"}
    if kinds == {"list"}:
        items = [x for v in values if isinstance(v, list) for x in v]
        inner = payload_type(items)
        return pa.list_(inner) if items and _kind(items[0]) != "dict" else pa.string()
    simple = {
        frozenset({"bool"}): pa.bool_(),
        frozenset({"int"}): pa.int64(),
        frozenset({"float"}): pa.float64(),
        frozenset({"int", "float"}): pa.float64(),
    }
    return simple.get(frozenset(kinds), pa.string())


def _kind(value: Any) -> str:
    if value is None or value == []:
        return "null"
    for kind, cls in (("bool", bool), ("int", int), ("float", float), ("list", list)):
        if isinstance(value, cls):
            return kind
    return "dict" if isinstance(value, dict) else "str"


# ---- the request -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """A parameter hole, filled when the request runs (``negate``: written ``-:name``)."""

    name: str
    negate: bool = False


@dataclass
class Leaf:
    """One comparison of a column with a value (or values), true where SQL's is true; with
    ``negated`` where SQL's is false (the field present and the comparison not true)."""

    op: str  # "eq" | "in" | "range" | "empty"
    key: str
    value: Any = None  # a value, a Param, a list of them, or {"gt": ..} bounds for "range"
    negated: bool = False
    is_id: bool = False
    is_float: bool = False


@dataclass
class Output:
    """One output column: a column of the collection, the distance (``metric`` set) or a
    constant (the planner's ``SELECT 1 FROM t`` when no column is needed)."""

    name: str
    column: Column | None = None
    metric: str | None = None
    constant: Any = None


@dataclass
class QdrantCall:
    """The request, adapter-private: what ``execute`` sends."""

    collection: str
    outputs: list[Output]
    filter: Any  # a tree of {"must"/"should"/"must_not": [...]} and Leaf, or None
    payload: list[str]
    vectors: list[str]
    using: str | None = None  # the vector searched by ("" the unnamed one)
    metric: str | None = None
    query: tuple[str, Any] | None = None  # ("param", name) or ("literal", [floats])
    limit: int | None = None
    offset: int = 0
    exact: str | None = None  # the vector's distance when the operator asks another metric


class QdrantAdapter(ThreadedClientAdapter):
    """Qdrant source; options: ``path`` (a local-mode folder) or ``url`` with ``api_key``,
    ``timeout`` (seconds per call, default 60), ``id_column``, ``sample_size``, ``tables``
    (declared payload columns per collection).

    >>> from federator.config import SourceConfig
    >>> QdrantAdapter(SourceConfig("q", "qdrant", {"url": "http://h:6333", "api_key": "s"}))
    <QdrantAdapter 'q' at http://h:6333>
    """

    kind = "qdrant"
    case_insensitive_columns = False
    default_schema = ""

    def __init__(self, config: SourceConfig):
        import federator.rules.qdrant  # noqa: F401  (registers the rule set)

        super().__init__(config)
        opts = config.options
        self.path = str(opts["path"]) if opts.get("path") else None
        self.url = str(opts["url"]) if opts.get("url") else None
        if (self.path is None) == (self.url is None):
            raise CatalogError(
                f"source {config.name!r} (qdrant) needs one of 'path' (a local-mode folder) "
                "and 'url' (a server)"
            )
        if self.path is not None and not os.path.isdir(self.path):
            raise CatalogError(
                f"source {config.name!r} (qdrant): path {self.path!r} is not a folder"
            )
        self.call_timeout = float(opts.get("timeout", 60))
        self.id_column = str(opts.get("id_column", "id"))
        self.sample_size = int(opts.get("sample_size", DEFAULT_SAMPLE))
        self.declared = {
            str(name): {
                str(k): parse_type(str(v)) for k, v in (spec or {}).get("columns", {}).items()
            }
            for name, spec in (opts.get("tables") or {}).items()
        }
        self.collections: dict[str, Collection] = {}
        # held by the worker thread itself: a call cancelled by the query's timeout runs on to
        # its end in its thread, and the next call waits for it
        self._local_lock = threading.Lock() if self.path is not None else None
        not_on_id = [
            Rule(cls, guard=self._not_point_id, name="no range over the point id")
            for cls in (*RANGES, exp.Between)
        ]
        self.rules.add(*not_on_id)

    @property
    def where(self) -> str:
        return self.path or redact_dsn(str(self.url))

    def _not_point_id(self, node: exp.Expression) -> bool:
        """Qdrant filters point ids by membership only (``has_id``), never by range."""
        if isinstance(node, exp.Between):
            return node.this.name != self.id_column and numeric_between(node)
        found = column_and_value(node)
        return found is not None and found[0].name != self.id_column and numeric_range(node)

    # ---- connection ------------------------------------------------------------------------
    def _connect(self) -> Any:
        try:
            from qdrant_client import QdrantClient
        except ImportError as e:
            raise CatalogError(
                f"source kind 'qdrant' needs qdrant-client ({e.name}); "
                "install it with: pip install 'federator[qdrant]'"
            ) from None
        try:
            if self.path is not None:
                return QdrantClient(path=self.path)
            api_key = self.config.options.get("api_key")
            return QdrantClient(
                url=self.url,
                api_key=str(api_key) if api_key else None,
                timeout=max(1, round(self.call_timeout)),
                check_compatibility=False,  # a version round trip per connect; errors say enough
            )
        except Exception as e:  # a local folder locked by another client, a bad URL
            raise SourceUnreachableError(self.name, self.where, _reason(e, self.config)) from None

    async def _call(self, fn: str, *args: Any, **kwargs: Any) -> Any:
        """``client.fn(*args, **kwargs)`` in a worker thread; a server is told the query's
        remaining time (at most the source's ``timeout``), local mode one call at a time."""
        client = await self._get_client()
        call = getattr(client, fn)
        try:
            if self._local_lock is None:
                if fn in _TIMED:  # the others run under the client's own timeout
                    seconds = server_seconds(self.call_timeout) or self.call_timeout
                    kwargs["timeout"] = max(1, int(seconds + 0.999))
                return await asyncio.to_thread(call, *args, **kwargs)
            return await asyncio.to_thread(_locked, self._local_lock, call, *args, **kwargs)
        except (SourceError, UnsupportedError):
            raise
        except Exception as e:  # qdrant-client raises its own, httpx and gRPC errors
            if _unreachable(e):
                raise SourceUnreachableError(
                    self.name, self.where, _reason(e, self.config)
                ) from None
            raise SourceError(
                f"qdrant source {self.name!r} ({self.where}): {fn} failed: "
                f"{_reason(e, self.config)}"
            ) from None

    # ---- catalog ---------------------------------------------------------------------------
    async def tables(self) -> list[TableInfo]:
        response = await self._call("get_collections")
        infos = []
        for desc in response.collections:
            collection = await self._describe(desc.name)
            self.collections[desc.name] = collection
            infos.append(
                TableInfo(
                    self.name,
                    TableRef(self.default_schema, desc.name),
                    collection.schema(),
                    collection.rows,
                    unique_keys=((self.id_column,),),
                )
            )
        return infos

    async def _describe(self, name: str) -> Collection:
        info = await self._call("get_collection", name)
        points, _ = await self._call(
            "scroll", name, limit=self.sample_size, with_payload=True, with_vectors=False
        )
        id_type = pa.int64() if all(isinstance(p.id, int) for p in points) else pa.string()
        columns = {self.id_column: Column(self.id_column, id_type, role="id")}
        vectors = info.config.params.vectors
        named = vectors if isinstance(vectors, dict) else {"": vectors} if vectors else {}
        vector_columns = {vname or UNNAMED_VECTOR for vname in named}
        declared = self.declared.get(name, {})
        seen: dict[str, list[Any]] = {}
        for p in points:
            for key, value in (p.payload or {}).items():
                seen.setdefault(key, []).append(value)
        for key, t in {**{k: payload_type(v) for k, v in seen.items()}, **declared}.items():
            if key != self.id_column and key not in vector_columns:  # those hide a payload field
                columns[key] = Column(key, t)
        for vname, params in named.items():
            column = vname or UNNAMED_VECTOR
            distance = getattr(params.distance, "value", str(params.distance))
            columns[column] = Column(
                column, pa.list_(pa.float32()), "vector", vector=vname, distance=distance
            )
        return Collection(name, columns, info.points_count)

    # ---- translate (pure) ------------------------------------------------------------------
    def translate(self, fragment: Fragment) -> NativeRequest:
        select = fragment.query
        if not isinstance(select, exp.Select):
            raise UnsupportedError(f"qdrant takes one SELECT, not {type(select).__name__}")
        name = select.args["from_"].this.name
        collection = self.collections.get(name) or Collection(name, {})
        names: list[str] = []
        outputs = [self._output(proj, collection) for proj in select.selects]
        where = select.args.get("where")
        tree = _Filter(collection, names).true(where.this) if where is not None else None
        call = QdrantCall(
            name,
            outputs,
            tree,
            payload=sorted(
                {o.column.name for o in outputs if o.column and o.column.role in _PAYLOAD}
            ),
            vectors=sorted(
                {o.column.vector or "" for o in outputs if o.column and o.column.role == "vector"}
            ),
        )
        for arg in ("limit", "offset"):
            node = select.args.get(arg)
            if node is not None:
                setattr(call, arg, int(node.expression.this))
        found = order_distance(select) if select.args.get("order") else None
        if found is not None:
            self._search(call, found[0], collection, names)
        for o in outputs:
            if o.metric is not None and o.metric != call.metric:
                raise UnsupportedError("qdrant returns only the distance it searches by")
        request = NativeRequest(source=self.name, text=_describe(call), param_names=names)
        request.payload = call
        if fragment.bind is not None:
            key = fragment.bind.key.name
            request.bind = BindSpec(column=key, style="in_list", batch_size=BIND_BATCH)
            known = collection.columns.get(key)
            sent = "has_id" if known is not None and known.role == "id" else f"{key} in"
            request.text += f"\n  bind: {sent} [... up to {BIND_BATCH:,} keys per batch]"
        request.schema = pa.schema([(o.name, _output_type(o, fragment)) for o in outputs])
        return request

    def _output(self, proj: exp.Expression, collection: Collection) -> Output:
        inner = proj.unalias()
        if isinstance(inner, exp.Column):
            column = collection.columns.get(inner.name) or Column(
                inner.name, pa.string(), "unknown"
            )
            return Output(proj.alias_or_name, column=column)
        if isinstance(inner, VectorDistance):
            return Output(proj.alias_or_name, metric=inner.metric)
        if isinstance(inner, exp.Literal) and inner.is_number:
            return Output(proj.alias_or_name, constant=int(inner.this))
        raise UnsupportedError(f"qdrant cannot return {inner.sql()}")

    def _search(
        self, call: QdrantCall, distance: VectorDistance, collection: Collection, names: list[str]
    ) -> None:
        operands = vector_operands(distance)
        assert operands is not None
        col, vec = operands
        column = collection.columns.get(col.name)
        if column is None or column.role != "vector":
            raise UnsupportedError(
                f"qdrant collection {collection.name!r} has no vector {col.name!r}"
            )
        call.using, call.metric = column.vector, distance.metric
        if column.distance != _SEARCHES[distance.metric]:
            call.exact = column.distance or "unknown"
        if isinstance(vec, exp.Placeholder):
            call.query = ("param", vec.name)
            if vec.name not in names:
                names.append(vec.name)
        else:
            call.query = ("literal", vector_value(vec.this))

    # ---- execute ---------------------------------------------------------------------------
    async def execute(
        self, request: NativeRequest, bind_values: Sequence[Any] | None = None
    ) -> AsyncIterator[pa.RecordBatch]:
        call: QdrantCall = request.payload
        values = dict(zip(request.param_names, request.params, strict=True))
        for tree in self._filters(call, request, values, bind_values):
            if tree is FALSE:
                yield _empty(request.schema)
            elif call.metric is not None:
                yield await self._query_points(call, tree, values, request.schema)
            else:
                async for batch in self._scroll(call, tree, request.schema):
                    yield batch

    def _filters(
        self,
        call: QdrantCall,
        request: NativeRequest,
        values: dict[str, Any],
        bind_values: Sequence[Any] | None,
    ) -> Iterator[Any]:
        """The request's filter as models, one per batch of bind keys (FALSE: none can match)."""
        base = _resolve(call.filter, values) if call.filter is not None else None
        if request.bind is None or bind_values is None:
            yield _model(base)
            return
        keys = [k for k in bind_values if k is not None]
        column = self.collections.get(call.collection, Collection("", {})).columns.get(
            request.bind.column
        )
        is_id = column is not None and column.role == "id"
        is_float = column is not None and pa.types.is_floating(column.type)
        if not keys:
            yield FALSE
        for start in range(0, len(keys), request.bind.batch_size):
            chunk = keys[start : start + request.bind.batch_size]
            leaf = Leaf("in", request.bind.column, chunk, is_id=is_id, is_float=is_float)
            bound = _resolve(leaf, values)
            yield _model({"must": [base, bound]} if base is not None else bound)

    async def _query_points(
        self, call: QdrantCall, tree: Any, values: dict[str, Any], schema: pa.Schema
    ) -> pa.RecordBatch:
        assert call.query is not None and call.metric is not None and call.limit is not None
        kind, vec = call.query
        vector = vector_value(values[vec]) if kind == "param" else vec
        if vector is None:
            raise SourceError(f"the query vector of {call.collection} is not a list of numbers")
        if call.exact is not None:
            return await self._exact_search(call, tree, vector, schema)
        response = await self._call(
            "query_points",
            call.collection,
            query=vector,
            using=call.using or None,
            query_filter=tree,
            limit=call.limit,
            offset=call.offset or None,
            with_payload=call.payload or False,
            with_vectors=_with_vectors(call.vectors),
        )
        rows = [_row(call, p, _score(call.metric, p.score)) for p in response.points]
        return _batch(rows, schema)

    async def _exact_search(
        self, call: QdrantCall, tree: Any, vector: list[float], schema: pa.Schema
    ) -> pa.RecordBatch:
        """The top-k by the operator's own metric over every point the filter keeps: Qdrant
        ranks only by the vector's own distance."""
        import numpy as np

        assert call.metric is not None and call.limit is not None and call.using is not None
        scan = QdrantCall(call.collection, call.outputs, None, call.payload, [call.using])
        scan.vectors = sorted({*call.vectors, call.using})
        points = [p async for page in self._pages(scan, tree, None) for p in page]
        if not points:
            return _empty(schema)
        matrix = np.asarray([_vector(p, call.using) for p in points], dtype=np.float64)
        ranked = nearest(call.metric, matrix, vector, call.offset, call.limit)
        return _batch([_row(call, points[i], distance) for i, distance in ranked], schema)

    async def _scroll(
        self, call: QdrantCall, tree: Any, schema: pa.Schema
    ) -> AsyncIterator[pa.RecordBatch]:
        wanted = None if call.limit is None else call.limit + call.offset
        skip, sent = call.offset, False
        async for page in self._pages(call, tree, wanted):
            page, skip = page[skip:], max(0, skip - len(page))
            if page:
                sent = True
                yield _batch([_row(call, p, None) for p in page], schema)
        if not sent:
            yield _empty(schema)

    async def _pages(self, call: QdrantCall, tree: Any, wanted: int | None) -> AsyncIterator[list]:
        """Pages of points the filter keeps (at most ``wanted``), with the call's payload
        fields and vectors."""
        offset, fetched = None, 0
        while wanted is None or fetched < wanted:
            size = min(self.batch_rows, 10_000, *([wanted - fetched] if wanted else []))
            points, offset = await self._call(
                "scroll",
                call.collection,
                scroll_filter=tree,
                limit=size,
                offset=offset,
                with_payload=call.payload or False,
                with_vectors=_with_vectors(call.vectors),
            )
            fetched += len(points)
            yield points
            if offset is None or not points:
                break


# ---- the filter: SQL's WHERE as Qdrant's must / should / must_not ----------------------------
_FLIP = {exp.GT: exp.LT, exp.GTE: exp.LTE, exp.LT: exp.GT, exp.LTE: exp.GTE}
_BOUND = {exp.GT: "gt", exp.GTE: "gte", exp.LT: "lt", exp.LTE: "lte"}


@dataclass
class _Filter:
    """Builds the points where a condition is true (:meth:`true`) or false (:meth:`false`):
    NOT swaps them, so a negation reaches the leaves and NULL stays unknown (neither)."""

    collection: Collection
    names: list[str]

    def true(self, node: exp.Expression) -> Any:
        return self._build(node, negated=False)

    def false(self, node: exp.Expression) -> Any:
        return self._build(node, negated=True)

    def _build(self, node: exp.Expression, negated: bool) -> Any:
        if isinstance(node, exp.Paren):
            return self._build(node.this, negated)
        if isinstance(node, exp.Not):
            return self._build(node.this, not negated)
        if isinstance(node, (exp.And, exp.Or)):
            both = "must" if isinstance(node, exp.And) != negated else "should"
            parts = [self._build(node.this, negated), self._build(node.expression, negated)]
            flat = [p[both] if isinstance(p, dict) and list(p) == [both] else [p] for p in parts]
            return {both: [p for group in flat for p in group]}
        if isinstance(node, exp.Boolean):
            return {} if bool(node.this) != negated else FALSE
        if isinstance(node, exp.Is):
            leaf = self._leaf("empty", node.this, None)
            return {"must_not": [leaf]} if bool(node.args.get("negate")) != negated else leaf
        if isinstance(node, exp.Column):  # a boolean column on its own
            return self._leaf("eq", node, True, negated)
        if isinstance(node, (exp.EQ, exp.NEQ)):
            column, value = column_and_value(node) or (None, None)
            return self._leaf(
                "eq", column, self._value(value), negated != isinstance(node, exp.NEQ)
            )
        if type(node) in _FLIP:
            column, value = column_and_value(node) or (None, None)
            op = type(node) if node.this is column else _FLIP[type(node)]
            return self._leaf("range", column, {_BOUND[op]: self._value(value)}, negated)
        if isinstance(node, exp.Between):
            bounds = {"gte": self._value(node.args["low"]), "lte": self._value(node.args["high"])}
            return self._leaf("range", node.this, bounds, negated)
        if isinstance(node, exp.In):
            items = [self._value(e) for e in node.expressions]
            return self._leaf("in", node.this, items, negated)
        raise UnsupportedError(f"qdrant filter cannot express {node.sql()}")

    def _leaf(self, op: str, column: Any, value: Any, negated: bool = False) -> Leaf:
        if not isinstance(column, exp.Column):
            raise UnsupportedError("qdrant compares a column with a value")
        known = self.collection.columns.get(column.name)
        return Leaf(
            op,
            column.name,
            value,
            negated,
            is_id=known is not None and known.role == "id",
            is_float=known is not None and pa.types.is_floating(known.type),
        )

    def _value(self, node: exp.Expression) -> Any:
        if isinstance(node, exp.Neg):
            inner = self._value(node.this)
            return Param(inner.name, not inner.negate) if isinstance(inner, Param) else -inner
        if isinstance(node, exp.Placeholder):
            if node.name not in self.names:
                self.names.append(node.name)
            return Param(node.name)
        if isinstance(node, exp.Boolean):
            return bool(node.this)
        if isinstance(node, exp.Literal):
            if node.is_string:
                return node.this
            return int(node.this) if node.is_int else float(node.this)
        raise UnsupportedError(f"qdrant filter compares with a value, not {node.sql()}")


def _resolve(tree: Any, values: dict[str, Any]) -> Any:
    """The filter tree with parameter values set, as plain dicts (Qdrant's JSON form)."""
    if isinstance(tree, Leaf):
        return _leaf_json(tree, values)
    if isinstance(tree, dict):
        return {k: [_resolve(t, values) for t in v] for k, v in tree.items()}
    return tree


def _fill(value: Any, values: dict[str, Any]) -> Any:
    if not isinstance(value, Param):
        return value
    filled = values[value.name]
    if isinstance(values, _Holes):
        return ("-" if value.negate else "") + filled
    return -filled if value.negate and filled is not None else filled


def _leaf_json(leaf: Leaf, values: dict[str, Any]) -> Any:
    if leaf.op == "empty":
        if leaf.is_id:
            return {} if leaf.negated else FALSE  # a point id is never NULL
        return (
            {"must_not": [{"is_empty": {"key": leaf.key}}]}
            if leaf.negated
            else {"is_empty": {"key": leaf.key}}
        )
    cond = _condition(leaf, values)
    if cond is None:
        return FALSE  # a comparison with NULL is unknown: neither true nor false
    if not leaf.negated:
        return cond
    if leaf.is_id:
        return {"must_not": [cond]}
    return {"must_not": [{"is_empty": {"key": leaf.key}}, cond]}


def _condition(leaf: Leaf, values: dict[str, Any]) -> dict[str, Any] | None:
    """The Qdrant condition of a leaf, None where a value is NULL (the comparison unknown)."""
    if leaf.op == "range":
        bounds = {k: _fill(v, values) for k, v in leaf.value.items()}
        for v in bounds.values():
            if (
                not isinstance(values, _Holes)
                and v is not None
                and (isinstance(v, bool) or not isinstance(v, (int, float)))
            ):
                raise UnsupportedError(
                    f"qdrant compares {leaf.key} by <, <=, >, >= with numbers only, "
                    f"not {type(v).__name__} {v!r}"
                )
        return None if None in bounds.values() else {"key": leaf.key, "range": bounds}
    items = (
        [_fill(v, values) for v in leaf.value] if leaf.op == "in" else [_fill(leaf.value, values)]
    )
    if leaf.op == "eq" and items[0] is None:
        return None
    if leaf.op == "in" and leaf.negated and any(v is None for v in items):
        return None  # x NOT IN (.., NULL) is never true
    items = [v for v in items if v is not None]
    if leaf.is_id:
        return {"has_id": items}
    if leaf.is_float or any(isinstance(v, float) for v in items):
        ranges = [{"key": leaf.key, "range": {"gte": v, "lte": v}} for v in items]
        return ranges[0] if leaf.op == "eq" else {"should": ranges}
    if leaf.op == "eq":
        return {"key": leaf.key, "match": {"value": items[0]}}
    return {"key": leaf.key, "match": {"any": items}}


def _model(tree: Any) -> Any:
    """qdrant-client's model objects for a resolved filter tree (None: no filter)."""
    from qdrant_client import models

    if tree is None or tree == {}:
        return None
    if tree is FALSE:
        return FALSE

    def condition(node: dict[str, Any]) -> Any:
        if "key" in node:
            match = node.get("match")
            return models.FieldCondition(
                key=node["key"],
                match=(models.MatchAny(**match) if "any" in match else models.MatchValue(**match))
                if match
                else None,
                range=models.Range(**node["range"]) if "range" in node else None,
            )
        if "is_empty" in node:
            return models.IsEmptyCondition(
                is_empty=models.PayloadField(key=node["is_empty"]["key"])
            )
        if "has_id" in node:
            return models.HasIdCondition(has_id=node["has_id"])
        return models.Filter(
            **{
                k: [condition(c) for c in v]
                for k, v in node.items()
                if k in ("must", "should", "must_not")
            }
        )

    built = condition(tree)
    return built if isinstance(built, models.Filter) else models.Filter(must=[built])


# ---- rows ------------------------------------------------------------------------------------
def _with_vectors(names: list[str]) -> Any:
    if not names:
        return False
    return True if names == [""] else names


def _vector(point: Any, name: str) -> Any:
    vectors = point.vector
    return vectors if not isinstance(vectors, dict) else vectors.get(name)


def _row(call: QdrantCall, point: Any, distance: float | None) -> dict[str, Any]:
    payload = point.payload or {}
    row: dict[str, Any] = {}
    for o in call.outputs:
        if o.metric is not None:
            row[o.name] = distance
        elif o.column is None:
            row[o.name] = o.constant
        elif o.column.role == "id":
            row[o.name] = point.id
        elif o.column.role == "vector":
            row[o.name] = _vector(point, o.column.vector or "")
        else:
            value = payload.get(o.column.name)
            row[o.name] = None if value == [] else value  # is_empty: NULL, as filters see it
    return row


def _score(metric: str, score: float) -> float:
    """pgvector's distance for a Qdrant score: Euclid is the distance, Cosine a similarity,
    Dot the inner product."""
    if metric == "cosine":
        return 1.0 - score
    if metric == "neg_ip":
        return -score
    return score


def _batch(rows: list[dict[str, Any]], schema: pa.Schema) -> pa.RecordBatch:
    arrays = []
    for f in schema:
        values = [r[f.name] for r in rows]
        try:
            arrays.append(to_array(values, f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
            odd = next(v for v in values if v is not None and not _fits(v, f.type))
            raise SourceError(
                f"qdrant payload field {f.name!r} holds {type(odd).__name__} {_clip(odd)}, not "
                f"{f.type} (the type sampled from the collection's first points): declare its "
                "type under the source's tables.<collection>.columns"
            ) from None
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _fits(value: Any, type_: pa.DataType) -> bool:
    try:
        to_array([value], type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError):
        return False
    return True


def _clip(value: Any) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _empty(schema: pa.Schema | None) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=schema or pa.schema([]))


def _output_type(o: Output, fragment: Fragment) -> pa.DataType:
    """A column's type as the collection has it (else as the catalog gave the fragment)."""
    if o.metric is not None:
        return pa.float64()
    if o.column is None:
        return pa.int64()
    return (
        fragment.types.get(o.name, o.column.type) if o.column.role == "unknown" else o.column.type
    )


def _locked(lock: threading.Lock, call: Any, *args: Any, **kwargs: Any) -> Any:
    with lock:
        return call(*args, **kwargs)


def _unreachable(error: BaseException) -> bool:
    """Whether a client error is a failure to reach the server (refused, no route, DNS)."""
    seen: BaseException | None = error
    for _ in range(5):
        if seen is None:
            return False
        if type(seen).__name__ in ("ConnectError", "ConnectTimeout", "ConnectionRefusedError"):
            return True
        seen = getattr(seen, "source", None) or seen.__cause__ or seen.__context__
    return False


def _reason(error: BaseException, config: SourceConfig) -> str:
    """A driver's error as one line, with the API key masked if it shows."""
    text = f"{type(error).__name__}: {error}".strip().splitlines()[0]
    key = config.options.get("api_key")
    return text.replace(str(key), "***") if key else text


def _describe(call: QdrantCall) -> str:
    """The request as EXPLAIN prints it: the filter in Qdrant's JSON form, ``:name`` holes."""
    shown = _resolve(call.filter, _Holes()) if call.filter is not None else None
    if call.metric is not None:
        using = call.using or "(unnamed)"
        vec = f":{call.query[1]}" if call.query and call.query[0] == "param" else "literal"
        head = (
            f"query_points {call.collection}: using={using} "
            f"distance={_SEARCHES[call.metric]} query={vec} limit={call.limit}"
        )
    else:
        head = f"scroll {call.collection}" + (f": limit={call.limit}" if call.limit else "")
    if call.offset:
        head += f" offset={call.offset}"
    lines = [
        head,
        f"  filter: {json.dumps(shown) if shown else '(none)'}",
        f"  with_payload: {call.payload}"
        + (f", with_vectors: {call.vectors}" if call.vectors else ""),
    ]
    if call.exact is not None and call.metric is not None:
        wanted = _SEARCHES[call.metric]
        use = _OPERATOR.get(call.exact)
        lines.append(
            f"  exact scan: vector {call.using or '(unnamed)'} is {call.exact}, the operator asks "
            f"{wanted}: every point the filter keeps is read and ranked by {wanted} here"
            + (f" (order by {use} to search the index)" if use else "")
        )
    dist = [o.name for o in call.outputs if o.metric]
    if dist:
        lines.append(f"  distance as: {', '.join(dist)}")
    return "\n".join(lines)


class _Holes(dict):
    """Parameter values for EXPLAIN: each shows as ``:name``."""

    def __missing__(self, key: str) -> str:
        return f":{key}"
