"""Cardinality estimates: rows of a fragment, of a query, of a key's table.

From the sources themselves where they answered (``observed``: each relational source's own
estimate of the fragment as it will be sent, asked by the planner before the bind decisions,
see :meth:`federator.plan.planner.Planner`), else from the catalog's row counts and unique keys
and fixed selectivities per predicate shape. The bind-join and top-k decisions
(:mod:`federator.plan.joins`, :mod:`federator.plan.vector_topk`) read them, and the executor
re-checks them against what it observes. Each fragment records where its estimate came from
(``Fragment.estimate_origin``), which EXPLAIN prints.

>>> estimate_key(Fragment("f0", "pg", exp.select("a").from_("t"), ["a"]))
('pg', 'SELECT a FROM t')
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlglot import exp

from federator.adapters.base import TableInfo
from federator.plan.model import Fragment
from federator.plan.tree import _conjuncts, _Item, free_aliases

ORIGIN_SOURCE = "source EXPLAIN"
ORIGIN_CATALOG = "catalog stats"
ORIGIN_GUESS = "catalog stats x default selectivities"
ORIGIN_DEFAULT = "default"


def estimate_key(frag: Fragment) -> tuple[str, str]:
    """What a source estimate is kept under: the fragment's source and query (its shape,
    parameters as ``:name``, no bind)."""
    return frag.source, frag.query.sql(dialect="postgres")


class Estimator:
    """Row estimates from the sources (``observed``, by :func:`estimate_key`) and the
    catalog's tables (``tables``: by source, schema, name)."""

    tables: dict[tuple[str, str, str], TableInfo]
    observed: Mapping[tuple[str, str], int] = {}

    def _settle_estimate(self, frag: Fragment) -> None:
        """The source's own estimate for ``frag`` where it gave one; else say how the
        catalog's was made."""
        found = self.observed.get(estimate_key(frag))
        if found is not None:
            frag.estimated_rows, frag.estimate_origin = found, ORIGIN_SOURCE
        elif frag.estimated_rows is None:
            frag.estimate_origin = ORIGIN_DEFAULT
        else:
            frag.estimate_origin = ORIGIN_GUESS if _filtered(frag.query) else ORIGIN_CATALOG

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


def _filtered(query: exp.Expression) -> bool:
    """Whether a fixed selectivity went into the catalog estimate of ``query``."""
    if not isinstance(query, exp.Select):
        return True
    return any(query.args.get(k) for k in ("where", "group", "having", "limit", "distinct")) or any(
        isinstance(s.unalias(), exp.AggFunc) for s in query.selects
    )


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
