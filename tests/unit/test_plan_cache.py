"""Plan once per query text: plans kept per normalized text and catalog version, re-bound to new
parameter values without re-planning; identical plannings at the same time shared; what the
result cache derives from a plan (shape, table references) computed once per plan."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import federator
from federator.plan.planner import Planner, normalized_text

QUERY = "SELECT id, name FROM shop.users WHERE id >= :lo ORDER BY id"
JOIN = (
    "SELECT u.name, p.category, sum(o.qty) AS qty FROM shop.orders AS o JOIN shop.users AS u "
    "ON u.id = o.user_id JOIN lake.products AS p ON p.id = o.product_id "
    "WHERE p.category = :cat GROUP BY u.name, p.category ORDER BY u.name"
)


@pytest.fixture
def counted(fed: federator.Federation, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The query texts the planner parsed and planned (each entry: one full planning)."""
    planned: list[str] = []
    original = Planner._plan

    async def plan(self: Planner, query: Any, params: Any) -> Any:
        planned.append(query if isinstance(query, str) else query.sql())
        return await original(self, query, params)

    monkeypatch.setattr(Planner, "_plan", plan)
    return planned


def truth(shop_db: Path, lo: int) -> list[tuple[int, str]]:
    with sqlite3.connect(shop_db) as db:
        return db.execute("SELECT id, name FROM users WHERE id >= ? ORDER BY id", (lo,)).fetchall()


def rows(result: federator.Result) -> list[tuple[Any, ...]]:
    return [tuple(r.values()) for r in result.to_arrow().to_pylist()]


def test_new_parameter_values_rebind_without_replanning(
    fed: federator.Federation, counted: list[str], shop_db: Path
) -> None:
    first = fed.sql(QUERY, {"lo": 2})
    second = fed.sql(QUERY, {"lo": 5})
    assert rows(first) == truth(shop_db, 2) and rows(second) == truth(shop_db, 5)
    assert len(counted) == 1
    assert second.plan.fragments is first.plan.fragments  # the planned trees, shared
    assert second.plan.memo is first.plan.memo
    assert "$1 = 5" in second.explain() and "$1 = 2" in first.explain()


def test_texts_differing_only_in_layout_share_a_plan(
    fed: federator.Federation, counted: list[str], shop_db: Path
) -> None:
    laid_out = "SELECT id,  name\n  FROM shop.users\n\tWHERE id >= :lo   ORDER BY id  "
    assert rows(fed.sql(QUERY, {"lo": 3})) == rows(fed.sql(laid_out, {"lo": 3}))
    assert rows(fed.sql(laid_out, {"lo": 3})) == truth(shop_db, 3)
    assert len(counted) == 1


def test_white_space_inside_quotes_is_part_of_the_text(
    fed: federator.Federation, counted: list[str]
) -> None:
    one = fed.sql("SELECT name FROM shop.users WHERE name = 'a  b'").to_arrow()
    two = fed.sql("SELECT name FROM shop.users WHERE name = 'a b'").to_arrow()
    assert one.num_rows == 0 and two.num_rows == 0
    assert len(counted) == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT  a ,\n b FROM t ", "SELECT a , b FROM t"),
        ("SELECT 'x  y', \"c  d\", `e  f` FROM t", "SELECT 'x  y', \"c  d\", `e  f` FROM t"),
        ("SELECT 'it''s  x'  FROM t", "SELECT 'it''s  x' FROM t"),
        ("SELECT 1 -- note  here\nFROM t", "SELECT 1 -- note  here\n FROM t"),
        ("SELECT /* a  b */  1", "SELECT /* a  b */ 1"),
        ("SELECT E'a\\'  b'  FROM t", "SELECT E'a\\'  b'  FROM t"),  # backslash: kept as is
        ("SELECT $$a  b$$  FROM t", "SELECT $$a  b$$  FROM t"),  # dollar quotes: kept as is
        ("SELECT 'open  quote  FROM t", "SELECT 'open  quote  FROM t"),  # unclosed: as is
    ],
)
def test_normalized_text(text: str, expected: str) -> None:
    assert normalized_text(text) == expected


def test_a_comment_does_not_swallow_the_next_line(
    fed: federator.Federation, counted: list[str]
) -> None:
    assert fed.sql("SELECT id FROM shop.users -- all\nWHERE id = 1").to_arrow().num_rows == 1
    assert fed.sql("SELECT id FROM shop.users -- all WHERE id = 1").to_arrow().num_rows == 6
    assert len(counted) == 2


def test_catalog_change_plans_again(fed: federator.Federation, counted: list[str]) -> None:
    fed.sql(QUERY, {"lo": 1})
    fed.catalog.version += 1  # what a refresh of the catalog does
    fed.sql(QUERY, {"lo": 1})
    assert len(counted) == 2


def test_parameter_names_are_part_of_the_key(fed: federator.Federation, counted: list[str]) -> None:
    fed.sql(QUERY, {"lo": 1})
    fed.sql(QUERY, {"lo": 1, "unused": 2})
    assert len(counted) == 2


def test_identical_concurrent_plannings_are_shared(
    fed: federator.Federation, counted: list[str], shop_db: Path
) -> None:
    async def run() -> list[federator.Result]:
        return await asyncio.gather(*(fed.sql_async(QUERY, {"lo": i}) for i in range(1, 31)))

    results = fed._loop.run(run())
    assert len(counted) == 1
    assert [rows(r) for r in results[:3]] == [truth(shop_db, i) for i in (1, 2, 3)]


def test_a_failed_planning_fails_every_waiter_and_is_not_kept(
    fed: federator.Federation, counted: list[str]
) -> None:
    async def run() -> list[Any]:
        bad = "SELECT nme FROM shop.users"
        return await asyncio.gather(*(fed.sql_async(bad) for _ in range(5)), return_exceptions=True)

    errors = fed._loop.run(run())
    assert all(isinstance(e, federator.errors.UnknownColumnError) for e in errors), errors
    with pytest.raises(federator.errors.UnknownColumnError):
        fed.sql("SELECT nme FROM shop.users")
    assert len(counted) == 2  # one shared planning, then one more: failures are not kept


def test_a_cancelled_waiter_leaves_the_shared_planning_to_the_others(
    fed: federator.Federation, counted: list[str], shop_db: Path
) -> None:
    async def run() -> federator.Result:
        first = asyncio.ensure_future(fed.sql_async(QUERY, {"lo": 4}))
        second = asyncio.ensure_future(fed.sql_async(QUERY, {"lo": 4}))
        await asyncio.sleep(0)
        first.cancel()
        return await second

    assert rows(fed._loop.run(run())) == truth(shop_db, 4)
    assert len(counted) == 1


@pytest.fixture
def cached(shop_db: Path, lake_dir: Path) -> Iterator[federator.Federation]:
    catalog = {
        "sources": {
            "shop": {"kind": "sqlite", "path": str(shop_db)},
            "lake": {"kind": "files", "path": str(lake_dir)},
        },
        "cache": {"enabled": True, "tokens": False, "join_threshold": 2},
    }
    with federator.connect(catalog) as fed:
        yield fed


def test_join_shape_derived_once_per_plan(cached: federator.Federation) -> None:
    first = cached.sql(JOIN, {"cat": "books"})
    uncached = first.to_arrow()
    facts = first.plan.memo["cache.join"]
    for cat in ("books", "games", "books"):
        result = cached.sql(JOIN, {"cat": cat})
        answer = result.to_arrow()
        assert result.plan.memo["cache.join"] is facts  # not derived again per binding
    assert answer.equals(uncached)
    shape = cached.cache.stats()["shapes"][facts.shape_id]
    assert shape["seen"] == 4 and shape["hits"] == 1  # the second "books" run was a hit


def test_join_shape_counters_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from federator.cache import joins

    monkeypatch.setattr(joins, "MAX_SHAPES", 3)
    cache = joins.JoinCache.__new__(joins.JoinCache)
    cache._shapes = {}
    for i in range(5):
        cache._shape_stats(f"s{i}", f"shape {i}").seen += 1
    cache._shape_stats("s2", "shape 2").seen += 1
    assert list(cache._shapes) == ["s3", "s4", "s2"]
    assert cache._shapes["s2"].seen == 2
