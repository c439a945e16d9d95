"""The one lookup/fetch/store path: a servable entry from either tier, else one fetch that
identical concurrent requests share (single flight), stored in both tiers when it fits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from federator.cache.entries import CorruptEntry, Entry, decode_entry, encode_entry
from federator.cache.freshness import _UNSETTLED, Freshness, _state
from federator.cache.local import LocalEntries
from federator.cache.redis_tier import EPOCH, RedisTier, TierSkipped, _masked

if TYPE_CHECKING:
    from federator.execute.handle import ExecutionHandle as Execution  # no circle
    from federator.plan.model import FragmentStats

log = logging.getLogger("federator.cache")  # the logger name from before the split


@dataclass
class _Lookup:
    key: str
    fields: list[str]
    gens: dict[str, int]
    tokens: dict[str, str]
    bound: float
    ttl: float
    entry: Entry | None = None
    why_not: str = ""  # set when the result must not be stored
    source_tier: str = ""
    outcome: str = ""  # "hit", "shared" or "miss" once served
    inherit_age: bool = False  # a join answer is as old as the oldest data it was built from
    stored_bytes: int = 0
    checked: float | None = None  # time.monotonic() of the oldest freshness token it used


@dataclass
class _Flight:
    """One fetch in progress that identical requests wait for (single flight)."""

    future: asyncio.Future[Entry | None]
    parked_since: float | None = None  # the leader waits for its consumer to take a batch
    STALL = 0.5  # seconds a parked leader may keep followers waiting

    async def wait(self) -> Entry | _Flight | None:
        """The leader's entry (None when it failed), or this flight when the leader's
        consumer stopped reading (an abandoned stream must not hold everyone up)."""
        while not self.future.done():
            await asyncio.wait({self.future}, timeout=0.1)
            parked = self.parked_since
            if parked is not None and time.monotonic() - parked > self.STALL:
                return self
        return self.future.result()


class EntryServer(Freshness, LocalEntries):
    """Serves a lookup from the in-process LRU or the Redis tier, or fetches and stores it."""

    redis: RedisTier | None
    _gens: dict[str, int]
    _remote_gens: dict[tuple[str, ...], tuple[float, list[int]]]
    _flights: dict[Any, _Flight]

    # ---- the one lookup/fetch/store path ----------------------------------------------
    async def _serve(
        self, lookup: _Lookup, ex: Execution, fetch: Any, stats: FragmentStats
    ) -> AsyncIterator[pa.RecordBatch]:
        state = _state(ex)
        entry = await self._lookup(lookup)
        if entry is not None:
            lookup.outcome = "hit"
            self._counters["hits"] += 1
            state.oldest = min(state.oldest, entry.created)
            age = max(0.0, time.time() - entry.created)
            _hit(
                stats,
                entry,
                f"cache hit{lookup.source_tier}, age {age:.1f} s{self._checked(lookup)}",
            )
            for batch in _batches(entry.table):
                yield batch
            return
        # A miss, or nothing servable now (an unsettled token, the Redis tier out: why_not says
        # so, and the answer is not stored): identical requests still share one fetch.
        flight_key = (
            lookup.key,
            tuple(sorted(lookup.gens.items())),
            tuple(sorted(lookup.tokens.items())),
        )
        flight = None
        while (waiting := self._flights.get(flight_key)) is not None:
            shared = await waiting.wait()
            if shared is waiting:  # its consumer stopped reading: the first to see it leads
                if self._flights.get(flight_key) is waiting:
                    flight = _Flight(asyncio.get_running_loop().create_future())
                    self._flights[flight_key] = flight
                    break
                continue
            if shared is not None and time.time() - shared.created <= lookup.bound:
                lookup.outcome = "shared"
                self._counters["shared"] += 1
                state.oldest = min(state.oldest, shared.created)
                _hit(stats, shared, "cache hit: shared a concurrent query's fetch")
                for batch in _batches(shared.table):
                    yield batch
                return
        lookup.outcome = "miss"
        self._counters["misses"] += 1
        if flight is None:
            flight = _Flight(asyncio.get_running_loop().create_future())
            self._flights[flight_key] = flight
        unstorable = lookup.why_not  # set by the lookup: shared with followers, never stored
        created = time.time()
        result: Entry | None = None
        batches: list[pa.RecordBatch] | None = []
        size = 0
        limit = self.settings.max_entry_bytes
        try:
            async with contextlib.aclosing(fetch()) as source:
                async for batch in source:
                    if batches is not None:
                        size += batch.nbytes
                        if size > limit:
                            batches = None
                            lookup.why_not = f"result over the {limit:,}-byte entry limit"
                        else:
                            batches.append(batch)
                    flight.parked_since = time.monotonic()
                    yield batch
                    flight.parked_since = None
            if batches is not None:
                try:
                    table = pa.Table.from_batches(batches)
                except pa.ArrowInvalid as e:
                    lookup.why_not = f"batches of differing schemas ({e})"
                else:
                    if lookup.inherit_age:
                        created = min(created, state.oldest)
                    result = Entry(
                        table=table,
                        created=created,
                        expires=created + lookup.ttl,
                        gens=lookup.gens,
                        tokens=lookup.tokens,
                    )
                    if not unstorable:
                        await self._store(lookup, result)
                        lookup.stored_bytes = result.nbytes
            state.oldest = min(state.oldest, created)
            if unstorable:
                _note(stats, f"not cached: {unstorable}")
            elif result is None:
                _note(stats, f"cache miss; not stored: {lookup.why_not}")
            else:
                _note(stats, f"cache miss; stored{', ' + lookup.why_not if lookup.why_not else ''}")
        finally:
            if self._flights.get(flight_key) is flight:
                del self._flights[flight_key]
            if not flight.future.done():
                flight.future.set_result(result)

    async def _lookup(self, lookup: _Lookup) -> Entry | None:
        """Find a servable entry; fill ``lookup.gens`` with the current generations."""
        local = self._entries.get(lookup.key)
        blob = None
        recent = self._remote_gens.get(tuple(lookup.fields)) if local is not None else None
        interval = self.settings.redis_check_interval
        if recent is not None and time.monotonic() - recent[0] < interval:
            lookup.gens = dict(zip([*lookup.fields, EPOCH], recent[1], strict=True))
        elif self.redis is not None:
            try:
                gens, blob = await self.redis.read(
                    lookup.fields, None if local is not None else lookup.key
                )
                if interval > 0:
                    if len(self._remote_gens) > 4096:
                        self._remote_gens.clear()
                    self._remote_gens[tuple(lookup.fields)] = (time.monotonic(), gens)
            except TierSkipped as e:
                lookup.why_not = str(e)
                return None
            except Exception as e:
                self._counters["errors"] += 1
                log.warning(
                    "cache: Redis tier unavailable, not caching: %s",
                    _masked(str(e), self.redis.url),
                )
                lookup.why_not = f"Redis tier unavailable ({type(e).__name__})"
                return None
            lookup.gens = dict(zip([*lookup.fields, EPOCH], gens, strict=True))
        else:
            lookup.gens = {f: self._gens.get(f, 0) for f in lookup.fields}
        unsettled = [s for s, t in lookup.tokens.items() if t.startswith(_UNSETTLED)]
        if unsettled:
            lookup.why_not = f"source {unsettled[0]!r} is being written (freshness token unsettled)"
            return None
        if local is not None:
            if self._valid(local, lookup):
                self._entries.move_to_end(lookup.key)
                return local
            self._drop(lookup.key)
            return None
        if blob is not None:
            try:
                entry = decode_entry(blob)
            except CorruptEntry as e:
                self._counters["corrupt"] += 1
                log.warning("cache: corrupt Redis entry %s treated as a miss: %s", lookup.key, e)
                with contextlib.suppress(Exception):
                    await self.redis.delete(lookup.key)  # type: ignore[union-attr]
                return None
            if self._valid(entry, lookup):
                self._counters["redis_hits"] += 1
                lookup.source_tier = " from Redis"
                self._put_local(lookup.key, entry)
                return entry
        return None

    def _checked(self, lookup: _Lookup) -> str:
        """For a hit's note: how long ago its freshness was checked, when a read was reused."""
        if lookup.checked is None:
            return ""
        ago = time.monotonic() - lookup.checked
        if ago < 0.001:
            return ""
        interval = self.settings.token_interval
        return (
            f"; freshness token read {ago:.2f} s ago (reused for up to {interval:g} s: a write "
            "since may be unseen)"
        )

    def _valid(self, entry: Entry, lookup: _Lookup) -> bool:
        now = time.time()
        return (
            now < entry.expires
            and now - entry.created <= lookup.bound
            and entry.gens == lookup.gens
            and entry.tokens == lookup.tokens
        )

    async def _store(self, lookup: _Lookup, entry: Entry) -> None:
        self._counters["stores"] += 1
        self._put_local(lookup.key, entry)
        if self.redis is None:
            return
        try:
            blob = encode_entry(entry, self.settings.compression)
            if len(blob) > self.settings.redis_max_entry_bytes:
                lookup.why_not = "over the Redis entry limit (kept in process only)"
                return
            remaining = entry.expires - time.time()
            if remaining > 0:
                await self.redis.write(lookup.key, blob, remaining)
        except TierSkipped:
            lookup.why_not = "kept in process only: Redis tier skipped"
        except Exception as e:
            self._counters["errors"] += 1
            log.warning(
                "cache: could not store entry in Redis: %s", _masked(str(e), self.redis.url)
            )


def _batches(table: pa.Table) -> list[pa.RecordBatch]:
    batches = table.to_batches()
    return batches or [pa.RecordBatch.from_pylist([], schema=table.schema)]


def _hit(stats: FragmentStats, entry: Entry, what: str) -> None:
    stats.cached = True
    stats.rows = entry.table.num_rows
    stats.bytes = entry.nbytes
    _note(stats, what)


def _note(stats: FragmentStats, text: str) -> None:
    stats.note = f"{stats.note}; {text}" if stats.note else text
