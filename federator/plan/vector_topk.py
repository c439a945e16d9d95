"""Vector top-k planning: ORDER BY <distance> LIMIT k into the fragment holding the vectors.

The search runs as a pre-filter (the other side's keys bound into it) or a post-filter
(over-fetch k x factor, grown until k rows survive); ``auto`` decides at run time
(:mod:`federator.execute.topk`). The residual reads the distance the search returns.
"""

from __future__ import annotations

import pyarrow as pa
from sqlglot import exp

from federator.plan.joins import JoinPlanner
from federator.plan.model import Fragment, TopK
from federator.plan.tree import _column_equalities, _conjuncts, _Item, _params, free_aliases
from federator.sql.dialect import Federated, VectorDistance


class TopKPlanner(JoinPlanner):
    """Pushes a vector top-k into its fragment and picks pre- or post-filter."""

    def _plan_top_k(
        self,
        select: exp.Select,
        residual_conj: list[exp.Expression],
        frags: dict[str, Fragment],
        renames: dict[tuple[str, str], tuple[str, str]],
    ) -> None:
        """Push the query's ORDER BY <vector distance> LIMIT k into the fragment whose source
        can search vectors (capability ``vector_search``), as pre- or post-filter (TopK)."""
        derived = isinstance(select.parent, exp.Subquery) and isinstance(
            select.parent.parent, (exp.From, exp.Join)
        )
        if (select.parent is not None and not (derived and not free_aliases(select))) or any(
            select.args.get(a) for a in ("group", "having", "distinct", "qualify")
        ):
            return
        if any(isinstance(p.unalias(), exp.AggFunc) for p in select.selects):
            return
        order, limit = select.args.get("order"), select.args.get("limit")
        if order is None or limit is None or not order.expressions:
            return
        if not isinstance(limit.expression, exp.Literal) or not limit.expression.is_int:
            return
        offset = select.args.get("offset")
        if offset is not None and not isinstance(offset.expression, exp.Literal):
            return
        k = int(limit.expression.this) + (int(offset.expression.this) if offset else 0)
        ordered = order.expressions[0]
        key = ordered.this
        if isinstance(key, exp.Column) and not key.table:
            for proj in select.selects:
                if isinstance(proj, exp.Alias) and proj.alias == key.name:
                    key = proj.this
        if not isinstance(key, VectorDistance):
            return
        columns = [c for c in (key.this, key.expression) if isinstance(c, exp.Column)]
        if len(columns) != 1 or len(list(key.find_all(exp.Column))) != 1:
            return
        reverse = {v: k_ for k_, v in renames.items()}
        origin = self._origin(columns[0], frags, reverse)
        if origin is None:
            return
        frag, alias, source_col, _ = origin
        rules = self.rules[frag.source]
        if not rules.can("vector_search") or frag.as_written:
            return
        local = key.copy()
        for col in local.find_all(exp.Column):
            col.replace(exp.column(source_col, table=alias, quoted=True))
        pushed = frag.query.copy()
        new_ordered = ordered.copy()
        new_ordered.set("this", local)
        pushed.set("order", exp.Order(expressions=[new_ordered]))
        pushed.set("limit", exp.Limit(expression=exp.Literal.number(k)))
        refusal = rules.refusal(pushed)
        if refusal is not None:
            self.notes.append(f"vector top-k not pushed into {frag.id}: {refusal}")
            return
        for other in self.fragments:  # bound to keys that change as the top-k grows
            if other.bind is not None and other.bind.producer == frag.id:
                other.bind = None
                other.notes.append(f"not bound to {frag.id}: its vector top-k may grow")
        if self.settings.vector_filter in ("pre", "auto") and frag.bind is None:
            self._force_bind(residual_conj, frags, reverse, frag)  # auto decides at run time
        mode, why = self._filter_choice(frag)
        frag.top_k = TopK(
            k=k,
            mode=mode,
            factor=self.settings.post_factor,
            threshold=self.settings.prefilter_selectivity,
            base_rows=self._base_rows(frag),
            reason=why,
            unpushed=frag.query,
            ties=len(order.expressions) > 1,
            scope=select if derived else None,
        )
        frag.query = pushed
        self._take_distance(select, key, columns[0], frag, local)
        frag.params = _params(frag.query)
        frag.estimated_rows = k
        then = ", ".join(o.sql(dialect=Federated) for o in order.expressions[1:])
        ties = (
            f"; ties broken by {then} in the residual over every candidate nearer than the "
            "farthest fetched (grown until k such rows survive)"
            if then
            else ""
        )
        frag.notes.append(
            f"vector top-k: ORDER BY {local.sql(dialect=Federated)} LIMIT {k} pushed down; "
            f"pre-filter binds the other side's keys into the search, post-filter over-fetches "
            f"k x factor and grows x{frag.top_k.growth} until {k} rows survive; {why}{ties}"
        )

    def _filter_choice(self, frag: Fragment) -> tuple[str, str]:
        """Pre- or post-filter for a top-k fragment (``auto``: decided at run time), and why."""
        mode = self.settings.vector_filter
        if frag.bind is None:
            return "post", "no key of another source to bind into the search"
        base = self._base_rows(frag)
        threshold = self.settings.prefilter_selectivity
        producer = self.fragment(frag.bind.producer)
        sel = producer.estimated_rows / base if producer.estimated_rows and base else None
        shown = f"{sel:.1%}" if sel is not None else "unknown"
        if mode != "auto":
            return mode, f"forced by planner setting vector_filter={mode} (selectivity {shown})"
        planned = "pre" if sel is None or sel <= threshold else "post"
        return mode, (
            f"estimated selectivity {shown} of {base or 0:,} rows "
            f"({'<=' if planned == 'pre' else '>'} {threshold:.0%}): {planned}-filter "
            f"planned; decided at run time from {producer.id}'s actual key count"
        )

    def _semi_join_top_k(
        self,
        select: exp.Select,
        join: exp.Join,
        it: _Item,
        lfrag: Fragment,
        frags: dict[str, Fragment],
        renames: dict[tuple[str, str], tuple[str, str]],
    ) -> bool:
        """A top-k fragment with nothing to bind, LEFT JOINed to ``lfrag`` on an equality
        with a column the WHERE requires (``NOT x IS NULL``: an ``IN (subquery)`` after
        decorrelation) is semi-joined to it: the search takes ``lfrag``'s keys (the rows that
        drops the WHERE drops anyway), pre- or post-filter as for an inner join. True when so."""
        if self.settings.vector_filter not in ("pre", "auto"):
            return False
        required = {
            (c.this.this.table, c.this.this.name)
            for c in _conjuncts(select.args.get("where"))
            if isinstance(c, exp.Not)
            and isinstance(c.this, exp.Is)
            and isinstance(c.this.this, exp.Column)
            and isinstance(c.this.expression, exp.Null)
        }
        reverse = {v: k for k, v in renames.items()}
        for c in _column_equalities(_conjuncts(join.args.get("on"))):
            mine, theirs = (c.this, c.expression)
            if mine.table != it.alias:
                mine, theirs = theirs, mine
            origin = self._origin(theirs, frags, reverse)
            if (mine.table, mine.name) not in required or origin is None:
                continue
            consumer = origin[0]
            tk = consumer.top_k
            if tk is None or consumer.bind is not None or self._depends_on(lfrag, consumer):
                continue
            self._bind((lfrag, it.alias, mine.name, mine.name), origin, forced=True)
            mode, why = self._filter_choice(consumer)
            consumer.notes = [n.replace(tk.reason, why) for n in consumer.notes]
            tk.mode, tk.reason = mode, why
            return True
        return False

    def _take_distance(
        self,
        select: exp.Select,
        key: VectorDistance,
        vector: exp.Column,
        frag: Fragment,
        local: VectorDistance,
    ) -> None:
        """The residual takes the distance the search returns (in the operator's terms) as
        a fragment column instead of recomputing it, and the vectors are no longer shipped
        unless the residual still reads them."""
        tk = frag.top_k
        assert tk is not None
        name = "_distance"
        while name in frag.columns:
            name += "_"
        table, column = vector.table, vector.name
        for node in [n for n in select.find_all(VectorDistance) if n == key]:
            node.replace(exp.column(name, table=table))
        frag.query.select(local.copy().as_(name, quoted=True), copy=False)
        frag.columns.append(name)
        frag.types[name] = pa.float64()
        operands = [o for o in (local.this, local.expression) if not isinstance(o, exp.Column)]
        tk.distance, tk.metric, tk.vector = name, local.metric, column
        tk.query_vector = operands[0] if operands else None
        if any(c.table == table and c.name == column for c in select.find_all(exp.Column)):
            return
        frag.query.set("expressions", [p for p in frag.query.selects if p.alias_or_name != column])
        frag.columns.remove(column)
        frag.types.pop(column, None)
