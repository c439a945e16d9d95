"""The MongoDB rule set: what one aggregation pipeline over one collection can express.

A fragment that passes these rules is one ``aggregate()`` call: WHERE → ``$match``,
GROUP BY with COUNT/SUM/AVG/MIN/MAX (and COUNT(DISTINCT col)) → ``$group``, HAVING → ``$match``,
ORDER BY → ``$sort``, OFFSET/LIMIT → ``$skip``/``$limit``, the select list → ``$project``,
``CROSS JOIN UNNEST(o.items) AS it`` → ``$unwind`` (``it.qty`` is ``items.qty`` after it),
the latest row per key (``SELECT … FROM (SELECT …, ROW_NUMBER() OVER (PARTITION BY k ORDER
BY ts DESC) AS rn FROM c WHERE …) AS s WHERE s.rn = 1``) → ``$sort`` + ``$group`` with
``$first`` + ``$replaceRoot``. Everything else is refused and stays in the residual: joins
between collections, other subqueries and window functions, set operations, arithmetic and
other functions, comparisons that are not ``column op value`` (or two columns of the same
collection).

>>> from sqlglot import parse_one
>>> MONGO.refusal(parse_one("SELECT a FROM m.db.c WHERE a > 1 AND b LIKE 'x%'")) is None
True
>>> MONGO.refusal(parse_one("SELECT UPPER(a) FROM m.db.c"))
"no rule of 'mongo' pushes Upper (UPPER(a))"
"""

from __future__ import annotations

from dataclasses import dataclass

from federator.rules.base import Rule, RuleSet, register, rules_for_classes
from sqlglot import exp

VALUE_TYPES = (exp.Literal, exp.Placeholder, exp.Boolean)
DATE_TYPES = {
    exp.DataType.Type.DATE,
    exp.DataType.Type.TIMESTAMP,
    exp.DataType.Type.TIMESTAMPTZ,
    exp.DataType.Type.DATETIME,
}
COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
AGGREGATES = (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)


def is_value(node: exp.Expression) -> bool:
    """A constant the pipeline can hold: literal, parameter, boolean, negative number, or a
    date/timestamp literal (``DATE '2024-01-01'``, ``CAST('…' AS TIMESTAMP)``)."""
    if isinstance(node, VALUE_TYPES):
        return True
    if isinstance(node, exp.Neg):
        return isinstance(node.this, exp.Literal) and not node.this.is_string
    if isinstance(node, exp.Cast):
        return (
            isinstance(node.this, exp.Literal)
            and node.this.is_string
            and node.to.this in DATE_TYPES
        )
    return False


def _operand(node: exp.Expression) -> bool:
    """A comparison operand that names a value in the pipeline: a field or an aggregate."""
    return isinstance(node, exp.Column) or (
        isinstance(node, AGGREGATES) and _aggregate_argument(node)
    )


def _comparison(node: exp.Expression) -> bool:
    left, right = node.this, node.expression
    if (_operand(left) and is_value(right)) or (is_value(left) and _operand(right)):
        return True
    # two fields of the same collection ($expr); fields of two collections are a join
    return (
        isinstance(left, exp.Column) and isinstance(right, exp.Column) and left.table == right.table
    )


def _in_list(node: exp.Expression) -> bool:
    return (
        isinstance(node.this, exp.Column)
        and not node.args.get("query")
        and not node.args.get("unnest")
        and not node.args.get("field")
        and bool(node.expressions)
        and all(is_value(v) for v in node.expressions)
    )


def _between(node: exp.Expression) -> bool:
    return (
        isinstance(node.this, exp.Column)
        and is_value(node.args["low"])
        and is_value(node.args["high"])
        and not node.args.get("symmetric")
    )


def _like(node: exp.Expression) -> bool:
    pattern = node.expression
    return (
        isinstance(node.this, exp.Column)
        and not node.args.get("escape")
        and (
            isinstance(pattern, exp.Placeholder)
            or (isinstance(pattern, exp.Literal) and pattern.is_string)
        )
    )


def _is_null(node: exp.Expression) -> bool:
    return isinstance(node.this, exp.Column) and isinstance(node.expression, exp.Null)


def _aggregate_argument(node: exp.Expression) -> bool:
    arg = node.this
    if isinstance(node, exp.Count):
        if isinstance(arg, exp.Star):
            return True
        if isinstance(arg, exp.Distinct):
            return len(arg.expressions) == 1 and isinstance(arg.expressions[0], exp.Column)
    return isinstance(arg, exp.Column) and not node.args.get("expressions")


def _select(node: exp.Expression) -> bool:
    """One collection (its arrays unnested at most), no other joins, laterals, windows, locks
    or set operations around it."""
    return (
        not any(node.args.get(k) for k in ("laterals", "windows", "qualify", "with_", "locks"))
        and all(isinstance(j.this, exp.Unnest) for j in node.args.get("joins") or [])
        and not isinstance(node.parent, exp.SetOperation)
    )


def _unnest_join(node: exp.Expression) -> bool:
    """``CROSS JOIN UNNEST(o.items) AS it`` (or ``, UNNEST(…)``, or an inner JOIN whose ON
    filters the elements): ``$unwind`` of an array field of the collection."""
    return (
        isinstance(node.this, exp.Unnest)
        and not node.side
        and node.kind.upper() in ("", "INNER", "CROSS")
        and not node.args.get("using")
        and not node.args.get("method")  # ASOF: matched in the residual
    )


def _unnest(node: exp.Expression) -> bool:
    """One array field of the FROM collection, aliased by a name (``AS it``, its elements'
    fields are ``it.qty``) or a name and a column (``AS u(tag)``, the element is ``u.tag``),
    without ordinality."""
    select = node.parent_select
    from_ = select.args.get("from_") if select is not None else None
    alias = node.args.get("alias")
    column = node.expressions[0] if len(node.expressions) == 1 else None
    return (
        isinstance(node.parent, exp.Join)
        and from_ is not None
        and isinstance(column, exp.Column)
        and column.table == from_.this.alias_or_name
        and alias is not None
        and bool(alias.name)
        and len(alias.args.get("columns") or []) <= 1
        and not node.args.get("offset")
    )


@dataclass(frozen=True)
class LatestPerKey:
    """The parts of a latest-row-per-key query (see :func:`latest_per_key`)."""

    inner: exp.Select  # the one-collection SELECT with the ROW_NUMBER column
    alias: str  # the subquery's alias, which the outer columns name
    row_number: str  # the ROW_NUMBER column's name
    keys: list[exp.Column]  # PARTITION BY
    time: exp.Ordered  # ORDER BY (one field)
    window: int  # the ROW_NUMBER column's place in the inner select list


_CLAUSES = ("joins", "group", "having", "order", "limit", "offset", "distinct", "qualify")


def latest_per_key(node: exp.Expression) -> LatestPerKey | None:
    """``node``'s parts when it is ``SELECT s.a, … FROM (SELECT …, ROW_NUMBER() OVER
    (PARTITION BY field, … ORDER BY field [DESC]) AS rn FROM one collection [WHERE …]) AS s
    WHERE s.rn = 1``, the only subquery and window the pipeline takes, else None.

    >>> from sqlglot import parse_one
    >>> q = parse_one("SELECT s.v AS v FROM (SELECT c.v AS v, ROW_NUMBER() OVER (PARTITION "
    ...     "BY c.k ORDER BY c.t DESC) AS rn FROM m.db.c AS c) AS s WHERE s.rn = 1")
    >>> latest_per_key(q).time.sql()
    'c.t DESC'
    """
    if not isinstance(node, exp.Select) or any(node.args.get(k) for k in _CLAUSES):
        return None
    sub = node.args.get("from_") and node.args["from_"].this
    if not isinstance(sub, exp.Subquery) or not sub.alias or not isinstance(sub.this, exp.Select):
        return None
    inner = sub.this
    if any(inner.args.get(k) for k in _CLAUSES) or not _from(inner.args["from_"]):
        return None
    windows = [i for i, s in enumerate(inner.selects) if s.find(exp.Window)]
    if len(windows) != 1 or not isinstance(inner.selects[windows[0]], exp.Alias):
        return None
    column = inner.selects[windows[0]]
    window = column.this
    order = window.args.get("order")
    keys = window.args.get("partition_by") or []
    if not (
        isinstance(window, exp.Window)
        and isinstance(window.this, exp.RowNumber)
        and not window.args.get("spec")
        and keys
        and all(isinstance(k, exp.Column) for k in keys)
        and order is not None
        and len(order.expressions) == 1
        and isinstance(order.expressions[0].this, exp.Column)
    ):
        return None
    latest = LatestPerKey(inner, sub.alias, column.alias, keys, order.expressions[0], windows[0])
    return latest if _outer_is_first_row(node, latest) else None


def _outer_is_first_row(outer: exp.Select, latest: LatestPerKey) -> bool:
    """WHERE rn = 1 only, and the select list names the inner query's other columns."""
    where = outer.args.get("where")
    cond = where.this if where is not None else None
    inner_names = {s.alias_or_name for s in latest.inner.selects} - {latest.row_number}
    return (
        isinstance(cond, exp.EQ)
        and isinstance(cond.this, exp.Column)
        and cond.this.table == latest.alias
        and cond.this.name == latest.row_number
        and isinstance(cond.expression, exp.Literal)
        and cond.expression.this == "1"
        and all(
            isinstance(c, exp.Column) and c.table == latest.alias and c.name in inner_names
            for c in (s.unalias() for s in outer.selects)
        )
    )


def _first_row_of(node: exp.Expression) -> bool:
    """Whether ``node`` is the subquery, the window or the ROW_NUMBER of a latest-per-key
    query (no other subquery or window passes)."""
    outer = node.find_ancestor(exp.Select)
    if isinstance(node, (exp.Window, exp.RowNumber)) and outer is not None:
        outer = outer.find_ancestor(exp.Select)
    latest = latest_per_key(outer) if outer is not None else None
    if latest is None:
        return False
    window = latest.inner.selects[latest.window].this
    return node is latest.inner.parent or node is window or node is window.this


def _from(node: exp.Expression) -> bool:
    if isinstance(node.this, exp.Subquery):
        return latest_per_key(node.parent) is not None
    return isinstance(node.this, exp.Table)


def _group(node: exp.Expression) -> bool:
    return not any(node.args.get(k) for k in ("grouping_sets", "cube", "rollup", "totals")) and all(
        isinstance(e, exp.Column) for e in node.expressions
    )


def _ordered(node: exp.Expression) -> bool:
    return isinstance(node.this, (exp.Column, *AGGREGATES))


def _limit(node: exp.Expression) -> bool:
    """A literal count; MongoDB's $limit must be positive (LIMIT 0 stays in the residual)."""
    value = node.expression
    if not (isinstance(value, exp.Literal) and value.is_int):
        return False
    return int(value.this) > 0 or isinstance(node, exp.Offset)


def _distinct(node: exp.Expression) -> bool:
    return not node.args.get("on")


def _table(node: exp.Expression) -> bool:
    return not node.args.get("joins") and not node.args.get("laterals")


MONGO = RuleSet(
    "mongo",
    [
        Rule(exp.Select, guard=_select, name="select over one collection"),
        Rule(exp.From, guard=_from, name="from one collection"),
        Rule(exp.Table, guard=_table),
        Rule(exp.Join, guard=_unnest_join, name="CROSS JOIN UNNEST(array) ($unwind)"),
        Rule(exp.Unnest, guard=_unnest, name="UNNEST of an array field ($unwind)"),
        *(
            Rule(c, guard=_first_row_of, name="latest row per key ($group $first)")
            for c in (exp.Subquery, exp.Window, exp.RowNumber)
        ),
        *rules_for_classes(
            exp.TableAlias,
            exp.Identifier,
            exp.Column,
            exp.Alias,
            exp.Where,
            exp.Having,
            exp.Order,
            exp.Paren,
            exp.Star,
            exp.And,
            exp.Or,
            exp.Not,
            exp.Literal,
            exp.Placeholder,
            exp.Boolean,
            exp.DataType,
        ),
        Rule(exp.Null, guard=lambda n: isinstance(n.parent, exp.Is), name="NULL in IS [NOT] NULL"),
        Rule(exp.Neg, guard=is_value, name="negative number"),
        Rule(exp.Cast, guard=is_value, name="date/timestamp literal"),
        Rule(exp.Group, guard=_group, name="group by fields"),
        Rule(exp.Ordered, guard=_ordered, name="order by a field or an aggregate"),
        Rule(exp.Limit, guard=_limit, name="limit by a number"),
        Rule(exp.Offset, guard=_limit, name="offset by a number"),
        Rule(exp.Distinct, guard=_distinct, name="DISTINCT (not DISTINCT ON)"),
        *(Rule(c, guard=_comparison, name="field op value") for c in COMPARISONS),
        Rule(exp.In, guard=_in_list, name="field IN (values)"),
        Rule(exp.Between, guard=_between, name="field BETWEEN values"),
        Rule(exp.Like, guard=_like, name="field LIKE pattern ($regex)"),
        Rule(exp.ILike, guard=_like, name="field ILIKE pattern ($regex)"),
        Rule(exp.Is, guard=_is_null, name="field IS NULL"),
        *(Rule(c, guard=_aggregate_argument, name="aggregate of a field") for c in AGGREGATES),
    ],
    frozenset({"aggregate", "order_limit", "bind_join"}),
)

register("mongo", MONGO)
