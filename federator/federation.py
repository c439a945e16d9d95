"""The entry object: a thin facade over a catalog of sources that wires parse → plan
(:mod:`federator.plan.planner`) → execute (:mod:`federator.execute`) → :class:`Result`."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import sys
import time
import weakref
from collections.abc import Mapping
from typing import Any

from sqlglot import exp

from federator._loop import LoopThread
from federator.adapters import ALIASES, BUILT_IN
from federator.cache import Cache
from federator.catalog import Catalog
from federator.config import CatalogConfig, load_catalog
from federator.deadline import within
from federator.errors import CatalogError
from federator.execute import Execution
from federator.execute.residual import checked_memory_limit, engine_for
from federator.plan.model import Plan
from federator.plan.planner import Planner, PlannerSettings
from federator.result import Result
from federator.rules import FederationRules, load_rule_modules, run_hooks
from federator.sql.dialect import vector_params
from federator.telemetry import QueryTrace, unwatch, watch


def connect(
    catalog: str | os.PathLike[str] | dict[str, Any],
    *,
    timeout: float | None = None,
    engine: str | None = None,
    ray_address: str | None = None,
) -> Federation:
    """Open a federation over the sources a catalog names (a TOML path or a dict).

    ``engine``: ``"local"`` (in-process, the default) or ``"ray"`` (the same plans on a Ray
    cluster at ``ray_address``); None: the catalog's ``[execution] engine`` and ``address``.

    >>> fed = connect({"sources": {"demo": {"kind": "sqlite", "path": ":memory:"}}})
    >>> fed.close()
    """
    config = load_catalog(catalog)
    return Federation(config, timeout=timeout, engine=engine, ray_address=ray_address)


class Federation:
    """Runs federated SQL over the catalog's sources. Sync and async context manager."""

    def __init__(
        self,
        config: CatalogConfig,
        *,
        timeout: float | None = None,
        engine: str | None = None,
        ray_address: str | None = None,
    ):
        self.config = config
        settings = config.settings.get("planner", {})
        self.planner_settings = PlannerSettings.from_catalog(settings)
        self.timeout = timeout if timeout is not None else config.settings.get("timeout")
        self.engine = _engine(config, engine, ray_address)  # None: in-process
        # Rule plug-ins (catalog `rules = [...]`, entry points) import before the adapters copy
        # their kind's rule set; their `federator_rules(fed)` hooks run once the sources exist.
        rule_hooks = load_rule_modules(config.settings.get("rules", ()))
        self.catalog = Catalog(config)
        run_hooks(self, rule_hooks)
        self.cache = Cache(config, self.catalog)  # fed.cache.invalidate(...), .stats()
        watch(catalog=self.catalog, cache=self.cache)  # the pool and cache gauges
        self._loop = LoopThread()
        self.cache.loop = self._loop
        self.planner = Planner(self.catalog, self.planner_settings)
        limit = config.settings.get("execution", {}).get("memory_limit")  # checked by _engine
        engine_for(limit).warm_in_background()  # the residual engine's first use, off the clock
        self._closed = False
        self._features: Any = None
        _OPEN.add(self)
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
        None: the catalog's ``[cache] max_staleness``). ``timeout`` (seconds; None: the
        federation's) bounds planning and the run together."""
        params = vector_params(params or {})
        timeout = timeout if timeout is not None else self.timeout
        started = time.monotonic()
        trace = QueryTrace(query)  # a child of the caller's span, on the caller's thread
        plan = self._loop.run(self._plan_within(query, params, timeout, trace))
        return self._result(plan, params, timeout, max_staleness, started, trace, query)

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
        started = time.monotonic()
        trace = QueryTrace(query)
        plan = await self._loop.run_async(self._plan_within(query, params, timeout, trace))
        return self._result(plan, params, timeout, max_staleness, started, trace, query)

    async def _plan_within(
        self, query: str, params: Mapping[str, Any], timeout: float | None, trace: QueryTrace
    ) -> Plan:
        """Planning under ``timeout``. One coroutine whose inner ones are made when it runs: a
        closed federation refuses it unstarted and leaves no "never awaited" coroutine."""
        with trace.planning():
            return await within(self.plan_async(query, params), timeout)

    def _result(
        self,
        plan: Plan,
        params: dict[str, Any],
        timeout: float | None,
        max_staleness: float | None,
        started: float,
        trace: QueryTrace,
        query: str | exp.Query | None = None,
    ) -> Result:
        """The lazy result of a plan made since ``started`` (monotonic): its runs get what
        planning left of ``timeout``."""
        spent = time.monotonic() - started
        return Result(
            self,
            plan,
            params,
            timeout,
            max_staleness=max_staleness,
            planning_seconds=spent,
            trace=trace,
            query=query,
        )

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
        return FederationRules(self.catalog.adapters, ALIASES, BUILT_IN)

    def _execution(
        self,
        plan: Plan,
        params: dict[str, Any],
        timeout: float | None,
        max_staleness: float | None = None,
        spent: float = 0.0,
        trace: QueryTrace | None = None,
    ) -> Execution:
        cache = self.cache if self.cache.enabled else None
        options = dict(cache=cache, max_staleness=max_staleness, spent=spent, trace=trace)
        if self.engine is not None:
            from federator.execute.ray_engine import RayExecution

            return RayExecution(
                plan, self.catalog, params, timeout=timeout, engine=self.engine, **options
            )
        return Execution(plan, self.catalog, params, timeout, **options)

    # ---- planning --------------------------------------------------------------------
    async def plan_async(self, query: str | exp.Query, params: Mapping[str, Any]) -> Plan:
        """The plan of ``query`` with ``params`` bound (:meth:`Planner.plan`)."""
        return await self.planner.plan(query, params)

    async def lookup(self, keys: Any, tables: Any, **options: Any) -> Any:
        """Features for a batch of keys from several tables at once, as one Arrow table with a
        row per key: ``await fed.lookup(ids, {"pg.users": "id", "kv.features": "user_id"},
        timeout=0.05)``. Options and the prepared form: :mod:`federator.lookup`."""
        from federator.lookup import lookup

        return await lookup(self, keys, tables, **options)

    @property
    def features(self) -> Any:
        """The catalog's feature views (``[features.NAME]``): ``fed.features.materialize(name)``,
        ``fed.features.lookup(name, keys, budget_ms=5)``; :mod:`federator.features`."""
        if self._features is None:
            from federator.features import FeatureViews

            self._features = FeatureViews(self)
        return self._features

    def training_set(
        self,
        entities: Any,
        features: Any,
        timestamp: str = "ts",
        ttl: Any = None,
    ) -> Result:
        """Entity rows (Arrow, pandas or SQL text) with each feature's columns as of the row's
        ``timestamp``, never later: ``fed.training_set(labels, [federator.Feature("pg.profiles",
        key="user_id", timestamp="updated_at", columns=["age"])])``. See
        :mod:`federator.training`."""
        from federator.training import training_set

        return training_set(self, entities, features, timestamp, ttl)

    # ---- lifecycle -------------------------------------------------------------------
    def close(self) -> None:
        """Close every pool and stop the background loop; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self._loop.stop(self._release())  # queries in flight end with FederationClosedError

    async def _release(self) -> None:
        unwatch(catalog=self.catalog, cache=self.cache)
        # Streams a caller abandoned midway still hold connections: finish them first.
        for stream in list(self.open_streams):
            with contextlib.suppress(Exception):
                await stream.aclose()
        await self.cache.close()
        await self.catalog.close()
        if self.engine is not None:
            await self.engine.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._loop.stop, self._release())

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


ENGINES = ("local", "ray")


def _engine(config: CatalogConfig, engine: str | None, address: str | None) -> Any:
    """The engine that runs this federation's plans: None for the in-process one, else a
    :class:`federator.execute.ray_engine.RayEngine` (Ray imports only then)."""
    settings = config.settings.get("execution", {})
    chosen = engine or settings.get("engine", "local")
    if chosen not in ENGINES:
        raise CatalogError(f"unknown engine {chosen!r}: choose one of {', '.join(ENGINES)}")
    if chosen == "local":
        checked_memory_limit(settings.get("memory_limit"))  # the residual's: a bad one fails now
        return None
    try:
        from federator.execute.ray_engine import RayEngine
    except ImportError:
        raise CatalogError("engine 'ray' needs Ray: pip install 'federator[ray]'") from None
    return RayEngine(config, address or settings.get("address"))


_OPEN: weakref.WeakSet[Federation] = weakref.WeakSet()


@atexit.register
def _close_open_federations() -> None:
    """Close federations a script left open, while the interpreter can still run their loops."""
    for fed in list(_OPEN):
        with contextlib.suppress(Exception):
            fed.close()
