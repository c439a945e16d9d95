"""The MongoDB rule set: what one aggregation pipeline over one collection can express.

A fragment that passes these rules is one ``aggregate()`` call: WHERE → ``$match``,
GROUP BY with COUNT/SUM/AVG/MIN/MAX (and COUNT(DISTINCT col)) → ``$group``, HAVING → ``$match``,
ORDER BY → ``$sort``, OFFSET/LIMIT → ``$skip``/``$limit``, the select list → ``$project``,
``CROSS JOIN UNNEST(o.items) AS it`` → ``$unwind`` (``it.qty`` is ``items.qty`` after it).
Everything else is refused and stays in the residual: joins between collections, subqueries,
set operations, window functions, arithmetic and other functions, comparisons that are not
``column op value`` (or two columns of the same collection).

>>> from sqlglot import parse_one
>>> MONGO.refusal(parse_one("SELECT a FROM m.db.c WHERE a > 1 AND b LIKE 'x%'")) is None
True
>>> MONGO.refusal(parse_one("SELECT UPPER(a) FROM m.db.c"))
"no rule of 'mongo' pushes Upper (UPPER(a))"
"""

from __future__ import annotations

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


def _from(node: exp.Expression) -> bool:
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
