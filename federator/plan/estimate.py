"""Cardinality estimates: rows of a fragment, of a query, of a key's table.

From the catalog's row counts and unique keys and fixed selectivities per predicate shape;
the bind-join and top-k decisions (:mod:`federator.plan.joins`, :mod:`federator.plan.vector_topk`)
read them, and the executor re-checks them against what it observes.
"""

from __future__ import annotations

from sqlglot import exp

from federator.adapters.base import TableInfo
from federator.plan.model import Fragment
from federator.plan.tree import _conjuncts, _Item, free_aliases


class Estimator:
    """Row estimates from the catalog's tables (``tables``: by source, schema, name)."""

    tables: dict[tuple[str, str, str], TableInfo]

    def _estimate_items(self, members: list[_Item], conjuncts: list[exp.Expression]) -> int | None:
        sizes = [m.rows for m in members if m.rows is not None]
        if not sizes:
            return None
        rows = float(max(sizes))
        for c in conjuncts:
            if len(free_aliases(c)) == 1:
                rows *= _selectivity(c)
        return max(1, int(rows))

    def _estimate_query(self, query: exp.Expression) -> int | None:
        sizes = []
        for t in query.find_all(exp.Table):
            info = self.tables.get((t.catalog, t.db, t.name))
            if info is not None and info.rows is not None:
                sizes.append(info.rows)
        if not sizes:
            return None
        rows = float(max(sizes))
        if isinstance(query, exp.Select):
            where = query.args.get("where")
            for c in _conjuncts(where):
                rows *= _selectivity(c)
            if query.args.get("group"):
                rows = max(1.0, rows / 10)
            elif any(isinstance(s.unalias(), exp.AggFunc) for s in query.selects):
                rows = 1
            limit = query.args.get("limit")
            if limit is not None and isinstance(limit.expression, exp.Literal):
                rows = min(rows, float(limit.expression.this))
        return max(1, int(rows))

    def _base_rows(self, frag: Fragment) -> int | None:
        sizes = [
            info.rows
            for t in frag.query.find_all(exp.Table)
            if (info := self.tables.get((t.catalog, t.db, t.name))) is not None and info.rows
        ]
        return max(sizes) if sizes else None

    def _table_rows(self, frag: Fragment, alias: str) -> int | None:
        """The catalog's row count of the table ``alias`` names in ``frag``'s query."""
        for t in frag.query.find_all(exp.Table):
            if t.alias_or_name == alias and t.parent_select is frag.query:
                info = self.tables.get((t.catalog, t.db, t.name))
                return info.rows if info is not None and info.rows else None
        return None

    def _key_unique(self, origin: tuple[Fragment, str, str, str]) -> bool | None:
        """Whether a fragment's join key column is unique in its table; None: not known."""
        frag, alias, col, _ = origin
        for t in frag.query.find_all(exp.Table):
            if t.alias_or_name == alias and t.parent_select is frag.query:
                info = self.tables.get((t.catalog, t.db, t.name))
                if info is not None and info.unique_keys is not None:
                    return any(
                        tuple(k.lower() for k in key) == (col.lower(),) for key in info.unique_keys
                    )
        return None


def _selectivity(c: exp.Expression) -> float:
    if isinstance(c, exp.EQ):
        return 0.1
    if isinstance(c, exp.In):
        return min(0.5, 0.05 * max(1, len(c.expressions)))
    if isinstance(c, (exp.Like, exp.ILike)):
        return 0.25
    if isinstance(c, (exp.GT, exp.GTE, exp.LT, exp.LTE)):
        return 0.4
    if isinstance(c, exp.Between):
        return 0.25
    if isinstance(c, exp.Or):
        return 0.6
    return 0.5
