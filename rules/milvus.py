"""What Milvus takes: one collection, a scalar filter expression, the fields to return, and at
most one ORDER BY — a vector distance to a query vector, nearest first — with a LIMIT (a
vector search); without ORDER BY it is a scalar query. No joins, grouping or expressions.

>>> from federator.sql.dialect import parse
>>> MILVUS.refusal(parse("SELECT id FROM m.items WHERE cat = 'a' ORDER BY emb <=> :q LIMIT 5"))
>>> MILVUS.refusal(parse("SELECT id FROM m.items ORDER BY price LIMIT 5"))
"rule 'nearest-first vector distance' of 'milvus' refuses Ordered (price NULLS LAST)"
"""

from __future__ import annotations

from federator.rules.base import SIMPLE_FILTERS, Rule, RuleSet, register, rules_for_classes
from sqlglot import exp

from federator.sql.dialect import VECTOR_OPS, VectorDistance


def order_distance(select: exp.Select) -> tuple[VectorDistance, bool] | None:
    """The vector distance a SELECT orders by (an alias resolved) and whether it is DESC."""
    order = select.args.get("order")
    if order is None or len(order.expressions) != 1:
        return None
    ordered = order.expressions[0]
    node = ordered.this
    if isinstance(node, exp.Column) and not node.table:
        for proj in select.selects:
            if isinstance(proj, exp.Alias) and proj.alias == node.name:
                node = proj.this
    if not isinstance(node, VectorDistance):
        return None
    return node, bool(ordered.args.get("desc"))


def vector_operands(node: VectorDistance) -> tuple[exp.Column, exp.Expression] | None:
    """(vector column, query vector) of a distance, the query vector a parameter or literal."""
    for col, other in ((node.this, node.expression), (node.expression, node.this)):
        if isinstance(col, exp.Column) and (
            isinstance(other, exp.Placeholder)
            or (isinstance(other, exp.Literal) and other.is_string)
        ):
            return col, other
    return None


def _simple_select(node: exp.Expression) -> bool:
    assert isinstance(node, exp.Select)
    if any(node.args.get(k) for k in ("joins", "group", "having", "distinct", "with_", "qualify")):
        return False
    if node.args.get("order") is not None:
        limit = node.args.get("limit")
        if limit is None or not isinstance(limit.expression, exp.Literal):
            return False
    for proj in node.selects:
        inner = proj.unalias()
        if not isinstance(inner, (exp.Column, VectorDistance)):
            return False
        if isinstance(inner, VectorDistance):
            found = order_distance(node)
            if found is None or found[0] != inner:
                return False  # a distance Milvus returns only for the vector it searches by
    return True


def _nearest_first(node: exp.Expression) -> bool:
    select = node.find_ancestor(exp.Select)
    if select is None:
        return False
    found = order_distance(select)
    return found is not None and found[1] == (not found[0].ascending)


def _searchable(node: exp.Expression) -> bool:
    assert isinstance(node, VectorDistance)
    return node.find_ancestor(exp.Where) is None and vector_operands(node) is not None


def _literal_in(node: exp.Expression) -> bool:
    return not node.args.get("query") and all(
        isinstance(e, (exp.Literal, exp.Placeholder, exp.Neg)) for e in node.expressions
    )


def _string_pattern(node: exp.Expression) -> bool:
    return isinstance(node.expression, exp.Literal) and node.expression.is_string


MILVUS = RuleSet(
    "milvus",
    [
        Rule(exp.Select, guard=_simple_select, name="single-collection search or query"),
        Rule(exp.Ordered, guard=_nearest_first, name="nearest-first vector distance"),
        Rule(exp.In, guard=_literal_in, name="IN a literal list"),
        Rule(exp.Like, guard=_string_pattern, name="LIKE a literal pattern"),
        *[Rule(cls, guard=_searchable, name="distance to a query vector") for cls in VECTOR_OPS],
        *rules_for_classes(
            exp.From,
            exp.Table,
            exp.TableAlias,
            exp.Identifier,
            exp.Column,
            exp.Alias,
            exp.Where,
            exp.Order,
            exp.Limit,
            exp.Offset,
            *SIMPLE_FILTERS,
        ),
    ],
    frozenset({"bind_join", "vector_search"}),
)

register("milvus", MILVUS)
