"""A fragment's SELECT as one MongoDB aggregation pipeline (pure, no I/O).

``Translator`` writes filter, projection, grouping (with HAVING), sort, skip and limit as
pipeline stages over one collection (the rule set in :mod:`federator.rules.mongo` guarantees
it can); ``Pipeline.text`` is the shell notation EXPLAIN prints. Parameters stay ``Param``
placeholders until execution (``substitute``); bind-join keys go where ``BindKeys`` stands.
The latest row per key (``ROW_NUMBER() … WHERE rn = 1``) is the inner query's filter, then
``$sort`` by key and time, ``$group`` taking each key's ``$first`` document, ``$replaceRoot``.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from federator.adapters.mongo_types import Collection, FieldSpec, to_bson
from federator.rules.mongo import AGGREGATES, is_value, latest_per_key
from sqlglot import exp

from federator.errors import UnsupportedError
from federator.sql.trees import conjuncts as _conjuncts


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
        self.latest = latest_per_key(select)
        self.outer_alias = ""  # the latest-per-key subquery's alias, which the outer names
        if self.latest is not None:
            select, self.outer_alias = self._first_rows(select, self.latest.inner)
        self.select = select
        self.collection = collection
        table = select.args["from_"].this
        self.alias = table.alias_or_name
        self.projections = {s.alias_or_name: s.unalias() for s in select.selects}
        if self.latest is not None:
            self.projections = self._outer_projections()
        self.unnests: dict[str, FieldSpec] = {}  # UNNEST alias -> the array field unwound
        self.elements: dict[str, str] = {}  # UNNEST(o.tags) AS u(tag): "u" -> "tag"
        for join in select.args.get("joins") or []:
            if not isinstance(join.this, exp.Unnest):
                raise UnsupportedError(f"MongoDB cannot join {join.this.sql()} in a pipeline")
            alias = join.this.args["alias"]
            self.unnests[alias.name] = self.spec(join.this.expressions[0])
            if alias.columns:
                self.elements[alias.name] = alias.columns[0].name

    def _first_rows(self, outer: exp.Select, inner: exp.Select) -> tuple[exp.Select, str]:
        """The inner query without its ROW_NUMBER column, and the subquery's alias."""
        assert self.latest is not None
        self._outer = outer
        inner = inner.copy()
        rn = self.latest.row_number
        inner.set("expressions", [s for s in inner.selects if s.alias_or_name != rn])
        return inner, self.latest.alias

    def _outer_projections(self) -> dict[str, exp.Expression]:
        """The outer select list, each ``s.col`` replaced by what the inner query names col."""
        inner = self.projections
        return {s.alias_or_name: inner[s.unalias().name] for s in self._outer.selects}

    # -- columns and values
    def spec(self, column: exp.Column) -> FieldSpec:
        name = column.name
        if self.outer_alias and column.table == self.outer_alias:
            inner = self.projections.get(name)
            if not isinstance(inner, exp.Column):
                raise UnsupportedError(f"{column.sql()} is not a field of the collection")
            return self.spec(inner)
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
        if self.latest is not None:
            stages += self._latest_stages(self.latest.keys, self.latest.time)
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

    def _latest_stages(self, keys: list[exp.Column], time: exp.Ordered) -> list[dict[str, Any]]:
        """Each key's first document in the window's time order: ``$sort`` (keys, then the
        time with NULLs placed as SQL's ORDER BY places them), ``$group`` by the keys (a
        missing field and NULL are one key, as NULLs are one partition), ``$replaceRoot``."""
        desc = bool(time.args.get("desc"))
        nulls_first = time.args.get("nulls_first")
        nulls_first = desc if nulls_first is None else bool(nulls_first)
        if self._never_null(time.this):
            nulls_first = not desc  # MongoDB's own placement: no NULL flag to compute
        sort_keys = [(self.spec(k).path, False, True) for k in keys]  # no NULL flag needed
        sort_keys.append((self.spec(time.this).path, desc, nulls_first))
        group_id = {
            f"k{i}": {"$ifNull": ["$" + self.spec(k).path, None]} for i, k in enumerate(keys)
        }
        return [
            *self._sort_stages(sort_keys),
            {"$group": {"_id": group_id, "doc": {"$first": "$$ROOT"}}},
            {"$replaceRoot": {"newRoot": "$doc"}},
        ]

    def _never_null(self, column: exp.Column) -> bool:
        """Whether a conjunct of WHERE compares ``column`` to a value (NULL never passes)."""
        return any(
            isinstance(c, tuple(_OPS))
            and not isinstance(c, exp.NEQ)
            and any(isinstance(s, exp.Column) and s == column for s in (c.this, c.expression))
            and any(is_value(s) for s in (c.this, c.expression))
            for c in _conjuncts(self.select.args.get("where"))
        )

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


def _aliases(node: exp.Expression) -> set[str]:
    return {c.table for c in node.find_all(exp.Column)}
