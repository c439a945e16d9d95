"""The entry object: a catalog of sources, planning, and running queries."""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import sys
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from sqlglot import exp
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from federator._loop import LoopThread
from federator.adapters.base import TableInfo
from federator.cache import Cache
from federator.catalog import Catalog
from federator.config import CatalogConfig, load_catalog
from federator.deadline import within
from federator.errors import ParameterError, UnknownTableError, UnsupportedError
from federator.execute import Execution
from federator.plan.model import Plan
from federator.plan.planner import (
    PASSES,
    PlannerSettings,
    SplitResult,
    Splitter,
    optimize,
    sqlglot_schema,
)
from federator.result import Result
from federator.rules import FederationRules, load_rule_modules
from federator.sql.dialect import Federated, parse, residual_duckdb_sql, vector_params

PLAN_CACHE_SIZE = 256


def connect(
    catalog: str | os.PathLike[str] | dict[str, Any], *, timeout: float | None = None
) -> Federation:
    """Open a federation over the sources a catalog names (a TOML path or a dict).

    >>> fed = connect({"sources": {"demo": {"kind": "sqlite", "path": ":memory:"}}})
    >>> fed.close()
    """
    config = load_catalog(catalog)
    return Federation(config, timeout=timeout)


class Federation:
    """Runs federated SQL over the catalog's sources. Sync and async context manager."""

    def __init__(self, config: CatalogConfig, *, timeout: float | None = None):
        self.config = config
        settings = config.settings.get("planner", {})
        self.planner_settings = PlannerSettings(**settings)
        self.timeout = timeout if timeout is not None else config.settings.get("timeout")
        # Rule plug-ins (catalog `rules = [...]`, entry points) import before the adapters copy
        # their kind's rule set; their `federator_rules(fed)` hooks run once the sources exist.
        rule_hooks = load_rule_modules(config.settings.get("rules", ()))
        self.catalog = Catalog(config)
        for hook in rule_hooks:
            hook(self)
        self.cache = Cache(config, self.catalog)  # fed.cache.invalidate(...), .stats()
        self._loop = LoopThread()
        self.cache.loop = self._loop
        self._closed = False
        _OPEN.add(self)
        self._plans: OrderedDict[tuple[Any, ...], Plan] = OrderedDict()
        self.open_streams: weakref.WeakSet[Any] = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"<federator.Federation sources={sorted(self.catalog.adapters)}>"

    # ---- queries ---------------------------------------------------------------------
    def sql(
        self,
        query: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        max_staleness: float | None = None,
    ) -> Result:
        """Plan a query now (errors surface here) and return a lazy :class:`Result`.

        ``max_staleness``: seconds of age a cached answer may have (0 bypasses the cache;
        None: the catalog's ``[cache] max_staleness``)."""
        params = vector_params(params or {})
        timeout = timeout if timeout is not None else self.timeout
        plan = self._loop.run(within(self.plan_async(query, params), timeout))
        return Result(self, plan, params, timeout, max_staleness=max_staleness)

    async def sql_async(
        self,
        query: str,
        params: Mapping[str, Any] | None = None,
        *,
        timeout: float | None = None,
        max_staleness: float | None = None,
    ) -> Result:
        params = vector_params(params or {})
        timeout = timeout if timeout is not None else self.timeout
        plan = await self._loop.run_async(within(self.plan_async(query, params), timeout))
        return Result(self, plan, params, timeout, max_staleness=max_staleness)

    def explain(
        self, query: str, params: Mapping[str, Any] | None = None, *, analyze: bool = False
    ) -> str:
        """The plan as text: each fragment's native request, then the residual."""
        return self.sql(query, params).explain(analyze=analyze)

    def sources(self) -> dict[str, str]:
        """Source name → kind and location (never a password)."""
        return {name: f"{a.kind} at {a.where}" for name, a in self.catalog.adapters.items()}

    @property
    def rules(self) -> FederationRules:
        """The sources' pushdown rule sets: ``fed.rules.add(rule, kind="postgres")`` or
        ``source="pg"`` teaches this federation to push more."""
        return FederationRules(self.catalog.adapters)

    def _execution(
        self,
        plan: Plan,
        params: dict[str, Any],
        timeout: float | None,
        max_staleness: float | None = None,
    ) -> Execution:
        cache = self.cache if self.cache.enabled else None
        return Execution(
            plan, self.catalog, params, timeout, cache=cache, max_staleness=max_staleness
        )

    # ---- planning --------------------------------------------------------------------
    async def plan_async(self, query: str | exp.Query, params: Mapping[str, Any]) -> Plan:
        """The plan of ``query`` with ``params`` bound. Plans of query texts are kept (LRU):
        they depend on the text, the parameter names, the catalog and the rule sets, never on
        parameter values, so a repeated query skips parsing and optimizing."""
        if not isinstance(query, str):
            return self._bind_params(await self._plan(query, params), params)
        key = (query, frozenset(params), self.catalog.version, self._rules_signature())
        plan = self._plans.get(key)
        if plan is None:
            plan = await self._plan(query, params)
            self._plans[key] = plan
            if len(self._plans) > PLAN_CACHE_SIZE:
                self._plans.popitem(last=False)
        else:
            self._plans.move_to_end(key)
        return self._bind_params(plan, params)

    def _rules_signature(self) -> tuple[int, ...]:
        return tuple(len(a.rules.rules) for a in self.catalog.adapters.values())

    @staticmethod
    def _bind_params(plan: Plan, params: Mapping[str, Any]) -> Plan:
        requests = {fid: r.with_params(params) for fid, r in plan.requests.items()}
        return dataclasses.replace(plan, requests=requests)

    async def _plan(self, query: str | exp.Query, params: Mapping[str, Any]) -> Plan:
        tree = parse(query) if isinstance(query, str) else query.copy()
        _check_params(tree, params)
        tree = normalize_identifiers(tree, dialect=Federated)
        infos = await self._bind(tree, params)
        folded = [n for n, a in self.catalog.adapters.items() if a.case_insensitive_columns]
        schema = sqlglot_schema(infos, folded)
        as_written = tree.copy()
        tree = optimize(tree, schema, infos)
        split = self._splitter(infos).split(tree)
        if _has_subquery(as_written):
            split = self._prefer_as_written(split, PASSES[0](as_written, schema=schema), infos)
        requests = {f.id: self.catalog.adapter(f.source).translate(f) for f in split.fragments}
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
        )

    def _splitter(self, infos: list[TableInfo]) -> Splitter:
        return Splitter(
            {name: a.rules for name, a in self.catalog.adapters.items()},
            {(i.source, i.ref.schema, i.ref.name): i for i in infos},
            self.planner_settings,
        )

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

    async def _bind(
        self, tree: exp.Query, params: Mapping[str, Any] | None = None
    ) -> list[TableInfo]:
        """Resolve every source table to the catalog's exact names; return their infos."""
        ctes = {c.alias_or_name for c in tree.find_all(exp.CTE)}
        infos: dict[tuple[str, str, str], TableInfo] = {}
        for table in list(tree.find_all(exp.Table)):
            if isinstance(table.this, exp.Anonymous):  # a table function: cypher('g', '…')
                info = await self._table_function(table, params or {})
                infos[(info.source, info.ref.schema, info.ref.name)] = info
                continue
            if not table.name or (not table.db and table.name in ctes):
                continue
            if table.catalog:
                source, schema = table.catalog, table.db
            elif table.db:
                source, schema = table.db, None
            else:
                raise UnknownTableError(
                    f"{table.name} (write it as source.{table.name})",
                    [f"{s}.{table.name}" for s in self.catalog.adapters],
                )
            info = await self.catalog.resolve(source, schema, table.name)
            alias = table.alias_or_name
            table.set("catalog", exp.to_identifier(source))
            table.set("db", exp.to_identifier(info.ref.schema, quoted=True))
            table.set("this", exp.to_identifier(info.ref.name, quoted=True))
            if not table.alias:
                table.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
            infos[(source, info.ref.schema, info.ref.name)] = info
        return list(infos.values())

    async def _table_function(self, table: exp.Table, params: Mapping[str, Any]) -> TableInfo:
        """``fn('source', …)`` in FROM: the source's adapter turns it into a table of its own
        (``table_function(name, args, params)``); the node becomes that table."""
        fn = table.this
        args = list(fn.expressions)
        name = str(fn.this).lower()
        if not args or not (isinstance(args[0], exp.Literal) and args[0].is_string):
            raise UnsupportedError(f"table function {name}() wants a source name first")
        adapter = self.catalog.adapter(args[0].this)
        hook = getattr(adapter, "table_function", None)
        if hook is None:
            raise UnsupportedError(f"source {args[0].this!r} ({adapter.kind}) has no {name}()")
        info = await hook(name, args[1:], params)
        alias = table.alias_or_name or name
        table.replace(
            exp.Table(
                this=exp.to_identifier(info.ref.name, quoted=True),
                db=exp.to_identifier(info.ref.schema, quoted=True),
                catalog=exp.to_identifier(info.source),
                alias=exp.TableAlias(this=exp.to_identifier(alias)),
            )
        )
        return info

    async def lookup(self, keys: Any, tables: Any, **options: Any) -> Any:
        """Features for a batch of keys from several tables at once, as one Arrow table with a
        row per key: ``await fed.lookup(ids, {"pg.users": "id", "kv.features": "user_id"},
        timeout=0.05)``. Options and the prepared form: :mod:`federator.lookup`."""
        from federator.lookup import lookup

        return await lookup(self, keys, tables, **options)

    # ---- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        """Close every pool and stop the background loop; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._loop.run(self._release())
        finally:
            self._loop.stop()

    async def _release(self) -> None:
        # Streams a caller abandoned midway still hold connections: finish them first.
        for stream in list(self.open_streams):
            with contextlib.suppress(Exception):
                await stream.aclose()
        await self.cache.close()
        await self.catalog.close()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._loop.run_async(self._release())
        self._loop.stop()

    def __enter__(self) -> Federation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> Federation:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True) and not sys.is_finalizing():
            with contextlib.suppress(Exception):
                self.close()


_OPEN: weakref.WeakSet[Federation] = weakref.WeakSet()


@atexit.register
def _close_open_federations() -> None:
    """Close federations a script left open, while the interpreter can still run their loops."""
    for fed in list(_OPEN):
        with contextlib.suppress(Exception):
            fed.close()


def _check_params(tree: exp.Expression, params: Mapping[str, Any]) -> None:
    names = {p.name for p in tree.find_all(exp.Placeholder)}
    if any(not n or n == "?" for n in names):
        raise ParameterError("use named parameters (:name), not positional '?'")
    missing = sorted(n for n in names if n not in params)
    if missing:
        raise ParameterError(
            f"missing value for parameter(s): {', '.join(':' + m for m in missing)}"
        )


def _has_subquery(tree: exp.Query) -> bool:
    """Whether a query nests a query (a subquery, EXISTS, IN (SELECT)) other than a CTE's."""
    return any(
        q is not tree and not isinstance(q.parent, exp.CTE) for q in tree.find_all(exp.Query)
    )
