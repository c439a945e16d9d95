"""Join results: a plan's shape (its queries with literals abstracted) counted within
``join_window``; a frequent shape's final answer is served from cache.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from federator.cache.keys import (
    _abstract_literals,
    _canon,
    _digest,
    _Unkeyable,
    _volatile,
    fragment_facts,
)
from federator.cache.serve import EntryServer, _Lookup, _note

if TYPE_CHECKING:
    from federator.execute.handle import ExecutionHandle as Execution  # no circle
    from federator.plan.model import Plan


MAX_SHAPES = 4096  # join shapes whose counters are kept


@dataclass
class ShapeStats:
    text: str
    seen: int = 0
    hits: int = 0
    misses: int = 0
    stored: int = 0
    bytes: int = 0  # size of the last answer stored for this shape
    times: collections.deque[float] = field(default_factory=collections.deque)

    def as_dict(self) -> dict[str, Any]:
        return {
            "shape": self.text,
            "seen": self.seen,
            "hits": self.hits,
            "misses": self.misses,
            "stored": self.stored,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class _JoinFacts:
    """What a join lookup needs of its plan, derived once per planned plan (``plan.memo``)."""

    shape_id: str
    text: str  # the shape: the queries with literals abstracted
    exact: str  # the native requests and the residual as sent
    volatile: str | None
    tables: dict[str, list[tuple[str, str]]]  # (schema, table) read per source
    residual_sql: str


async def _computed_join(ex: Execution) -> AsyncIterator[pa.RecordBatch]:
    tables = await ex._fetch_all()
    async with contextlib.aclosing(ex._residual(tables)) as batches:
        async for batch in batches:
            yield batch


class JoinCache(EntryServer):
    """Counts join shapes and serves a frequent shape's answer (see :class:`ShapeStats`)."""

    _identity: dict[str, str]
    _shapes: dict[str, ShapeStats]

    def _shape_stats(self, shape_id: str, text: str) -> ShapeStats:
        """The counters of one join shape; the least recently seen shapes beyond
        ``MAX_SHAPES`` are forgotten, so a stream of distinct queries cannot grow them."""
        shape = self._shapes.pop(shape_id, None) or ShapeStats(text)
        self._shapes[shape_id] = shape  # dicts keep insertion order: now the most recent
        while len(self._shapes) > MAX_SHAPES:
            del self._shapes[next(iter(self._shapes))]
        return shape

    # ---- joins -----------------------------------------------------------------------
    async def join_batches(self, ex: Execution) -> AsyncIterator[pa.RecordBatch]:
        """The residual's answer: materialized when its shape is frequent, else computed."""
        plan = ex.plan
        stats = ex.residual_stats
        facts = _join_facts(plan)
        shape_id, volatile = facts.shape_id, facts.volatile
        sources = sorted(facts.tables)
        bound, why = self.bound(ex.max_staleness, sources)
        lookup = None
        if not why and volatile:
            why = f"volatile {volatile}"
        if not why and self.settings.join_window > 0:
            shape = self._shape_stats(shape_id, facts.text)
            now = time.monotonic()
            shape.seen += 1
            shape.times.append(now)
            while shape.times and shape.times[0] < now - self.settings.join_window:
                shape.times.popleft()
            if len(shape.times) < self.settings.join_threshold:
                why = (
                    f"join shape {shape_id[:8]} seen {len(shape.times)} time(s) in "
                    f"{self.settings.join_window:g} s; materialized from "
                    f"{self.settings.join_threshold}"
                )
            else:
                try:
                    lookup = await self._join_lookup(ex, facts, bound)
                except _Unkeyable as e:
                    why = str(e)
        elif not why:
            why = "join cache off (join_window = 0)"
        if lookup is None:
            _note(stats, f"join not cached: {why}")
            async for batch in _computed_join(ex):
                yield batch
            return
        started = time.perf_counter()
        async with contextlib.aclosing(
            self._serve(lookup, ex, lambda: _computed_join(ex), stats)
        ) as served:
            async for batch in served:
                yield batch
        stats.ms = max(stats.ms, (time.perf_counter() - started) * 1000)
        shape = self._shape_stats(shape_id, facts.text)
        if lookup.outcome in ("hit", "shared"):
            shape.hits += 1
            for frag in plan.fragments:
                _note(ex.stats[frag.id], "not run: join answer from cache")
        else:
            shape.misses += 1
            if lookup.stored_bytes:
                shape.stored += 1
                shape.bytes = lookup.stored_bytes

    async def _join_lookup(self, ex: Execution, facts: _JoinFacts, bound: float) -> _Lookup:
        plan = ex.plan
        key = _digest(
            "join",
            facts.exact,
            [
                [
                    self._identity.get(f.source, f.source),
                    _canon(list(plan.requests[f.id].params)),
                ]
                for f in plan.fragments
            ],
            {k: _canon(v) for k, v in sorted(ex.params.items()) if f"${k}" in facts.residual_sql},
        )
        fields = self._fields(facts.tables)
        tokens, checked = await self._tokens(ex, facts.tables, bound)
        ttl = min(self.ttl(s, refs) for s, refs in facts.tables.items())
        return _Lookup(key, fields, {}, tokens, bound, ttl, inherit_age=True, checked=checked)

    def _shape(self, plan: Plan) -> tuple[str, str, str, str | None]:
        """The plan's shape id, shape text, exact text and volatile expression."""
        facts = _join_facts(plan)
        return facts.shape_id, facts.text, facts.exact, facts.volatile


def _join_facts(plan: Plan) -> _JoinFacts:
    """The join facts of ``plan``, computed on its first lookup and kept on the plan."""
    facts = plan.memo.get("cache.join")
    if facts is None:
        facts = plan.memo["cache.join"] = _derive_join_facts(plan)
    return facts


def _derive_join_facts(plan: Plan) -> _JoinFacts:
    parts = [f"{f.source}: {_abstract_literals(f.query)}" for f in plan.fragments]
    residual = plan.residual
    parts.append("residual: " + (_abstract_literals(residual) if residual is not None else ""))
    text = "\n".join(parts)
    exact = "\n".join(
        [f"{f.source}: {plan.requests[f.id].text.strip()}" for f in plan.fragments]
        + [plan.residual_sql or ""]
    )
    volatile = None
    tables: dict[str, set[tuple[str, str]]] = {}
    for frag in plan.fragments:
        refs, volatile_here = fragment_facts(plan, frag)
        tables.setdefault(frag.source, set()).update(refs)
        volatile = volatile or volatile_here
    if volatile is None and residual is not None:
        volatile = _volatile(residual)
    return _JoinFacts(
        shape_id=hashlib.blake2b(text.encode(), digest_size=16).hexdigest(),
        text=text,
        exact=exact,
        volatile=volatile,
        tables={s: sorted(r) for s, r in sorted(tables.items())},
        residual_sql=plan.residual_sql or "",
    )
