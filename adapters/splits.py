"""Splitting a scan into parts that run on their own (:meth:`Adapter.split_scan`): which
requests split, even ranges of an integer key, and the request of one range.

Only a plain scan splits: a SELECT of one table with filters and a projection, no join,
grouping, ordering, LIMIT or bind. Its parts are disjoint and together read every row.

>>> integer_cuts(1, 10, 3)
[4, 7]
>>> describe_range("id", [4, 7], 0), describe_range("id", [4, 7], 2)
('id < 4', 'id >= 7')
"""

from __future__ import annotations

from typing import Any

from sqlglot import exp

from federator.plan.model import NativeRequest

SPLIT_LOW, SPLIT_HIGH = "__split_low__", "__split_high__"  # a key range's parameters


def plain_scan(tree: exp.Expression) -> bool:
    """A SELECT of columns of one table: no join, grouping, ordering, limit or nesting."""
    if not isinstance(tree, exp.Select):
        return False
    if any(tree.args.get(k) for k in ("joins", "group", "having", "order", "limit", "offset")):
        return False
    if tree.args.get("distinct") or tree.find(exp.AggFunc, exp.Window) is not None:
        return False
    tables = list(tree.find_all(exp.Table))
    return len(tables) == 1 and len(list(tree.find_all(exp.Select))) == 1


def splittable_tree(request: NativeRequest) -> exp.Select | None:
    """The tree of a SQL request that may split (a plain scan, no bind), else None."""
    tree = getattr(request.payload, "tree", None)
    if request.bind is not None or tree is None or not plain_scan(tree):
        return None
    return tree


def integer_cuts(low: int, high: int, parts: int) -> list[int]:
    """The inner bounds cutting ``[low, high]`` into at most ``parts`` even ranges."""
    span = high - low + 1
    parts = max(1, min(parts, span))
    return [low + span * i // parts for i in range(1, parts)]


def range_condition(column: exp.Column, cuts: list[Any], index: int) -> exp.Expression | None:
    """Range ``index`` of the ranges ``cuts`` make: open below for the first, open above for
    the last (rows outside the bounds read when cutting count too); None for a single range."""
    low = exp.GTE(this=column.copy(), expression=exp.Placeholder(this=SPLIT_LOW))
    high = exp.LT(this=column.copy(), expression=exp.Placeholder(this=SPLIT_HIGH))
    if not cuts:
        return None
    if index == 0:
        return high
    if index == len(cuts):
        return low
    return exp.and_(low, high)


def range_values(cuts: list[Any], index: int) -> dict[str, Any]:
    """The parameter values of range ``index`` (see :func:`range_condition`)."""
    values = {}
    if index > 0:
        values[SPLIT_LOW] = cuts[index - 1]
    if index < len(cuts):
        values[SPLIT_HIGH] = cuts[index]
    return values


def describe_range(name: str, cuts: list[Any], index: int) -> str:
    """What EXPLAIN shows of range ``index``: ``id < 4``, ``id [4,7)``, ``id >= 7``."""
    if not cuts:
        return f"{name}: all"
    if index == 0:
        return f"{name} < {cuts[0]}"
    if index == len(cuts):
        return f"{name} >= {cuts[-1]}"
    return f"{name} [{cuts[index - 1]},{cuts[index]})"
