"""Aggregate before the join (eager, partial aggregation).

When a cross-source join feeds a GROUP BY (or a global aggregate) whose aggregates read one
fragment's columns only, that fragment sends a partial aggregate grouped by every column of
it the rest of the query reads (join keys, group keys, residual filters) instead of its rows,
and the residual finishes: SUM of sums, COUNT as the sum of counts, AVG as the sum of sums
over the sum of counts, MIN of minimums, MAX of maximums. Every row of one partial group
shares the columns the join and the grouping read, so it matches the same rows of the other
side and lands in the same final group: the final aggregate over the partial rows equals the
aggregate over the joined rows. Each final aggregate is cast to the type DuckDB gives the
unrewritten aggregate, so the answer's types do not change.

Not rewritten: DISTINCT aggregates, other aggregate functions, FILTER clauses, window
functions, subqueries in the SELECT, and groups the source would form differently (strings on
a source whose collation is case-insensitive, unless it groups by bytes). Nor where grouping
would merge few rows: keys covering a unique key of the table, a fragment joined on several
keys (a fact's foreign keys: TPC-H's order line by order and supplier), or, from the source's
own estimates, more groups than ``MIN_REDUCTION`` of the rows.

>>> from sqlglot import parse_one
>>> [type(a).__name__ for a in scope_aggregates(parse_one("SELECT SUM(x), COUNT(*) FROM t"))]
['Sum', 'Count']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pyarrow as pa
from sqlglot import exp

from federator.plan.estimate import estimate_key
from federator.plan.fragments import FragmentBuilder
from federator.plan.model import Fragment
from federator.plan.tree import _params
from federator.sql.dialect import residual_duckdb_sql
from federator.sql.trees import conjuncts

_DECOMPOSABLE = (exp.Sum, exp.Count, exp.Avg, exp.Min, exp.Max)
_PARTIAL_PREFIX = "_pa"
# Grouped in the source only when it estimates at most this share of the rows as groups.
MIN_REDUCTION = 0.7


class PartialAggregation(FragmentBuilder):
    """Pushes a partial aggregate below a cross-source join (see the module docstring).

    ``ungrouped`` keeps each regrouped fragment as it was, so the planner can ask its source
    for both estimates and the next split keep the grouping only where it merges rows."""

    ungrouped: list[Fragment]

    def _aggregate_before_join(self, select: exp.Select, frags: dict[str, Fragment]) -> None:
        """Rewrite ``select`` (the residual over fragments cross joined, WHERE = the joins)
        and one fragment of ``frags`` when its aggregates read that fragment only."""
        if not self.settings.partial_aggregate:
            return
        refs = self._fragment_refs(select, frags)
        aggs = scope_aggregates(select)
        if refs is None or len(refs) < 2 or not aggs or _has_nested_query(select):
            return
        why = self._partial_refusal(select, aggs, refs)
        if isinstance(why, str):
            self.notes.append(f"no partial aggregate before the join: {why}")
            return
        ref, frag = why
        keys = sorted(_outside_columns(select, ref))
        if self._key_unique_in(frag, keys):
            return
        joined = _join_keys(select, ref)
        if len(joined) > 1:
            self.notes.append(
                f"no partial aggregate before the join: {frag.id} joins on several keys "
                f"({', '.join(sorted(joined))}): together they are about unique (a fact's "
                "foreign keys), so grouping by them would merge few rows"
            )
            return
        self._rewrite(select, aggs, ref, frag, keys)

    def _fragment_refs(
        self, select: exp.Select, frags: dict[str, Fragment]
    ) -> dict[str, Fragment] | None:
        """The residual alias of each fragment in ``select``'s FROM; None when something else
        is joined there (a residual subquery, an UNNEST) or a join is not a cross join."""
        by_id = {f.id: f for f in frags.values()}
        nodes = [select.args["from_"].this] if select.args.get("from_") else []
        for join in select.args.get("joins") or []:
            if join.args.get("on") or join.side or join.kind.upper() not in ("", "CROSS"):
                return None
            nodes.append(join.this)
        refs = {}
        for node in nodes:
            if not isinstance(node, exp.Table) or node.db or node.name not in by_id:
                return None
            refs[node.alias_or_name] = by_id[node.name]
        return refs

    def _partial_refusal(
        self, select: exp.Select, aggs: list[exp.AggFunc], refs: dict[str, Fragment]
    ) -> str | tuple[str, Fragment]:
        """Why the aggregates cannot be computed early, or (residual alias, fragment) to
        compute them in."""
        if select.args.get("qualify") or select.find(exp.Window):
            return "window functions"
        read: set[str] = set()
        for agg in aggs:
            if (
                not isinstance(agg, _DECOMPOSABLE)
                or isinstance(agg.this, exp.Distinct)
                or agg.find(exp.Placeholder, exp.Filter) is not None
                or isinstance(agg.parent, exp.Filter)
            ):
                return f"{agg.sql()} is not split into partial aggregates"
            read |= {c.table for c in agg.find_all(exp.Column)}
        if len(read) != 1 or not read <= refs.keys():
            return "the aggregates read no fragment or several"
        ref = next(iter(read))
        frag = refs[ref]
        q = frag.query
        if frag.top_k is not None or frag.as_written or frag.bind is not None:
            return f"{frag.id} is a top-k, bound or as-written fragment"
        if not isinstance(q, exp.Select) or any(
            q.args.get(k) for k in ("group", "distinct", "limit", "order", "having", "offset")
        ):
            return f"{frag.id} is not a plain SELECT"
        if not self.rules[frag.source].can("partial_aggregate"):
            return f"source {frag.source} takes no partial aggregates"
        return ref, frag

    def _key_unique_in(self, frag: Fragment, keys: list[str]) -> bool:
        """Whether ``keys`` cover a unique key of ``frag``'s one table (from the catalog):
        grouping by them would merge no rows."""
        tables = list(frag.query.find_all(exp.Table))
        if len(tables) != 1:
            return False
        info = self.tables.get((tables[0].catalog, tables[0].db, tables[0].name))
        if info is None or info.unique_keys is None:
            return False
        sources = {_projection(frag, k) for k in keys}
        names = {c.name.lower() for c in sources if isinstance(c, exp.Column)}
        return any({k.lower() for k in key} <= names for key in info.unique_keys)

    def _merges_too_few(self, frag: Fragment, grouped: exp.Select) -> str | None:
        """Why grouping does not pay, from the source's estimates of ``frag`` as it is and
        grouped (both asked when the plan was split first): under half the rows merged."""
        before = self.observed.get(estimate_key(frag))
        after = self.observed.get((frag.source, grouped.sql(dialect="postgres")))
        if before is None or after is None or after <= MIN_REDUCTION * before:
            return None
        return (
            f"{frag.source} estimates {after:,} groups of {before:,} rows for {frag.id}, "
            f"more than {MIN_REDUCTION:g} of them"
        )

    def _rewrite(
        self,
        select: exp.Select,
        aggs: list[exp.AggFunc],
        ref: str,
        frag: Fragment,
        keys: list[str],
    ) -> None:
        why = self._rewrite_refusal(aggs, ref, frag, keys)
        if isinstance(why, str):
            self.notes.append(f"no partial aggregate before the join: {why}")
            return
        partials: dict[str, str] = {}  # partial aggregate SQL -> output name
        projections = [_projection(frag, k).copy().as_(k, quoted=True) for k in keys]

        def partial(node: exp.AggFunc) -> exp.Column:
            local = _localize(node, ref, frag)
            sql = local.sql(dialect="postgres")
            if sql not in partials:
                name = f"{_PARTIAL_PREFIX}{len(partials)}"
                while name in frag.columns:
                    name += "_"
                partials[sql] = name
                projections.append(local.as_(name, quoted=True))
            return exp.column(partials[sql], table=ref, quoted=True)

        finals = [_final(agg, partial, t) for agg, t in zip(aggs, why, strict=True)]
        query = frag.query.copy()
        query.set("expressions", projections)
        groups = [_projection(frag, k).copy() for k in keys]
        query.set("group", exp.Group(expressions=groups) if groups else None)
        refusal = self.rules[frag.source].refusal(query) or self._merges_too_few(frag, query)
        if refusal is not None:
            self.notes.append(f"no partial aggregate before the join: {refusal}")
            return
        for agg, final in zip(aggs, finals, strict=True):
            agg.replace(final)
        self._regroup(frag, query, keys, list(partials.values()))

    def _rewrite_refusal(
        self, aggs: list[exp.AggFunc], ref: str, frag: Fragment, keys: list[str]
    ) -> str | list[str]:
        """Why not, or the DuckDB types of the unrewritten aggregates."""
        types = _final_types(aggs, ref, frag)
        if types is None:
            return f"the types of {frag.id}'s aggregated columns are not known"
        if any(isinstance(a, exp.Avg) and t != "DOUBLE" for a, t in zip(aggs, types, strict=True)):
            return "an AVG that is not a DOUBLE"
        if self.rules[frag.source].can("group_by_bytes"):
            return types
        if any(_is_text(frag.types.get(k)) for k in keys):
            return f"{frag.source} groups strings under its collation"
        if any(t == "VARCHAR" for t in types):
            return f"{frag.source} compares strings under its collation"
        return types

    def _regroup(self, frag: Fragment, query: exp.Select, keys: list[str], outs: list[str]) -> None:
        """``frag`` becomes ``query``. Its estimate stays the rows it reads (what a bind into it
        saves), the groups it sends are noted."""
        self.ungrouped.append(dataclasses.replace(frag, notes=[]))
        groups = self.observed.get((frag.source, query.sql(dialect="postgres")))
        frag.query = query
        frag.columns = [*keys, *outs]
        frag.params = _params(query)
        frag.types = self._output_types(query)
        frag.estimated_groups = groups
        grouped = ", ".join(keys) if keys else "nothing (one row)"
        sends = f"; {frag.source} estimates {groups:,} groups" if groups is not None else ""
        frag.notes.append(
            f"partial aggregate before the join: grouped by {grouped}{sends}; the residual "
            "finishes the aggregates (the estimate is of the rows grouped)"
        )


def scope_aggregates(select: exp.Select) -> list[exp.AggFunc]:
    """The aggregate calls of ``select``'s own scope (not of nested queries), outermost."""
    found: list[exp.AggFunc] = []

    def walk(node: exp.Expression) -> None:
        for child in node.iter_expressions():
            if isinstance(child, exp.AggFunc):
                found.append(child)
            elif not isinstance(child, (exp.Query, exp.From, exp.Join, exp.With)):
                walk(child)

    walk(select)
    return found


def _has_nested_query(select: exp.Select) -> bool:
    return any(
        isinstance(q, exp.Query)
        for key in ("expressions", "where", "group", "having", "order")
        for node in _as_list(select.args.get(key))
        for q in node.find_all(exp.Query)
    )


def _as_list(value: object) -> list[exp.Expression]:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]  # type: ignore[list-item]


def _outside_columns(select: exp.Select, ref: str) -> set[str]:
    """Output names of fragment ``ref`` that ``select`` reads outside its aggregates."""
    out: set[str] = set()

    def walk(node: exp.Expression) -> None:
        if isinstance(node, exp.Column):
            if node.table == ref:
                out.add(node.name)
            return
        if isinstance(node, (exp.AggFunc, exp.From, exp.Join)):
            return
        for child in node.iter_expressions():
            walk(child)

    walk(select)
    return out


def _join_keys(select: exp.Select, ref: str) -> set[str]:
    """Output names of fragment ``ref`` that ``select``'s WHERE equates with another
    fragment's column (the equi-join keys)."""
    found = set()
    for c in conjuncts(select.args.get("where")):
        if isinstance(c, exp.EQ) and all(isinstance(s, exp.Column) for s in (c.this, c.expression)):
            tables = {c.this.table, c.expression.table}
            if ref in tables and len(tables) == 2:
                found |= {s.name for s in (c.this, c.expression) if s.table == ref}
    return found


def _projection(frag: Fragment, output: str) -> exp.Expression:
    """The expression ``frag``'s query outputs as ``output``."""
    return next(p.unalias() for p in frag.query.selects if p.alias_or_name == output)


def _localize(node: exp.Expression, ref: str, frag: Fragment) -> exp.Expression:
    """``node`` (over residual columns ``ref.output``) over ``frag``'s own tables."""

    def swap(n: exp.Expression) -> exp.Expression:
        if isinstance(n, exp.Column) and n.table == ref:
            return _projection(frag, n.name).copy()
        return n

    return node.copy().transform(swap)


def _final(
    agg: exp.AggFunc, make: Callable[[exp.AggFunc], exp.Column], final_type: str
) -> exp.Expression:
    """The residual's aggregate over partial outputs (``make(node)`` names one), cast to
    the unrewritten aggregate's DuckDB type."""
    if isinstance(agg, exp.Count):
        arg = exp.Count(this=agg.this.copy()) if agg.this else exp.Count(this=exp.Star())
        total = exp.Coalesce(this=exp.Sum(this=make(arg)), expressions=[exp.Literal.number(0)])
    elif isinstance(agg, exp.Avg):
        total = exp.Div(
            this=exp.cast(exp.Sum(this=make(exp.Sum(this=agg.this.copy()))), "DOUBLE"),
            expression=exp.Nullif(
                this=exp.Sum(this=make(exp.Count(this=agg.this.copy()))),
                expression=exp.Literal.number(0),
            ),
            integer=False,
        )
    elif isinstance(agg, exp.Sum):
        total = exp.Sum(this=make(agg.copy()))
    else:
        total = type(agg)(this=make(agg.copy()))
    return exp.Cast(this=total, to=exp.DataType.build(final_type, dialect="duckdb"))


def _final_types(aggs: list[exp.AggFunc], ref: str, frag: Fragment) -> list[str] | None:
    """The DuckDB types of ``aggs`` over ``frag``'s columns, as the residual would compute them
    unrewritten (from an empty table of the known column types); None when not known."""
    import duckdb

    cols = sorted({c.name for agg in aggs for c in agg.find_all(exp.Column)})
    if any(frag.types.get(c) is None for c in cols):
        return None
    empty = pa.table({c: pa.array([], type=frag.types[c]) for c in cols})
    probe = exp.select(*(a.copy().as_(f"a{i}") for i, a in enumerate(aggs))).from_(
        exp.to_table("empty").as_(ref, quoted=True)
    )
    con = duckdb.connect()
    try:
        con.register("empty", empty)
        return [str(t) for t in con.sql(residual_duckdb_sql(probe)).types]
    except duckdb.Error:
        return None
    finally:
        con.close()


def _is_text(t: pa.DataType | None) -> bool:
    return t is None or pa.types.is_string(t) or pa.types.is_large_string(t)
