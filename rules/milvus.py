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
from federator.rules.vectors import COLLECTION_CLAUSES
from federator.rules.vectors import literal_in as _literal_in
from federator.rules.vectors import nearest_first as _nearest_first
from federator.rules.vectors import order_distance as order_distance
from federator.rules.vectors import searchable_distance as _searchable
from federator.rules.vectors import simple_vector_select as _simple_select
from federator.rules.vectors import vector_operands as vector_operands
from sqlglot import exp

from federator.sql.dialect import VECTOR_OPS


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
            *COLLECTION_CLAUSES,
            *SIMPLE_FILTERS,
        ),
    ],
    frozenset({"bind_join", "vector_search"}),
)

register("milvus", MILVUS)
