"""Redis through the public API, against a real redis-server. Answers are checked against the
data written with the plain redis client, computed in Python."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest
import redis

import federator
from federator.errors import SourceError

N_USERS = 500
MISSING = {7, 70, 170}  # users without a feature hash: missing keys are missing rows


def features(uid: int) -> dict[str, Any]:
    return {"clicks_7d": uid * 1.5, "segment": ("a", "b", "c")[uid % 3], "active": uid % 2 == 0}


@pytest.fixture(scope="module")
def data(redis_dsn: str) -> None:
    r = redis.Redis.from_url(redis_dsn, decode_responses=True)
    try:
        r.flushdb()
        pipe = r.pipeline(transaction=False)
        for uid in range(N_USERS):
            if uid in MISSING:
                continue
            f = features(uid)
            pipe.hset(
                f"features:{uid}",
                mapping={
                    "clicks_7d": str(f["clicks_7d"]),
                    "segment": f["segment"],
                    "active": "1" if f["active"] else "0",
                },
            )
            pipe.set(f"profile:{uid}", json.dumps({"name": f"user{uid}", "age": 20 + uid % 50}))
            pipe.set(f"score:v1:{uid}", str(uid % 97))
        pipe.hset("broken:1", mapping={"clicks_7d": "lots"})
        pipe.set("unrelated:1", "x")
        pipe.execute()
    finally:
        r.close()


CATALOG_TABLES = {
    "user_features": {
        "key": "features:{user_id}",
        "type": "hash",
        "columns": {
            "user_id": "int64",
            "clicks_7d": "float64",
            "segment": "string",
            "active": "bool",
        },
    },
    "profiles": {
        "key": "profile:{user_id}",
        "type": "json",
        "columns": {"user_id": "int64", "name": "string", "age": "int64"},
    },
    "scores": {
        "key": "score:{version}:{user_id}",
        "type": "string",
        "columns": {"version": "string", "user_id": "int64", "score": "int64"},
    },
    "broken": {
        "key": "broken:{id}",
        "type": "hash",
        "columns": {"id": "int64", "clicks_7d": "float64"},
    },
}


@pytest.fixture(scope="module")
def fed(redis_dsn: str, data: None, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("lite") / "app.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, country TEXT)")
    con.executemany(
        "INSERT INTO users VALUES (?, ?)",
        [(i, "DE" if i % 25 == 0 else "FR") for i in range(N_USERS)],
    )
    con.execute("CREATE TABLE segments (name TEXT, label TEXT)")
    con.executemany("INSERT INTO segments VALUES (?, ?)", [("a", "Alpha"), ("c", "Gamma")])
    con.commit()
    con.close()
    catalog = {
        "sources": {
            "kv": {"kind": "redis", "url": redis_dsn, "tables": CATALOG_TABLES},
            "app": {"kind": "sqlite", "path": str(path)},
        }
    }
    with federator.connect(catalog, timeout=60) as f:
        yield f


def rows(result: federator.Result) -> list[dict[str, Any]]:
    return result.to_arrow().to_pylist()


def test_key_in_list_is_a_pipelined_lookup(fed: federator.Federation) -> None:
    query = (
        "SELECT user_id, clicks_7d, segment, active FROM kv.user_features"
        " WHERE user_id IN (3, 7, 12)"
    )
    plan = fed.explain(query)
    assert "pipelined HGETALL features:{user_id} for user_id IN (3, 7, 12)" in plan, plan
    assert "SCAN" not in plan and "no residual" in plan
    got = sorted(rows(fed.sql(query)), key=lambda r: r["user_id"])
    assert got == [{"user_id": u, **features(u)} for u in (3, 12)]  # 7 has no key


def test_parameter_key(fed: federator.Federation) -> None:
    got = rows(fed.sql("SELECT name, age FROM kv.profiles WHERE user_id = :u", {"u": 42}))
    assert got == [{"name": "user42", "age": 20 + 42 % 50}]


def test_scan_without_key_condition_warns(fed: federator.Federation) -> None:
    query = "SELECT segment, count(*) AS n FROM kv.user_features GROUP BY segment ORDER BY segment"
    plan = fed.explain(query)
    assert "SCAN 0 MATCH features:*" in plan and "WARNING" in plan, plan
    present = [u for u in range(N_USERS) if u not in MISSING]
    want = {}
    for u in present:
        want[features(u)["segment"]] = want.get(features(u)["segment"], 0) + 1
    assert rows(fed.sql(query)) == [{"segment": s, "n": n} for s, n in sorted(want.items())]


def test_string_values_and_partial_key_scan(fed: federator.Federation) -> None:
    query = "SELECT user_id, score FROM kv.scores WHERE version = 'v1' AND user_id IN (1, 2, 99)"
    plan = fed.explain(query)
    assert "MGET score:{version}:{user_id}" in plan, plan
    got = sorted(rows(fed.sql(query)), key=lambda r: r["user_id"])
    assert got == [{"user_id": u, "score": u % 97} for u in (1, 2, 99)]
    got = rows(fed.sql("SELECT count(*) AS n FROM kv.scores WHERE version = 'v1'"))
    assert got == [{"n": N_USERS - len(MISSING)}]


def test_limit_stops_the_scan(fed: federator.Federation) -> None:
    got = rows(fed.sql("SELECT user_id FROM kv.profiles LIMIT 5"))
    assert len(got) == 5 and all(0 <= r["user_id"] < N_USERS for r in got)


def test_join_binds_keys_from_the_other_source(fed: federator.Federation) -> None:
    query = """
        SELECT f.segment, count(*) AS n, sum(f.clicks_7d) AS clicks
        FROM app.users AS u JOIN kv.user_features AS f ON f.user_id = u.id
        WHERE u.country = 'DE'
        GROUP BY f.segment ORDER BY f.segment
    """
    plan = fed.explain(query)
    assert "bind-join keys" in plan and "bind join" in plan, plan
    users = [u for u in range(N_USERS) if u % 25 == 0 and u not in MISSING]
    want: dict[str, list[float]] = {}
    for u in users:
        want.setdefault(features(u)["segment"], []).append(features(u)["clicks_7d"])
    got = rows(fed.sql(query))
    assert got == [
        {"segment": s, "n": len(v), "clicks": pytest.approx(sum(v))}
        for s, v in sorted(want.items())
    ]
    analyzed = fed.explain(query, analyze=True)
    assert f"bound keys {len([u for u in range(N_USERS) if u % 25 == 0]):,}" in analyzed


def test_conversion_error_names_key_and_field(fed: federator.Federation) -> None:
    with pytest.raises(SourceError, match=r"key 'broken:1' field 'clicks_7d'"):
        fed.sql("SELECT clicks_7d FROM kv.broken WHERE id = 1").to_arrow()


def test_join_on_a_value_column_filters_scanned_rows(fed: federator.Federation) -> None:
    query = """
        SELECT s.label, count(*) AS n
        FROM app.segments AS s JOIN kv.user_features AS f ON f.segment = s.name
        GROUP BY s.label ORDER BY s.label
    """
    plan = fed.explain(query)
    assert "SCAN" in plan, plan
    present = [u for u in range(N_USERS) if u not in MISSING]
    want = {"Alpha": 0, "Gamma": 0}
    for u in present:
        seg = features(u)["segment"]
        if seg == "a":
            want["Alpha"] += 1
        elif seg == "c":
            want["Gamma"] += 1
    assert rows(fed.sql(query)) == [{"label": k, "n": v} for k, v in sorted(want.items())]
