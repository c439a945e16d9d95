"""``fed.training_set``: entity rows (Arrow, pandas, SQL text) with features as of each row's
time from PostgreSQL, MariaDB, MongoDB and Parquet tables, against a brute-force truth: for
each entity row, every feature row scanned by hand in Python.

The data has entity times equal to feature times (ties), users without features, features
newer than every entity row, NULL keys and times on both sides, and features exactly the TTL
old (kept) and a second older (NULL). The feature fragments get the time window of the entity
times (EXPLAIN shows it, EXPLAIN ANALYZE its values) and, at a single cut-off, send the latest
row per key themselves (``ROW_NUMBER()``, or MongoDB's ``$group`` with ``$first``).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import federator
from federator import Feature

from .conftest import (
    four_sources,
    load_mongo_collection,
    load_mysql_table,
    load_pg_table,
    run_async,
)

SOURCES = ("pg", "my", "mongo", "lake")
MONGO_DB = "training_set"
BASE = datetime(2026, 1, 1)
TTL = timedelta(hours=72)
N_USERS = 40  # users 0..38 have features, 39 only later ones; entities name 0..44

PG_COLUMNS = "user_id bigint, updated_at timestamp, age bigint, plan text"
MY_COLUMNS = (
    "user_id BIGINT, updated_at DATETIME(6), age BIGINT, plan VARCHAR(20) COLLATE utf8mb4_bin"
)

Entity = tuple[int, int | None, datetime | None]  # id, user_id, ts
Row = tuple[int | None, datetime | None, int, str]  # user_id, updated_at, age, plan


def _hours(h: float) -> datetime:
    return BASE + timedelta(hours=h)


def _data() -> tuple[list[Entity], list[Row]]:
    rnd = random.Random(1818)
    entities: list[Entity] = []
    for i in range(240):
        user = None if i % 31 == 0 else rnd.randrange(N_USERS + 5)
        ts = None if i % 47 == 0 else _hours(rnd.randrange(24, 600))
        entities.append((i, user, ts))
    rows: dict[tuple[int | None, datetime], tuple[int, str]] = {}
    for user in range(N_USERS - 1):
        for h in rnd.sample(range(600), 12):
            rows[(user, _hours(h))] = (h, f"p{user}_{h}")
    for _, user, ts in entities[::4]:  # a feature at exactly the entity's time: a tie
        if user is not None and ts is not None and user < N_USERS - 1:
            rows[(user, ts)] = (-1, f"tie{user}")
    for h in (700, 800):  # newer than every entity row
        rows[(N_USERS - 1, _hours(h))] = (h, "late")
    rows[(None, _hours(10))] = (0, "null-key")
    # TTL edges: user 100 exactly TTL old at its entity's time (kept), 101 a second older
    entities += [(1000, 100, _hours(300)), (1001, 101, _hours(300))]
    rows[(100, _hours(300) - TTL)] = (100, "edge")
    rows[(101, _hours(300) - TTL - timedelta(seconds=1))] = (101, "stale")
    out: list[Row] = [(u, t, a, p) for (u, t), (a, p) in rows.items()]
    out.append((5, None, 5, "no-time"))  # never matches
    rnd.shuffle(out)
    return entities, out


def _truth(
    entities: list[Entity], rows: list[Row], ttl: timedelta | None
) -> list[tuple[int, int | None, str | None]]:
    """(id, age, plan) per entity: the row of its user with the latest time at or before the
    entity's, NULL when none or when older than ``ttl``, found by scanning every row."""
    out = []
    for i, user, ts in entities:
        best: Row | None = None
        for r in rows:
            if user is None or ts is None or r[0] != user or r[1] is None or r[1] > ts:
                continue
            if best is None or r[1] > best[1]:  # type: ignore[operator]
                best = r
        if best is not None and (ttl is None or ts - best[1] <= ttl):  # type: ignore[operator]
            out.append((i, best[2], best[3]))
        else:
            out.append((i, None, None))
    return sorted(out)


def _entity_table(entities: list[Entity]) -> pa.Table:
    return pa.table(
        {
            "id": pa.array([e[0] for e in entities], pa.int64()),
            "user_id": pa.array([e[1] for e in entities], pa.int64()),
            "ts": pa.array([e[2] for e in entities], pa.timestamp("us")),
        }
    )


def _feature_table(rows: list[Row]) -> pa.Table:
    return pa.table(
        {
            "user_id": pa.array([r[0] for r in rows], pa.int64()),
            "updated_at": pa.array([r[1] for r in rows], pa.timestamp("us")),
            "age": pa.array([r[2] for r in rows], pa.int64()),
            "plan": pa.array([r[3] for r in rows], pa.string()),
        }
    )


@pytest.fixture(scope="module")
def setup(
    pg_dsn: str, mysql_dsn: str, mongo_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[federator.Federation, list[Entity], list[Row]]]:
    entities, rows = _data()
    lake: Path = tmp_path_factory.mktemp("pit_lake")
    pq.write_table(_feature_table(rows), lake / "pit_profiles.parquet")
    pq.write_table(_entity_table(entities), lake / "pit_labels.parquet")
    run_async(load_pg_table(pg_dsn, "pit_profiles", PG_COLUMNS, rows))
    run_async(load_mysql_table(mysql_dsn, "pit_profiles", MY_COLUMNS, rows))
    docs = [{"user_id": u, "updated_at": t, "age": a, "plan": p} for u, t, a, p in rows]
    load_mongo_collection(mongo_dsn, MONGO_DB, "pit_profiles", docs)
    catalog = four_sources(pg_dsn, mysql_dsn, mongo_dsn, MONGO_DB, lake)
    with federator.connect(catalog, timeout=60) as fed:
        yield fed, entities, rows


def _profile(source: str, **options: Any) -> Feature:
    return Feature(
        f"{source}.pit_profiles",
        key="user_id",
        timestamp="updated_at",
        columns=["age", "plan"],
        **options,
    )


def _answer(table: pa.Table, *names: str) -> list[tuple[Any, ...]]:
    return sorted(tuple(r[n] for n in names) for r in table.to_pylist())


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("ttl", [TTL, None], ids=["ttl", "no-ttl"])
def test_training_set_matches_the_brute_force_truth(
    setup: Any, source: str, ttl: timedelta | None
) -> None:
    fed, entities, rows = setup
    result = fed.training_set(_entity_table(entities), [_profile(source, ttl=ttl)])
    table = result.to_arrow()
    assert table.column_names == ["id", "user_id", "ts", "age", "plan"]
    assert _answer(table, "id", "age", "plan") == _truth(entities, rows, ttl)


def test_three_sources_clashing_names_and_entities_as_pandas(setup: Any) -> None:
    """Columns come in order: the entities', then each feature's; a name already taken gets
    the table's name before it, or the Feature's prefix (on every column it takes)."""
    fed, entities, rows = setup
    features = [
        _profile("pg", ttl=TTL),
        Feature("my.pit_profiles", "user_id", "updated_at", ["plan", "age"]),
        _profile("lake", prefix="lake_"),
    ]
    table = fed.training_set(_entity_table(entities).to_pandas(), features).to_arrow()
    names = ["id", "user_id", "ts", "age", "plan", "pit_profiles_plan", "pit_profiles_age"]
    assert table.column_names == [*names, "lake_age", "lake_plan"]
    fresh, full = _truth(entities, rows, TTL), _truth(entities, rows, None)
    truth = [(i, a, p, fp, fa, fa, fp) for (i, a, p), (_, fa, fp) in zip(fresh, full, strict=True)]
    assert _answer(table, "id", *names[3:], "lake_age", "lake_plan") == truth


def test_entities_as_sql_text(setup: Any) -> None:
    fed, entities, rows = setup
    query = "SELECT id, user_id, ts FROM lake.pit_labels WHERE id < 100"
    table = fed.training_set(query, [_profile("pg", ttl=TTL)]).to_arrow()
    truth = [r for r in _truth(entities, rows, TTL) if r[0] < 100]
    assert _answer(table, "id", "age", "plan") == truth


@pytest.mark.parametrize("source", SOURCES)
def test_explain_shows_the_time_window_and_analyze_its_values(setup: Any, source: str) -> None:
    fed, entities, _ = setup
    result = fed.training_set(_entity_table(entities), [_profile(source, ttl=TTL)])
    plan = result.explain()
    feature = next(b for b in plan.split("Fragment ")[1:] if "pit_profiles" in b)
    window = next(ln for ln in feature.splitlines() if "time window:" in ln)
    assert "<= max(f0.ts)" in window and ">= min(f0.ts) - 3 days" in window, plan
    times = [e[2] for e in entities if e[2] is not None]
    analyzed = result.explain(analyze=True)
    assert f"time window bound: upper {max(times)}" in analyzed, analyzed  # (+00:00 on Mongo)
    assert f"lower {min(times) - TTL}" in analyzed, analyzed


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("ttl", [TTL, None], ids=["ttl", "no-ttl"])
def test_a_single_cut_off_is_answered_with_the_latest_row_per_key(
    setup: Any, source: str, ttl: timedelta | None
) -> None:
    """Every entity at one time: each source sends the latest row per key itself, PostgreSQL,
    MariaDB and files with ROW_NUMBER, MongoDB with $sort + $group $first (without a TTL the
    window has no lower bound, so the NULL-key row is one more group)."""
    fed, entities, rows = setup
    cut = _hours(300)
    at_cut = [(i, u, cut) for i, u, _ in entities]
    result = fed.training_set(_entity_table(at_cut), [_profile(source, ttl=ttl)])
    assert _answer(result.to_arrow(), "id", "age", "plan") == _truth(at_cut, rows, ttl)
    analyzed = result.explain(analyze=True)
    assert "one cut-off: latest row per key sent by the source" in analyzed, analyzed
    if source == "mongo":
        assert '{"$first": "$$ROOT"}' in analyzed, analyzed
    else:
        assert "ROW_NUMBER() OVER (PARTITION BY" in analyzed, analyzed


LATEST_PER_KEY = (
    "SELECT s.user_id, s.age, s.plan FROM (SELECT p.user_id AS user_id, p.age AS age,"
    " p.plan AS plan, ROW_NUMBER() OVER (PARTITION BY p.user_id ORDER BY p.updated_at DESC)"
    " AS rn FROM {source}.pit_profiles AS p) AS s WHERE s.rn = 1"
)


@pytest.mark.parametrize("source", SOURCES)
def test_latest_row_per_key_written_by_hand_runs_in_the_source(setup: Any, source: str) -> None:
    """The same query as the cut-off's, without a window: the NULL keys are one partition and a
    NULL time sorts first under DESC (PostgreSQL's order), on every source alike."""
    fed, _, rows = setup
    by_key: dict[int | None, list[Row]] = {}
    for r in rows:
        by_key.setdefault(r[0], []).append(r)
    latest = [max(g, key=lambda r: (r[1] is None, r[1] or BASE)) for g in by_key.values()]
    truth = sorted((r[2], r[3]) for r in latest)
    result = fed.sql(LATEST_PER_KEY.format(source=source))
    assert _answer(result.to_arrow(), "age", "plan") == truth
    assert "no residual" in result.explain()
