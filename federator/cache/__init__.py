"""Result cache: fragment results and frequent joins kept hot, shared through Redis, never stale.

Two levels, one store:

* **Fragment results** keyed by the source (its identity, not only its name), the native request
  text as the adapter rendered it, the parameter values and a digest of the bind-join keys.
* **Join results**: every plan with a residual has a *shape* — its fragments' queries and the
  residual with literals abstracted. A shape seen ``join_threshold`` times within
  ``join_window`` seconds has its final answer materialized, keyed by the exact texts and the
  parameter values.

Entries are Arrow tables in an in-process LRU with a byte budget, and optionally in Redis as
compressed Arrow IPC so several processes share them. An entry is served only when all of these
hold: it is younger than its TTL (per table, per source or global) and than the query's
``max_staleness``; no table it read was invalidated since it was read (generation counters,
kept in Redis when the tier is on, so an invalidation in one process holds in all); and the
freshness token of every source it read, where the source offers one, is unchanged.

Settings (catalog):

.. code-block:: toml

    [cache]
    enabled = true
    max_bytes = 268435456      # in-process budget (LRU)
    max_entry_bytes = 67108864 # larger results stream through uncached
    ttl = 60                   # seconds, for every entry unless a source or table says less
    max_staleness = 30         # default bound per query (fed.sql(..., max_staleness=...))
    join_threshold = 3         # materialize a join shape seen this many times ...
    join_window = 300          # ... within this many seconds (0 turns the join cache off)
    tokens = true              # ask sources for freshness tokens
    token_interval = 1         # a token is read at most once this many seconds per source
                               # and table set, shared by every lookup meanwhile (a write
                               # may go unseen that long; 0: read on every lookup)
    redis = "redis://127.0.0.1:6379/0"   # shared tier (optional; ${VAR} works here too)
    redis_max_entry_bytes = 33554432     # compressed size limit per entry
    redis_wait = 0.2                     # circuit breaker: a tier operation not answered in
                                         # this many seconds is abandoned, and the tier is
    redis_cooldown = 5                   # skipped this many seconds (queries go to the
                                         # sources, uncached); then one operation tries again
    redis_check_interval = 0             # >0: an in-process hit trusts the Redis generations
                                         # it read this many seconds ago (another process's
                                         # invalidation may then take that long to be seen)
    compression = "zstd"                 # or "lz4"
    table_ttl = { "pg.orders" = 5 }

    [sources.pg]
    cache_ttl = 10             # or { default = 10, orders = 2 }
    max_staleness = 5          # no answer from this source older than this
    cache_tokens = true        # false: TTL and invalidation only
    cache = true               # false: never cache this source

A writer that cannot call :meth:`Cache.invalidate` may bump the version itself:
``HINCRBY <prefix>:gens <source>.<table> 1`` (see :meth:`Cache.version_field`).

>>> import federator, tempfile, os, sqlite3
>>> path = os.path.join(tempfile.mkdtemp(), "t.db")
>>> with sqlite3.connect(path) as db:
...     _ = db.execute("CREATE TABLE t (x INTEGER)")
...     _ = db.execute("INSERT INTO t VALUES (1)")
>>> catalog = {"sources": {"s": {"kind": "sqlite", "path": path}}}
>>> fed = federator.connect({**catalog, "cache": {"enabled": True, "tokens": False}})
>>> _ = fed.sql("SELECT x FROM s.t").to_arrow(); _ = fed.sql("SELECT x FROM s.t").to_arrow()
>>> fed.cache.stats()["hits"]
1
>>> fed.close()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from federator.cache.entries import CorruptEntry as CorruptEntry
from federator.cache.entries import Entry as Entry
from federator.cache.entries import decode_entry as decode_entry
from federator.cache.entries import encode_entry as encode_entry
from federator.cache.freshness import FreshnessTokenSource as FreshnessTokenSource
from federator.cache.freshness import freshness_token as freshness_token
from federator.cache.joins import JoinCache, ShapeStats
from federator.cache.keys import _canon, _digest, _keys_digest, _Unkeyable, fragment_facts
from federator.cache.redis_tier import RedisTier, TierSkipped, _masked
from federator.cache.serve import _Flight, _Lookup, _note
from federator.cache.settings import CacheSettings
from federator.cache.settings import MiB as MiB

if TYPE_CHECKING:
    from federator._loop import LoopThread
    from federator.adapters.base import NativeRequest
    from federator.catalog import Catalog
    from federator.config import CatalogConfig
    from federator.execute.handle import ExecutionHandle as Execution  # no circle
    from federator.plan.model import Fragment, Plan

log = logging.getLogger("federator.cache")  # the logger name from before the split


__all__ = ["Cache", "CacheSettings", "FreshnessTokenSource", "freshness_token"]


class Cache(JoinCache):
    """A federation's result cache: ``fed.cache``. Use :meth:`invalidate` and :meth:`stats`.

    The parts it is built from, one module each: :class:`LocalEntries` (the in-process LRU),
    :class:`Freshness` (bounds, TTLs, generations, tokens), :class:`EntryServer` (lookup,
    single-flight fetch, store, the Redis tier) and :class:`JoinCache` (join shapes).
    """

    def __init__(
        self,
        config: CatalogConfig,
        catalog: Catalog,
        loop: LoopThread | None = None,
        settings: CacheSettings | None = None,
    ):
        self.settings = settings or CacheSettings.from_config(config.settings.get("cache"))
        self.catalog = catalog
        self.loop = loop  # the federation's loop: sync calls run there
        self._sources = {name: src.options for name, src in config.sources.items()}
        self._identity = {
            name: hashlib.blake2b(repr(src).encode(), digest_size=8).hexdigest()
            for name, src in config.sources.items()
        }
        self.redis = RedisTier(self.settings) if self.settings.redis else None
        self._entries: collections.OrderedDict[str, Entry] = collections.OrderedDict()
        self._bytes = 0
        self._gens: dict[str, int] = {}
        self._remote_gens: dict[tuple[str, ...], tuple[float, list[int]]] = {}
        self._recent_tokens: dict[Any, tuple[float, str | None]] = {}
        self._token_reads: dict[Any, asyncio.Future[tuple[float, str | None]]] = {}
        self._flights: dict[Any, _Flight] = {}
        self._shapes: dict[str, ShapeStats] = {}
        self._counters = collections.Counter[str]()

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def __repr__(self) -> str:
        tier = " + redis" if self.redis else ""
        state = "on" if self.enabled else "off"
        return f"<federator.Cache {state}{tier} entries={len(self._entries)}>"

    # ---- public API ------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Hits, misses, bytes held, evictions, and per join shape."""
        c = self._counters
        return {
            "enabled": self.enabled,
            "hits": c["hits"],
            "misses": c["misses"],
            "redis_hits": c["redis_hits"],
            "shared_fetches": c["shared"],
            "stores": c["stores"],
            "evictions": c["evictions"],
            "invalidated": c["invalidated"],
            "corrupt": c["corrupt"],
            "errors": c["errors"],
            "redis": self._redis_stats(),
            "entries": len(self._entries),
            "bytes": self._bytes,
            "max_bytes": self.settings.max_bytes,
            "shapes": {sid: s.as_dict() for sid, s in self._shapes.items()},
        }

    def _redis_stats(self) -> dict[str, Any] | None:
        """The Redis tier's circuit: ``state`` closed (in use) or open (skipped), operations
        ``skipped`` while open, ``timeouts`` (no answer within ``redis_wait``), ``failures``."""
        if self.redis is None:
            return None
        c = self.redis.counters
        return {
            "state": self.redis.state(),
            "skipped": c["skipped"],
            "timeouts": c["timeouts"],
            "failures": c["failures"],
            "last_failure": self.redis.last_failure,
        }

    def invalidate(self, source: str | None = None, table: str | None = None) -> int:
        """Drop every entry built from ``source.table`` (every table of ``source``; everything
        when no source is named), here and — through the Redis tier — in every process.
        Returns how many in-process entries were dropped."""
        coro = self.invalidate_async(source, table)
        if self.loop is None:
            return asyncio.run(coro)
        return self.loop.run(coro)

    async def invalidate_async(self, source: str | None = None, table: str | None = None) -> int:
        if table is not None and source is None:
            raise ValueError("invalidate(table=...) needs source=...")
        if source is not None and source not in self._sources:
            from federator.errors import UnknownSourceError

            raise UnknownSourceError(source, self._sources)
        field_ = self.version_field(source, table)
        self._gens[field_] = self._gens.get(field_, 0) + 1
        self._remote_gens.clear()
        if self.redis is not None:
            try:
                await self.redis.bump([field_])
            except TierSkipped as e:
                log.warning("cache: invalidation of %s not published yet (%s)", field_, e)
            except Exception as e:
                self._counters["errors"] += 1
                log.warning(
                    "cache: could not publish invalidation of %s to Redis: %s",
                    field_,
                    _masked(str(e), self.redis.url),
                )
        dropped = [k for k, e in self._entries.items() if field_ in e.gens]
        for k in dropped:
            self._drop(k)
        self._counters["invalidated"] += len(dropped)
        return len(dropped)

    async def close(self) -> None:
        await self._cancel_token_reads()
        if self.redis is not None:
            await self.redis.close()

    # ---- fragments -------------------------------------------------------------------
    async def fragment_batches(
        self, ex: Execution, frag: Fragment, keys: Sequence[Any] | None
    ) -> AsyncIterator[pa.RecordBatch]:
        """The fragment's batches from cache, or from its source (and then cached)."""
        stats = ex.stats[frag.id]
        request = ex.plan.requests[frag.id]
        started = time.perf_counter()
        bound, why = self.bound(ex.max_staleness, [frag.source])
        refs, volatile = fragment_facts(ex.plan, frag)
        why = why or (f"volatile {volatile}" if volatile else "")
        lookup = None
        if not why:
            try:
                lookup = await self._fragment_lookup(ex, frag, request, keys, bound, refs)
            except _Unkeyable as e:
                why = str(e)
        if lookup is None:
            _note(stats, f"not cached: {why}")
            async with contextlib.aclosing(ex._fragment_batches(frag, keys, False)) as source:
                async for batch in source:
                    yield batch
            return
        async with contextlib.aclosing(
            self._serve(lookup, ex, lambda: ex._fragment_batches(frag, keys, False), stats)
        ) as served:
            async for batch in served:
                yield batch
        stats.ms = max(stats.ms, (time.perf_counter() - started) * 1000)

    async def _fragment_lookup(
        self,
        ex: Execution,
        frag: Fragment,
        request: NativeRequest,
        keys: Sequence[Any] | None,
        bound: float,
        refs: list[tuple[str, str]],
    ) -> _Lookup:
        key = _digest(
            "fragment",
            self._identity.get(frag.source, frag.source),
            request.text.strip(),
            _canon(list(request.params)),
            _keys_digest(keys),
        )
        fields = self._fields({frag.source: refs})
        tokens, checked = await self._tokens(ex, {frag.source: refs}, bound)
        ttl = self.ttl(frag.source, refs)
        return _Lookup(key, fields, {}, tokens, bound, ttl, checked=checked)

    # ---- EXPLAIN ---------------------------------------------------------------------
    def _describe_tokens(self, bound: float) -> list[str]:
        if not self.settings.tokens:
            return []
        interval = min(self.settings.token_interval, bound)
        if interval <= 0:
            return ["  freshness tokens read on every lookup"]
        return [
            f"  freshness tokens read at most every {interval:g} s per source and table set: "
            f"a hit may not see a write of the last {interval:g} s (invalidate() is immediate)"
        ]

    def describe(self, plan: Plan, max_staleness: float | None) -> list[str]:
        """Lines for a plain EXPLAIN: whether this plan may be served from cache, and why not."""
        sources = sorted({f.source for f in plan.fragments})
        bound, why = self.bound(max_staleness, sources)
        if why:
            return [f"Cache: bypassed ({why})"]
        shown = "TTL" if math.isinf(bound) else f"{bound:g} s"
        tier = ""
        if self.redis is not None:
            skipped = self.redis.skipped()
            tier = f" + Redis tier ({skipped})" if skipped else " + Redis tier"
        lines = [f"Cache: on, max staleness {shown}{tier}", *self._describe_tokens(bound)]
        if plan.residual is not None:
            shape_id, _, _, volatile = self._shape(plan)
            shape = self._shapes.get(shape_id)
            seen = len(shape.times) if shape else 0
            if volatile:
                lines.append(f"  join not cached: volatile {volatile}")
            else:
                lines.append(
                    f"  join shape {shape_id[:8]}: seen {seen} time(s), materialized from "
                    f"{self.settings.join_threshold}"
                )
        return lines
