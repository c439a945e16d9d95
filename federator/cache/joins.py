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
    _table_refs,
    _Unkeyable,
    _volatile,
)
from federator.cache.serve import EntryServer, _Lookup, _note

if TYPE_CHECKING:
    from federator.execute.handle import ExecutionHandle as Execution  # no circle
    from federator.plan.model import Plan


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


def _same_trees(a: Plan, b: Plan) -> bool:
    return a.fragments is b.fragments and a.residual is b.residual


async def _computed_join(ex: Execution) -> AsyncIterator[pa.RecordBatch]:
    tables = await ex._fetch_all()
    async with contextlib.aclosing(ex._residual(tables)) as batches:
        async for batch in batches:
            yield batch


class JoinCache(EntryServer):
    """Counts join shapes and serves a frequent shape's answer (see :class:`ShapeStats`)."""

    _identity: dict[str, str]
    _shapes: dict[str, ShapeStats]
    _plan_shapes: dict[int, tuple[Any, str, str, str | None]]

    # ---- joins -----------------------------------------------------------------------
    async def join_batches(self, ex: Execution) -> AsyncIterator[pa.RecordBatch]:
        """The residual's answer: materialized when its shape is frequent, else computed."""
        plan = ex.plan
        stats = ex.residual_stats
        shape_id, shape_text, exact, volatile = self._shape(plan)
        sources = sorted({f.source for f in plan.fragments})
        bound, why = self.bound(ex.max_staleness, sources)
        lookup = None
        if not why and volatile:
            why = f"volatile {volatile}"
        if not why and self.settings.join_window > 0:
            shape = self._shapes.setdefault(shape_id, ShapeStats(shape_text))
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
                    lookup = await self._join_lookup(ex, plan, exact, bound)
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
        shape = self._shapes[shape_id]
        if lookup.outcome in ("hit", "shared"):
            shape.hits += 1
            for frag in plan.fragments:
                _note(ex.stats[frag.id], "not run: join answer from cache")
        else:
            shape.misses += 1
            if lookup.stored_bytes:
                shape.stored += 1
                shape.bytes = lookup.stored_bytes

    async def _join_lookup(self, ex: Execution, plan: Plan, exact: str, bound: float) -> _Lookup:
        by_source: dict[str, list[tuple[str, str]]] = {}
        for frag in plan.fragments:
            by_source.setdefault(frag.source, []).extend(_table_refs(frag))
        by_source = {s: sorted(set(r)) for s, r in by_source.items()}
        residual_params = {
            k: _canon(v)
            for k, v in sorted(ex.params.items())
            if f"${k}" in (plan.residual_sql or "")
        }
        key = _digest(
            "join",
            exact,
            [
                [
                    self._identity.get(f.source, f.source),
                    _canon(list(plan.requests[f.id].params)),
                ]
                for f in plan.fragments
            ],
            residual_params,
        )
        fields = self._fields(by_source)
        tokens = await self._tokens(ex, by_source)
        ttl = min(self.ttl(s, refs) for s, refs in by_source.items())
        return _Lookup(key, fields, {}, tokens, bound, ttl, inherit_age=True)

    def _shape(self, plan: Plan) -> tuple[str, str, str, str | None]:
        # Keyed by the planned trees: each query binds its parameters into a new Plan that
        # shares them, and re-deriving the shape per query costs a tree copy.
        cached = self._plan_shapes.get(id(plan.fragments))
        if cached is not None and _same_trees(cached[0], plan):
            return cached[1:]  # type: ignore[return-value]
        parts = [f"{f.source}: {_abstract_literals(f.query)}" for f in plan.fragments]
        residual = plan.residual
        parts.append("residual: " + (_abstract_literals(residual) if residual is not None else ""))
        text = "\n".join(parts)
        exact = "\n".join(
            [f"{f.source}: {plan.requests[f.id].text.strip()}" for f in plan.fragments]
            + [plan.residual_sql or ""]
        )
        volatile = None
        for tree in [*(f.query for f in plan.fragments), residual]:
            if tree is not None and (volatile := _volatile(tree)):
                break
        shape_id = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        if len(self._plan_shapes) > 1024:
            self._plan_shapes.clear()
        self._plan_shapes[id(plan.fragments)] = (plan, shape_id, text, exact, volatile)  # type: ignore[assignment]
        return shape_id, text, exact, volatile
