"""Time windows for the right side of an ``ASOF JOIN`` (point-in-time joins).

``l ASOF [LEFT] JOIN f ON l.k = f.k AND l.ts >= f.ts`` matches each row of ``l`` to the
latest row of ``f`` at or before ``l.ts``: no row of ``f`` later than every ``l.ts`` can ever
match. So ``f``'s fragment gets ``f.ts <= :upper`` (``<`` under ``>``), bound at run time to
the largest time ``l``'s fragment sent. When every use of ``f``'s columns outside the ON is
``CASE WHEN f.ts >= l.ts - INTERVAL … THEN f.x END`` (a maximum age, as
``fed.training_set`` writes it), rows older than the smallest ``l.ts`` minus that age are
never shown either, and ``f.ts >= :lower`` goes too. ``l.ts <= f.ts`` (the earliest at or
after) gets ``f.ts >= :lower`` from the smallest time.

When every ``l.ts`` is the same cut-off (known once ``l``'s rows are in), the source can send
the latest row per key itself: the fragment is also planned as ``SELECT … FROM (SELECT …,
ROW_NUMBER() OVER (PARTITION BY key ORDER BY ts DESC) …) WHERE rn = 1`` wherever its source's
rules accept that query (the window bounds inside), and the executor sends that request
instead. The as-of match still runs in the residual, so the answer is the same either way.

>>> from sqlglot import parse_one
>>> q = parse_one("SELECT CASE WHEN f.t >= l.t - INTERVAL '5' MICROSECOND THEN f.v END AS v")
>>> max_age_of(q, "f", exp.column("t", table="f"), exp.column("t", table="l"), exp.Join())
datetime.timedelta(microseconds=5)
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pyarrow as pa
from sqlglot import exp

from federator.plan.joins import JoinPlanner
from federator.plan.model import LATEST, WINDOW_PARAM, Fragment, TimeWindow
from federator.plan.tree import _conjuncts, _Item

_ROW_NUMBER = "__fed_rn"
_UNITS = {
    "MICROSECOND": timedelta(microseconds=1),
    "MILLISECOND": timedelta(milliseconds=1),
    "SECOND": timedelta(seconds=1),
    "MINUTE": timedelta(minutes=1),
    "HOUR": timedelta(hours=1),
    "DAY": timedelta(days=1),
    "WEEK": timedelta(weeks=1),
}


class AsofWindows(JoinPlanner):
    """Plans the time window (and the latest-per-key request) of ASOF joins' right sides."""

    def _plan_time_window(
        self,
        select: exp.Select,
        join: exp.Join,
        it: _Item,
        frag: Fragment,
        frags: dict[str, Fragment],
        renames: dict[tuple[str, str], tuple[str, str]],
    ) -> None:
        """Give ``frag`` (``join``'s right side, alias ``it.alias``) its time window, or a
        note saying why not."""
        found = _time_inequality(join, it.alias)
        if found is None:
            return
        fcol, lcol, after, strict = found
        reverse = {v: k for k, v in renames.items()}
        origin = self._origin(lcol, frags, reverse)
        why = self._window_refusal(frag, origin)
        if why is not None:
            frag.notes.append(f"no time window: {why}")
            return
        assert origin is not None
        producer = origin[0]
        target = self._time_type(frag, fcol)
        temporal = target is not None and (
            pa.types.is_timestamp(target) or pa.types.is_date(target)
        )
        age = max_age_of(select, it.alias, fcol, lcol, join) if temporal and not after else None
        upper = None if after else f"{WINDOW_PARAM}hi_{frag.id}"
        lower = f"{WINDOW_PARAM}lo_{frag.id}" if after or age is not None else None
        frag.window = TimeWindow(
            producer=producer.id,
            producer_column=origin[3],
            column=fcol.copy(),
            upper=upper,
            lower=lower,
            max_age=age,
            strict=strict,
            reason="the as-of match never takes other rows",
            type=target,
        )
        if frag.bind is not None:
            frag.bind.race = False  # the window waits for the producer anyway
        if not after:
            frag.window.latest = self._latest_per_key(frag, join, it.alias)

    def _window_refusal(
        self, frag: Fragment, origin: tuple[Fragment, str, str, str] | None
    ) -> str | None:
        if origin is None:
            return "the other side's time is not a column of a fragment"
        if frag.top_k is not None or frag.as_written:
            return "the fragment is a vector search or a query as written"
        q = frag.query
        if (
            not isinstance(q, exp.Select)
            or q.args.get("joins")
            or not isinstance(q.args["from_"].this, exp.Table)
        ):
            return "the fragment is not one table"
        if any(q.args.get(k) for k in ("group", "limit", "offset", "distinct", "having")):
            return "the fragment groups or limits its rows"
        if self._depends_on(origin[0], frag):
            return "would make a cycle"
        return None

    def _time_type(self, frag: Fragment, column: exp.Column) -> pa.DataType | None:
        """The Arrow type of the fragment's time column, from the catalog."""
        table = frag.query.args["from_"].this
        info = self.tables.get((table.catalog, table.db, table.name))
        if info is None:
            return None
        for f in info.schema:
            if f.name.lower() == column.name.lower():
                return f.type
        return None

    def _latest_per_key(self, frag: Fragment, join: exp.Join, alias: str) -> Fragment | None:
        """``frag`` rewritten to send the latest row per join key at or before the upper
        bound, if its source's rules take the rewritten query (else a note says why)."""
        assert frag.window is not None
        keys = [
            side
            for c in _conjuncts(join.args.get("on"))
            if isinstance(c, exp.EQ)
            for side in (c.this, c.expression)
            if isinstance(side, exp.Column) and side.table == alias
        ]
        if not keys:
            return None
        inner = with_window(frag.query.copy(), frag.window)
        order = exp.Ordered(this=frag.window.column.copy(), desc=True)
        over = exp.Window(
            this=exp.RowNumber(),
            partition_by=[k.copy() for k in keys],
            order=exp.Order(expressions=[order]),
        )
        inner.select(exp.alias_(over, _ROW_NUMBER, quoted=True), copy=False)
        outer = (
            exp.select(*(exp.column(c, table="__latest", quoted=True).as_(c) for c in frag.columns))
            .from_(inner.subquery("__latest"))
            .where(exp.column(_ROW_NUMBER, table="__latest", quoted=True).eq(1))
        )
        refusal = self.rules[frag.source].refusal(outer)
        if refusal is not None:
            frag.notes.append(f"latest row per key not pushed: {refusal}")
            return None
        latest = Fragment(
            id=frag.id + LATEST,
            source=frag.source,
            query=outer,
            columns=list(frag.columns),
            params=list(frag.params),
            types=dict(frag.types),
        )
        if frag.bind is not None:
            key = exp.column(frag.bind.key_output, table="__latest", quoted=True)
            latest.bind = type(frag.bind)(**{**vars(frag.bind), "key": key})
        return latest


def with_window(query: exp.Select, window: TimeWindow) -> exp.Select:
    """``query`` (a fragment's, mutated) with the window's bounds in its WHERE."""
    if window.upper is not None:
        cmp = exp.LT if window.strict else exp.LTE
        upper = cmp(this=window.column.copy(), expression=exp.Placeholder(this=window.upper))
        query.where(upper, copy=False)
    if window.lower is not None:
        lower = exp.GTE(this=window.column.copy(), expression=exp.Placeholder(this=window.lower))
        query.where(lower, copy=False)
    return query


def apply_windows(fragments: list[Fragment]) -> None:
    """Put each planned window's bounds into its fragment's query (after the sources were
    asked for their estimates, which the unbound window would have skewed)."""
    for frag in fragments:
        if frag.window is not None:
            with_window(frag.query, frag.window)  # type: ignore[arg-type]


def _time_inequality(
    join: exp.Join, alias: str
) -> tuple[exp.Column, exp.Column, bool, bool] | None:
    """(right side's time column, left side's, whether it matches later rows, strict)."""
    for c in _conjuncts(join.args.get("on")):
        if not isinstance(c, (exp.GT, exp.GTE, exp.LT, exp.LTE)):
            continue
        a, b = c.this, c.expression
        if not (isinstance(a, exp.Column) and isinstance(b, exp.Column)):
            return None
        if a.table == alias and b.table != alias:
            # f.ts <= l.ts: f before l
            return a, b, isinstance(c, (exp.GT, exp.GTE)), isinstance(c, (exp.LT, exp.GT))
        if b.table == alias and a.table != alias:
            return b, a, isinstance(c, (exp.LT, exp.LTE)), isinstance(c, (exp.LT, exp.GT))
        return None
    return None


def max_age_of(
    select: exp.Select, alias: str, fcol: exp.Column, lcol: exp.Column, join: exp.Join
) -> timedelta | None:
    """The largest maximum age every use of ``alias``'s columns outside ``join``'s ON is
    guarded by (``CASE WHEN f.ts >= l.ts - INTERVAL … THEN f.x END``), None if any is not."""
    on = join.args.get("on")
    ages: list[timedelta] = []
    for col in select.find_all(exp.Column):
        if col.table != alias or (on is not None and _within(col, on)):
            continue
        if _in_guard(col, fcol, lcol):
            continue  # the time compared in a guard's condition
        age = _guard_age(col, fcol, lcol)
        if age is None:
            return None
        ages.append(age)
    return max(ages) if ages else None


def _within(node: exp.Expression, ancestor: exp.Expression) -> bool:
    parent: Any = node
    while parent is not None:
        if parent is ancestor:
            return True
        parent = parent.parent
    return False


def _in_guard(col: exp.Column, fcol: exp.Column, lcol: exp.Column) -> bool:
    """Whether ``col`` is the time compared in a guard's condition."""
    cond = col.parent
    branch = cond.parent if cond is not None else None
    return (
        isinstance(branch, exp.If)
        and branch.this is cond
        and _condition_age(cond, fcol, lcol) is not None
    )


def _guard_age(col: exp.Column, fcol: exp.Column, lcol: exp.Column) -> timedelta | None:
    """The age of the CASE that returns ``col`` only when recent enough, else None."""
    branch = col.parent
    case = branch.parent if isinstance(branch, exp.If) else None
    if not isinstance(case, exp.Case) or branch.args.get("true") is not col:
        return None
    if len(case.args.get("ifs") or []) != 1 or case.args.get("default") is not None:
        return None
    return _condition_age(branch.this, fcol, lcol)


def _condition_age(cond: exp.Expression, fcol: exp.Column, lcol: exp.Column) -> timedelta | None:
    """The age in ``f.ts >= l.ts - INTERVAL …`` (or ``l.ts - INTERVAL … <= f.ts``)."""
    if isinstance(cond, exp.GTE):
        ts, bound = cond.this, cond.expression
    elif isinstance(cond, exp.LTE):
        ts, bound = cond.expression, cond.this
    else:
        return None
    if not (_same(ts, fcol) and isinstance(bound, exp.Sub) and _same(bound.this, lcol)):
        return None
    return _interval_value(bound.expression)


def _same(a: exp.Expression, b: exp.Column) -> bool:
    return isinstance(a, exp.Column) and (a.table, a.name) == (b.table, b.name)


def _interval_value(node: exp.Expression) -> timedelta | None:
    if not isinstance(node, exp.Interval) or not isinstance(node.this, exp.Literal):
        return None
    unit = node.args.get("unit")
    step = _UNITS.get(unit.name.upper().rstrip("S")) if unit is not None else None
    try:
        return step * float(node.this.this) if step is not None else None
    except ValueError:
        return None
