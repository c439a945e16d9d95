"""Guards shared by the rule sets of vector databases (Milvus, Qdrant): one collection, the
fields to return, and at most one ORDER BY — a vector distance to a query vector, nearest
first — with a LIMIT (a vector search).

>>> from federator.sql.dialect import parse
>>> q = parse("SELECT id, emb <-> :q AS d FROM m.items ORDER BY d LIMIT 3")
>>> distance, desc = order_distance(q)
>>> distance.metric, desc, simple_vector_select(q)
('l2', False, True)
"""

from __future__ import annotations

from sqlglot import exp

from federator.sql.dialect import VectorDistance

# the clauses of a single-collection SELECT, which every vector database's rule set takes
COLLECTION_CLAUSES: tuple[type[exp.Expression], ...] = (
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
)


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


def simple_vector_select(node: exp.Expression) -> bool:
    """A SELECT of columns (and the distance it orders by) from one collection: no joins,
    grouping or expressions; an ORDER BY only with a literal LIMIT."""
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
                return False  # a distance is returned only for the vector searched by
    return True


def nearest_first(node: exp.Expression) -> bool:
    """An ORDER BY term that is the SELECT's vector distance, nearest first."""
    select = node.find_ancestor(exp.Select)
    if select is None:
        return False
    found = order_distance(select)
    return found is not None and found[1] == (not found[0].ascending)


def searchable_distance(node: exp.Expression) -> bool:
    """A distance between a vector column and a query vector, outside WHERE."""
    assert isinstance(node, VectorDistance)
    return node.find_ancestor(exp.Where) is None and vector_operands(node) is not None


def literal_in(node: exp.Expression) -> bool:
    """``x IN (...)`` over literals and parameters, not a subquery."""
    return not node.args.get("query") and all(
        isinstance(e, (exp.Literal, exp.Placeholder, exp.Neg)) for e in node.expressions
    )
