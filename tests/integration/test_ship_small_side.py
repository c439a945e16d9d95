"""The small side shipped to the big source (federator.plan.ship), against one PostgreSQL:
TPC-H Q4 on the split sends the quarter's orders (MariaDB) to PostgreSQL as arrays, and
PostgreSQL answers the whole query; when more rows come than allowed, the plan runs as split
with the rows already fetched. Either way the answer is the truth database's."""

from __future__ import annotations

import dataclasses

import pytest

import federator
from federator.execute.executor import Execution

from .tpch import arrow_answer, compare, federated_names


@pytest.fixture(scope="module")
def shipping(tpch):
    fed = federator.connect({**tpch.catalog("split"), "planner": {"ship_max_rows": 100_000}})
    yield fed
    fed.close()


def test_q04_ships_the_orders_to_postgresql(tpch, shipping) -> None:
    query = tpch.queries["q04"]
    res = shipping.sql(query.sql(federated_names("split")))
    assert compare(query, tpch.truth["q04"], arrow_answer(res.to_arrow())) is None
    explained = res.explain(analyze=True)
    assert "Ship small side: f0 estimated" in explained
    ex = res.last_execution
    line = next(f for f in ex.plan.fragments if f.source == "pg")
    orders = next(f for f in ex.plan.fragments if f.source == "my")
    assert ex.stats[line.id].note.startswith(f"shipped: {orders.id}'s {ex.stats[orders.id].rows:,}")
    assert "FROM UNNEST(CAST($1 AS BIGINT[]), CAST($2 AS TEXT[]))" in ex.plan.requests[line.id].text
    assert ex.stats[line.id].rows == len(tpch.truth["q04"].rows)  # only the answer moved
    assert ex.residual_stats.rows == 0


def test_more_rows_than_allowed_run_the_plan_as_split(tpch, shipping) -> None:
    query = tpch.queries["q04"]
    plan = shipping._loop.run(shipping.planner.plan(query.sql(federated_names("split")), {}))
    plan = dataclasses.replace(plan, ship=dataclasses.replace(plan.ship, max_rows=1))
    ex = Execution(plan, shipping.catalog, {})
    table = shipping._loop.run(ex.to_table())
    assert compare(query, tpch.truth["q04"], arrow_answer(table)) is None
    assert ex.stats[plan.ship.small].note.startswith("not shipped to pg: ")
    assert ex.residual_stats.rows == len(tpch.truth["q04"].rows)
