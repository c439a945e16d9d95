"""Freshness: how old an answer may be (staleness bounds, TTLs), the generation counters
that invalidation bumps, and the sources' freshness tokens.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import math
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from federator.adapters.base import Adapter, TableRef
    from federator.cache.settings import CacheSettings
    from federator.catalog import Catalog
    from federator.execute.handle import ExecutionHandle as Execution  # no circle

log = logging.getLogger("federator.cache")  # the logger name from before the split

_UNSETTLED = "~"  # a token starting with this may change without notice: never cache on it


class FreshnessTokenSource(Protocol):
    """The optional adapter hook: a short string that changes whenever the data of any of
    ``tables`` may have changed; None when the source cannot tell (TTL and invalidation still
    apply). A token starting with ``~`` means "changing right now": nothing is cached on it."""

    async def freshness_token(self, tables: Sequence[TableRef]) -> str | None: ...


async def freshness_token(adapter: Adapter, tables: Sequence[TableRef]) -> str | None:
    """The adapter's freshness token for ``tables``: its own hook where it has one, else a
    built-in one for embedded kinds (file modification stamps), else None."""
    hook = getattr(adapter, "freshness_token", None)
    if hook is not None:
        return await hook(tables)
    path = getattr(adapter, "path", None)
    if adapter.kind == "sqlite" and path and path != ":memory:":
        # The database file and its WAL change on every commit.
        return _file_stamps([Path(path), Path(f"{path}-wal")])
    if adapter.kind == "files" and path is not None:
        scan = getattr(adapter, "scan", None)
        files = scan() if scan is not None else {}
        wanted = [files[t.name].path for t in tables if t.name in files]
        return _file_stamps(wanted or [Path(path)])
    return None


def _file_stamps(paths: Iterable[Path]) -> str:
    parts = []
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            parts.append(f"{p.name}:-")
            continue
        parts.append(f"{p.name}:{st.st_mtime_ns}:{st.st_size}:{st.st_ino}")
        if time.time_ns() - st.st_mtime_ns < 50_000_000:
            # File system clocks tick coarsely (a few ms): two writes within one tick may carry
            # the same stamp, so a file written this recently is not trusted yet.
            return f"{_UNSETTLED}{uuid.uuid4().hex}"
    return "|".join(parts)


@dataclass
class _RunState:
    """Per-execution facts: the oldest data it used, tokens it read."""

    oldest: float = math.inf
    tokens: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[float, str | None]] = field(
        default_factory=dict
    )


def _state(ex: Execution) -> _RunState:
    state = getattr(ex, "_cache_state", None)
    if state is None:
        state = _RunState()
        ex._cache_state = state  # type: ignore[attr-defined]
    return state


class Freshness:
    """Staleness bounds and TTLs per source and table, generation fields and tokens."""

    enabled: bool
    settings: CacheSettings
    catalog: Catalog
    _sources: dict[str, Mapping[str, Any]]
    _recent_tokens: dict[Any, tuple[float, str | None]]
    _token_reads: dict[Any, asyncio.Future[tuple[float, str | None]]]
    _counters: collections.Counter[str]

    # ---- bounds ----------------------------------------------------------------------
    def bound(self, requested: float | None, sources: Iterable[str]) -> tuple[float, str]:
        """The staleness a query accepts from these sources, and why it is 0 when it is."""
        if not self.enabled:
            return 0.0, "cache disabled"
        bound = self.settings.max_staleness if requested is None else float(requested)
        if bound <= 0:
            return 0.0, "max_staleness=0"
        for s in sources:
            opts = self._sources.get(s, {})
            if opts.get("cache", True) is False:
                return 0.0, f"source {s!r} is not cached"
            if opts.get("max_staleness") is not None:
                bound = min(bound, float(opts["max_staleness"]))
                if bound <= 0:
                    return 0.0, f"source {s!r} max_staleness=0"
        return bound, ""

    def ttl(self, source: str, tables: Iterable[tuple[str, str]]) -> float:
        ttl = float(self.settings.ttl)
        opts = self._sources.get(source, {}).get("cache_ttl")
        per_table: Mapping[str, Any] = opts if isinstance(opts, Mapping) else {}
        if opts is not None and not isinstance(opts, Mapping):
            ttl = float(opts)
        elif "default" in per_table:
            ttl = float(per_table["default"])
        for _, name in tables:
            for t in (
                per_table.get(name),
                self.settings.table_ttl.get(f"{source}.{name}"),
            ):
                if t is not None:
                    ttl = min(ttl, float(t))
        return ttl

    @staticmethod
    def version_field(source: str | None, table: str | None = None) -> str:
        """The generation counter's name for a table (``source.table``), a whole source
        (``source.*``) or everything (``*``); writers may bump it in Redis themselves."""
        if source is None:
            return "*"
        if table is None:
            return f"{source}.*"
        return f"{source}.{table.rsplit('.', 1)[-1].lower()}"

    # ---- freshness -------------------------------------------------------------------
    def _fields(self, by_source: Mapping[str, Sequence[tuple[str, str]]]) -> list[str]:
        fields = {"*"}
        for source, refs in by_source.items():
            fields.add(self.version_field(source))
            fields.update(self.version_field(source, name) for _, name in refs)
        return sorted(fields)

    async def _tokens(
        self,
        ex: Execution,
        by_source: Mapping[str, Sequence[tuple[str, str]]],
        bound: float = math.inf,
    ) -> tuple[dict[str, str], float | None]:
        """The freshness token of each source's tables (sources without one left out), and
        when the oldest of them was read (``time.monotonic()``; None: no token). A token read
        within ``token_interval`` (and ``bound``) seconds is reused, so a write that recent may
        be unseen; one read at a time per source and tables, shared by concurrent lookups."""
        if not self.settings.tokens:
            return {}, None
        state = _state(ex)
        wanted = {
            s: tuple(refs)
            for s, refs in by_source.items()
            if self._sources.get(s, {}).get("cache_tokens", True) is not False
        }
        missing = [s for s, refs in wanted.items() if (s, refs) not in state.tokens]
        if missing:
            reads = await asyncio.gather(*(self._token(s, wanted[s], bound) for s in missing))
            for s, read in zip(missing, reads, strict=True):
                state.tokens[(s, wanted[s])] = read
        out = {}
        oldest = None
        for s, refs in wanted.items():
            read_at, token = state.tokens[(s, refs)]
            if token is not None:
                out[s] = token
                oldest = read_at if oldest is None else min(oldest, read_at)
        return out, oldest

    async def _token(
        self, source: str, refs: Sequence[tuple[str, str]], bound: float
    ) -> tuple[float, str | None]:
        """(when it was read, the token) of ``source``'s ``refs``: a recent read when one is
        young enough, else the read in progress, else a new read."""
        key = (source, tuple(refs))
        recent = self._recent_tokens.get(key)
        if recent is not None and time.monotonic() - recent[0] < min(
            self.settings.token_interval, bound
        ):
            return recent
        reading = self._token_reads.get(key)
        if reading is None:
            reading = asyncio.ensure_future(self._read_token(source, refs))
            self._token_reads[key] = reading
            reading.add_done_callback(lambda done: self._forget_read(key, done))
        return await asyncio.shield(reading)

    def _forget_read(self, key: Any, done: asyncio.Future[tuple[float, str | None]]) -> None:
        if self._token_reads.get(key) is done:
            del self._token_reads[key]
        if not done.cancelled() and self.settings.token_interval > 0:
            if len(self._recent_tokens) > 4096:
                self._recent_tokens.clear()
            self._recent_tokens[key] = done.result()

    async def _read_token(
        self, source: str, refs: Sequence[tuple[str, str]]
    ) -> tuple[float, str | None]:
        """Ask the source. A failure or timeout is an unsettled token: nothing is served or
        stored on it, but identical requests still share one fetch."""
        from federator.adapters.base import TableRef

        adapter = self.catalog.adapter(source)
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.token_timeout):
                token = await freshness_token(adapter, [TableRef(s, n) for s, n in refs])
            return started, token
        except Exception as e:
            self._counters["errors"] += 1
            why = (
                f"no answer in {self.settings.token_timeout:g} s"
                if isinstance(e, TimeoutError)
                else f"{type(e).__name__}: {e}"
            )
            log.warning("cache: freshness token of source %r failed (%s)", source, why)
            return started, f"{_UNSETTLED}error"

    async def _cancel_token_reads(self) -> None:
        reads = list(self._token_reads.values())
        for read in reads:
            read.cancel()
        await asyncio.gather(*reads, return_exceptions=True)
