"""SQLite binds ``Decimal`` parameters (issue 19: "type 'decimal.Decimal' is not supported") as
the number SQLite stores for a DECIMAL value; each answer is checked against SQLite itself
running the same query with the value written as a literal."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import federator

ROWS = [(1, 9.99, 2), (2, 10.5, 3), (3, 20, 4), (4, None, 5), (5, -0.01, 1)]


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dec") / "t.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t (id INTEGER, price DECIMAL(10,2), qty INTEGER)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)", ROWS)
    con.commit()
    con.close()
    return path


def _truth(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


CASES = [  # federated query, parameters, the same query on SQLite with literals
    (
        "SELECT id FROM s.t WHERE price = :p",
        {"p": Decimal("9.99")},
        "SELECT id FROM t WHERE price = 9.99",
    ),
    (
        "SELECT id FROM s.t WHERE qty * 2 > :p ORDER BY id",
        {"p": Decimal("5")},
        "SELECT id FROM t WHERE qty * 2 > 5 ORDER BY id",
    ),
    (
        "SELECT id FROM s.t WHERE price IN (:a, :b) ORDER BY id",
        {"a": Decimal("20"), "b": Decimal("10.50")},
        "SELECT id FROM t WHERE price IN (20, 10.50) ORDER BY id",
    ),
    (
        "SELECT id FROM s.t WHERE price < :p ORDER BY id",
        {"p": Decimal("-0.001")},
        "SELECT id FROM t WHERE price < -0.001 ORDER BY id",
    ),
    (
        "SELECT id FROM s.t WHERE price + :p > 20 ORDER BY id",
        {"p": Decimal("0.005")},
        "SELECT id FROM t WHERE price + 0.005 > 20 ORDER BY id",
    ),
]


@pytest.mark.parametrize(("sql", "params", "truth"), CASES)
def test_decimal_parameter(db: Path, sql: str, params: dict[str, Any], truth: str) -> None:
    with federator.connect({"sources": {"s": {"kind": "sqlite", "path": str(db)}}}) as fed:
        got = [tuple(r.values()) for r in fed.sql(sql, params).to_arrow().to_pylist()]
    assert got == _truth(db, truth)
    assert got  # the cases select rows: an empty answer would prove nothing


def test_decimal_parameter_in_a_cross_source_query(db: Path, tmp_path: Path) -> None:
    """The same parameter used by SQLite and by the residual (a second SQLite file)."""
    other = tmp_path / "o.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE o (id INTEGER, w INTEGER)")
    con.executemany("INSERT INTO o VALUES (?, ?)", [(1, 10), (2, 20), (3, 30)])
    con.commit()
    con.close()
    sources = {
        "s": {"kind": "sqlite", "path": str(db)},
        "x": {"kind": "sqlite", "path": str(other)},
    }
    with federator.connect({"sources": sources}) as fed:
        got = fed.sql(
            "SELECT t.id FROM s.t t JOIN x.o o ON o.id = t.id WHERE t.price >= :p ORDER BY t.id",
            {"p": Decimal("10.5")},
        ).to_arrow()
    assert got.column("id").to_pylist() == [2, 3]  # price 10.5 and 20, both in o
