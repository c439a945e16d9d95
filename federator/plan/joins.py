"""Joins: which tables of one source join inside it, and bind joins across sources.

Within a source, tables are grouped by key joins; a many-to-many join stays in the residual.
Across sources, a small side's keys are bound into the other side (:class:`BindJoin`): plainly
when the estimates are clear, adaptively or by semi-join reduction (a keys-only fragment) when
they are close, the executor re-checking the observed key count at run time.
"""

from __future__ import annotations

import pyarrow as pa
from sqlglot import exp

from federator.errors import JoinKeyTypeError
from federator.plan.fragments import FragmentBuilder
from federator.plan.model import BindJoin, Fragment, grouped_bind_site
from federator.plan.tree import (
    _column_equalities,
    _conjuncts,
    _ident,
    _is_inner,
    _Item,
    _join_pair,
    _params,
    _unparen,
    field_type,
)
from federator.sql.dialect import Federated


class JoinPlanner(FragmentBuilder):
    """Join shapes within a source and bind joins / semi-joins between fragments."""

    # ---- join shapes: keys and many-to-many joins between two tables of one source ---
    def _join_columns(
        self, pair: tuple[str, str], idx: list[int], conjuncts: list[exp.Expression]
    ) -> tuple[set[str], set[str]]:
        """Columns of each side of ``pair`` equated by the conjuncts ``idx`` (plain columns)."""
        cols: tuple[set[str], set[str]] = (set(), set())
        equalities = []
        for i in idx:
            c = conjuncts[i]
            if isinstance(c, exp.Or):  # the same join in every branch
                for branch in c.flatten():
                    equalities += [e for e in _conjuncts(_unparen(branch)) if _join_pair(e) == pair]
            else:
                equalities.append(c)
        for c in equalities:
            if not isinstance(c, exp.EQ):
                continue
            for side in (c.this, c.expression):
                if isinstance(side, exp.Column) and side.table in pair:
                    cols[pair.index(side.table)].add(side.name)
        return cols

    def _unique_on(self, item: _Item, columns: set[str]) -> bool | None:
        """Whether ``columns`` cover a unique key of the item's table; None: not known."""
        if not isinstance(item.node, exp.Table):
            return None
        info = self.tables.get((item.node.catalog, item.node.db, item.node.name))
        if info is None or info.unique_keys is None:
            return None
        lowered = {c.lower() for c in columns}
        return any({k.lower() for k in key} <= lowered for key in info.unique_keys)

    def _key_join(
        self,
        edge: tuple[tuple[str, str], list[int]],
        conjuncts: list[exp.Expression],
        by_alias: dict[str, _Item],
    ) -> bool:
        pair, idx = edge
        cols = self._join_columns(pair, idx, conjuncts)
        return any(
            self._unique_on(by_alias[a], c) is not False for a, c in zip(pair, cols, strict=True)
        )

    def _join_refusal(
        self,
        a: str,
        b: str,
        idx: list[int],
        conjuncts: list[exp.Expression],
        by_alias: dict[str, _Item],
    ) -> str | None:
        """Why tables ``a`` and ``b`` (one source) should not be joined inside the source.

        A join on columns that are unique on neither side (known from the catalog's keys)
        is many-to-many: each key value pairs every row of one side with every row of the
        other, so the source would send more rows than the two sides hold. Those run in
        the residual instead (and may still be bound, see _plan_bind_joins).
        """
        shown = " AND ".join(conjuncts[i].sql(dialect=Federated) for i in idx)
        source = by_alias[a].source
        assert source is not None
        # a source that filters by a comparison of two columns may still not join (Milvus: a
        # fragment over two collections became one query of one of them, found by the matrix)
        join = exp.Join(this=by_alias[b].node.copy(), on=exp.and_(*(conjuncts[i] for i in idx)))
        refusal = self.rules[source].refusal(join)
        if refusal is not None:
            return f"join {shown} not run inside source {source}: {refusal}; joined in the residual"
        cols = self._join_columns((a, b), idx, conjuncts)
        unique = [self._unique_on(by_alias[x], c) for x, c in zip((a, b), cols, strict=True)]
        if unique != [False, False]:
            return None
        return (
            f"join {shown} not run inside source {by_alias[a].source}: many-to-many "
            f"(unique on neither side), it would multiply rows; joined in the residual"
        )

    # ---- bind joins --------------------------------------------------------------------
    def _plan_bind_joins(
        self,
        residual_conj: list[exp.Expression],
        frags: dict[str, Fragment],
        renames: dict[tuple[str, str], tuple[str, str]],
        consumers: set[str] | None = None,
        passed: dict[tuple[str, str], tuple[Fragment, str, str, str]] | None = None,
    ) -> None:
        """Bind joins for the equi-joins among ``residual_conj`` (``consumers``: the only
        fragment ids that may take keys, None: any; ``passed``: origins of subquery columns,
        see :meth:`_passed_keys`)."""
        candidates = self._equi_joined(residual_conj, frags, renames, passed)
        for left, right in candidates:
            self._check_key_types(left, right)
        unbound = []
        for left, right in candidates:
            refusals = []
            for producer, consumer in ((left, right), (right, left)):
                if consumers is not None and consumer[0].id not in consumers:
                    continue  # the preserved side of a LEFT JOIN keeps all its rows
                reason = self._bind_refusal(producer, consumer[0]) or self._filters_nothing(
                    producer
                )
                if reason is None:
                    self._bind(producer, consumer)
                    break
                refusals.append(f"{producer[0].id} -> {consumer[0].id}: {reason}")
            else:
                unbound.append((left, right, refusals))
        self._plan_alternative_binds(candidates, consumers)
        unbound = [u for u in unbound if not _alternative_of(u[0][0], u[1][0])]
        for left, right, refusals in unbound:  # after every plain bind has taken its consumer
            pairs = sorted(
                ((left, right), (right, left)), key=lambda pc: pc[0][0].estimated_rows or 0
            )
            for producer, consumer in pairs:
                if consumers is not None and consumer[0].id not in consumers:
                    continue
                reason = self._plan_having_bind(producer, consumer)
                if reason is None:
                    break
                reason = self._plan_grouped_bind(producer, consumer)
                if reason is None:
                    break
                reason = self._plan_semi_join(producer, consumer)
                if reason is None:
                    break
                refusals.append(f"semi-join {producer[0].id} -> {consumer[0].id}: {reason}")
            else:
                self.notes.append(
                    f"join {left[0].id}.{left[3]} = {right[0].id}.{right[3]} not bound ("
                    + "; ".join(refusals)
                    + ")"
                )

    def _plan_binds_from_null_rejected(
        self,
        select: exp.Select,
        on: list[exp.Expression],
        frags: dict[str, Fragment],
        renames: dict[tuple[str, str], tuple[str, str]],
        frag: Fragment,
        alias: str,
    ) -> None:
        """The preserved side of a LEFT JOIN the WHERE requires to match (a decorrelated
        ``IN``: ``NOT _u_0.k IS NULL``) keeps only rows with a match, so it may take the
        null-extended side's keys too, directly or through the WHERE's equalities (TPC-H
        Q18: orders and lineitem wait for the 57 large orders' keys). Only where the
        null-extended side keeps groups by a HAVING condition (:meth:`_plan_having_bind`):
        elsewhere it is the side that takes keys."""
        where = select.args.get("where")
        if where is None or frag.query.find(exp.Having) is None:
            return
        conjuncts = list(_conjuncts(where.this))
        if not any(_requires(c, alias) for c in conjuncts):
            return
        pairs = self._equi_joined([*conjuncts, *on], {**frags, alias: frag}, renames)
        for a, b in [*pairs, *_transitive(pairs)]:
            for producer, consumer in ((a, b), (b, a)):
                if producer[0] is frag and consumer[0] is not frag:
                    self._plan_having_bind(producer, consumer)

    def _equi_joined(
        self,
        conjuncts: list[exp.Expression],
        frags: dict[str, Fragment],
        renames: dict[tuple[str, str], tuple[str, str]],
        passed: dict[tuple[str, str], tuple[Fragment, str, str, str]] | None = None,
    ) -> list[tuple[tuple[Fragment, str, str, str], tuple[Fragment, str, str, str]]]:
        """The origins of both columns of each equality among ``conjuncts`` that joins two
        fragments (``passed``: origins of subquery columns, see :meth:`_passed_keys`)."""
        reverse = {v: k for k, v in renames.items()}
        passed = passed or {}
        pairs = []
        for c in _column_equalities(conjuncts):
            left, right = (
                passed.get((col.table, col.name)) or self._origin(col, frags, reverse)
                for col in (c.this, c.expression)
            )
            if left is not None and right is not None and left[0] is not right[0]:
                pairs.append((left, right))
        return pairs

    def _origin(
        self,
        col: exp.Column,
        frags: dict[str, Fragment],
        reverse: dict[tuple[str, str], tuple[str, str]],
    ) -> tuple[Fragment, str, str, str] | None:
        """(fragment, table alias, source column, fragment output name) for a residual column."""
        table, name = col.table, col.name
        if (table, name) in reverse:
            alias, source_col = reverse[(table, name)]
            return frags[alias], alias, source_col, name
        if table in frags:
            return frags[table], table, name, name
        return None

    def _plan_alternative_binds(
        self,
        candidates: list[tuple[tuple[Fragment, str, str, str], tuple[Fragment, str, str, str]]],
        consumers: set[str] | None,
    ) -> None:
        """Other join keys a plainly bound consumer could take instead (its bind's
        ``alternatives``): each producer a plain bind would accept but for the bind already
        taken. The executor binds the key set that keeps the smallest share of the consumer
        once the producers' rows are in (Q5: lineitem on the order keys, not the supplier's)."""
        if not self.settings.bind_alternatives:
            return
        for left, right in candidates:
            for producer, consumer in ((left, right), (right, left)):
                cfrag, bind = consumer[0], consumer[0].bind
                if bind is None or bind.race or bind.semi_join_of or cfrag.top_k is not None:
                    continue
                if consumers is not None and cfrag.id not in consumers:
                    continue
                taken = {bind.producer, *(a.producer for a in bind.alternatives)}
                if producer[0].id in taken or bind.max_keys is None:
                    continue
                narrowed, cfrag.estimated_rows = cfrag.estimated_rows, bind.consumer_rows
                try:  # judged on the consumer's size before its bind narrowed it
                    if self._bind_refusal(producer, cfrag, alternative=True) is None and (
                        self._filters_nothing(producer) is None
                    ):
                        bind.alternatives.append(
                            self._bind_join(producer, consumer, alternative=True)
                        )
                finally:
                    cfrag.estimated_rows = narrowed

    def _bind_refusal(
        self,
        origin: tuple[Fragment, str, str, str],
        consumer: Fragment,
        alternative: bool = False,
    ) -> str | None:
        """Why ``consumer`` should not take ``producer``'s keys (None: bind it).

        Bound when the producer is small (<= bind_max_keys) and the consumer at least
        bind_ratio times larger, or, adaptively, when the producer is larger (up to
        bind_large_max_keys) but the consumer so much larger that shipping the keys is cheaper
        than shipping its rows, or when its keys are a small share of its table's unique keys
        (``bind_small_share``: they keep that share of the consumer's foreign key). The executor
        re-checks the actual key count at run time.
        ``alternative``: whether it could take them instead of the bind it has (the key limit
        is then left to the run time, which counts the keys: Q5's orders side is estimated
        246 k rows before its own bind, and brings 46 k keys).
        """
        s = self.settings
        producer = origin[0]
        if consumer.bind is not None and not alternative:
            return f"{consumer.id} already bound to {consumer.bind.producer}"
        if not self.rules[consumer.source].can("bind_join"):
            return f"source {consumer.source} takes no bind joins"
        if consumer.as_written:
            return f"{consumer.id} is a derived table's query as written"
        if producer.top_k is not None:
            return f"{producer.id}'s keys change as its vector top-k grows"
        p, c = producer.estimated_rows, consumer.estimated_rows
        if p is None or c is None:
            return "no row estimate"
        limit = self._bind_key_limit(c)
        # an alternative's keys are counted at run time
        if p > limit and not alternative and not self._small_share(origin):
            return f"{producer.id} estimated {p:,} rows > {limit:,} keys allowed"
        if c < s.bind_ratio * p:
            return f"{consumer.id} estimated {c:,} rows, not {s.bind_ratio:g}x {p:,}"
        if self._depends_on(producer, consumer):
            return "would make a cycle"
        return None

    def _filters_nothing(self, producer: tuple[Fragment, str, str, str]) -> str | None:
        """Why binding ``producer``'s keys would filter nothing: it keeps about every value of
        its table's unique key, so a foreign key on the other side matches them all (TPC-H
        Q9's unfiltered supplier). None: it may filter."""
        frag, alias, _, _ = producer
        rows = self._table_rows(frag, alias)
        p = frag.estimated_rows
        if rows is None or p is None or self._key_unique(producer) is not True:
            return None
        if p >= self.settings.bind_min_share_left * rows:
            return f"{frag.id} keeps about all {rows:,} keys of its table: nothing to filter"
        return None

    def _bind_key_limit(self, consumer_rows: int) -> int:
        """Most keys worth binding into a consumer of this estimated size."""
        s = self.settings
        adaptive = int(consumer_rows / (s.bind_ratio * s.bind_large_ratio))
        return max(s.bind_max_keys, min(s.bind_large_max_keys, adaptive))

    def _depends_on(self, frag: Fragment, other: Fragment) -> bool:
        """Whether ``frag`` waits for ``other``'s rows, through its bind or an alternative."""
        if frag.bind is None:
            return False
        producers = [frag.bind.producer, *(a.producer for a in frag.bind.alternatives)]
        return any(p == other.id or self._depends_on(self.fragment(p), other) for p in producers)

    def _bind(
        self,
        producer: tuple[Fragment, str, str, str],
        consumer: tuple[Fragment, str, str, str],
        forced: bool = False,
    ) -> None:
        cfrag = consumer[0]
        cfrag.bind = self._bind_join(producer, consumer, forced)
        self._narrow_estimate(producer, cfrag)

    def _bind_join(
        self,
        producer: tuple[Fragment, str, str, str],
        consumer: tuple[Fragment, str, str, str],
        forced: bool = False,
        alternative: bool = False,
    ) -> BindJoin:
        """``consumer`` bound to ``producer``'s keys, as planned from the estimates."""
        pfrag, _, _, pname = producer
        cfrag, calias, ccol, cname = consumer
        p, c = pfrag.estimated_rows, cfrag.estimated_rows
        limit = self._bind_key_limit(c) if c is not None else None
        if forced or p is None or c is None or limit is None:
            reason = "bound: the vector search needs the other side's keys"
        elif alternative:
            reason = (
                f"{pfrag.id} estimated {p:,} rows, {cfrag.id} {c:,}: bound instead when its "
                f"observed keys (<= {limit:,}) keep a smaller share of {cfrag.id}"
            )
        elif p > limit:
            domain = self._key_domain(producer) or 1
            reason = (
                f"bound: {pfrag.id} estimated {p:,} rows > {limit:,} keys allowed, but "
                f"{p / domain:.1%} of its table's {domain:,} keys; bound at run time if the "
                f"observed keys are at most {self.settings.bind_small_share:.0%} of them"
            )
        else:
            reason = (
                f"bound: {pfrag.id} estimated {p:,} rows <= {limit:,} keys allowed"
                + (" (adaptive: large consumer)" if limit > self.settings.bind_max_keys else "")
                + f", {cfrag.id} estimated {c:,} rows >= {self.settings.bind_ratio:g}x"
                + "; re-checked at run time against the observed distinct keys"
            )
        return BindJoin(
            producer=pfrag.id,
            producer_column=pname,
            key=exp.column(ccol, table=calias, quoted=True),
            key_output=cname,
            reason=reason,
            max_keys=None if forced else limit,
            consumer_rows=None if forced else c,
            estimated_keys=p,
            key_domain=self._key_domain(producer),
            share_limit=self.settings.bind_small_share,
            share_max_keys=self.settings.bind_large_max_keys,
        )

    def _small_share(self, producer: tuple[Fragment, str, str, str]) -> bool:
        """Whether the producer is estimated at few enough of its table's unique keys to be
        bound above the key limit (``bind_small_share``, up to ``bind_large_max_keys``, both
        checked on the observed keys by :meth:`BindJoin.decide`)."""
        s, p, domain = self.settings, producer[0].estimated_rows, self._key_domain(producer)
        # planned on twice the bounds, as estimates are often 2x off: the run time counts keys
        if p is None or not domain or p > 2 * s.bind_large_max_keys:
            return False
        return p <= 2 * s.bind_small_share * domain

    def _key_domain(self, producer: tuple[Fragment, str, str, str]) -> int | None:
        """The rows of the producer's table when its key is unique there (None: unknown)."""
        unique = self._key_unique(producer) is True
        return self._table_rows(producer[0], producer[1]) if unique else None

    def _narrow_estimate(self, producer: tuple[Fragment, str, str, str], cfrag: Fragment) -> None:
        """A bound consumer's estimate, when the producer's key is its table's unique key:
        the consumer keeps the share of rows whose key the producer kept (a foreign key)."""
        p, c = producer[0].estimated_rows, cfrag.estimated_rows
        base = self._base_rows(producer[0])
        if p is None or c is None or not base or self._key_unique(producer) is not True:
            return
        narrowed = max(1, int(c * min(1.0, p / base)))
        if narrowed < c:
            cfrag.estimated_rows = narrowed
            cfrag.notes.append(
                f"estimated {narrowed:,} rows once bound ({c:,} x {p:,}/{base:,} keys of "
                f"{producer[0].id}'s table)"
            )

    def _bind_at_run_time(
        self,
        producer: str,
        producer_column: str,
        consumer: tuple[Fragment, str, str, str],
        limit: int,
        reason: str,
        semi_join_of: str | None = None,
        sized: bool = True,
        key_domain: int | None = None,
    ) -> None:
        """Bind ``consumer`` to ``producer``'s keys, bound only if the observed count pays
        (``sized``: also no more keys than the consumer's estimated rows / bind_ratio)."""
        cfrag, calias, ccol, cname = consumer
        cfrag.bind = BindJoin(
            producer=producer,
            producer_column=producer_column,
            key=exp.column(ccol, table=calias, quoted=True),
            key_output=cname,
            reason=reason,
            max_keys=limit,
            consumer_rows=cfrag.estimated_rows if sized else None,
            estimated_keys=self.fragment(semi_join_of or producer).estimated_rows,
            min_ratio=self.settings.bind_ratio,
            semi_join_of=semi_join_of,
            race=self.settings.bind_race,
            key_domain=key_domain,
            share_limit=self.settings.bind_small_share,
            share_max_keys=self.settings.bind_large_max_keys,
        )

    def _waits(self, producer: str) -> str:
        if self.settings.bind_race:
            return f"starts in full at once, races {producer}'s keys"
        return f"waits for {producer}'s keys"

    def _plan_having_bind(
        self, producer: tuple[Fragment, str, str, str], consumer: tuple[Fragment, str, str, str]
    ) -> str | None:
        """A producer that keeps groups by a HAVING condition (TPC-H Q18's orders of over 300
        units, a decorrelated IN): sources estimate HAVING with a fixed guess (PostgreSQL
        keeps 125 k of 1.5 M orders; 57 pass), so a plain bind is refused on a number that
        means nothing. The consumer waits for the producer's keys and binds them when the
        observed count pays (:meth:`BindJoin.decide`). Returns None when planned."""
        pfrag, _, _, pname = producer
        cfrag = consumer[0]
        if pfrag.query.find(exp.Having) is None:
            return "no HAVING"
        if cfrag.bind is not None or pfrag.top_k is not None or cfrag.as_written:
            return f"{cfrag.id} already bound"
        if not self.rules[cfrag.source].can("bind_join"):
            return f"source {cfrag.source} takes no bind joins"
        p, c = pfrag.estimated_rows, cfrag.estimated_rows
        if p is None or c is None or c < p or self._depends_on(pfrag, cfrag):
            return "no HAVING bind"
        limit = self._bind_key_limit(c)
        why = (
            f"{pfrag.id} keeps groups by a HAVING condition, which sources estimate by a fixed "
            f"guess (estimated {p:,} rows); {cfrag.id} {self._waits(pfrag.id)} and binds them "
            f"if they number <= {min(limit, int(c / self.settings.bind_ratio)):,}, else fetches "
            "in full"
        )
        self._bind_at_run_time(
            pfrag.id, pname, consumer, limit, why, key_domain=self._key_domain(producer)
        )
        return None

    def _plan_grouped_bind(
        self, producer: tuple[Fragment, str, str, str], consumer: tuple[Fragment, str, str, str]
    ) -> str | None:
        """A consumer that groups by the join key (a decorrelated subquery's aggregate per
        key, TPC-H Q17's ``AVG(l_quantity)`` per part): its estimate counts groups, but its
        work is every row it groups, so the row estimates cannot judge the bind. The bind goes
        under the GROUP BY (:func:`~federator.plan.model.grouped_bind_site`), where it is exact,
        and the executor binds when the producer's observed keys are within the key limit
        (however many groups are estimated: a source's estimate of groups after a join or
        filter is often 1). Returns None when planned; else not this case."""
        pfrag, _, _, pname = producer
        cfrag, calias, ccol, _ = consumer
        if not self.settings.grouped_bind:
            return "grouped binds off"
        if cfrag.bind is not None or pfrag.top_k is not None or cfrag.as_written:
            return "not grouped"
        rules = self.rules[cfrag.source]
        if not (rules.can("bind_join") and rules.can("bind_under_group")):
            return "not grouped"
        if cfrag.estimated_rows is None:
            return "not grouped"
        site, _ = grouped_bind_site(cfrag.query.copy(), exp.column(ccol, table=calias))
        if site.parent is None or self._depends_on(pfrag, cfrag):
            return "not grouped"
        c = cfrag.estimated_rows
        limit = self._bind_key_limit(c)
        why = (
            f"grouped on the key: {cfrag.id} aggregates per {ccol} (estimated {c:,} groups), "
            f"so {pfrag.id}'s keys go under its GROUP BY; {cfrag.id} {self._waits(pfrag.id)} "
            f"and binds them if they number <= {limit:,}, else fetches in full"
        )
        # the groups do not bound its work (the rows grouped do): only the key limit applies
        domain = self._key_domain(producer)
        self._bind_at_run_time(
            pfrag.id, pname, consumer, limit, why, sized=False, key_domain=domain
        )
        return None

    def _plan_semi_join(
        self, producer: tuple[Fragment, str, str, str], consumer: tuple[Fragment, str, str, str]
    ) -> str | None:
        """Semi-join reduction for joins a plain bind refuses (the estimates are too close
        to be sure it pays) where the producer is selective: the consumer waits for the
        producer's keys and the executor binds them when the observed count pays
        (:meth:`BindJoin.decide`). When the key repeats in the producer's table, a second,
        cheap fragment fetches ``SELECT DISTINCT key`` of the producer's query and the
        consumer waits for that only (the full producer runs meanwhile); when it is unique,
        the consumer waits for the producer itself (:meth:`_bind_adaptive`).
        Returns why not, or None when planned.
        """
        s = self.settings
        pfrag, _, _, pname = producer
        cfrag = consumer[0]
        p, c = pfrag.estimated_rows, cfrag.estimated_rows
        if cfrag.bind is not None or pfrag.top_k is not None:
            return f"{cfrag.id} already bound"
        if not self.rules[cfrag.source].can("bind_join") or cfrag.as_written:
            return f"source {cfrag.source} takes no bind joins into {cfrag.id}"
        if p is None or c is None:
            return "no row estimate"
        base = self._base_rows(pfrag)
        limit = self._bind_key_limit(c)
        if p > limit:
            return f"{pfrag.id} estimated {p:,} keys > {limit:,} allowed"
        if c < s.semi_join_ratio * p:
            return f"{cfrag.id} estimated {c:,} rows, not {s.semi_join_ratio:g}x {p:,}"
        if not base or p > s.semi_join_selectivity * base:
            return f"{pfrag.id} not selective (estimated {p:,} of {base or 0:,} rows)"
        if self._depends_on(pfrag, cfrag):
            return "would make a cycle"
        sizes = (
            f"{pfrag.id} estimated {p:,} rows ({p / base:.1%} of {base:,}), {cfrag.id} "
            f"estimated {c:,}, not {s.bind_ratio:g}x"
        )
        if self._key_unique(producer) is not False:
            why = (
                f"adaptive: {sizes}; {cfrag.id} {self._waits(pfrag.id)} and binds them if "
                f"they number <= {min(limit, int(c / s.bind_ratio)):,}, else fetches in full"
            )
            domain = self._key_domain(producer)
            self._bind_at_run_time(pfrag.id, pname, consumer, limit, why, key_domain=domain)
            return None
        if pfrag.bind is not None:
            return f"{pfrag.id} is bound itself (a keys-only copy would run unbound)"
        if c < s.semi_join_min_rows:
            return f"{cfrag.id} estimated {c:,} rows < semi_join_min_rows {s.semi_join_min_rows:,}"
        inner = exp.Subquery(this=pfrag.query.copy(), alias=exp.TableAlias(this=_ident("_k")))
        query = (
            exp.select(exp.column(pname, table="_k", quoted=True).as_(pname, quoted=True))
            .distinct()
            .from_(inner)
        )
        refusal = self.rules[pfrag.source].refusal(query)
        if refusal is not None:
            return f"keys-only query refused by {pfrag.source}: {refusal}"
        keys = Fragment(
            id=self._new_id(),
            source=pfrag.source,
            query=query,
            columns=[pname],
            estimated_rows=p,
            params=_params(query),
            types={pname: t} if (t := pfrag.types.get(pname)) is not None else {},
            notes=[f"semi-join reduction: distinct {pname} of {pfrag.id}, for {cfrag.id}"],
        )
        self.fragments.append(keys)
        why = (
            f"semi-join reduction: {sizes}; {pname} repeats in {pfrag.id}, so {keys.id} "
            f"fetches its distinct keys; {cfrag.id} {self._waits(keys.id)} and binds them if "
            f"they number <= {min(limit, int(c / s.bind_ratio)):,}, else fetches in full"
        )
        self._bind_at_run_time(keys.id, pname, consumer, limit, why, semi_join_of=pfrag.id)
        return None

    def _check_key_types(
        self, left: tuple[Fragment, str, str, str], right: tuple[Fragment, str, str, str]
    ) -> None:
        lt, rt = self._column_type(left), self._column_type(right)
        if lt is None or rt is None:
            return
        if _type_family(lt) != _type_family(rt):
            raise JoinKeyTypeError(
                f"join key types differ: {left[0].source}.{left[1]}.{left[2]} is {lt} but "
                f"{right[0].source}.{right[1]}.{right[2]} is {rt}; cast one side"
            )

    def _column_type(self, origin: tuple[Fragment, str, str, str]) -> pa.DataType | None:
        frag, alias, col, _ = origin
        for t in frag.query.find_all(exp.Table):
            if t.alias_or_name == alias:
                info = self.tables.get((t.catalog, t.db, t.name))
                if info is not None:
                    return field_type(info.schema, col)
        return None

    def _force_bind(
        self,
        residual_conj: list[exp.Expression],
        frags: dict[str, Fragment],
        reverse: dict[tuple[str, str], tuple[str, str]],
        consumer: Fragment,
    ) -> None:
        """Bind ``consumer`` to the other side of an equi-join whatever the estimates say."""
        for c in _column_equalities(residual_conj):
            a, b = (self._origin(col, frags, reverse) for col in (c.this, c.expression))
            if a is None or b is None or a[0] is b[0]:
                continue
            producer, cons = (a, b) if b[0] is consumer else (b, a)
            if cons[0] is consumer and not self._depends_on(producer[0], consumer):
                self._bind(producer, cons, forced=True)
                return

    def _passed_keys(self, it: _Item) -> dict[tuple[str, str], tuple[Fragment, str, str, str]]:
        """Output columns of a residual subquery ``it`` that are a fragment's column passed on
        unchanged, by (alias, output name): restricting that fragment to some key values
        then removes exactly the subquery's rows with other key values. So only a SELECT
        over fragments joined by inner joins (a row of the join keeps its fragments' values),
        without limit or window functions, grouped (if at all) by that column: TPC-H Q2's
        minimum supply cost per part over partsupp joined to the region's suppliers passes
        partsupp's part key on."""
        query = it.node.this if isinstance(it.node, exp.Subquery) else None
        if not isinstance(query, exp.Select) or it.source is not None:
            return {}
        if any(query.args.get(k) for k in ("limit", "offset")) or query.find(exp.Window):
            return {}
        joins = query.args.get("joins") or []
        if not query.args.get("from_") or not all(_is_inner(j) for j in joins):
            return {}
        ids = {f.id for f in self.fragments}
        tables = [query.args["from_"].this, *(j.this for j in joins)]
        if not all(isinstance(t, exp.Table) and not t.db and t.name in ids for t in tables):
            return {}
        frags = {t.alias_or_name: self.fragment(t.name) for t in tables}
        group = query.args.get("group")
        found = {}
        for proj in query.selects:
            col = proj.unalias()
            if not isinstance(col, exp.Column) or col.table not in frags:
                continue
            if group is not None and not any(g == col for g in group.expressions):
                continue
            origin = _output_origin(frags[col.table], col.name)
            if origin is not None:
                found[(it.alias, proj.alias_or_name)] = origin
        return found


_NULL_REJECTING = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)


def _requires(conjunct: exp.Expression, alias: str) -> bool:
    """Whether ``conjunct`` is false or unknown when every column of ``alias`` is NULL (a
    row a LEFT JOIN null-extended fails it).

    >>> from sqlglot import parse_one
    >>> _requires(parse_one("NOT u.k IS NULL"), "u"), _requires(parse_one("u.k IS NULL"), "u")
    (True, False)
    """
    if isinstance(conjunct, exp.Paren):
        return _requires(conjunct.this, alias)
    if isinstance(conjunct, exp.Not) and isinstance(conjunct.this, exp.Is):
        is_null = isinstance(conjunct.this.expression, exp.Null)
        return is_null and _column_of(conjunct.this.this, alias)
    if isinstance(conjunct, _NULL_REJECTING):
        return _column_of(conjunct.this, alias) or _column_of(conjunct.expression, alias)
    return False


def _column_of(node: exp.Expression, alias: str) -> bool:
    return isinstance(node, exp.Column) and node.table == alias


def _transitive(
    pairs: list[tuple[tuple[Fragment, str, str, str], tuple[Fragment, str, str, str]]],
) -> list[tuple[tuple[Fragment, str, str, str], tuple[Fragment, str, str, str]]]:
    """Equalities that two of ``pairs`` imply through a column they share, between two
    other fragments (TPC-H Q18: lineitem's l_orderkey = orders' o_orderkey = the large
    orders' l_orderkey joins lineitem to the large orders), not already among them."""

    def key(o: tuple[Fragment, str, str, str]) -> tuple[str, str]:
        return o[0].id, o[3]

    known = {frozenset((key(a), key(b))) for a, b in pairs}
    found = []
    for i, (a, b) in enumerate(pairs):
        ends = {key(a): b, key(b): a}  # a column of this pair -> the other end
        for c, d in pairs[i + 1 :]:
            for mid, far in ((c, d), (d, c)):
                near = ends.get(key(mid))
                if near is None or near[0] is far[0]:
                    continue
                pair = frozenset((key(near), key(far)))
                if pair not in known:
                    known.add(pair)
                    found.append((near, far))
    return found


def _alternative_of(a: Fragment, b: Fragment) -> bool:
    """Whether either fragment may take the other's keys as an alternative bind."""
    return any(
        x.bind is not None and any(alt.producer == y.id for alt in x.bind.alternatives)
        for x, y in ((a, b), (b, a))
    )


def _output_origin(frag: Fragment, output: str) -> tuple[Fragment, str, str, str] | None:
    """(fragment, table alias, column, output) for a fragment output that is a plain column."""
    if not isinstance(frag.query, exp.Select):
        return None
    for proj in frag.query.selects:
        col = proj.unalias()
        if proj.alias_or_name == output and isinstance(col, exp.Column) and col.table:
            return frag, col.table, col.name, output
    return None


def _type_family(t: pa.DataType) -> str:
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_temporal(t):
        return "time"
    if pa.types.is_boolean(t):
        return "bool"
    return str(t)
