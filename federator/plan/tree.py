"""Helpers over sqlglot trees the planner's parts share: conjuncts, aliases, renames."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
from sqlglot import exp

from federator.sql.trees import conjuncts as _conjuncts


@dataclass
class _Item:
    """One thing in a FROM clause: its alias, its source (None: residual-only), its node."""

    alias: str
    source: str | None
    node: exp.Expression
    rows: int | None = None


def field_type(schema: pa.Schema, name: str) -> pa.DataType | None:
    """A column's type by its exact name, else by its name in any case."""
    if name in schema.names:
        return schema.field(name).type
    lowered = [f for f in schema if f.name.lower() == name.lower()]
    return lowered[0].type if len(lowered) == 1 else None


def _is_inner(join: exp.Join) -> bool:
    return not join.side and join.kind.upper() in ("", "INNER", "CROSS") and not _is_asof(join)


def _is_asof(join: exp.Join) -> bool:
    """``ASOF [LEFT] JOIN``: each row of the left side matched to the latest row of the right
    side at or before its time; runs in the residual."""
    return (join.args.get("method") or "").upper() == "ASOF"


def _join_pair(c: exp.Expression) -> tuple[str, str] | None:
    """The two tables an equi-join conjunct joins (``a.x = b.y``, sorted), else None.

    An OR whose every branch holds the same equi-join (TPC-H Q19's shape) joins them too.
    """
    if isinstance(c, exp.Or):
        pairs = set()
        for branch in c.flatten():
            found = {p for p in map(_join_pair, _conjuncts(_unparen(branch))) if p}
            if not found:
                return None
            pairs.add(frozenset(found))
        common = frozenset.intersection(*pairs) if pairs else frozenset()
        return min(common) if common else None
    if not isinstance(c, exp.EQ):
        return None
    left, right = free_aliases(c.this), free_aliases(c.expression)
    if len(left) != 1 or len(right) != 1 or left == right:
        return None
    return tuple(sorted((*left, *right)))  # type: ignore[return-value]


def _ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def _unparen(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _params(node: exp.Expression) -> list[str]:
    return sorted({p.name for p in node.find_all(exp.Placeholder) if p.name})


def defined_aliases(query: exp.Expression) -> set[str]:
    """Aliases a query defines for its own scope: FROM/JOIN items and CTE names."""
    out: set[str] = set()
    if isinstance(query, exp.Select):
        if query.args.get("from_"):
            out.add(query.args["from_"].this.alias_or_name)
        out.update(j.this.alias_or_name for j in query.args.get("joins") or [])
    with_ = query.args.get("with_")
    if with_:
        out.update(c.alias_or_name for c in with_.expressions)
    return out


def free_aliases(node: exp.Expression) -> set[str]:
    """Table aliases that columns under ``node`` reference but ``node`` does not define."""
    out: set[str] = set()
    _free(node, set(), out)
    return out


def _free(node: exp.Expression, bound: set[str], out: set[str]) -> None:
    if isinstance(node, exp.Column):
        if node.table and node.table not in bound:
            out.add(node.table)
        return
    if isinstance(node, exp.Query):
        bound = bound | defined_aliases(node)
    for child in node.iter_expressions():
        _free(child, bound, out)


def collect_columns(
    node: exp.Expression, aliases: set[str], out: dict[str, set[str]], top: bool = True
) -> None:
    """Columns of ``aliases`` referenced under ``node``, respecting shadowing by nested scopes."""
    if isinstance(node, exp.Column):
        if node.table in aliases:
            out[node.table].add(node.name)
        return
    if isinstance(node, exp.Query) and not top:
        aliases = aliases - defined_aliases(node)
        if not aliases:
            return
    for child in node.iter_expressions():
        collect_columns(child, aliases, out, top=False)


def rename_columns(node: exp.Expression, renames: dict[tuple[str, str], tuple[str, str]]) -> None:
    """Point residual columns at fragment outputs, respecting shadowing by nested scopes."""
    aliases = {a for a, _ in renames}
    _rename(node, aliases, renames, top=True)


def _rename(node: exp.Expression, aliases: set[str], renames: dict, top: bool) -> None:
    if isinstance(node, exp.Column):
        key = (node.table, node.name)
        if node.table in aliases and key in renames:
            table, name = renames[key]
            node.set("table", exp.to_identifier(table, quoted=True))
            node.set("this", exp.to_identifier(name, quoted=True))
        return
    if isinstance(node, exp.Query) and not top:
        aliases = aliases - defined_aliases(node)
        if not aliases:
            return
    for child in list(node.iter_expressions()):
        _rename(child, aliases, renames, top=False)


def _direct_queries(select: exp.Select) -> list[exp.Query]:
    """Queries nested in ``select``'s expressions, not inside another nested query."""
    found: list[exp.Query] = []

    def walk(node: exp.Expression) -> None:
        for child in node.iter_expressions():
            if isinstance(child, exp.Query):
                found.append(child)
            elif not isinstance(child, exp.With):
                walk(child)

    walk(select)
    return found


def _column_equalities(conjuncts: Iterable[exp.Expression]) -> Iterator[exp.EQ]:
    """The ``column = column`` conjuncts: the equi-joins a bind can use."""
    for c in conjuncts:
        if (
            isinstance(c, exp.EQ)
            and isinstance(c.this, exp.Column)
            and isinstance(c.expression, exp.Column)
        ):
            yield c
