"""Plan objects: fragments (one source each), bind joins, the native requests adapters make of
fragments, and the residual query. The contract between planning, adapters and execution."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
from sqlglot import exp

from federator.errors import clip


@dataclass
class BindJoin:
    """This fragment's ``key`` is restricted to the values of ``producer.producer_column``.

    Planned from estimates, decided at run time from the producer's observed distinct keys
    (:meth:`decide`): bound when there are at most ``max_keys`` of them and, where the
    consumer's size is estimated, no more than ``consumer_rows / min_ratio`` (each key
    fetches at least a row, so more keys than rows never pays); else fetched in full.
    ``semi_join_of`` names the fragment whose keys a keys-only producer reduces to; ``race``
    (adaptive binds) starts the full fetch at once and binds only if the keys come first.
    ``alternatives`` are binds of the same fragment on other join keys (other producers): the
    executor waits for every producer and binds the key set that keeps the smallest share of
    the consumer (:func:`choose_bind`); ``key_domain`` is the producer's table rows when the
    key is unique there (a key set of that table keeps ``keys / key_domain`` of a foreign key).

    >>> b = BindJoin("f0", "k", exp.column("k"), "k", "", max_keys=100, consumer_rows=1000)
    >>> b.decide(40)[0], b.decide(500)[0]
    (True, False)
    """

    producer: str
    producer_column: str
    key: exp.Column  # a column of this fragment's tables, qualified by its table alias
    key_output: str  # the key's column name in this fragment's output
    reason: str
    max_keys: int | None = None
    consumer_rows: int | None = None
    estimated_keys: int | None = None
    min_ratio: float = 1.0
    semi_join_of: str | None = None
    race: bool = False  # fetch in full meanwhile; bind only if the keys come first and pay
    key_domain: int | None = None
    # above max_keys, still bound up to share_max_keys keys keeping at most share_limit
    share_limit: float = 0.0
    share_max_keys: int | None = None
    alternatives: list[BindJoin] = field(default_factory=list)

    def kept_share(self, keys: int) -> float | None:
        """The share of the consumer's rows ``keys`` observed keys keep (None: not known).

        >>> BindJoin("f0", "k", exp.column("k"), "k", "", key_domain=1_000).kept_share(50)
        0.05
        """
        return min(1.0, keys / self.key_domain) if self.key_domain else None

    def decide(self, keys: int, limit: int | None = None) -> tuple[bool, str]:
        """Whether to bind ``keys`` observed distinct keys, and why (for EXPLAIN ANALYZE).

        ``limit`` is the executor's own ceiling on keys, applied on top of ``max_keys``.
        """
        ceiling = (
            min(x for x in (self.max_keys, limit) if x is not None)
            if (self.max_keys is not None or limit is not None)
            else None
        )
        est = f" (estimated {self.estimated_keys:,})" if self.estimated_keys is not None else ""
        seen = f"observed {keys:,} distinct keys{est}"
        small = None
        if ceiling is not None and keys > ceiling:
            small = self._small_share(keys, limit)
            if small is None:
                return False, (
                    f"bind dropped at run time: {seen} > {ceiling:,} allowed; fetched in full"
                )
        rows = self.consumer_rows
        if rows is not None and keys * self.min_ratio > rows:
            return False, (
                f"bind dropped at run time: {seen}, more than the consumer's estimated "
                f"{rows:,} rows / {self.min_ratio:g}; fetched in full"
            )
        if small is not None:
            return True, f"bound at run time: {seen} > {ceiling:,} allowed, but {small}"
        shown = f" <= {ceiling:,} allowed" if ceiling is not None else ""
        return True, f"bound at run time: {seen}{shown}"

    def _small_share(self, keys: int, limit: int | None) -> str | None:
        """Why ``keys`` keys above the key limit still pay (None: they do not): they are at
        most ``share_limit`` of the producer table's unique keys, and within
        ``share_max_keys`` and the executor's ``limit``.

        >>> b = BindJoin("f0", "k", exp.column("k"), "k", "", max_keys=50_000,
        ...              key_domain=1_500_000, share_limit=0.1, share_max_keys=200_000)
        >>> b.decide(57_000)[1].split(", but ")[1]
        'they keep 3.8% of 1,500,000 keys (<= 10%)'
        >>> b.decide(300_000)[0]
        False

        A small share still has to be few keys for the consumer: TPC-H Q8's 91 k order keys
        (6 % of them) against a lineitem side estimated at 39 k rows are fetched in full.

        >>> b.consumer_rows = 39_145
        >>> b.decide(91_179)[1]
        "bind dropped at run time: observed 91,179 distinct keys, more than the consumer's \
estimated 39,145 rows / 1; fetched in full"
        """
        share = self.kept_share(keys)
        cap = (
            min(x for x in (self.share_max_keys, limit) if x is not None)
            if (self.share_max_keys is not None or limit is not None)
            else None
        )
        if share is None or share > self.share_limit or (cap is not None and keys > cap):
            return None
        return f"they keep {share:.1%} of {self.key_domain:,} keys (<= {self.share_limit:.0%})"


def choose_bind(
    binds: list[BindJoin], keys: list[int], limit: int | None = None
) -> tuple[int | None, str]:
    """Which of a fragment's candidate ``binds`` to use given each one's observed distinct
    ``keys`` (index into ``binds``, None: fetch in full), and why (for EXPLAIN ANALYZE).

    Among the candidates :meth:`BindJoin.decide` accepts, the one keeping the smallest share
    of the consumer (:meth:`BindJoin.kept_share`; unknown counts as all of it), then the one
    with fewer keys: TPC-H Q5 binds lineitem on 46 k of 1.5 M order keys (3 %), not on 2 k of
    10 k supplier keys (20 %), though the latter are fewer.

    >>> supp = BindJoin("f1", "s", exp.column("s"), "s", "", key_domain=10_000)
    >>> orders = BindJoin("f2", "o", exp.column("o"), "o", "", key_domain=1_500_000)
    >>> choose_bind([supp, orders], [2_003, 46_000])[0]
    1
    """
    decisions = [b.decide(n, limit) for b, n in zip(binds, keys, strict=True)]
    if len(binds) == 1:
        return (0 if decisions[0][0] else None), decisions[0][1]
    accepted = [i for i, (ok, _) in enumerate(decisions) if ok]
    if not accepted:
        return None, "; ".join(why for _, why in decisions)

    def rank(i: int) -> tuple[float, int]:
        share = binds[i].kept_share(keys[i])
        return (1.0 if share is None else share, keys[i])

    best = min(accepted, key=rank)
    shares = ", ".join(
        f"{b.producer}.{b.producer_column}: {n:,} keys"
        + (f" ({s:.1%} of {b.key_domain:,})" if (s := b.kept_share(n)) is not None else "")
        for b, n in zip(binds, keys, strict=True)
    )
    chosen = f"{binds[best].producer}.{binds[best].producer_column}"
    return best, f"{decisions[best][1]}; chose {chosen} of {shares}"


def alternative_id(fid: str, index: int) -> str:
    """The request id of fragment ``fid`` bound on its ``index``-th alternative bind.

    >>> alternative_id("f3", 0)
    'f3~alt0'
    """
    return f"{fid}~alt{index}"


def grouped_bind_site(tree: exp.Query, key: exp.Column) -> tuple[exp.Select, exp.Expression]:
    """Where a bind on ``key`` filters ``tree``: the SELECT to add the condition to, and the
    key as written there. A key that is a GROUP BY key of the derived table ``tree`` reads goes
    under that GROUP BY (keeping a group's input rows by its key keeps exactly the groups of
    those keys), level by level; anywhere else it stays on ``tree`` itself. The nodes are
    ``tree``'s own: the caller passes a copy it may change.

    >>> from sqlglot import parse_one
    >>> t = parse_one("SELECT g.k, g.n FROM (SELECT t.a AS k, COUNT(*) AS n FROM s.t AS t "
    ...               "GROUP BY t.a) AS g")
    >>> site, inner = grouped_bind_site(t, exp.column("k", table="g"))
    >>> site is t, inner.sql()
    (False, 't.a')
    """
    site: exp.Select = tree  # type: ignore[assignment]
    where: exp.Expression = key
    while isinstance(key, exp.Column) and (inner := _grouped_derived(site, key)) is not None:
        site, where = inner
        key = where  # type: ignore[assignment]
    return site, where.copy()


def _grouped_derived(
    select: exp.Select, key: exp.Column
) -> tuple[exp.Select, exp.Expression] | None:
    """The derived table ``select`` reads alone and its expression of ``key``, when that is a
    GROUP BY key there and nothing (LIMIT, DISTINCT, windows) makes filtering first differ."""
    if not isinstance(select, exp.Select) or select.args.get("joins"):
        return None
    source = select.args.get("from_")
    derived = source.this if source is not None else None
    if not isinstance(derived, exp.Subquery) or derived.alias_or_name != key.table:
        return None
    inner = derived.this
    if not isinstance(inner, exp.Select) or not inner.args.get("group"):
        return None
    if any(inner.args.get(a) for a in ("limit", "offset", "distinct", "qualify")):
        return None
    if inner.find(exp.Window) is not None:
        return None
    found = [p for p in inner.expressions if p.alias_or_name == key.name]
    if len(found) != 1:
        return None
    expr = found[0].unalias()
    if not any(g == expr for g in inner.args["group"].expressions):
        return None
    return inner, expr


def bind_batches(keys: int, limit: int) -> list[int]:
    """Sizes of the requests ``keys`` bound keys are sent in, each at most ``limit``, as even
    as possible (3 requests of 6,667 rather than 10,000 + 10,000 + 1).

    >>> bind_batches(20_001, 10_000)
    [6667, 6667, 6667]
    >>> bind_batches(0, 1_000)
    [0]
    """
    count = max(1, -(-keys // max(1, limit)))
    base, extra = divmod(keys, count)
    return [base + 1] * extra + [base] * (count - extra)


WINDOW_PARAM = "__window_"  # parameters a time window binds at run time (never the user's)


@dataclass
class TimeWindow:
    """This fragment (the right side of an ``ASOF JOIN``) reads only the rows whose time
    ``column`` can still match: at most the latest time ``producer`` sends in
    ``producer_column`` (before ``strict``: below it) and, with ``max_age``, at least the
    earliest one minus ``max_age``; ``after`` (``l.ts <= f.ts``): at least the earliest one.
    The bounds are computed at run time from the producer's rows and bound as the parameters
    ``upper``/``lower`` (:meth:`bounds`). ``latest``: the fragment rewritten to send only
    the latest row per key at or before the bound, used when every producer time is one and
    the same cut-off (its request is ``Plan.requests[id + LATEST]``).

    >>> import datetime as dt, pyarrow as pa
    >>> w = TimeWindow("f0", "ts", exp.column("t"), "hi", "lo", max_age=dt.timedelta(days=1))
    >>> times = pa.chunked_array([[dt.datetime(2026, 1, 5), dt.datetime(2026, 1, 2)]])
    >>> w.bounds(times, pa.date32())
    {'hi': datetime.date(2026, 1, 5), 'lo': datetime.date(2026, 1, 1)}
    """

    producer: str
    producer_column: str
    column: exp.Column  # the fragment's time column, qualified by its table alias
    upper: str | None
    lower: str | None
    max_age: Any = None  # a timedelta (or a number for numeric times); None: no lower bound
    strict: bool = False
    latest: Fragment | None = None
    reason: str = ""
    type: pa.DataType | None = None  # the time column's Arrow type, where the catalog knows it

    def bounds(self, times: pa.ChunkedArray, target: pa.DataType) -> dict[str, Any]:
        """The window's parameter values for the producer's ``times``, cast to ``target``
        (the fragment's time column's type; rounded outward, so no matching row is lost)."""
        import pyarrow.compute as pc

        if pa.types.is_date(times.type):  # a day is its midnight; an age may be hours
            times = times.cast(pa.timestamp("us"))
        low, high = pc.min_max(times).values()
        values: dict[str, Any] = {}
        if self.upper is not None:
            values[self.upper] = _cast_bound(high, target, up=True)
        if self.lower is not None:
            start = low if self.max_age is None or not low.is_valid else _minus(low, self.max_age)
            values[self.lower] = _cast_bound(start, target, up=False)
        return values

    @staticmethod
    def single_cut_off(times: pa.ChunkedArray) -> bool:
        """Whether every non-null time is the same (and there is one)."""
        import pyarrow.compute as pc

        low, high = pc.min_max(times).values()
        return low.is_valid and low == high


def _minus(value: pa.Scalar, age: Any) -> pa.Scalar:
    return pa.scalar(value.as_py() - age, type=value.type)


def _cast_bound(value: pa.Scalar, target: pa.DataType, up: bool) -> Any:
    """``value`` as a ``target`` value for a bound (no value: None, which matches nothing).
    A timestamp bound on a date column is its day (the day holds the time either way)."""
    if not value.is_valid:
        return None
    if pa.types.is_timestamp(value.type) and pa.types.is_timestamp(target):
        if value.type.tz is None and target.tz is not None:
            value = pa.scalar(value.as_py(), type=pa.timestamp(value.type.unit, "UTC"))
        elif value.type.tz is not None and target.tz is None:
            return value.cast(pa.timestamp(value.type.unit, "UTC")).as_py().replace(tzinfo=None)
        return value.as_py()
    if pa.types.is_date(target) and pa.types.is_timestamp(value.type):
        return value.as_py().date()  # the day of the time: rows of that day may match
    if pa.types.is_floating(value.type) and pa.types.is_integer(target):
        import math

        return math.ceil(value.as_py()) if up else math.floor(value.as_py())
    return value.as_py()


LATEST = "/latest"


@dataclass
class TopK:
    """``ORDER BY <vector distance> LIMIT k`` pushed into this fragment (a vector search).

    The residual still joins, filters and re-sorts, so a filter on another source is applied
    either before the search (``pre``: the producer's keys bound into it, see :class:`BindJoin`)
    or after it (``post``: over-fetch ``k x factor`` candidates). Either way the executor grows
    the fetch (x``growth``) until the residual yields ``k`` rows or the source has no more.
    ``mode`` is ``pre``, ``post`` or ``auto`` (decided at run time from the producer's actual
    key count: ``pre`` when it is at most ``threshold`` of ``base_rows``). The residual reads
    the distance the search returns (``distance``) rather than recomputing it from vectors.
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
    # The distance the search returns, as fragment column ``distance`` (metric ``metric`` of
    # vector column ``vector`` to ``query_vector``); computed here when fetched ``unpushed``.
    distance: str | None = None
    metric: str = ""
    vector: str = ""
    query_vector: exp.Expression | None = None
    # More ORDER BY keys after the distance (tie-breakers, sorted in the residual): k rows
    # must survive among candidates strictly nearer than the farthest one fetched, since an
    # unfetched row at that distance could still win its tie.
    ties: bool = False
    # The residual SELECT whose k rows count, when the top-k is a derived table's (None: the
    # whole residual).
    scope: exp.Select | None = None

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
    as_written: bool = False  # a derived table's LIMIT query as written: no bind, no top-k
    # Where estimated_rows came from: the source's EXPLAIN, the catalog's stats, a default.
    estimate_origin: str = ""
    # A partial aggregate's groups as its source estimated them (estimated_rows: rows read).
    estimated_groups: int | None = None
    window: TimeWindow | None = None  # an ASOF JOIN's right side: its rows' time window

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
    # The small side's rows shipped to the big side's source, decided at run time
    # (federator.plan.ship.ShipSmallSide); None: not planned.
    ship: Any = None
    # Facts later layers derive from the planned trees (the cache's shape key, table references,
    # volatility), computed once: every binding of this plan (bind_params copies the Plan, not
    # this dict) shares them. Nothing may mutate the trees after planning.
    memo: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

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
        if self.ship is not None:
            lines.append(f"Ship small side: {self.ship.reason}")
        for note in self.notes:
            lines.append(f"Note: {note}")
        return "\n".join(lines)

    def _explain_fragment(self, frag: Fragment, stats: FragmentStats | None) -> list[str]:
        req = self.requests[frag.id]
        kind = self.source_kinds.get(frag.source, "?")
        est = f"{frag.estimated_rows:,}" if frag.estimated_rows is not None else "unknown"
        if frag.estimate_origin:
            est += f" ({frag.estimate_origin})"
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
            out.extend(
                f"  or bind join: {a.key.sql()} <- distinct {a.producer}.{a.producer_column} "
                f"({a.reason}); the executor waits for every producer and binds the keys "
                "that keep the smallest share"
                for a in b.alternatives
            )
        if frag.window is not None:
            out.extend(self._explain_window(frag.id, frag.window))
        out.extend(f"  note: {n}" for n in frag.notes)
        if stats is not None:
            sent = frag.estimated_groups or frag.estimated_rows
            out.append("  " + _stats_line(stats) + _estimate_error(sent, stats))
        return out

    def _explain_window(self, fid: str, w: TimeWindow) -> list[str]:
        source = f"{w.producer}.{w.producer_column}"
        parts = []
        if w.upper is not None:
            parts.append(f"{w.column.sql()} {'<' if w.strict else '<='} max({source})")
        if w.lower is not None:
            age = f" - {w.max_age}" if w.max_age is not None else ""
            parts.append(f"{w.column.sql()} >= min({source}){age}")
        out = [f"  time window: {' AND '.join(parts)}, bound at run time; {w.reason}"]
        latest = self.requests.get(fid + LATEST)
        if latest is not None:
            out.append("  latest row per key when every time is one cut-off, sent instead:")
            out.extend("    " + ln for ln in latest.text.splitlines())
        return out


def _estimate_error(estimated: int | None, s: FragmentStats) -> str:
    """How far the estimate was from the rows that came, for EXPLAIN ANALYZE.

    >>> _estimate_error(1_000, FragmentStats(rows=250))
    ', estimate error 4.0x too high (1,000 estimated)'
    """
    if estimated is None or s.cached or s.bound_keys is not None:
        return ""
    est, actual = max(estimated, 1), max(s.rows, 1)
    if est == actual:
        return ", estimate exact"
    way = "high" if est > actual else "low"
    factor = max(est, actual) / min(est, actual)
    return f", estimate error {factor:.1f}x too {way} ({estimated:,} estimated)"


def _stats_line(s: FragmentStats) -> str:
    parts = [f"actual rows {s.rows:,}", f"bytes {s.bytes:,}", f"time {s.ms:.1f} ms"]
    if s.bound_keys is not None:
        parts.append(f"bound keys {s.bound_keys:,}")
    if s.cached:
        parts.append("from cache")
    if s.note:
        parts.append(s.note)
    return "analyze: " + ", ".join(parts)


# ---- native requests: what an adapter makes of a fragment (Adapter.translate) ---------
@dataclass
class NativeRequest:
    """A backend request ready to send: native text, bound parameters, and how keys bind.

    ``text`` is shown by EXPLAIN verbatim; ``params`` are positional driver parameters.
    ``bind`` is set for a bind join: the request takes the producer's key values in
    ``bind.batch_size`` batches.
    """

    source: str
    text: str
    param_names: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    schema: pa.Schema | None = None
    bind: BindSpec | None = None
    payload: Any = None  # adapter-private: an AST or pipeline to re-render per bind batch

    def with_params(self, values: Mapping[str, Any]) -> NativeRequest:
        """This request with its ``:name`` parameters bound from ``values``, in driver order."""
        return replace(
            self,
            params=[
                None if n.startswith(("__bind", WINDOW_PARAM)) else values[n]
                for n in self.param_names
            ],
        )

    def with_values(self, values: Mapping[str, Any]) -> NativeRequest:
        """This request with the parameters named in ``values`` set (the others kept)."""
        params = [values.get(n, v) for n, v in zip(self.param_names, self.params, strict=True)]
        return replace(self, params=params)

    def render_params(self) -> str:
        return ", ".join(f"${i} = {_short(v)}" for i, v in enumerate(self.params, 1))


@dataclass
class BindSpec:
    """How a request receives bind-join keys."""

    column: str  # native name of the key column in this source
    style: str  # "array" (one array parameter) or "in_list" (batched IN lists)
    batch_size: int


def _short(value: Any) -> str:
    return clip(repr(value), 80)
