"""Where a bind on a derived table's column goes: under its GROUP BY when the column is a group
key and filtering first keeps exactly the same groups, else on the fragment's own query."""

from __future__ import annotations

import pytest
from sqlglot import exp, parse_one

from federator.plan.model import grouped_bind_site

INNER = "SELECT t.a AS k, SUM(t.b) AS n FROM s.t AS t {where}GROUP BY t.a{tail}"


def _site(sql: str, column: str = "k") -> tuple[bool, str]:
    tree = parse_one(sql)
    site, key = grouped_bind_site(tree, exp.column(column, table="g"))
    return site is not tree, key.sql()


def test_group_key_goes_under_the_group_by() -> None:
    assert _site(f"SELECT g.k, g.n FROM ({INNER.format(where='', tail='')}) AS g") == (True, "t.a")


def test_two_levels_of_grouping_take_the_innermost() -> None:
    inner = INNER.format(where="", tail="")
    sql = f"SELECT g.k FROM (SELECT d.k AS k FROM ({inner}) AS d GROUP BY d.k) AS g"
    tree = parse_one(sql)
    site, key = grouped_bind_site(tree, exp.column("k", table="g"))
    assert key.sql() == "t.a" and site.find(exp.Subquery) is None


@pytest.mark.parametrize(
    "sql",
    [
        # an aggregate, not a group key
        "SELECT g.n FROM (" + INNER.format(where="", tail="") + ") AS g",
        # a LIMIT keeps other groups once filtered first
        "SELECT g.k FROM (" + INNER.format(where="", tail=" LIMIT 3") + ") AS g",
        # a window reads across groups
        "SELECT g.k FROM (SELECT t.a AS k, ROW_NUMBER() OVER () AS n FROM s.t AS t "
        "GROUP BY t.a) AS g",
        # a join beside the derived table
        "SELECT g.k FROM (" + INNER.format(where="", tail="") + ") AS g JOIN s.u AS u ON u.x = g.k",
        # no GROUP BY
        "SELECT g.k FROM (SELECT t.a AS k FROM s.t AS t) AS g",
    ],
)
def test_stays_on_the_fragment(sql: str) -> None:
    column = "n" if sql.startswith("SELECT g.n") else "k"
    assert _site(sql, column) == (False, f"g.{column}")
