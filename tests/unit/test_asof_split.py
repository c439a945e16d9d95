"""Planning ``ASOF [LEFT] JOIN`` (offline, SQLite sources): the as-of match runs in the
residual, each side is a fragment of its own, the feature side takes the label side's keys,
and a filter on the feature side stays after the match. Answers are checked against DuckDB
running the same query over the same rows."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import duckdb
import federator.rules.graph
import pyarrow as pa
import pytest
from federator.rules import rule_set_for
from sqlglot import exp, parse_one

import federator

LABELS = [(1, 1, 10), (2, 1, 20), (3, 2, 5), (4, None, 7), (5, 3, 1), (6, 7, 3)]
FEATURES = [(u, t, f"{u}@{t}") for u in range(400) for t in range(0, 30, 3)] + [
    (None, 1, "null-key"),
    (1, 10, "x"),  # at label 1's time exactly (a tie): newer than 1@9
]


def _write(path: Path, with_labels: bool) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE f (user_id INTEGER, ts INTEGER, v TEXT)")
    conn.executemany("INSERT INTO f VALUES (?, ?, ?)", FEATURES)
    if with_labels:
        conn.execute("CREATE TABLE l (id INTEGER PRIMARY KEY, user_id INTEGER, ts INTEGER)")
        conn.executemany("INSERT INTO l VALUES (?, ?, ?)", LABELS)
    conn.commit()
    conn.close()


@pytest.fixture
def fed(tmp_path: Path) -> Iterator[federator.Federation]:
    _write(tmp_path / "a.db", with_labels=True)
    _write(tmp_path / "b.db", with_labels=False)
    catalog = {
        "sources": {
            "a": {"kind": "sqlite", "path": str(tmp_path / "a.db")},
            "b": {"kind": "sqlite", "path": str(tmp_path / "b.db")},
        }
    }
    with federator.connect(catalog) as f:
        yield f


def _arrow(rows: list[tuple[object, ...]], names: list[str]) -> pa.Table:
    """Rows as an Arrow table (DuckDB's executemany inserts row by row: seconds for these)."""
    return pa.Table.from_pylist([dict(zip(names, row, strict=True)) for row in rows])


def _duckdb(sql: str) -> list[tuple[object, ...]]:
    con = duckdb.connect()
    con.register("l", _arrow(LABELS, ["id", "user_id", "ts"]))
    con.register("f", _arrow(FEATURES, ["user_id", "ts", "v"]))
    rows = con.execute(sql.replace("a.l", "l").replace("b.f", "f").replace("a.f", "f")).fetchall()
    con.close()
    return sorted(rows, key=repr)


def _answer(fed: federator.Federation, sql: str) -> list[tuple[object, ...]]:
    return sorted((tuple(r.values()) for r in fed.sql(sql).to_arrow().to_pylist()), key=repr)


def _parts(plan: str) -> tuple[list[str], str]:
    fragments, residual = plan.split("Residual")
    return fragments.split("Fragment ")[1:], residual


@pytest.mark.parametrize("join", ["ASOF JOIN", "ASOF LEFT JOIN"])
@pytest.mark.parametrize("features", ["b.f", "a.f"])
def test_asof_join_is_matched_in_the_residual_with_the_keys_bound(
    fed: federator.Federation, join: str, features: str
) -> None:
    sql = (
        f"SELECT l.id, f.v FROM a.l AS l {join} {features} AS f"
        " ON l.user_id = f.user_id AND l.ts >= f.ts"
    )
    plan = fed.explain(sql)
    fragments, residual = _parts(plan)
    assert len(fragments) == 2 and f"{join} f1 AS f" in residual, plan
    labels, feature = fragments
    assert "ASOF" not in labels + feature and '"f"' not in labels, plan
    assert "bind join" in feature and "distinct f0.user_id" in feature, plan
    assert _answer(fed, sql) == _duckdb(sql)


def test_a_where_on_the_feature_side_stays_after_the_match(fed: federator.Federation) -> None:
    sql = (
        "SELECT l.id, f.v FROM a.l AS l ASOF JOIN b.f AS f ON l.user_id = f.user_id"
        " AND l.ts >= f.ts WHERE f.v <> 'x' AND l.id > 1"
    )
    labels, feature = _parts(fed.explain(sql))[0]
    assert '"l"."id" > 1' in labels and "<> 'x'" not in feature
    assert _answer(fed, sql) == _duckdb(sql)
    assert (1, "1@9") not in _answer(fed, sql.replace("l.id > 1", "TRUE"))


@pytest.mark.parametrize("kind", ["postgres", "mysql", "sqlite", "files", "mongo", "neo4j"])
def test_no_source_takes_an_asof_join(kind: str) -> None:
    query = parse_one("SELECT * FROM l ASOF JOIN f ON l.k = f.k AND l.t >= f.t", read="duckdb")
    join = query.find(exp.Join)
    assert join is not None
    rules = rule_set_for(kind)
    assert rules.rules and rules.refusal(join) is not None


@pytest.mark.parametrize(
    ("on", "says"),
    [
        ("USING (user_id, ts)", "USING (…) is not supported"),
        ("ON l.user_id = f.user_id", "exactly one time inequality in its ON (found 0)"),
        ("ON l.user_id = f.user_id AND l.ts >= f.ts AND l.id < f.ts", "(found 2)"),
    ],
)
def test_an_asof_join_without_one_time_inequality_is_refused_by_name(
    fed: federator.Federation, on: str, says: str
) -> None:
    with pytest.raises(federator.UnsupportedError, match=re.escape(says)):
        fed.sql(f"SELECT l.id, f.v FROM a.l AS l ASOF LEFT JOIN b.f AS f {on}")
