"""Fragments: the single-source queries the splitter cuts out, with their outputs and types.

A fragment stands on its own (outer CTEs inlined); its columns are what the residual still
reads; its types are exact where the catalog knows them.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pyarrow as pa
from sqlglot import exp

from federator.adapters.base import TableInfo
from federator.plan.estimate import Estimator
from federator.plan.model import Fragment
from federator.plan.settings import PlannerSettings
from federator.plan.tree import _Item, _params, collect_columns, field_type, free_aliases
from federator.rules import RuleSet


@dataclass
class SplitResult:
    fragments: list[Fragment]
    residual: exp.Query | None
    notes: list[str] = field(default_factory=list)


class FragmentBuilder(Estimator):
    """The splitter's state (fragments, notes, CTE bodies) and how it makes fragments."""

    def __init__(
        self,
        rules: dict[str, RuleSet],
        tables: dict[tuple[str, str, str], TableInfo],
        settings: PlannerSettings | None = None,
        observed: Mapping[tuple[str, str], int] | None = None,
    ):
        self.rules = rules
        self.tables = tables
        self.observed = observed or {}
        self.settings = settings or PlannerSettings()
        self.fragments: list[Fragment] = []
        self.ungrouped: list[Fragment] = []  # fragments as they were before a partial aggregate
        self.notes: list[str] = []
        self._ids = itertools.count()
        self._ctes: dict[str, exp.Query] = {}

    def fragment(self, fid: str) -> Fragment:
        return next(f for f in self.fragments if f.id == fid)

    def _new_id(self) -> str:
        return f"f{next(self._ids)}"

    def table_source(self, table: exp.Table) -> str | None:
        return table.catalog or None if table.catalog in self.rules else None

    def sources_in(self, node: exp.Expression) -> set[str | None]:
        """Sources of every table under ``node``; None stands for anything not on a source."""
        found: set[str | None] = set()
        for table in node.find_all(exp.Table):
            if table.catalog in self.rules:
                found.add(table.catalog)
            elif table.name in self._ctes and not table.db:
                body = self._ctes[table.name]
                found |= self.sources_in(body) if body is not node else {None}
            else:
                found.add(None)
        return found

    def pushable_source(self, query: exp.Expression) -> str | None:
        """The one source that can run ``query`` whole, or None."""
        sources = self.sources_in(query)
        if len(sources) != 1 or None in sources:
            return None
        if free_aliases(query):
            return None
        source = next(iter(sources))
        assert source is not None
        if self.rules[source].refusal(self._inline_ctes(query.copy())) is not None:
            return None
        return source

    def _fragment_from_query(self, query: exp.Query, source: str) -> Fragment:
        body = self._inline_ctes(query.copy())
        columns = [s.alias_or_name for s in body.selects] if isinstance(body, exp.Query) else []
        frag = Fragment(
            id=self._new_id(),
            source=source,
            query=body,
            columns=columns,
            estimated_rows=self._estimate_query(query),
            params=_params(body),
            types=self._output_types(body),
        )
        self._settle_estimate(frag)
        self.fragments.append(frag)
        return frag

    def _fragment_from_items(
        self,
        select: exp.Select,
        members: list[_Item],
        conjuncts: list[exp.Expression],
        residual_conj: list[exp.Expression],
        rename: bool | None = None,
        hand_back: bool = False,
        also: Sequence[exp.Expression] = (),
    ) -> tuple[Fragment, dict[tuple[str, str], tuple[str, str]]]:
        """One fragment for ``members`` (all on one source); columns the residual still needs.

        ``hand_back``: ``conjuncts`` the fragment cannot take may be appended to
        ``residual_conj`` (the caller applies them in the residual). ``also``: residual parts
        not attached to ``select`` yet whose columns the fragment must output too."""
        source = members[0].source
        assert source is not None
        aliases = {m.alias for m in members}
        needed: dict[str, set[str]] = defaultdict(set)
        collect_columns(select, aliases, needed)
        for c in [*residual_conj, *also]:
            collect_columns(c, aliases, needed)
        fid = self._new_id()
        rename = len(members) > 1 if rename is None else rename
        outputs: list[tuple[str, str, str]] = []  # (alias, column, output name)
        taken: set[str] = set()
        for m in members:
            for col in sorted(needed.get(m.alias, ())):
                name = col if col not in taken else f"{m.alias}_{col}"
                while name in taken:
                    name += "_"
                taken.add(name)
                outputs.append((m.alias, col, name))
        projections: list[exp.Expression] = [
            exp.column(col, table=alias, quoted=True).as_(name, quoted=True)
            for alias, col, name in outputs
        ] or [exp.Literal.number(1).as_("_one")]
        query = exp.select(*projections).from_(members[0].node.copy())
        for m in members[1:]:
            query = query.join(m.node.copy(), join_type="CROSS")
        if conjuncts:
            query = query.where(exp.and_(*(c.copy() for c in conjuncts)))
        query = self._inline_ctes(query)
        as_written = self._derived_whole(members, query, conjuncts if not hand_back else [], rename)
        if as_written is not None:
            query, outputs = as_written
            residual_conj.extend(conjuncts)  # filters on its rows, after its LIMIT
            conjuncts = []
        frag = Fragment(
            id=fid,
            source=source,
            query=query,
            columns=[o[2] for o in outputs] or ["_one"],
            estimated_rows=self._estimate_items(members, conjuncts),
            params=_params(query),
            types=self._output_types(query),
            as_written=as_written is not None,
        )
        self._settle_estimate(frag)
        self.fragments.append(frag)
        renames = {(a, c): (fid, n) for a, c, n in outputs} if rename else {}
        return frag, renames

    def _derived_whole(
        self,
        members: list[_Item],
        wrapped: exp.Query,
        conjuncts: list[exp.Expression],
        rename: bool,
    ) -> tuple[exp.Query, list[tuple[str, str, str]]] | None:
        """A derived table its source runs whole but not wrapped in an outer SELECT (Milvus
        takes one collection, so ``SELECT near.id FROM (SELECT ... ORDER BY d LIMIT 10) AS
        near`` is refused while the inner vector search is not; MongoDB runs the grouped
        ``SELECT customer_id FROM orders … GROUP BY customer_id`` that an ``IN (subquery)``
        decorrelates to, as one pipeline, but not the SELECT around it): the fragment is the
        inner query as it is (``conjuncts`` from outside, if any, stay in the residual). Keys
        bound into it, or another ORDER BY, could change which rows a LIMIT keeps, so such a
        fragment takes neither (``Fragment.as_written``)."""
        node = members[0].node
        if len(members) != 1 or rename or conjuncts or not isinstance(node, exp.Subquery):
            return None
        rules = self.rules[members[0].source]  # type: ignore[index]
        inner = node.this
        if not isinstance(inner, exp.Select) or rules.refusal(wrapped) is None:
            return None
        inner = self._inline_ctes(node.this.copy())
        if rules.refusal(inner) is not None:
            return None
        alias = members[0].alias
        return inner, [(alias, s.alias_or_name, s.alias_or_name) for s in inner.selects]

    def _output_types(self, query: exp.Expression) -> dict[str, pa.DataType]:
        """Exact Arrow types of outputs that are plain base-table columns or simple aggregates."""
        if not isinstance(query, exp.Select):
            return {}
        tables = {}
        for t in query.find_all(exp.Table):
            info = self.tables.get((t.catalog, t.db, t.name))
            if info is not None and t.parent_select is query:
                tables[t.alias_or_name] = info
        out: dict[str, pa.DataType] = {}
        for proj in query.selects:
            node = proj.unalias()
            agg = None
            if isinstance(node, (exp.Sum, exp.Min, exp.Max)) and isinstance(node.this, exp.Column):
                agg, node = type(node), node.this
            elif isinstance(node, exp.Count):
                out[proj.alias_or_name] = pa.int64()
                continue
            elif (temporal := _temporal_coalesce(node, tables)) is not None:
                out[proj.alias_or_name] = temporal
                continue
            if not isinstance(node, exp.Column) or node.table not in tables:
                continue
            t = field_type(tables[node.table].schema, node.name)
            if t is None:
                continue
            if agg is exp.Sum:
                if pa.types.is_decimal(t):
                    t = pa.decimal128(38, t.scale)
                elif pa.types.is_integer(t):
                    continue  # PostgreSQL sums bigint as numeric; let the driver say
            out[proj.alias_or_name] = t
        return out

    def _inline_ctes(self, query: exp.Expression) -> exp.Expression:
        """Replace references to outer CTEs by their bodies, so a fragment stands on its own."""
        own = {c.alias_or_name for c in query.find_all(exp.CTE)}
        for _ in range(8):
            refs = [
                t
                for t in query.find_all(exp.Table)
                if not t.db and t.name in self._ctes and t.name not in own
            ]
            if not refs:
                break
            for t in refs:
                body = self._ctes[t.name].copy()
                t.replace(
                    exp.Subquery(
                        this=body, alias=exp.TableAlias(this=exp.to_identifier(t.alias_or_name))
                    )
                )
        return query


def _temporal_coalesce(node: exp.Expression, tables: dict) -> pa.DataType | None:
    """The date/timestamp type of ``COALESCE(column, …)`` over such a column: SQLite answers
    it as text (found by the fuzzer: COALESCE(born, DATE '2000-01-01') came back a string)."""
    if not isinstance(node, exp.Coalesce) or not isinstance(node.this, exp.Column):
        return None
    info = tables.get(node.this.table)
    t = field_type(info.schema, node.this.name) if info is not None else None
    return t if t is not None and (pa.types.is_date(t) or pa.types.is_timestamp(t)) else None
