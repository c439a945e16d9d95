"""Plan objects: fragments (one source each), bind joins and the residual query."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pyarrow as pa
from sqlglot import exp

if TYPE_CHECKING:
    from federator.adapters.base import NativeRequest


@dataclass
class BindJoin:
    """This fragment's ``key`` is restricted to the values of ``producer.producer_column``."""

    producer: str
    producer_column: str
    key: exp.Column  # a column of this fragment's tables, qualified by its table alias
    key_output: str  # the key's column name in this fragment's output
    reason: str


@dataclass
class TopK:
    """``ORDER BY <vector distance> LIMIT k`` pushed into this fragment (a vector search).

    The residual still joins, filters and re-sorts, so a filter on another source is applied
    either before the search (``pre``: the producer's keys bound into it, see :class:`BindJoin`)
    or after it (``post``: over-fetch ``k x factor`` candidates). Either way the executor grows
    the fetch (x``growth``) until the residual yields ``k`` rows or the source has no more.
    ``mode`` is ``pre``, ``post`` or ``auto`` (decided at run time from the producer's actual
    key count: ``pre`` when it is at most ``threshold`` of ``base_rows``).
    """

    k: int
    mode: str
    factor: int
    threshold: float
    base_rows: int | None
    reason: str
    growth: int = 4
    max_limit: int = 16_384  # beyond this the fragment runs without its ORDER BY/LIMIT
    unpushed: exp.Query | None = None  # the fragment's query without the top-k

    def choose(self, keys: int | None) -> str:
        """``pre`` or ``post`` given the producer's key count (None: no keys bound)."""
        if keys is None:
            return "post"
        if self.mode in ("pre", "post"):
            return self.mode
        if self.base_rows:
            return "pre" if keys <= self.threshold * self.base_rows else "post"
        return "pre"

    def post_factor(self, keys: int | None) -> int:
        """Over-fetch factor for post-filtering: 1.5 / selectivity, at least ``factor``."""
        if keys is None or not self.base_rows:
            return self.factor
        selectivity = max(keys, 1) / self.base_rows
        return max(2, min(1_000, math.ceil(1.5 / selectivity)))


@dataclass
class Fragment:
    """A maximal single-source piece of the query.

    ``query`` is a sqlglot SELECT over fully qualified tables (catalog = source name) whose
    output columns are named ``columns``; ``params`` lists the ``:name`` placeholders it uses.
    """

    id: str
    source: str
    query: exp.Query
    columns: list[str]
    estimated_rows: int | None = None
    bind: BindJoin | None = None
    params: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    types: dict[str, pa.DataType] = field(default_factory=dict)  # known exact output types
    top_k: TopK | None = None  # a vector top-k pushed into this fragment

    def sql(self) -> str:
        return self.query.sql(dialect="postgres")


@dataclass
class FragmentStats:
    rows: int = 0
    bytes: int = 0
    ms: float = 0.0
    cached: bool = False
    bound_keys: int | None = None
    note: str = ""


@dataclass
class Plan:
    """Fragments in dependency order plus the residual query over their results.

    ``residual`` is None when one fragment is the whole query.
    """

    fragments: list[Fragment]
    requests: dict[str, NativeRequest]
    residual: exp.Query | None
    residual_sql: str | None = None
    notes: list[str] = field(default_factory=list)
    source_kinds: dict[str, str] = field(default_factory=dict)

    def fragment(self, fid: str) -> Fragment:
        return next(f for f in self.fragments if f.id == fid)

    def explain(
        self,
        stats: dict[str, FragmentStats] | None = None,
        residual_stats: FragmentStats | None = None,
    ) -> str:
        """Human-readable plan: every native request exactly as sent, then the residual."""
        lines: list[str] = []
        shape = "residual on DuckDB" if self.residual is not None else "no residual"
        lines.append(f"Federated plan: {len(self.fragments)} fragment(s), {shape}")
        for frag in self.fragments:
            lines.extend(self._explain_fragment(frag, (stats or {}).get(frag.id)))
        if self.residual_sql is not None:
            lines.append("Residual (DuckDB over fragment results):")
            lines.extend("  " + ln for ln in self.residual_sql.splitlines())
            if residual_stats is not None:
                lines.append("  " + _stats_line(residual_stats))
        for note in self.notes:
            lines.append(f"Note: {note}")
        return "\n".join(lines)

    def _explain_fragment(self, frag: Fragment, stats: FragmentStats | None) -> list[str]:
        req = self.requests[frag.id]
        kind = self.source_kinds.get(frag.source, "?")
        est = f"{frag.estimated_rows:,}" if frag.estimated_rows is not None else "unknown"
        out = [f"Fragment {frag.id}: source {frag.source} ({kind}), estimated rows {est}"]
        out.extend("  " + ln for ln in req.text.splitlines())
        if req.params:
            out.append("  params: " + req.render_params())
        if frag.bind is not None:
            b = frag.bind
            how = f"{req.bind.style} batches of {req.bind.batch_size}" if req.bind else "bound"
            out.append(
                f"  bind join: {b.key.sql()} <- distinct {b.producer}.{b.producer_column} "
                f"({how}); {b.reason}"
            )
        out.extend(f"  note: {n}" for n in frag.notes)
        if stats is not None:
            out.append("  " + _stats_line(stats))
        return out


def _stats_line(s: FragmentStats) -> str:
    parts = [f"actual rows {s.rows:,}", f"bytes {s.bytes:,}", f"time {s.ms:.1f} ms"]
    if s.bound_keys is not None:
        parts.append(f"bound keys {s.bound_keys:,}")
    if s.cached:
        parts.append("from cache")
    if s.note:
        parts.append(s.note)
    return "analyze: " + ", ".join(parts)
