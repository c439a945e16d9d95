"""Deeply nested queries: up to MAX_NESTING levels plan and answer right (single source and
across sources, where DuckDB runs the nested residual); one level more, and 10,000 levels, are
a SQLSyntaxError naming the line and column — never a RecursionError, never a long wait."""

from __future__ import annotations

import sqlite3
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import federator
from federator.sql.depth import MAX_ARRAY_NESTING, MAX_NESTING
from federator.sql.dialect import parse

CROSS = " FROM s.t JOIN o.v ON t.x = v.x"


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[federator.Federation]:
    d = tmp_path_factory.mktemp("depth")
    for name, table in (("s.db", "t"), ("o.db", "v")):
        with sqlite3.connect(d / name) as db:
            db.execute(f"CREATE TABLE {table} (x INTEGER)")
            db.execute(f"INSERT INTO {table} VALUES (3)")
    catalog = {
        "sources": {
            "s": {"kind": "sqlite", "path": str(Path(d, "s.db"))},
            "o": {"kind": "sqlite", "path": str(Path(d, "o.db"))},
        }
    }
    with federator.connect(catalog) as f:
        yield f


# Each shape nests its expression n levels deep, and the value it gives for x = 3 (hand-computed).
SHAPES: dict[str, tuple[Callable[[int], str], Callable[[int], int]]] = {
    "parentheses": (lambda n: "(" * n + "t.x" + ")" * n, lambda n: 3),
    "unary minus": (lambda n: "-(" * n + "t.x" + ")" * n, lambda n: 3 * (-1) ** n),
    "function calls": (lambda n: "abs(" * n + "t.x" + ")" * n, lambda n: 3),
    "arithmetic": (lambda n: "(1 + " * n + "t.x" + ")" * n, lambda n: 3 + n),
    "CASE": (lambda n: "CASE WHEN t.x = 3 THEN " * n + "t.x" + " END" * n, lambda n: 3),
    "scalar subqueries": (lambda n: "(SELECT " * n + "t.x" + ")" * n, lambda n: 3),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_max_nesting_answers_across_sources(fed: federator.Federation, shape: str) -> None:
    build, value = SHAPES[shape]
    limit = sys.getrecursionlimit()
    table = fed.sql(f"SELECT {build(MAX_NESTING)} AS y{CROSS}").to_arrow()
    assert table.to_pylist() == [{"y": value(MAX_NESTING)}]
    assert sys.getrecursionlimit() == limit  # raised while planning only


def test_max_nesting_on_one_source(fed: federator.Federation) -> None:
    n = MAX_NESTING
    where = "(" * n + "x = 3" + ")" * n
    assert fed.sql(f"SELECT x FROM s.t WHERE {where}").to_arrow().to_pylist() == [{"x": 3}]


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 10_000])
def test_deeper_is_a_syntax_error(fed: federator.Federation, shape: str, depth: int) -> None:
    build, _ = SHAPES[shape]
    started = time.monotonic()
    with pytest.raises(federator.SQLSyntaxError, match=r"nests more than 100 levels") as info:
        fed.sql(f"SELECT {build(depth)} AS y{CROSS}")
    assert info.value.line == 1 and info.value.col is not None
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(
    "expr",
    ["NOT " * 10_000 + "t.x = 3", "- " * 10_000 + "t.x"],
    ids=["NOT chain", "unary minus chain"],
)
def test_long_unary_chains_are_a_syntax_error(fed: federator.Federation, expr: str) -> None:
    with pytest.raises(federator.SQLSyntaxError, match="nests too deeply"):
        fed.sql(f"SELECT t.x{CROSS} WHERE {expr}")


def test_long_flat_chains_still_work(fed: federator.Federation) -> None:
    terms = 500
    query = f"SELECT t.x{' + 1' * terms} AS y{CROSS} WHERE {' AND '.join(['t.x = 3'] * terms)}"
    assert fed.sql(query).to_arrow().to_pylist() == [{"y": 3 + terms}]


def test_array_constructors_nest_to_their_own_limit() -> None:
    ok = MAX_ARRAY_NESTING
    parse("SELECT " + "ARRAY[" * ok + "1" + "]" * ok)
    parse("SELECT " + "ARRAY[1, " * ok + "2" + "]" * ok)
    for depth in (ok + 1, 10_000):
        started = time.monotonic()
        with pytest.raises(federator.SQLSyntaxError, match="ARRAY"):
            parse("SELECT " + "ARRAY[1, " * depth + "2" + "]" * depth)
        assert time.monotonic() - started < 5
    parse("SELECT " + "[" * 50 + "1" + "]" * 50)  # plain brackets count with parentheses


def test_error_points_at_the_first_token_too_deep() -> None:
    sql = "SELECT\n  " + "(" * (MAX_NESTING + 5) + "1" + ")" * (MAX_NESTING + 5)
    with pytest.raises(federator.SQLSyntaxError) as info:
        parse(sql)
    assert (info.value.line, info.value.col) == (2, 2 + MAX_NESTING + 1)
