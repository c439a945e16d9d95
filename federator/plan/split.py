"""Splitting an optimized tree into single-source fragments plus a residual.

Splitting works scope by scope. A query (or subquery, CTE, derived table) whose every table
is on one source, that references nothing outside itself, and that the source's rule set
accepts whole, becomes one fragment. Otherwise, within a SELECT, the tables of one source are
grouped by the conjuncts that join them (inner joins only), each group becomes a fragment with
the filters that touch only its tables, and what is left is the residual run on DuckDB.
Join grouping and bind joins: :mod:`federator.plan.joins`; vector top-k:
:mod:`federator.plan.vector_topk`; aggregates before the join:
:mod:`federator.plan.partial_agg`; estimates: :mod:`federator.plan.estimate`.
"""

from __future__ import annotations

from collections import defaultdict

from sqlglot import exp

from federator.errors import UnsupportedError
from federator.plan.asof_window import AsofWindows
from federator.plan.fragments import SplitResult
from federator.plan.model import Fragment
from federator.plan.partial_agg import PartialAggregation
from federator.plan.tree import (
    _conjuncts,
    _direct_queries,
    _is_asof,
    _is_inner,
    _Item,
    _join_pair,
    free_aliases,
    rename_columns,
)
from federator.plan.vector_topk import TopKPlanner


class Splitter(TopKPlanner, AsofWindows, PartialAggregation):
    """Cuts an optimized, qualified tree into fragments and a residual (mutates the tree)."""

    # ---- entry -------------------------------------------------------------------------
    def split(self, tree: exp.Query) -> SplitResult:
        self._ctes = {cte.alias_or_name: cte.this for cte in tree.find_all(exp.CTE)}
        source = self.pushable_source(tree)
        if source is not None:
            self._fragment_from_query(tree, source)
            return SplitResult(self.fragments, None, self.notes)
        refusal = self._whole_refusal(tree)
        if refusal:
            self.notes.append(f"not pushed whole: {refusal}")
        residual = self.split_query(tree)
        return SplitResult(self.fragments, residual, self.notes)

    def _whole_refusal(self, tree: exp.Query) -> str | None:
        sources = self.sources_in(tree)
        if len(sources) == 1 and None not in sources:
            return self.rules[next(iter(sources))].refusal(tree)  # type: ignore[index]
        return None

    # ---- recursion ---------------------------------------------------------------------
    def split_query(self, query: exp.Query) -> exp.Query:
        """Return the residual replacement of ``query``; registers fragments on the way."""
        if isinstance(query, exp.Subquery):
            query.set("this", self.split_query(query.this))
            return query
        source = self.pushable_source(query)
        if source is not None:
            frag = self._fragment_from_query(query, source)
            return exp.select("*").from_(exp.to_table(frag.id))
        if isinstance(query, exp.SetOperation):
            query.set("this", self.split_query(query.this))
            query.set("expression", self.split_query(query.expression))
            return query
        if isinstance(query, exp.Select):
            self._split_select(query)
            return query
        raise UnsupportedError(f"cannot split a {type(query).__name__} across sources")

    def _split_select(self, select: exp.Select) -> None:
        items = self._items(select)
        joins = select.args.get("joins") or []
        k = next((i for i, j in enumerate(joins) if not _is_inner(j)), len(joins))
        left = joins[k:]
        if all(j.side.upper() == "LEFT" or _is_asof(j) for j in left):
            # Inner joins, then LEFT JOINs (as decorrelated subqueries come): the inner part
            # is grouped and bound as usual, each LEFT-joined table is a fragment of its own.
            # ASOF [LEFT] JOINs too: their right side only ever matches the left side's keys.
            by_alias = {it.alias: it for it in items}
            outer = items[k + 1 :]
            pushed = [
                self._push_left_on(j, it, by_alias) for j, it in zip(left, outer, strict=True)
            ]
            frags, renames = self._split_inner(select, items[: k + 1], left)
            for join, it, conjuncts in zip(left, outer, pushed, strict=True):
                frag = self._own_fragment(select, it, conjuncts)
                if join.args.get("on") is None:
                    continue
                if frag is not None and self._semi_join_top_k(
                    select, join, it, frag, frags, renames
                ):
                    continue
                # The null-extended side only ever matches keys of the preserved side, so it
                # may take their keys (never the other way round), also through a subquery
                # left in the residual that passes a fragment's column on (see _passed_keys).
                on = list(_conjuncts(join.args["on"]))
                if frag is not None:
                    if not _is_asof(join):  # first: it decides which way the keys go
                        self._plan_binds_from_null_rejected(
                            select, on, frags, renames, frag, it.alias
                        )
                    self._plan_bind_joins(on, {**frags, it.alias: frag}, renames, {frag.id})
                    if _is_asof(join):
                        self._plan_time_window(select, join, it, frag, frags, renames)
                elif passed := self._passed_keys(it):
                    takers = {origin[0].id for origin in passed.values()}
                    self._plan_bind_joins(on, frags, renames, takers, passed)
        else:
            self._split_outer(select, items)
        self._split_nested_queries(select)
        self._split_ctes(select)

    def _items(self, select: exp.Select) -> list[_Item]:
        nodes = []
        if select.args.get("from_"):
            nodes.append(select.args["from_"].this)
        nodes += [j.this for j in select.args.get("joins") or []]
        items = []
        for node in nodes:
            alias = node.alias_or_name
            if isinstance(node, exp.Table) and node.catalog in self.rules:
                info = self.tables[(node.catalog, node.db, node.name)]
                items.append(_Item(alias, node.catalog, node, info.rows))
            elif isinstance(node, exp.Table) and node.name in self._ctes and not node.db:
                body = self._ctes[node.name]
                source = self.pushable_source(body)
                inlined = exp.Subquery(
                    this=body.copy(), alias=exp.TableAlias(this=exp.to_identifier(alias))
                )
                items.append(
                    _Item(alias, source, inlined if source else node, self._estimate_query(body))
                )
            elif isinstance(node, exp.Subquery):
                source = self.pushable_source(node.this)
                if source is None:
                    node.set("this", self.split_query(node.this))
                items.append(_Item(alias, source, node, self._estimate_query(node.this)))
            else:
                items.append(_Item(alias, None, node))
        return items

    # ---- inner joins: group tables of one source by the conjuncts joining them ---------
    def _split_inner(
        self, select: exp.Select, items: list[_Item], left: list[exp.Join] | None = None
    ) -> tuple[dict[str, Fragment], dict[tuple[str, str], tuple[str, str]]]:
        """``items`` inner joined (WHERE and inner ON conjuncts); ``left``: LEFT JOINs that
        follow them, kept in place after the fragments. Returns the fragment of each alias
        and the residual's column renames."""
        left = left or []
        by_alias = {it.alias: it for it in items}
        conjuncts = list(_conjuncts(select.args.get("where")))
        for join in select.args.get("joins") or []:
            if not any(join is j for j in left):
                conjuncts += _conjuncts(join.args.get("on"))
        pushed: dict[int, str] = {}  # conjunct index -> source
        parent = {it.alias: it.alias for it in items}

        def find(a: str) -> str:
            while parent[a] != a:
                a = parent[a]
            return a

        for it in items:  # UNNEST(o.items) goes with o where o's source unwinds arrays
            base = self._unnest_base(it, by_alias)
            if base is not None:
                it.source = base.source
                parent[it.alias] = find(base.alias)
        targets = {
            i: t for i, c in enumerate(conjuncts) if (t := self._conjunct_source(c, by_alias))
        }
        # Tables of one source are grouped by their join conjuncts only: key joins first, then
        # many-to-many joins unless they would multiply rows inside the source (see _join_refusal).
        # Any other conjunct over several tables is pushed only where they ended up together,
        # so an OR across two otherwise separate groups never turns them into a cross product.
        edges: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i in targets:
            pair = _join_pair(conjuncts[i])
            if pair is not None:
                edges[pair].append(i)
        ordered = sorted(edges.items(), key=lambda e: not self._key_join(e, conjuncts, by_alias))
        for (a, b), idx in ordered:
            if find(a) == find(b):
                continue
            refusal = self._join_refusal(a, b, idx, conjuncts, by_alias)
            if refusal is None:
                parent[find(a)] = find(b)
            else:
                self.notes.append(refusal)
        for i, target in targets.items():
            aliases = free_aliases(conjuncts[i]) & by_alias.keys()
            if len({find(a) for a in aliases}) == 1:
                pushed[i] = target

        groups: dict[str, list[_Item]] = defaultdict(list)
        for it in sorted(items, key=lambda it: isinstance(it.node, exp.Unnest)):  # tables first
            if it.source is not None:
                groups[find(it.alias)].append(it)
        if not groups:
            return {}, {}
        residual_conj = [c for i, c in enumerate(conjuncts) if i not in pushed]
        comp_conj: dict[str, list[exp.Expression]] = defaultdict(list)
        for i in pushed:
            comp_conj[find(next(iter(free_aliases(conjuncts[i]) & by_alias.keys())))].append(
                conjuncts[i]
            )

        # Detach pushed conjuncts and rebuild FROM as fragments cross joined, WHERE = the rest.
        select.set("where", None)
        select.set("joins", left or None)
        frags: dict[str, Fragment] = {}
        renames: dict[tuple[str, str], tuple[str, str]] = {}
        new_from: list[exp.Expression] = []
        detached = [it.node for it in items if it.source is None]  # e.g. UNNEST(o.items)
        for root, members in groups.items():
            frag, ren = self._fragment_from_items(
                select, members, comp_conj[root], residual_conj, hand_back=True, also=detached
            )
            for it in members:
                frags[it.alias] = frag
            renames.update(ren)
            if ren:
                new_from.append(exp.to_table(frag.id).as_(frag.id))
            else:
                new_from.append(exp.to_table(frag.id).as_(members[0].alias))
        for it in items:
            if it.source is None:
                new_from.append(it.node)
        select.set("from_", exp.From(this=new_from[0]))
        cross = [exp.Join(this=n, kind="CROSS") for n in new_from[1:]]
        select.set("joins", cross + left or None)
        if residual_conj:
            select.set("where", exp.Where(this=exp.and_(*residual_conj, copy=False)))
        if renames:
            rename_columns(select, renames)
        if not left:
            self._aggregate_before_join(select, frags)
        self._plan_bind_joins(residual_conj, frags, renames)
        self._plan_top_k(select, residual_conj, frags, renames)
        return frags, renames

    def _unnest_base(self, it: _Item, by_alias: dict[str, _Item]) -> _Item | None:
        """The table item whose array ``it`` unnests (``CROSS JOIN UNNEST(o.items) AS it``)
        when that table's source takes the unnest with it (MongoDB's ``$unwind``), else None."""
        node = it.node
        if it.source is not None or not isinstance(node, exp.Unnest):
            return None
        column = node.expressions[0] if len(node.expressions) == 1 else None
        base = by_alias.get(column.table) if isinstance(column, exp.Column) else None
        if base is None or base.source is None or not isinstance(base.node, exp.Table):
            return None
        probe = (
            exp.select(column.copy()).from_(base.node.copy()).join(node.copy(), join_type="CROSS")
        )
        return base if self.rules[base.source].refusal(probe) is None else None

    def _conjunct_source(self, c: exp.Expression, by_alias: dict[str, _Item]) -> str | None:
        aliases = free_aliases(c)
        if not aliases or not aliases <= by_alias.keys():
            return None
        sources = {by_alias[a].source for a in aliases}
        nested = self.sources_in(c)
        if len(sources) != 1 or None in sources or not nested <= sources:
            return None
        source = next(iter(sources))
        assert source is not None
        # judged as a WHERE: a rule set may take a comparison yet not a bare column as a filter
        where = exp.Where(this=self._inline_ctes(c.copy()))
        if self.rules[source].refusal(where) is not None:
            return None
        return source

    # ---- outer joins: each table its own fragment; push only null-safe filters ---------
    def _split_outer(self, select: exp.Select, items: list[_Item]) -> None:
        by_alias = {it.alias: it for it in items}
        nullable: set[str] = set()
        seen: list[str] = [items[0].alias] if items else []
        for join, it in zip(select.args.get("joins") or [], items[1:], strict=False):
            side = join.side.upper()
            if side in ("LEFT", "FULL"):
                nullable.add(it.alias)
            if side in ("RIGHT", "FULL"):
                nullable.update(seen)
            seen.append(it.alias)
        pushed: dict[str, list[exp.Expression]] = defaultdict(list)

        where = list(_conjuncts(select.args.get("where")))
        kept_where = []
        for c in where:
            alias = _single_alias(c, by_alias)
            if alias and alias not in nullable and self._conjunct_source(c, by_alias):
                pushed[alias].append(c)
            else:
                kept_where.append(c)
        select.set(
            "where", exp.Where(this=exp.and_(*kept_where, copy=False)) if kept_where else None
        )
        for join, it in zip(select.args.get("joins") or [], items[1:], strict=False):
            if join.side.upper() == "LEFT":
                pushed[it.alias] += self._push_left_on(join, it, by_alias)
        for it in items:
            self._own_fragment(select, it, pushed[it.alias])

    def _push_left_on(
        self, join: exp.Join, it: _Item, by_alias: dict[str, _Item]
    ) -> list[exp.Expression]:
        """Take from a LEFT JOIN's ON the conjuncts on its own table alone that its source
        runs (filtering that side before the join is the same); they are returned."""
        if not join.args.get("on"):
            return []
        pushed, kept_on = [], []
        for c in _conjuncts(join.args["on"]):
            if _single_alias(c, by_alias) == it.alias and self._conjunct_source(c, by_alias):
                pushed.append(c)
            else:
                kept_on.append(c)
        join.set("on", exp.and_(*kept_on, copy=False) if kept_on else exp.true())
        return pushed

    def _own_fragment(
        self, select: exp.Select, it: _Item, conjuncts: list[exp.Expression]
    ) -> Fragment | None:
        """``it`` (when on a source) as a fragment of its own with ``conjuncts`` pushed."""
        if it.source is None:
            return None
        frag, _ = self._fragment_from_items(select, [it], conjuncts, [], rename=False)
        it.node.replace(exp.to_table(frag.id).as_(it.alias))
        return frag

    # ---- nested queries and CTEs left in the residual ----------------------------------
    def _split_nested_queries(self, select: exp.Select) -> None:
        nested = [
            q
            for q in _direct_queries(select)
            if not isinstance(q.parent, (exp.From, exp.Join, exp.CTE))
            and not (
                isinstance(q.parent, exp.Subquery)
                and isinstance(q.parent.parent, (exp.From, exp.Join))
            )
        ]
        for q in nested:
            replacement = self.split_query(q)
            if replacement is not q:
                q.replace(replacement)

    def _split_ctes(self, select: exp.Select) -> None:
        with_ = select.args.get("with_")
        if not with_:
            return
        referenced = {t.name for t in select.find_all(exp.Table) if not t.db}
        kept = []
        for cte in with_.expressions:
            if cte.alias_or_name not in referenced:
                continue
            cte.set("this", self.split_query(cte.this))
            kept.append(cte)
        select.set("with_", exp.With(expressions=kept) if kept else None)


def _single_alias(c: exp.Expression, by_alias: dict[str, _Item]) -> str | None:
    aliases = free_aliases(c)
    return next(iter(aliases)) if len(aliases) == 1 and aliases <= by_alias.keys() else None
