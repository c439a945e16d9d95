"""Point-in-time joins across sources: ``ASOF [LEFT] JOIN`` of labels (a Parquet file) to a
feature table on PostgreSQL, MariaDB, MongoDB or a file, against a brute-force truth: for
each label row, the feature rows scanned by hand in Python.

The data has label times equal to feature times (ties), users without features, users whose
features are all newer than every label, NULL keys and NULL times on both sides.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import federator

from .conftest import (
    four_sources,
    load_mongo_collection,
    load_mysql_table,
    load_pg_table,
    run_async,
)

SOURCES = ("pg", "my", "mongo", "lake")
MONGO_DB = "asof_join"
N_USERS = 60  # users 0..59 have features; labels also name users 60..64 (no features)
LAST_LABEL = 1000  # every label time is at most this; user 59's features are all later

Label = tuple[int, int | None, int | None]  # id, user_id, ts
Feature = tuple[int | None, int | None, str]  # user_id, ts, v


def _data() -> tuple[list[Label], list[Feature]]:
    rnd = random.Random(18)
    labels: list[Label] = []
    for i in range(300):
        user = None if i % 37 == 0 else rnd.randrange(N_USERS + 5)
        ts = None if i % 53 == 0 else rnd.randrange(LAST_LABEL + 1)
        labels.append((i, user, ts))
    feats: dict[tuple[int | None, int], str] = {}
    for user in range(N_USERS - 1):
        for ts in rnd.sample(range(LAST_LABEL + 1), 30):
            feats[(user, ts)] = f"u{user}@{ts}"
    for _, user, ts in labels[::3]:  # a feature at exactly the label's time: a tie
        if user is not None and ts is not None and user < N_USERS - 1:
            feats[(user, ts)] = f"u{user}@{ts}="
    for ts in (LAST_LABEL + 1, LAST_LABEL + 50):  # newer than every label
        feats[(N_USERS - 1, ts)] = f"late{ts}"
    for ts in (0, 500):  # NULL keys never match, not even NULL label keys
        feats[(None, ts)] = f"null@{ts}"
    rows: list[Feature] = [(u, t, v) for (u, t), v in feats.items()]
    rows.append((3, None, "no-time"))  # a feature row without a time never matches
    rnd.shuffle(rows)
    return labels, rows


def _truth(
    labels: list[Label], feats: list[Feature], strict: bool, left: bool
) -> list[tuple[int, str | None, int | None]]:
    """For each label, the feature row of its user with the latest time at or before (strict:
    before) the label's time, found by scanning every feature row."""
    out = []
    for i, user, ts in labels:
        best: Feature | None = None
        for f in feats:
            fu, fts, _ = f
            if user is None or ts is None or fu != user or fts is None:
                continue
            if (fts < ts if strict else fts <= ts) and (best is None or fts > best[1]):  # type: ignore[operator]
                best = f
        if best is not None:
            out.append((i, best[2], best[1]))
        elif left:
            out.append((i, None, None))
    return sorted(out)


def _table(rows: list[tuple[Any, ...]], names: list[str], types: list[pa.DataType]) -> pa.Table:
    columns = [pa.array([r[i] for r in rows], t) for i, t in enumerate(types)]
    return pa.table(columns, names=names)


@pytest.fixture(scope="module")
def setup(
    pg_dsn: str, mysql_dsn: str, mongo_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[federator.Federation, list[Label], list[Feature]]]:
    labels, feats = _data()
    lake: Path = tmp_path_factory.mktemp("asof_lake")
    pq.write_table(
        _table(labels, ["id", "user_id", "ts"], [pa.int64()] * 3), lake / "labels.parquet"
    )
    pq.write_table(
        _table(feats, ["user_id", "ts", "v"], [pa.int64(), pa.int64(), pa.string()]),
        lake / "asof_feats.parquet",
    )
    run_async(load_pg_table(pg_dsn, "asof_feats", "user_id bigint, ts bigint, v text", feats))
    columns = "user_id BIGINT, ts BIGINT, v VARCHAR(20)"
    run_async(load_mysql_table(mysql_dsn, "asof_feats", columns, feats))
    docs = [{"user_id": u, "ts": t, "v": v} for u, t, v in feats]
    load_mongo_collection(mongo_dsn, MONGO_DB, "asof_feats", docs)
    catalog = four_sources(pg_dsn, mysql_dsn, mongo_dsn, MONGO_DB, lake)
    with federator.connect(catalog, timeout=60) as fed:
        yield fed, labels, feats


def _asof_sql(source: str, join: str, op: str) -> str:
    return (
        f"SELECT l.id, f.v, f.ts AS feature_ts FROM lake.labels AS l {join} {source}.asof_feats"
        f" AS f ON l.user_id = f.user_id AND l.ts {op} f.ts"
    )


def _rows(table: pa.Table) -> list[tuple[Any, ...]]:
    return sorted(tuple(r.values()) for r in table.to_pylist())


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("join", ["ASOF LEFT JOIN", "ASOF JOIN"])
@pytest.mark.parametrize("op", [">=", ">"])
def test_asof_join_matches_the_brute_force_truth(setup: Any, source: str, join: str, op: str):
    fed, labels, feats = setup
    truth = _truth(labels, feats, strict=op == ">", left="LEFT" in join)
    assert _rows(fed.sql(_asof_sql(source, join, op)).to_arrow()) == truth


@pytest.mark.parametrize("source", ["pg", "my"])
def test_asof_join_runs_in_the_residual_and_binds_the_label_keys(setup: Any, source: str):
    fed, _, _ = setup
    plan = fed.explain(_asof_sql(source, "ASOF LEFT JOIN", ">="))
    fragments, residual = plan.split("Residual")
    assert "ASOF LEFT JOIN" in residual, plan
    feature = next(b for b in fragments.split("Fragment ")[1:] if "asof_feats" in b)
    assert "ASOF LEFT JOIN" not in feature.upper() and "labels" not in feature, plan
    assert "bind join" in feature, plan


def test_where_on_the_feature_side_filters_after_the_match(setup: Any):
    """A WHERE on the feature table drops the label whose latest feature fails it; it does
    not pick an older feature that passes (the filter is not moved into the as-of match)."""
    fed, labels, feats = setup
    truth = [r for r in _truth(labels, feats, strict=False, left=False) if not r[1].endswith("=")]
    sql = _asof_sql("pg", "ASOF JOIN", ">=") + " WHERE f.v NOT LIKE '%='"
    assert _rows(fed.sql(sql).to_arrow()) == truth


def test_three_feature_sources_with_a_maximum_age(setup: Any):
    """A training set: each label gets the features of three sources as of its time, each
    NULL when older than the maximum age (TTL) of 100."""
    fed, labels, feats = setup
    sql = (
        "SELECT l.id, CASE WHEN l.ts - p.ts <= 100 THEN p.v END AS pv,"
        " CASE WHEN l.ts - m.ts <= 100 THEN m.v END AS mv, o.v AS ov"
        " FROM lake.labels AS l"
        " ASOF LEFT JOIN pg.asof_feats AS p ON l.user_id = p.user_id AND l.ts >= p.ts"
        " ASOF LEFT JOIN my.asof_feats AS m ON l.user_id = m.user_id AND l.ts >= m.ts"
        " ASOF LEFT JOIN mongo.asof_feats AS o ON l.user_id = o.user_id AND l.ts > o.ts"
    )
    ts = {i: t for i, _, t in labels}
    fresh = [
        (i, v if v is not None and ts[i] - fts <= 100 else None)
        for i, v, fts in _truth(labels, feats, strict=False, left=True)
    ]
    strict = _truth(labels, feats, strict=True, left=True)
    truth = [(i, v, v, o) for (i, v), (_, o, _) in zip(fresh, strict, strict=True)]
    assert _rows(fed.sql(sql).to_arrow()) == truth
    assert any(r[1] is None and r[3] is not None for r in truth)  # the TTL took some away
