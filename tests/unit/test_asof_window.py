"""The time window of an ASOF join's right side and its latest-per-key form (offline).

Planning: over the fixture shop (no I/O), the windowed fragment and the latest-per-key request
each backend is sent. Running: Parquet files on both sides, every direction of the time
inequality and a single cut-off, against DuckDB running the same ASOF join over the same rows.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _pushdown import planning_federation
from sqlglot import exp, parse_one

import federator
from federator import Feature
from federator.plan.model import LATEST, TimeWindow

AGED = (
    "SELECT c.id, CASE WHEN o.ordered_at >= c.signup - INTERVAL '3' DAY THEN o.amount END AS a"
    " FROM lake.customers AS c ASOF LEFT JOIN {src}.orders AS o"
    " ON c.id = o.customer_id AND c.signup >= o.ordered_at"
)


@pytest.fixture(scope="module")
def shop() -> Iterator[federator.Federation]:
    with planning_federation() as fed:
        yield fed


@pytest.mark.parametrize("src", ["pg", "my", "lake"])
def test_sql_sources_are_planned_a_latest_row_per_key_request(
    shop: federator.Federation, src: str
) -> None:
    plan = shop.sql(AGED.format(src=src)).plan
    feature = plan.fragments[1]
    assert feature.window is not None and feature.window.lower is not None
    latest = plan.requests[feature.id + LATEST].text.replace("`", '"')
    assert 'ROW_NUMBER() OVER (PARTITION BY "o"."customer_id" ORDER BY "o"."ordered_at" DESC' in (
        latest
    )
    assert '"__latest"."__fed_rn" = 1' in latest
    assert latest.count('"o"."ordered_at" <=') == 1 and latest.count('"o"."ordered_at" >=') == 1


def test_mongo_is_planned_a_latest_row_per_key_pipeline(shop: federator.Federation) -> None:
    """The window's filter, then each key's first document by time descending."""
    if "docs" not in shop.catalog.adapters:
        pytest.skip("the mongo driver is not installed")
    plan = shop.sql(AGED.format(src="docs")).plan
    feature = plan.fragments[1]
    stages = plan.requests[feature.id + LATEST].payload.stages
    assert [next(iter(s)) for s in stages] == [
        "$match",  # the bind join's keys
        "$match",  # the window
        "$sort",
        "$group",
        "$replaceRoot",
        "$project",
    ]
    window = stages[1]["$match"]["$and"]
    assert {next(iter(c["ordered_at"])) for c in window} == {"$lte", "$gte"}
    assert stages[2] == {"$sort": {"customer_id": 1, "ordered_at": -1}}
    group = {"_id": {"k0": {"$ifNull": ["$customer_id", None]}}, "doc": {"$first": "$$ROOT"}}
    assert stages[3] == {"$group": group}
    assert not any("latest row per key not pushed" in n for n in feature.notes)


def test_mongo_refuses_other_window_functions_and_subqueries() -> None:
    from federator.rules.mongo import MONGO

    inner = "SELECT c.v AS v, {w} AS rn FROM m.db.c AS c"
    latest = "SELECT s.v AS v FROM ({inner}) AS s WHERE s.rn = {n}"
    row_number = "ROW_NUMBER() OVER (PARTITION BY c.k ORDER BY c.t DESC)"
    assert MONGO.refusal(parse_one(latest.format(inner=inner.format(w=row_number), n=1))) is None
    for w, n in [
        (row_number, 2),
        ("RANK() OVER (PARTITION BY c.k ORDER BY c.t DESC)", 1),
        ("ROW_NUMBER() OVER (ORDER BY c.t DESC)", 1),
        ("ROW_NUMBER() OVER (PARTITION BY c.k ORDER BY c.t DESC, c.u)", 1),
    ]:
        assert MONGO.refusal(parse_one(latest.format(inner=inner.format(w=w), n=n))) is not None
    assert MONGO.refusal(parse_one(f"SELECT v, {row_number} AS rn FROM m.db.c AS c")) is not None
    assert (
        MONGO.refusal(parse_one("SELECT s.v FROM (SELECT c.v FROM m.db.c AS c) AS s")) is not None
    )


def test_explain_names_the_window_and_the_latest_request(shop: federator.Federation) -> None:
    text = shop.explain(AGED.format(src="pg"))
    assert "time window: o.ordered_at <= max(f0.signup) AND" in text
    assert "o.ordered_at >= min(f0.signup) - 3 days" in text
    assert "latest row per key when every time is one cut-off, sent instead:" in text


def test_a_grouped_right_side_gets_no_window(shop: federator.Federation) -> None:
    sql = (
        "SELECT c.id, o.n FROM lake.customers AS c ASOF LEFT JOIN"
        " (SELECT customer_id, ordered_at, count(*) AS n FROM pg.orders"
        " GROUP BY customer_id, ordered_at) AS o"
        " ON c.id = o.customer_id AND c.signup >= o.ordered_at"
    )
    plan = shop.sql(sql).plan
    assert all(f.window is None for f in plan.fragments)


def test_window_bounds_follow_the_column_type() -> None:
    w = TimeWindow("f0", "ts", exp.column("t"), "hi", "lo", max_age=dt.timedelta(hours=1))
    naive = pa.chunked_array([[dt.datetime(2026, 1, 2, 12), None, dt.datetime(2026, 1, 1)]])
    utc = dt.UTC
    assert w.bounds(naive, pa.timestamp("us", "UTC")) == {
        "hi": dt.datetime(2026, 1, 2, 12, tzinfo=utc),
        "lo": dt.datetime(2025, 12, 31, 23, tzinfo=utc),
    }
    days = pa.chunked_array([[dt.date(2026, 1, 2)]], pa.date32())
    assert w.bounds(days, pa.timestamp("us")) == {
        "hi": dt.datetime(2026, 1, 2),
        "lo": dt.datetime(2026, 1, 1, 23),
    }
    nothing = pa.chunked_array([[None]], pa.timestamp("us"))
    assert w.bounds(nothing, pa.timestamp("us")) == {"hi": None, "lo": None}  # matches nothing


# ---- running, against DuckDB -----------------------------------------------------------
LABELS = [(i, i % 7 if i % 11 else None, 10 * (i % 13) if i % 17 else None) for i in range(60)]
FEATURES = [(u, t, u * 1000 + t) for u in range(6) for t in range(0, 130, 9)] + [
    (2, 40, 7),  # a tie with label times
    (None, 50, -1),
    (6, 500, -2),  # newer than every label
]


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[federator.Federation]:
    a, b = tmp_path_factory.mktemp("labels"), tmp_path_factory.mktemp("feats")
    pq.write_table(
        pa.table(dict(zip(["id", "k", "ts"], zip(*LABELS, strict=True), strict=True))),
        a / "l.parquet",
    )
    pq.write_table(
        pa.table(dict(zip(["k", "ts", "v"], zip(*FEATURES, strict=True), strict=True))),
        b / "f.parquet",
    )
    sources = {"a": {"kind": "files", "path": str(a)}, "b": {"kind": "files", "path": str(b)}}
    with federator.connect({"sources": sources}) as fed:
        yield fed


def _duckdb(sql: str, labels: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    con = duckdb.connect()
    con.execute("CREATE TABLE l (id BIGINT, k BIGINT, ts BIGINT)")
    con.executemany("INSERT INTO l VALUES (?, ?, ?)", labels)
    con.execute("CREATE TABLE f (k BIGINT, ts BIGINT, v BIGINT)")
    con.executemany("INSERT INTO f VALUES (?, ?, ?)", FEATURES)
    rows = con.execute(sql.replace("a.l", "l").replace("b.f", "f")).fetchall()
    con.close()
    return sorted(rows, key=repr)


@pytest.mark.parametrize("op", [">=", ">", "<=", "<"])
def test_every_direction_answers_like_duckdb(lake: federator.Federation, op: str) -> None:
    sql = f"SELECT l.id, f.v FROM a.l AS l ASOF LEFT JOIN b.f AS f ON l.k = f.k AND l.ts {op} f.ts"
    result = lake.sql(sql)
    got = sorted((tuple(r.values()) for r in result.to_arrow().to_pylist()), key=repr)
    assert got == _duckdb(sql, LABELS)
    assert "time window bound:" in result.explain(analyze=True)


def test_a_single_cut_off_sends_the_latest_row_per_key(
    lake: federator.Federation, tmp_path: Path
) -> None:
    at_cut = [(i, k, 40) for i, k, _ in LABELS]
    entities = pa.table({"id": [r[0] for r in at_cut], "k": [r[1] for r in at_cut]})
    entities = entities.append_column("ts", pa.array([40] * len(at_cut), pa.int64()))
    result = lake.training_set(entities, [Feature("b.f", key="k", timestamp="ts", columns=["v"])])
    got = sorted(((r["id"], r["v"]) for r in result.to_arrow().to_pylist()), key=repr)
    truth = "SELECT l.id, f.v FROM a.l AS l ASOF LEFT JOIN b.f AS f ON l.k = f.k AND l.ts >= f.ts"
    assert got == _duckdb(truth, at_cut)
    assert "one cut-off: latest row per key sent by the source" in result.explain(analyze=True)


# ---- training_set's own errors ------------------------------------------------------------
def _labels() -> pa.Table:
    return pa.table({"user_id": [1], "ts": [dt.datetime(2026, 1, 1)], "age": [3]})


@pytest.mark.parametrize(
    ("entities", "feature", "error", "text"),
    [
        ([1, 2], Feature("pg.orders", "id", "ordered_at", ["status"]), "ParameterError", "list"),
        (
            _labels(),
            Feature("pg.orders", "customer_id", "ordered_at", ["status"]),
            "BindError",
            "no key column 'customer_id'",
        ),
        (
            _labels(),
            Feature("orders", "id", "ordered_at", ["status"], entity_key="user_id"),
            "SQLSyntaxError",
            "write it as source.table",
        ),
        (
            _labels(),
            Feature("pg.orders", "id", "ordered_at", ["status"], entity_key="user_id", prefix=""),
            None,
            None,
        ),
    ],
)
def test_training_set_errors_name_what_to_fix(
    shop: federator.Federation, entities: object, feature: Feature, error: str, text: str
) -> None:
    if error is None:  # the baseline: plans
        shop.training_set(entities, [feature])
        return
    with pytest.raises(federator.FederatorError) as caught:
        shop.training_set(entities, [feature], timestamp="ts")
    assert type(caught.value).__name__ == error and text in str(caught.value)


def test_a_prefix_clash_is_refused_and_the_entities_are_let_go(
    shop: federator.Federation,
) -> None:
    f = Feature("pg.orders", "id", "ordered_at", ["status"], entity_key="user_id", prefix="a")
    with pytest.raises(federator.BindError, match="already taken"):
        shop.training_set(_labels(), [f, f])
    with pytest.raises(federator.BindError, match="no timestamp column 'when'"):
        shop.training_set(_labels(), [f], timestamp="when")
    assert shop.catalog.adapters["_entities"]._held == {}
