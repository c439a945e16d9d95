"""Helpers over sqlglot trees that the planner and the translators share.

>>> from sqlglot import parse_one
>>> [c.sql() for c in conjuncts(parse_one("SELECT 1 WHERE a = 1 AND (b OR c)").args["where"])]
['a = 1', 'b OR c']
"""

from __future__ import annotations

from sqlglot import exp


def conjuncts(node: exp.Expression | None) -> list[exp.Expression]:
    """The AND-ed parts of a WHERE or ON condition (none for None)."""
    if node is None:
        return []
    if isinstance(node, exp.Where):
        node = node.this
    return list(node.flatten()) if isinstance(node, exp.And) else [node]
