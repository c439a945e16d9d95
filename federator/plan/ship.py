"""Ship the small side to the big source: a query over two fragments whose residual the big
side's source can run itself is sent there whole, the small side's rows going along as array
parameters (``unnest($1::bigint[], $2::text[]) AS f0(k, name)`` on PostgreSQL), so the big
source joins and aggregates with its own indexes and sends only the answer.

Planned here (:func:`plan_ship`), when the rule set of the big side's source has the
``rows_parameter`` capability and accepts the whole query; decided at run time by the executor
on the small side's actual rows (at most ``[planner] ship_max_rows``), whose Arrow types then
give the arrays' types (:func:`shipped_fragment`). Otherwise the plan runs as split.

>>> ship = ShipSmallSide("f0", "f1", "pg", exp.select("*").from_("f0"), ["k"], 10, "")
>>> shipped_fragment(ship, pa.schema([("k", pa.int64())])).sql()
'SELECT * FROM UNNEST(CAST(:__rows0 AS ARRAY<BIGINT>)) AS f0(k)'
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
from sqlglot import exp

from federator.catalog import arrow_to_sql_type
from federator.plan.model import Fragment
from federator.plan.settings import PlannerSettings
from federator.rules import RuleSet

ROWS_PARAM = "__rows"  # parameters __rows0, __rows1 …: the small side's columns as arrays


@dataclass
class ShipSmallSide:
    """The plan's residual on the big side's source, the small side as a rows parameter."""

    small: str  # the fragment whose rows are sent
    big: str  # the fragment whose source runs the rest
    source: str
    query: exp.Query  # the residual, ``big`` inlined, ``small`` still a table named by its id
    columns: list[str]  # the small side's columns, in the order of the arrays
    max_rows: int
    reason: str


def plan_ship(
    fragments: list[Fragment],
    residual: exp.Query | None,
    rules: dict[str, RuleSet],
    settings: PlannerSettings,
) -> ShipSmallSide | None:
    """The shipped form of a two-fragment plan, or None where it does not apply."""
    if residual is None or len(fragments) != 2 or settings.ship_max_rows <= 0:
        return None
    small, big = sorted(fragments, key=_unbound_rows)
    s, b = _unbound_rows(small), _unbound_rows(big)
    if not s or s > settings.ship_max_rows or b < settings.bind_ratio * s:
        return None
    if not rules[big.source].can("rows_parameter") or big.as_written:
        return None
    if small.bind is not None or small.top_k is not None or big.top_k is not None:
        return None
    if {t.name for t in residual.find_all(exp.Table)} != {small.id, big.id} or any(
        t.db or t.catalog for t in residual.find_all(exp.Table)
    ):
        return None
    query = residual.copy()
    for table in list(query.find_all(exp.Table)):
        if table.name == big.id:
            inner = big.query.copy()
            alias = exp.TableAlias(this=exp.to_identifier(table.alias_or_name))
            table.replace(exp.Subquery(this=inner, alias=alias))
    ship = ShipSmallSide(
        small.id,
        big.id,
        big.source,
        query,
        list(small.columns),
        settings.ship_max_rows,
        f"{small.id} estimated {s:,} rows <= ship_max_rows {settings.ship_max_rows:,}, "
        f"{big.id} {b:,}: {small.id}'s rows go to {big.source} as arrays and {big.source} "
        "runs the whole query, when at most that many rows come",
    )
    probe = pa.schema([(c, pa.string()) for c in ship.columns])  # types known at run time
    if rules[big.source].refusal(shipped_fragment(ship, probe)) is not None:
        return None
    return ship


def _unbound_rows(frag: Fragment) -> int:
    """The fragment's estimate before a bind narrowed it (shipped, it runs unbound)."""
    rows = frag.bind.consumer_rows if frag.bind is not None else None
    return rows or frag.estimated_rows or 0


def shipped_fragment(ship: ShipSmallSide, small_schema: pa.Schema) -> exp.Query:
    """``ship.query`` with the small side's table made ``unnest`` of one array parameter per
    column, typed from the rows that came (``small_schema``)."""
    query = ship.query.copy()
    columns = []
    for i, name in enumerate(ship.columns):
        array = exp.DataType.build(_sql_type(small_schema.field(name).type))
        typed = exp.DataType(this=exp.DataType.Type.ARRAY, expressions=[array], nested=True)
        columns.append(exp.Cast(this=exp.Placeholder(this=f"{ROWS_PARAM}{i}"), to=typed))
    for table in list(query.find_all(exp.Table)):
        if table.name == ship.small:
            alias = exp.TableAlias(
                this=exp.to_identifier(table.alias_or_name),
                columns=[exp.to_identifier(c) for c in ship.columns],
            )
            table.replace(exp.Unnest(expressions=columns, alias=alias))
    return query


def shippable(schema: pa.Schema) -> bool:
    """Whether every column of the small side has an array type to travel as."""
    try:
        for f in schema:
            _sql_type(f.type)
    except TypeError:
        return False
    return True


def _sql_type(t: pa.DataType) -> str:
    if not any(is_type(t) for is_type in _ARRAY_TYPES):
        raise TypeError(f"no array type for {t}")
    return arrow_to_sql_type(t)


_ARRAY_TYPES = (
    pa.types.is_integer,
    pa.types.is_floating,
    pa.types.is_decimal,
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_date,
    pa.types.is_boolean,
    pa.types.is_timestamp,
)
