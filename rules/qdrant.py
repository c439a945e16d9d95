"""What Qdrant takes: one collection, a payload filter, the fields to return, and at most one
ORDER BY — a vector distance to a query vector, nearest first — with a LIMIT (a vector
search); without ORDER BY it is a scroll. No joins, grouping or expressions.

A filter compares one column with a value: ``=``, ``<>`` (strings, numbers, booleans),
``<``, ``<=``, ``>``, ``>=`` and BETWEEN with numbers (Qdrant ranges are numeric), IN a list
of strings or integers, IS [NOT] NULL, AND, OR, NOT. LIKE stays in the residual (Qdrant's
text match is a token or substring match, not a pattern).

>>> from federator.sql.dialect import parse
>>> QDRANT.refusal(parse("SELECT id FROM q.items WHERE cat = 'a' ORDER BY emb <=> :q LIMIT 5"))
>>> QDRANT.refusal(parse("SELECT id FROM q.items WHERE cat > 'a'"))
"rule 'range over a number' of 'qdrant' refuses GT (cat > 'a')"
"""

from __future__ import annotations

from federator.rules.base import Rule, RuleSet, register, rules_for_classes
from federator.rules.vectors import (
    COLLECTION_CLAUSES,
    literal_in,
    nearest_first,
    searchable_distance,
    simple_vector_select,
)
from sqlglot import exp

from federator.sql.dialect import VECTOR_OPS

RANGES: tuple[type[exp.Expression], ...] = (exp.GT, exp.GTE, exp.LT, exp.LTE)


def _number(node: exp.Expression) -> bool:
    if isinstance(node, exp.Neg):
        node = node.this
    return isinstance(node, exp.Placeholder) or (isinstance(node, exp.Literal) and node.is_number)


def _value(node: exp.Expression) -> bool:
    return (
        _number(node)
        or isinstance(node, exp.Boolean)
        or (isinstance(node, exp.Literal) and node.is_string)
    )


def column_and_value(node: exp.Expression) -> tuple[exp.Column, exp.Expression] | None:
    """(column, value) of a comparison written either way round, or None."""
    for col, other in ((node.this, node.expression), (node.expression, node.this)):
        if isinstance(col, exp.Column) and not isinstance(other, exp.Column):
            return col, other
    return None


def _equality(node: exp.Expression) -> bool:
    found = column_and_value(node)
    return found is not None and _value(found[1])


def numeric_range(node: exp.Expression) -> bool:
    """``column <op> number`` (either way round); a parameter's value is checked when sent."""
    found = column_and_value(node)
    return found is not None and _number(found[1])


def numeric_between(node: exp.Expression) -> bool:
    """``column BETWEEN number AND number``."""
    return isinstance(node.this, exp.Column) and all(_number(node.args[k]) for k in ("low", "high"))


def _in_list(node: exp.Expression) -> bool:
    def key(e: exp.Expression) -> bool:
        inner = e.this if isinstance(e, exp.Neg) else e
        return isinstance(inner, exp.Placeholder) or (
            isinstance(inner, exp.Literal) and (inner.is_string or inner.is_int)
        )

    return (
        isinstance(node.this, exp.Column) and literal_in(node) and all(map(key, node.expressions))
    )


def _is_null(node: exp.Expression) -> bool:
    return isinstance(node.this, exp.Column) and isinstance(node.expression, exp.Null)


QDRANT = RuleSet(
    "qdrant",
    [
        Rule(exp.Select, guard=simple_vector_select, name="single-collection search or scroll"),
        Rule(exp.Ordered, guard=nearest_first, name="nearest-first vector distance"),
        Rule(exp.In, guard=_in_list, name="IN a list of strings or integers"),
        Rule(exp.EQ, guard=_equality, name="column = value"),
        Rule(exp.NEQ, guard=_equality, name="column <> value"),
        *[Rule(cls, guard=numeric_range, name="range over a number") for cls in RANGES],
        Rule(exp.Between, guard=numeric_between, name="BETWEEN numbers"),
        Rule(exp.Is, guard=_is_null, name="IS NULL"),
        *[
            Rule(cls, guard=searchable_distance, name="distance to a query vector")
            for cls in VECTOR_OPS
        ],
        *rules_for_classes(
            *COLLECTION_CLAUSES,
            exp.Paren,
            exp.Literal,
            exp.Boolean,
            exp.Neg,
            exp.Placeholder,
            exp.Null,
            exp.And,
            exp.Or,
            exp.Not,
        ),
    ],
    frozenset({"bind_join", "vector_search"}),
)

register("qdrant", QDRANT)
