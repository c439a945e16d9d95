"""The planner: parse → bind → optimize → split into single-source fragments plus a residual
→ translate each fragment into its source's native request. The result is a :class:`Plan`,
the contract with execution and what EXPLAIN prints.

One idea per module, in the order a query meets them:

- :mod:`federator.plan.binding`: names and parameters against the catalog;
- :mod:`federator.plan.passes`: sqlglot's optimizer passes (the tree is copied once when
  planning starts; every pass after that mutates it in place and returns it);
- :mod:`federator.plan.split`: cutting the tree into fragments and a residual, built on
  :mod:`~federator.plan.fragments`, :mod:`~federator.plan.joins` (joins within and across
  sources: bind joins, semi-joins), :mod:`~federator.plan.vector_topk` and
  :mod:`~federator.plan.estimate` (cardinality), fed by
  :mod:`~federator.plan.source_estimates` (the sources' own estimates);
- :mod:`federator.plan.model`: Fragment, BindJoin, TopK, Plan.

>>> import federator
>>> fed = federator.connect({"sources": {"db": {"kind": "sqlite", "path": ":memory:"}}})
>>> plan = fed._loop.run(fed.planner.plan("SELECT 1 AS one", {}))  # no table: residual only
>>> plan.fragments, plan.residual is not None
([], True)
>>> fed.close()
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlglot import exp
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from federator.adapters.base import TableInfo
from federator.catalog import Catalog
from federator.plan.asof_window import apply_windows
from federator.plan.binding import bind_params, bind_tables, check_params
from federator.plan.fragments import SplitResult
from federator.plan.model import Fragment, NativeRequest, Plan, alternative_id
from federator.plan.param_types import check_param_types
from federator.plan.passes import PASSES, optimize, pass_names, sqlglot_schema
from federator.plan.settings import PlannerSettings
from federator.plan.ship import plan_ship
from federator.plan.source_estimates import SourceEstimates
from federator.plan.split import Splitter
from federator.plan.tree import collect_columns, field_type, free_aliases, rename_columns
from federator.rules import RuleSet
from federator.sql.depth import with_nesting_room
from federator.sql.dialect import (
    Federated,
    cast_float_params,
    param_type_class,
    parse,
    residual_duckdb_sql,
)

__all__ = [
    "PASSES",
    "Planner",
    "PlannerSettings",
    "SplitResult",
    "Splitter",
    "collect_columns",
    "field_type",
    "free_aliases",
    "optimize",
    "pass_names",
    "rename_columns",
    "sqlglot_schema",
]

PLAN_CACHE_SIZE = 256


class Planner:
    """Plans queries over a catalog's sources; keeps the plans of recent query texts."""

    def __init__(self, catalog: Catalog, settings: PlannerSettings | None = None):
        self.catalog = catalog
        self.settings = settings or PlannerSettings()
        self._plans: OrderedDict[tuple[Any, ...], Plan] = OrderedDict()
        self._estimates = SourceEstimates()
        self._planning: dict[tuple[Any, ...], _Planning] = {}
        self._normalized: dict[str, str] = {}

    async def plan(self, query: str | exp.Query, params: Mapping[str, Any]) -> Plan:
        """The plan of ``query`` with ``params`` bound. Plans are kept (LRU) per normalized
        query text (runs of white space outside quotes are one space): they depend on the
        text, the parameter names and whether each value is an integer (integer division),
        the catalog and the rule sets; the sources' row estimates are those of the first
        values (binds are still decided again at run time). A repeated query skips parsing and
        optimizing and only binds its values. Identical queries planned at the same time share
        one planning."""
        if not isinstance(query, str):
            return self._bind(await self._plan(query, params), params)
        names = frozenset((n, param_type_class(v)) for n, v in params.items())
        key = (self._normalize(query), names, *self._versions())
        plan = self._plans.get(key)
        if plan is None:
            plan = await self._plan_once(key, query, params)
            if key[2:] == self._versions():  # the catalog did not change meanwhile
                self._plans[key] = plan
                if len(self._plans) > PLAN_CACHE_SIZE:
                    self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return self._bind(plan, params)

    def _versions(self) -> tuple[Any, ...]:
        return self.catalog.version, self._rules_signature()

    def _normalize(self, query: str) -> str:
        normalized = self._normalized.get(query)
        if normalized is None:
            if len(self._normalized) > 4 * PLAN_CACHE_SIZE:
                self._normalized.clear()
            normalized = self._normalized[query] = normalized_text(query)
        return normalized

    async def _plan_once(self, key: tuple[Any, ...], query: str, params: Mapping[str, Any]) -> Plan:
        """Plan ``query``, or wait for the identical planning already running (single flight;
        it is cancelled only when every caller waiting for it was)."""
        planning = self._planning.get(key)
        if planning is None:
            planning = _Planning(asyncio.ensure_future(self._plan(query, params)))
            self._planning[key] = planning
        planning.waiting += 1
        try:
            return await asyncio.shield(planning.task)
        finally:
            planning.waiting -= 1
            if planning.task.done() or planning.waiting == 0:
                if self._planning.get(key) is planning:
                    del self._planning[key]
                planning.task.cancel()

    def _bind(self, plan: Plan, params: Mapping[str, Any]) -> Plan:
        check_param_types(plan, params, self.catalog.adapters)
        return bind_params(plan, params)

    def _rules_signature(self) -> tuple[int, ...]:
        return tuple(len(a.rules.rules) for a in self.catalog.adapters.values())

    @with_nesting_room  # a query nested MAX_NESTING deep plans; deeper: SQLSyntaxError
    async def _plan(self, query: str | exp.Query, params: Mapping[str, Any]) -> Plan:
        tree = parse(query) if isinstance(query, str) else query.copy()
        check_params(tree, params)
        tree = cast_float_params(tree, params)
        tree = normalize_identifiers(tree, dialect=Federated)
        infos = await bind_tables(self.catalog, tree, params)
        folded = [n for n, a in self.catalog.adapters.items() if a.case_insensitive_columns]
        schema = sqlglot_schema(infos, folded)
        as_written = tree.copy()
        tree = optimize(tree, schema, infos, params)
        split = await self._split_with_source_estimates(tree, infos, params)
        if _has_subquery(as_written):
            split = self._prefer_as_written(split, PASSES[0](as_written, schema=schema), infos)
        apply_windows(split.fragments)
        requests = self._requests(split.fragments)
        for f in split.fragments:  # ASOF joins' latest-per-key requests (plan.asof_window)
            if f.window is not None and f.window.latest is not None:
                latest = f.window.latest
                requests[latest.id] = self.catalog.adapter(f.source).translate(latest)
        residual_sql = None
        if split.residual is not None:
            residual_sql = residual_duckdb_sql(split.residual)
        return Plan(
            fragments=split.fragments,
            requests=requests,
            residual=split.residual,
            residual_sql=residual_sql,
            notes=split.notes,
            source_kinds={n: a.kind for n, a in self.catalog.adapters.items()},
            ship=plan_ship(split.fragments, split.residual, self._rules(), self.settings),
        )

    def _requests(self, fragments: list[Fragment]) -> dict[str, NativeRequest]:
        """Each fragment's native request, and one per alternative bind of it
        (:func:`~federator.plan.model.alternative_id`): the executor picks one at run time."""
        requests = {}
        for f in fragments:
            translate = self.catalog.adapter(f.source).translate
            requests[f.id] = translate(f)
            for i, alt in enumerate(f.bind.alternatives if f.bind is not None else ()):
                requests[alternative_id(f.id, i)] = translate(dataclasses.replace(f, bind=alt))
        return requests

    def _rules(self) -> dict[str, RuleSet]:
        return {name: a.rules for name, a in self.catalog.adapters.items()}

    def _splitter(
        self, infos: list[TableInfo], observed: Mapping[tuple[str, str], int] | None = None
    ) -> Splitter:
        return Splitter(
            self._rules(),
            {(i.source, i.ref.schema, i.ref.name): i for i in infos},
            self.settings,
            observed,
        )

    async def _split_with_source_estimates(
        self, tree: exp.Query, infos: list[TableInfo], params: Mapping[str, Any]
    ) -> SplitResult:
        """Split once on the catalog's estimates; when that leaves a residual, ask the
        sources for their estimates of the fragments and split again on those, so the bind
        decisions see them (the split is deterministic: the fragments come out the same)."""
        splitter = self._splitter(infos)
        first = splitter.split(tree.copy())
        if first.residual is None or self.settings.source_estimate_seconds <= 0:
            return first
        asked = [*first.fragments, *splitter.ungrouped]
        observed = await self._estimates.ask(
            self.catalog, asked, params, self.settings.source_estimate_seconds
        )
        if not observed:
            return first
        return self._splitter(infos, observed).split(tree)

    def _prefer_as_written(
        self, split: SplitResult, qualified: exp.Query, infos: list[TableInfo]
    ) -> SplitResult:
        """A query that goes whole to one source that plans its own subqueries goes as the
        user wrote it (names qualified only): the optimizer's decorrelation can turn an
        indexed correlated subquery into an aggregate over a whole table (TPC-H Q17)."""
        if split.residual is not None or len(split.fragments) != 1:
            return split
        source = split.fragments[0].source
        if not self.catalog.adapter(source).rules.can("correlated_subquery"):
            return split
        alt = self._splitter(infos).split(qualified)
        if alt.residual is not None or [f.source for f in alt.fragments] != [source]:
            return split
        alt.notes.append(f"pushed to {source} as written: it plans its own subqueries")
        return alt


@dataclass
class _Planning:
    """One planning in progress and how many callers wait for it."""

    task: asyncio.Future[Plan]
    waiting: int = 0


# A quoted string or name, a comment, or a run of white space; the text between them is kept.
_TEXT_PARTS = re.compile(
    r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|`(?:[^`]|``)*`|--[^\n]*|/\*.*?\*/|\s+""", re.S
)


def normalized_text(query: str) -> str:
    """``query`` with each run of white space outside quotes and comments made one space, so
    texts that differ only in layout share a plan. A text with a backslash or ``$`` (escape
    and dollar-quoting rules differ by dialect) or an unclosed quote is kept as it is.

    >>> normalized_text("SELECT  a,\\n  'x  y' -- two  spaces\\nFROM s.t ")
    "SELECT a, 'x  y' -- two  spaces\\n FROM s.t"
    """
    if "\\" in query or "$" in query:
        return query
    if any(c in piece for piece in _TEXT_PARTS.split(query) for c in "'\"`"):
        return query  # an unclosed quote: no layout to normalize safely
    return _TEXT_PARTS.sub(_one_space, query).strip()


def _one_space(match: re.Match[str]) -> str:
    text = match.group()
    if text.isspace():
        return " "
    return text + "\n" if text.startswith("--") else text  # a line comment ends at a newline


def _has_subquery(tree: exp.Query) -> bool:
    """Whether a query nests a query (a subquery, EXISTS, IN (SELECT)) other than a CTE's."""
    return any(
        q is not tree and not isinstance(q.parent, exp.CTE) for q in tree.find_all(exp.Query)
    )
