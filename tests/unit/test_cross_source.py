"""SQLite joined with files: cross-source queries answer as one database holding every table."""

from __future__ import annotations

import re
import sqlite3

import pytest
from _data import normalize, rows_of

import federator

# Federated SQL; the truth runs the same text with "shop." and "lake." removed.
QUERIES = [
    # join + filter on both sides
    "SELECT u.name, p.name AS product, o.qty FROM shop.orders AS o "
    "JOIN shop.users AS u ON u.id = o.user_id JOIN lake.products AS p ON p.id = o.product_id "
    "WHERE p.category = 'books' AND o.status = 'shipped' ORDER BY o.id",
    # aggregate over the join
    "SELECT p.category, u.country, count(*) AS n, sum(o.qty * p.price) AS revenue "
    "FROM shop.orders AS o JOIN shop.users AS u ON u.id = o.user_id "
    "JOIN lake.products AS p ON p.id = o.product_id WHERE o.status <> 'cancelled' "
    "GROUP BY p.category, u.country HAVING count(*) > 1 "
    "ORDER BY revenue DESC, p.category, u.country",
    # left join across sources: users without events still appear
    "SELECT u.id, count(e.kind) AS events FROM shop.users AS u "
    "LEFT JOIN lake.events AS e ON e.user_id = u.id AND e.kind = 'click' "
    "GROUP BY u.id ORDER BY u.id",
    # left join with a filter on the nullable side in WHERE
    "SELECT p.name FROM lake.products AS p LEFT JOIN shop.orders AS o ON o.product_id = p.id "
    "AND o.status = 'cancelled' WHERE o.id IS NULL ORDER BY p.name",
    # IN subquery on the other source
    "SELECT name FROM shop.users WHERE id IN (SELECT user_id FROM lake.events WHERE kind = 'cart') "
    "ORDER BY name",
    # a CTE per source, joined in the residual
    "WITH spend AS (SELECT user_id, sum(qty) AS q FROM shop.orders GROUP BY user_id), "
    "seen AS (SELECT user_id, count(*) AS n FROM lake.events GROUP BY user_id) "
    "SELECT spend.user_id, spend.q, seen.n FROM spend JOIN seen ON seen.user_id = spend.user_id "
    "ORDER BY spend.user_id",
    # a CTE that itself joins the two sources, joined again with a source table
    "WITH spent AS (SELECT o.user_id, sum(o.qty * p.price) AS total FROM shop.orders AS o "
    "JOIN lake.products AS p ON p.id = o.product_id GROUP BY o.user_id) "
    "SELECT u.name, spent.total FROM spent JOIN shop.users AS u ON u.id = spent.user_id "
    "ORDER BY spent.total DESC, u.name",
    # a cross-source CTE referenced twice
    "WITH bought AS (SELECT o.user_id, p.category FROM shop.orders AS o "
    "JOIN lake.products AS p ON p.id = o.product_id) "
    "SELECT a.user_id, count(*) AS pairs FROM bought AS a JOIN bought AS b "
    "ON a.user_id = b.user_id AND a.category < b.category GROUP BY a.user_id ORDER BY a.user_id",
    # three-way, with a rating average from the Arrow file
    "SELECT p.name, avg(r.stars) AS stars, count(DISTINCT o.user_id) AS buyers "
    "FROM lake.products AS p JOIN lake.ratings AS r ON r.product_id = p.id "
    "JOIN shop.orders AS o ON o.product_id = p.id GROUP BY p.name ORDER BY p.name",
    # union across sources
    "SELECT id FROM shop.users WHERE country = 'US' UNION SELECT user_id FROM lake.events "
    "WHERE kind = 'cart' ORDER BY id",
    # order by + limit after a cross-source join
    "SELECT o.id, p.price FROM shop.orders AS o JOIN lake.products AS p ON p.id = o.product_id "
    "ORDER BY p.price DESC, o.id LIMIT 5",
]


def _truth_sql(query: str) -> str:
    return re.sub(r"\b(shop|lake)\.", "", query)


@pytest.mark.parametrize("query", QUERIES)
def test_matches_one_database(
    fed: federator.Federation, truth: sqlite3.Connection, query: str
) -> None:
    got = fed.sql(query).to_arrow()
    want = truth.execute(_truth_sql(query)).fetchall()
    assert normalize(rows_of(got), 4) == normalize(want, 4)


def test_cross_source_plan_has_fragments_and_residual(fed: federator.Federation) -> None:
    text = fed.explain(QUERIES[1])
    assert "2 fragment(s), residual on DuckDB" in text
    assert "source shop (sqlite)" in text and "source lake (files)" in text
    # Each side got its own filter; the join and aggregate run in the residual.
    assert '"o"."status" <> \'cancelled\'' in text
    assert "Residual (DuckDB over fragment results):" in text
    assert "GROUP BY" in text.split("Residual")[1]


def test_bind_join_is_chosen_and_runs(fed: federator.Federation, truth: sqlite3.Connection) -> None:
    q = (
        "SELECT p.name, count(*) AS n FROM lake.products AS p JOIN shop.orders AS o "
        "ON o.product_id = p.id WHERE p.category = 'games' GROUP BY p.name ORDER BY p.name"
    )
    result = fed.sql(q)
    shop = next(f for f in result.plan.fragments if f.source == "shop")
    assert shop.bind is not None and shop.bind.key_output == "product_id"
    text = result.explain()
    assert '"o"."product_id" IN (?, ... up to' in text
    assert "bind join:" in text
    assert normalize(rows_of(result.to_arrow())) == normalize(
        truth.execute(_truth_sql(q)).fetchall()
    )
    analyzed = result.explain(analyze=True)
    assert "bound keys 2" in analyzed  # the two games
    assert "actual rows" in analyzed


def test_bind_join_with_no_keys_returns_nothing(fed: federator.Federation) -> None:
    q = (
        "SELECT p.name, o.id FROM lake.products AS p JOIN shop.orders AS o "
        "ON o.product_id = p.id WHERE p.category = 'no such category'"
    )
    result = fed.sql(q)
    assert any(f.bind is not None for f in result.plan.fragments)
    table = result.to_arrow()
    assert table.num_rows == 0 and table.column_names == ["name", "id"]


def test_params_reach_both_sources(fed: federator.Federation, truth: sqlite3.Connection) -> None:
    q = (
        "SELECT u.name, p.name AS product FROM shop.orders AS o JOIN shop.users AS u "
        "ON u.id = o.user_id JOIN lake.products AS p ON p.id = o.product_id "
        "WHERE u.country = :c AND p.price > :p ORDER BY o.id"
    )
    result = fed.sql(q, {"c": "GB", "p": 40})
    want = truth.execute(_truth_sql(q).replace(":c", "'GB'").replace(":p", "40")).fetchall()
    assert rows_of(result.to_arrow()) == want
    text = result.explain()
    assert "$1 = 'GB'" in text and "$1 = 40" in text
    assert "'GB'" not in text.split("params")[0]  # values are parameters, not SQL text


def test_explain_analyze_reports_rows_bytes_time(fed: federator.Federation) -> None:
    text = fed.explain(QUERIES[0], analyze=True)
    assert text.count("analyze: actual rows") == 3  # two fragments and the residual
    assert "bytes" in text and " ms" in text
