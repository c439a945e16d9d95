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
:mod:`federator.rules.mongo` guarantees it can), which EXPLAIN prints in shell notation.
``execute`` streams the cursor in batches; bind-join keys arrive as a leading ``$in`` match.
A running aggregation has no driver-side timeout (no socket timeout, no heartbeat that may
interrupt it): only the query's ``timeout`` ends it, with a ``QueryTimeoutError``. The server
is told the query's remaining time as ``maxTimeMS``, and an interrupted aggregation (timeout,
cancel, a result closed early) has its cursor killed and its operation killed (``killOp``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import re
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from federator.adapters.arrowconv import to_array
from federator.adapters.base import Adapter, BindSpec, NativeRequest, TableInfo, TableRef
from federator.adapters.budget import query_timeout, server_ms, teardown
from federator.adapters.declared import parse_type
from federator.rules import mongo as _mongo_rules  # noqa: F401  (registers the rule set)
from federator.rules.mongo import AGGREGATES, is_value
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

SYSTEM_DATABASES = ("admin", "local", "config")
DEFAULT_SAMPLE = 1000
DEFAULT_BIND_BATCH = 10_000


# ---- column metadata -----------------------------------------------------------------------
@dataclass(frozen=True)
class FieldSpec:
    """One column of a collection: its document path, Arrow type and BSON handling."""

    path: str
    type: pa.DataType
    bson: str = "plain"  # "objectid": hex string <-> ObjectId; "json": document as JSON text


@dataclass
class Collection:
    ref: TableRef
    fields: dict[str, FieldSpec]
    rows: int | None = None

    def schema(self) -> pa.Schema:
        return pa.schema([(name, spec.type) for name, spec in self.fields.items()])


def declared_fields(columns: dict[str, str]) -> dict[str, FieldSpec]:
    out = {}
    for name, type_name in columns.items():
        t = str(type_name).strip().lower()
        bson = t if t in ("objectid", "json") else "plain"
        out[name] = FieldSpec(name, parse_type(str(type_name)), bson)
    return out


# ---- sampling: one Arrow type per field -----------------------------------------------------
def _kind(value: Any) -> str:
    from bson import Decimal128, ObjectId

    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, ObjectId):
        return "objectid"
    if isinstance(value, Decimal128):
        return "decimal"
    if isinstance(value, dt.datetime):
        return "datetime"
    if isinstance(value, dict):
        return "document"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bytes):
        return "binary"
    return "other"


@dataclass
class _Observed:
    kinds: set[str] = field(default_factory=set)
    scale: int = 0
    children: dict[str, _Observed] = field(default_factory=dict)
    items: _Observed | None = None

    def add(self, value: Any) -> None:
        kind = _kind(value)
        self.kinds.add(kind)
        if kind == "document":
            for k, v in value.items():
                self.children.setdefault(k, _Observed()).add(v)
        elif kind == "array":
            self.items = self.items or _Observed()
            for v in value:
                self.items.add(v)
        elif kind == "decimal":
            exponent = value.to_decimal().as_tuple().exponent
            if isinstance(exponent, int) and exponent < 0:
                self.scale = max(self.scale, min(-exponent, 18))

    def arrow(self) -> tuple[pa.DataType, str]:
        kinds = self.kinds - {"null"}
        if not kinds:
            return pa.string(), "plain"
        if kinds == {"objectid"}:
            return pa.string(), "objectid"
        if kinds == {"bool"}:
            return pa.bool_(), "plain"
        if kinds == {"int"}:
            return pa.int64(), "plain"
        if kinds <= {"int", "float"}:
            return pa.float64(), "plain"
        if kinds <= {"int", "decimal"}:
            return pa.decimal128(38, self.scale), "plain"
        if kinds == {"string"}:
            return pa.string(), "plain"
        if kinds == {"datetime"}:
            return pa.timestamp("ms", tz="UTC"), "plain"
        if kinds == {"binary"}:
            return pa.binary(), "plain"
        if kinds == {"document"}:
            subfields = [pa.field(k, c.arrow()[0]) for k, c in self.children.items()]
            return (pa.struct(subfields), "plain") if subfields else (pa.string(), "json")
        if kinds == {"array"}:
            item = self.items.arrow()[0] if self.items and self.items.kinds else pa.string()
            return pa.list_(item), "plain"
        if kinds & {"document", "array"}:
            return pa.string(), "json"
        return pa.string(), "plain"  # mixed scalars: their text


def sampled_fields(documents: Sequence[dict[str, Any]]) -> dict[str, FieldSpec]:
    """Columns for sampled documents: every top-level field, plus dotted leaf paths of embedded
    documents. ``_id`` comes first."""
    root = _Observed()
    for doc in documents:
        root.add(doc)
    out: dict[str, FieldSpec] = {}

    def visit(obs: _Observed, prefix: str) -> None:
        for name, child in obs.children.items():
            path = f"{prefix}{name}"
            t, bson = child.arrow()
            out[path] = FieldSpec(path, t, bson)
            if child.kinds - {"null"} == {"document"}:
                visit(child, path + ".")

    visit(root, "")
    if "_id" in out:
        out = {"_id": out.pop("_id"), **out}
    return out


# ---- values: BSON -> Python values Arrow takes -----------------------------------------------
def from_bson(value: Any, spec: FieldSpec | None = None) -> Any:
    from bson import Decimal128, ObjectId

    if value is None:
        return None
    if spec is not None and spec.bson == "json":
        return json.dumps(from_bson(value), default=str, sort_keys=False)
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, Decimal128):
        return value.to_decimal()
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dict):
        return {k: from_bson(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_bson(v) for v in value]
    return value


def to_bson(value: Any, spec: FieldSpec | None) -> Any:
    """A SQL value as the BSON value stored for ``spec`` (ObjectId, Decimal128, datetime)."""
    from bson import Decimal128, ObjectId

    if value is None or spec is None:
        return value
    if spec.bson == "objectid" and isinstance(value, str) and ObjectId.is_valid(value):
        return ObjectId(value)
    t = spec.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        if isinstance(value, str):
            value = dt.datetime.fromisoformat(value)
        if isinstance(value, dt.datetime):
            return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        if isinstance(value, dt.date):
            return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    if pa.types.is_decimal(t) and isinstance(value, (int, float, str, decimal.Decimal)):
        if isinstance(value, bool):
            return value
        return Decimal128(decimal.Decimal(str(value)))
    return value


def like_to_regex(pattern: str) -> str:
    """SQL LIKE pattern → anchored regular expression (``%`` → ``.*``, ``_`` → ``.``)."""
    out = ["^"]
    for ch in pattern:
        out.append(".*" if ch == "%" else "." if ch == "_" else re.escape(ch))
    out.append("$")
    return "".join(out)


# ---- the pipeline with parameters --------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """A ``:name`` parameter inside a pipeline; bound at execution, shown as ``:name``."""

    name: str
    convert: Callable[[Any], Any] | None = field(default=None, compare=False)

    def bind(self, values: dict[str, Any]) -> Any:
        value = values[self.name]
        return self.convert(value) if self.convert else value


class BindKeys:
    """Where the bind-join keys go in the leading ``$match``."""

    def __repr__(self) -> str:
        return "BindKeys()"


def substitute(value: Any, params: dict[str, Any]) -> Any:
    if isinstance(value, Param):
        return value.bind(params)
    if isinstance(value, dict):
        return {k: substitute(v, params) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute(v, params) for v in value]
    return value


def render(value: Any, batch_size: int = 0) -> str:
    """A pipeline value in MongoDB shell notation (what EXPLAIN prints)."""
    from bson import Decimal128, ObjectId

    if isinstance(value, Param):
        return f":{value.name}"
    if isinstance(value, BindKeys):
        return f"[<bind-join keys, up to {batch_size:,} per batch>]"
    if isinstance(value, dict):
        return (
            "{"
            + ", ".join(f"{json.dumps(k)}: {render(v, batch_size)}" for k, v in value.items())
            + "}"
        )
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(render(v, batch_size) for v in value) + "]"
    if isinstance(value, ObjectId):
        return f'ObjectId("{value}")'
    if isinstance(value, Decimal128):
        return f'NumberDecimal("{value}")'
    if isinstance(value, dt.datetime):
        return f'ISODate("{value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]}Z")'
    if isinstance(value, decimal.Decimal):
        return f'NumberDecimal("{value}")'
    return json.dumps(value)


@dataclass
class Pipeline:
    """Adapter-private part of a request."""

    database: str
    collection: str
    stages: list[dict[str, Any]]
    outputs: list[tuple[str, str, FieldSpec | None]]  # (column, field in result doc, source spec)
    bind_field: str | None = None
    bind_spec: FieldSpec | None = None
    global_defaults: dict[str, Any] | None = None  # one row for an aggregate over no documents

    def text(self, batch_size: int = 0) -> str:
        lines = [f"{self.database}.{self.collection}.aggregate(["]
        lines += [f"  {render(stage, batch_size)}," for stage in self.stages]
        lines.append("])")
        return "\n".join(lines)


# ---- translation ------------------------------------------------------------------------------
_FLIP = {exp.GT: exp.LT, exp.GTE: exp.LTE, exp.LT: exp.GT, exp.LTE: exp.GTE}
_OPS = {
    exp.EQ: "$eq",
    exp.NEQ: "$ne",
    exp.GT: "$gt",
    exp.GTE: "$gte",
    exp.LT: "$lt",
    exp.LTE: "$lte",
}
_NEGATED = {
    exp.EQ: exp.NEQ,
    exp.NEQ: exp.EQ,
    exp.GT: exp.LTE,
    exp.GTE: exp.LT,
    exp.LT: exp.GTE,
    exp.LTE: exp.GT,
}
_SAFE_FIELD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _is_null_expr(path: str) -> dict[str, Any]:
    return {"$eq": [{"$ifNull": [path, None]}, None]}


class Translator:
    """Builds the pipeline of one fragment. ``fields`` maps (table alias, column) → FieldSpec."""

    def __init__(self, select: exp.Select, collection: Collection, rules_name: str = "mongo"):
        self.select = select
        self.collection = collection
        table = select.args["from_"].this
        self.alias = table.alias_or_name
        self.projections = {s.alias_or_name: s.unalias() for s in select.selects}
        self.unnests: dict[str, FieldSpec] = {}  # UNNEST alias -> the array field unwound
        self.elements: dict[str, str] = {}  # UNNEST(o.tags) AS u(tag): "u" -> "tag"
        for join in select.args.get("joins") or []:
            if not isinstance(join.this, exp.Unnest):
                raise UnsupportedError(f"MongoDB cannot join {join.this.sql()} in a pipeline")
            alias = join.this.args["alias"]
            self.unnests[alias.name] = self.spec(join.this.expressions[0])
            if alias.columns:
                self.elements[alias.name] = alias.columns[0].name

    # -- columns and values
    def spec(self, column: exp.Column) -> FieldSpec:
        name = column.name
        if column.table in self.unnests:
            return self._element_spec(column)
        if column.table and column.table != self.alias:
            raise UnsupportedError(f"column {column.sql()} is not of collection {self.alias}")
        spec = self.collection.fields.get(name)
        return spec if spec is not None else FieldSpec(name, pa.string())

    def _element_spec(self, column: exp.Column) -> FieldSpec:
        """``it.qty`` of ``UNNEST(o.items) AS it``: after ``$unwind`` the array field holds one
        element, so the path is ``items.qty``; ``u.tag`` of ``UNNEST(o.tags) AS u(tag)`` is
        the element itself."""
        array = self.unnests[column.table]
        element = array.type.value_type if pa.types.is_list(array.type) else pa.string()
        if self.elements.get(column.table) == column.name:
            return FieldSpec(array.path, element)
        if pa.types.is_struct(element) and element.get_field_index(column.name) >= 0:
            return FieldSpec(f"{array.path}.{column.name}", element.field(column.name).type)
        return FieldSpec(f"{array.path}.{column.name}", pa.string())

    def value(self, node: exp.Expression, spec: FieldSpec | None, like: str = "") -> Any:
        if isinstance(node, exp.Placeholder):

            def convert(v: Any, spec: FieldSpec | None = spec) -> Any:
                return like_to_regex(v) if like else to_bson(v, spec)

            return Param(node.name, convert)
        if isinstance(node, exp.Boolean):
            return node.this
        if isinstance(node, exp.Neg):
            return -self.value(node.this, None)
        if isinstance(node, exp.Cast):
            text = node.this.this
            if node.to.this == exp.DataType.Type.DATE:
                d = dt.date.fromisoformat(text)
                return dt.datetime(d.year, d.month, d.day, tzinfo=dt.UTC)
            value = dt.datetime.fromisoformat(text)
            return value if value.tzinfo else value.replace(tzinfo=dt.UTC)
        if isinstance(node, exp.Literal):
            if node.is_string:
                return like_to_regex(node.this) if like else to_bson(node.this, spec)
            text = node.this
            number: Any = int(text) if re.fullmatch(r"-?\d+", text) else float(text)
            return to_bson(number, spec)
        raise UnsupportedError(f"MongoDB cannot take the value {node.sql()}")

    # -- $match
    def match(self, node: exp.Expression, negate: bool = False) -> dict[str, Any]:
        if isinstance(node, exp.Paren):
            return self.match(node.this, negate)
        if isinstance(node, (exp.And, exp.Or)):
            parts = [self.match(c, negate) for c in node.flatten()]
            op = "$and" if isinstance(node, exp.And) != negate else "$or"
            return {op: parts}
        if isinstance(node, exp.Not):
            return self.match(node.this, not negate)
        if node.args.get("negate"):  # sqlglot writes x IS NOT NULL as Is(negate=True)
            node = node.copy()
            node.set("negate", None)
            return self.match(node, not negate)
        if isinstance(node, exp.Column):  # a boolean field used as a predicate
            return {self.spec(node).path: not negate}
        if isinstance(node, tuple(_OPS)):
            return self._comparison(node, negate)
        if isinstance(node, exp.In):
            spec = self.spec(node.this)
            values = [self.value(v, spec) for v in node.expressions]
            if negate:
                return {spec.path: {"$nin": [*values, None]}}
            return {spec.path: {"$in": values}}
        if isinstance(node, exp.Between):
            spec = self.spec(node.this)
            lo, hi = self.value(node.args["low"], spec), self.value(node.args["high"], spec)
            if negate:
                return {"$or": [{spec.path: {"$lt": lo}}, {spec.path: {"$gt": hi}}]}
            return {spec.path: {"$gte": lo, "$lte": hi}}
        if isinstance(node, (exp.Like, exp.ILike)):
            spec = self.spec(node.this)
            regex = {"$regex": self.value(node.expression, spec, like="like")}
            regex["$options"] = "si" if isinstance(node, exp.ILike) else "s"
            if negate:
                return {"$and": [{spec.path: {"$not": regex}}, {spec.path: {"$ne": None}}]}
            return {spec.path: regex}
        if isinstance(node, exp.Is):
            spec = self.spec(node.this)
            return {spec.path: {"$ne": None}} if negate else {spec.path: None}
        raise UnsupportedError(f"MongoDB $match cannot express {node.sql()}")

    def _comparison(self, node: exp.Expression, negate: bool) -> dict[str, Any]:
        cls = type(node)
        left, right = node.this, node.expression
        if is_value(left):
            left, right = right, left
            cls = _FLIP.get(cls, cls)
        if negate:
            cls = _NEGATED[cls]
        if isinstance(right, exp.Column):  # two fields of one document: $expr with NULL guards
            a, b = "$" + self.spec(left).path, "$" + self.spec(right).path
            op = _OPS[cls]
            return {
                "$expr": {
                    "$and": [
                        {"$not": [_is_null_expr(a)]},
                        {"$not": [_is_null_expr(b)]},
                        {op: [a, b]},
                    ]
                }
            }
        if not isinstance(left, exp.Column):
            raise UnsupportedError(f"MongoDB $match cannot express {node.sql()}")
        spec = self.spec(left)
        value = self.value(right, spec)
        if cls is exp.NEQ:  # SQL: NULL <> v is not true; Mongo's $ne would match missing fields
            return {spec.path: {"$nin": [value, None]}}
        return {spec.path: {_OPS[cls]: value}}

    # -- the whole pipeline
    def pipeline(self) -> Pipeline:
        select = self.select
        table = select.args["from_"].this
        stages = self._filter_and_unwind()
        group = select.args.get("group")
        aggregates = [n for s in select.selects for n in s.find_all(*AGGREGATES)]
        having = select.args.get("having")
        distinct = select.args.get("distinct")
        pipe = Pipeline(table.db, table.name, stages, [])
        if group is not None or aggregates or distinct or having is not None:
            self._grouped(pipe, group, distinct)
        else:
            self._plain(pipe)
        return pipe

    def _filter_and_unwind(self) -> list[dict[str, Any]]:
        """``$match`` on the document, ``$unwind`` of each UNNEST, ``$match`` on elements: WHERE
        and the inner joins' ON conditions (inner joins filter like WHERE)."""
        conjuncts = _conjuncts(self.select.args.get("where"))
        for join in self.select.args.get("joins") or []:
            conjuncts += _conjuncts(join.args.get("on"))
        conjuncts = [c for c in conjuncts if not isinstance(c, exp.Boolean) or not c.this]
        unnested = set(self.unnests)
        on_elements = [c for c in conjuncts if _aliases(c) & unnested]
        on_document = [c for c in conjuncts if not _aliases(c) & unnested]
        stages: list[dict[str, Any]] = []
        if on_document:
            stages.append({"$match": self.match(exp.and_(*on_document, copy=False))})
        stages += [{"$unwind": "$" + spec.path} for spec in self.unnests.values()]
        if on_elements:
            stages.append({"$match": self.match(exp.and_(*on_elements, copy=False))})
        return stages

    def _out_field(self, name: str, taken: set[str], i: int) -> str:
        f = name if _SAFE_FIELD.fullmatch(name) and not name.startswith("__") else f"c{i}"
        while f in taken:
            f = f"c{i}_"
        taken.add(f)
        return f

    def _order_keys(self) -> list[tuple[exp.Expression, bool, bool]]:
        order = self.select.args.get("order")
        keys = []
        for ordered in order.expressions if order else []:
            node = ordered.this
            if isinstance(node, exp.Column) and not node.table and node.name in self.projections:
                node = self.projections[node.name]
            desc = bool(ordered.args.get("desc"))
            nulls_first = ordered.args.get("nulls_first")
            if nulls_first is None:
                nulls_first = desc  # PostgreSQL's rule: NULLs are larger than every value
            keys.append((node, desc, bool(nulls_first)))
        return keys

    def _sort_stages(self, keys: list[tuple[str, bool, bool]]) -> list[dict[str, Any]]:
        """$sort on fields; where SQL's NULL placement differs from MongoDB's (NULL smallest),
        a computed NULL flag sorts first."""
        flags: dict[str, Any] = {}
        sort: dict[str, int] = {}
        for i, (path, desc, nulls_first) in enumerate(keys):
            mongo_nulls_first = not desc
            if nulls_first != mongo_nulls_first:
                flag = f"__null{i}"
                flags[flag] = {"$cond": [_is_null_expr("$" + path), 1, 0]}
                sort[flag] = -1 if nulls_first else 1
            sort[path] = -1 if desc else 1
        return ([{"$addFields": flags}] if flags else []) + ([{"$sort": sort}] if sort else [])

    def _page_stages(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        offset = self.select.args.get("offset")
        if offset is not None:
            out.append({"$skip": int(offset.expression.this)})
        limit = self.select.args.get("limit")
        if limit is not None:
            out.append({"$limit": int(limit.expression.this)})
        return out

    def _plain(self, pipe: Pipeline) -> None:
        sort_keys = []
        for node, desc, nulls_first in self._order_keys():
            if not isinstance(node, exp.Column):
                raise UnsupportedError(f"MongoDB cannot sort by {node.sql()} here")
            sort_keys.append((self.spec(node).path, desc, nulls_first))
        pipe.stages += self._sort_stages(sort_keys)
        pipe.stages += self._page_stages()
        project: dict[str, Any] = {}
        taken: set[str] = set()
        for i, (name, node) in enumerate(self.projections.items()):
            out = self._out_field(name, taken, i)
            if isinstance(node, exp.Column):
                spec = self.spec(node)
                project[out] = "$" + spec.path
                pipe.outputs.append((name, out, spec))
            elif is_value(node):
                project[out] = {"$literal": self.value(node, None)}
                pipe.outputs.append((name, out, None))
            else:
                raise UnsupportedError(f"MongoDB $project cannot compute {node.sql()}")
        if "_id" not in project:
            project = {"_id": 0, **project}
        pipe.stages.append({"$project": project})

    def _grouped(self, pipe: Pipeline, group: exp.Group | None, distinct: Any) -> None:
        keys: dict[str, str] = {}  # column sql -> "_id.kN"
        id_doc: dict[str, Any] = {}
        key_nodes = list(group.expressions) if group is not None else []
        if distinct and group is None:
            key_nodes = [n for n in self.projections.values() if isinstance(n, exp.Column)]
        for i, col in enumerate(key_nodes):
            spec = self.spec(col)
            id_doc[f"k{i}"] = {"$ifNull": ["$" + spec.path, None]}
            keys[self._key(col)] = f"_id.k{i}"
        accumulators: dict[str, Any] = {}
        values: dict[str, Any] = {}  # aggregate sql -> expression over the group's fields
        specs: dict[str, FieldSpec | None] = {}

        def aggregate(node: exp.Expression) -> Any:
            k = self._key(node)
            if k in values:
                return values[k]
            i = len(accumulators)
            name = f"a{i}"
            arg = node.this
            if isinstance(node, exp.Count):
                if isinstance(arg, exp.Star):
                    accumulators[name] = {"$sum": 1}
                    values[k] = "$" + name
                elif isinstance(arg, exp.Distinct):
                    path = "$" + self.spec(arg.expressions[0]).path
                    accumulators[name] = {"$addToSet": path}
                    values[k] = {"$size": {"$setDifference": ["$" + name, [None]]}}
                else:
                    path = "$" + self.spec(arg).path
                    accumulators[name] = {"$sum": {"$cond": [_is_null_expr(path), 0, 1]}}
                    values[k] = "$" + name
                return values[k]
            spec = self.spec(arg)
            path: Any = "$" + spec.path
            if pa.types.is_decimal(spec.type) and isinstance(node, (exp.Sum, exp.Avg)):
                path = {"$toDecimal": path}  # exact decimal arithmetic on Decimal128 fields
            if isinstance(node, exp.Sum):  # SQL: SUM over no non-NULL value is NULL, not 0
                accumulators[name] = {"$sum": path}
                accumulators[name + "n"] = {
                    "$sum": {"$cond": [_is_null_expr("$" + spec.path), 0, 1]}
                }
                values[k] = {"$cond": [{"$eq": ["$" + name + "n", 0]}, None, "$" + name]}
            else:
                op = {exp.Avg: "$avg", exp.Min: "$min", exp.Max: "$max"}[type(node)]
                accumulators[name] = {op: path}
                values[k] = "$" + name
                if not isinstance(node, exp.Avg):
                    specs[k] = spec
            return values[k]

        def expression(node: exp.Expression) -> Any:
            if isinstance(node, AGGREGATES):
                return aggregate(node)
            if isinstance(node, exp.Column):
                k = self._key(node)
                if k not in keys:
                    raise UnsupportedError(f"{node.sql()} is neither grouped nor aggregated")
                return "$" + keys[k]
            if is_value(node):
                return {"$literal": self.value(node, None)}
            raise UnsupportedError(f"MongoDB $group cannot compute {node.sql()}")

        project: dict[str, Any] = {"_id": 0}
        taken: set[str] = {"_id"}
        for i, (name, node) in enumerate(self.projections.items()):
            out = self._out_field(name, taken, i)
            project[out] = expression(node)
            spec = None
            if isinstance(node, exp.Column):
                spec = self.spec(node)
            elif isinstance(node, (exp.Min, exp.Max)):
                spec = specs.get(self._key(node))
            pipe.outputs.append((name, out, spec))
        by_expr = {self._key(self.projections[c]): f for c, f, _ in pipe.outputs}
        hidden: dict[str, Any] = {}

        def field_of(node: exp.Expression) -> str:
            k = self._key(node)
            if k in by_expr:
                return by_expr[k]
            name = f"__h{len(hidden)}"
            hidden[name] = expression(node)
            by_expr[k] = name
            return name

        having = self.select.args.get("having")
        having_match = self._having(having.this, field_of) if having is not None else None
        sort_keys = [(field_of(n), d, nf) for n, d, nf in self._order_keys()]
        pipe.stages.append({"$group": {"_id": id_doc or None, **accumulators}})
        pipe.stages.append({"$project": {**project, **hidden}})
        if having_match is not None:
            pipe.stages.append({"$match": having_match})
        sort_stages = self._sort_stages(sort_keys)
        pipe.stages += sort_stages
        pipe.stages += self._page_stages()
        if hidden or len(sort_stages) > 1:
            pipe.stages.append({"$project": {"_id": 0, **{f: 1 for _, f, _ in pipe.outputs}}})
        if not key_nodes:
            pipe.global_defaults = {
                f: (0 if isinstance(self.projections[c], exp.Count) else None)
                for c, f, _ in pipe.outputs
            }

    def _having(self, node: exp.Expression, field_of: Callable[[exp.Expression], str]) -> Any:
        """HAVING over the projected group fields: the same $match rules, fields renamed."""
        replaced = node.copy()
        mapping: dict[str, FieldSpec] = {}

        def rename(n: exp.Expression) -> exp.Expression:
            if isinstance(n, (*AGGREGATES, exp.Column)) and not isinstance(n.parent, AGGREGATES):
                if isinstance(n, exp.Column) and isinstance(n.parent, exp.Distinct):
                    return n
                f = field_of(n)
                source_spec = None
                if isinstance(n, (exp.Column, exp.Min, exp.Max)):
                    col = n if isinstance(n, exp.Column) else n.this
                    source_spec = self.spec(col)
                mapping[f] = FieldSpec(
                    f,
                    source_spec.type if source_spec else pa.float64(),
                    source_spec.bson if source_spec else "plain",
                )
                return exp.column(f, table="__having")
            return n

        replaced = replaced.transform(rename, copy=False)
        saved = self.alias, self.collection
        self.alias = "__having"
        self.collection = Collection(self.collection.ref, mapping)
        try:
            return self.match(replaced)
        finally:
            self.alias, self.collection = saved

    def _key(self, node: exp.Expression) -> str:
        return node.sql(dialect="postgres")


def _conjuncts(node: exp.Expression | None) -> list[exp.Expression]:
    if node is None:
        return []
    if isinstance(node, exp.Where):
        node = node.this
    return list(node.flatten()) if isinstance(node, exp.And) else [node]


def _aliases(node: exp.Expression) -> set[str]:
    return {c.table for c in node.find_all(exp.Column)}


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
        self._client = AsyncIOMotorClient(
            self.url,
            tz_aware=True,
            serverSelectionTimeoutMS=int(self.connect_timeout * 1000),
            connectTimeoutMS=None,
            socketTimeoutMS=None,
            maxPoolSize=max(self.max_concurrency, 1),
        )

    async def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

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
        if not isinstance(query, exp.Select) or not isinstance(
            query.args.get("from_") and query.args["from_"].this, exp.Table
        ):
            why = self.rules.refusal(query) or "it does not read one collection"
            raise UnsupportedError(
                f"source {self.name!r} (mongo) cannot run this as one pipeline ({why}): "
                f"{query.sql()}"
            )
        table = query.args["from_"].this
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
        for stages_run in runs:
            async for batch in self._run(coll, pipe, stages_run, request.schema):
                rows += batch.num_rows
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
        comment through $currentOp). A server without these answers with errors, which are
        ignored: maxTimeMS still bounds the work (CongoDB, the test server, has none of the
        three and runs an aggregation it started to its end)."""
        from pymongo.errors import PyMongoError

        with contextlib.suppress(PyMongoError):
            await cursor.close()
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


_COEFFICIENT = (1 << 113) - 1


def decimal_array(values: list[Any], t: pa.Decimal128Type) -> pa.Array | None:
    """Decimal128 values as an Arrow decimal128 array, decoding the IEEE 754 BID bytes directly
    (about 10x faster than ``to_decimal()``). None when a value needs the general path: not a
    Decimal128, infinite or NaN, or more digits than ``t``'s scale keeps."""
    from bson import Decimal128

    out = bytearray()
    nulls = []
    powers: dict[int, int] = {}
    for v in values:
        if v is None:
            out += bytes(16)
            nulls.append(True)
            continue
        if not isinstance(v, Decimal128):
            return None
        x = int.from_bytes(v.bid, "little")
        if (x >> 125) & 3 == 3:  # the large-coefficient form is only used by infinity and NaN
            return None
        shift = ((x >> 113) & 0x3FFF) - 6176 + t.scale
        coefficient = x & _COEFFICIENT
        if shift >= 0:
            scaled = coefficient * powers.setdefault(shift, 10**shift)
        else:
            scaled, rest = divmod(coefficient, powers.setdefault(shift, 10**-shift))
            if rest:
                return None
        if scaled >= 10**t.precision:
            return None
        out += (-scaled if x >> 127 else scaled).to_bytes(16, "little", signed=True)
        nulls.append(False)
    array = pa.Array.from_buffers(t, len(values), [None, pa.py_buffer(bytes(out))])
    if any(nulls):
        array = pc.if_else(pa.array(nulls), pa.nulls(len(values), t), array)
    return array


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
