"""``[features.NAME]`` sections: what a valid one becomes, and errors that name what to fix."""

from __future__ import annotations

from typing import Any

import pytest

from federator.config import load_catalog
from federator.errors import CatalogError

SOURCES = {
    "pg": {"kind": "postgres", "dsn": "postgresql://u@h/db"},
    "kv": {"kind": "redis", "url": "redis://h/0"},
}


def view(**changes: Any) -> dict[str, Any]:
    spec = {
        "query": "SELECT * FROM pg.events",
        "entity": "user_id",
        "timestamp": "ts",
        "offline": {"path": "/data/user_stats"},
        "online": {"source": "kv", "key": "user_stats:{user_id}"},
        "ttl": "7d",
    }
    spec.update(changes)
    return {k: v for k, v in spec.items() if v is not None}


def test_a_view_adds_the_features_source_and_lets_its_redis_source_declare_no_tables() -> None:
    cfg = load_catalog({"sources": SOURCES, "features": {"user_stats": view()}})
    v = cfg.features["user_stats"]
    assert (v.entity, v.ttl, v.online) == (
        ("user_id",),
        7 * 86400.0,
        {"source": "kv", "key": "user_stats:{user_id}", "grace": 60.0},
    )
    assert cfg.sources["features"].kind == "features"
    assert cfg.sources["kv"].options["serves_features"] == ["user_stats"]
    assert "features" not in cfg.settings


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"entity": None}, "feature view 'user_stats' needs 'entity'"),
        ({"offline": None, "online": None}, "needs 'offline = { path = ... }' and/or 'online'"),
        ({"online": {"source": "pg", "key": "s:{user_id}"}}, "must be a source of kind 'redis'"),
        ({"online": {"source": "kv", "key": "s:{id}"}}, "must name each entity column once"),
        ({"offline": {"path": "/x", "partition": "hour"}}, "partition is 'date' or 'none'"),
        ({"ttl": "soon"}, "'soon' is not a duration"),
        ({"window": 3}, "unknown setting(s) ['window']"),
    ],
)
def test_a_malformed_view_names_what_to_fix(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(CatalogError, match="feature view 'user_stats'") as e:
        load_catalog({"sources": SOURCES, "features": {"user_stats": view(**changes)}})
    assert message in str(e.value)


def test_a_source_named_features_clashes_with_the_views_tables() -> None:
    sources = {**SOURCES, "features": {"kind": "sqlite", "path": ":memory:"}}
    with pytest.raises(CatalogError, match="source name 'features' is taken"):
        load_catalog({"sources": sources, "features": {"user_stats": view()}})


def test_an_unknown_view_is_an_error_naming_the_views(tmp_path: Any) -> None:
    import federator

    spec = view(online=None, offline={"path": str(tmp_path / "u")})
    sources = {"pg": SOURCES["pg"]}
    with federator.connect({"sources": sources, "features": {"user_stats": spec}}) as fed:
        with pytest.raises(
            CatalogError, match=r"unknown feature view 'user' \(views: user_stats\)"
        ):
            fed.features.materialize("user")
        with pytest.raises(CatalogError, match="has no online copy"):
            fed.features.lookup("user_stats", [1])


def test_materialize_over_sqlite_offline_then_again_adds_nothing(tmp_path: Any) -> None:
    """A text timestamp: 'date' partitions are refused by name; 'none' materializes, and a
    second run finds no newer row."""
    import sqlite3

    import federator

    db = tmp_path / "e.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE ev (id INTEGER, ts TEXT, n INTEGER)")
        con.execute("INSERT INTO ev VALUES (1, '2026-12-01', 3), (2, '2026-12-02', 5)")
    sources = {"db": {"kind": "sqlite", "path": str(db)}}
    spec = view(query="SELECT id, ts, n FROM db.ev", entity="id", online=None, ttl=None)
    spec["offline"] = {"path": str(tmp_path / "ev")}
    wanted = "partition = 'date' needs a timestamp"
    with (
        federator.connect({"sources": sources, "features": {"ev": spec}}) as fed,
        pytest.raises(federator.FederatorError, match=wanted),
    ):
        fed.features.materialize("ev")
    spec["offline"]["partition"] = "none"
    with federator.connect({"sources": sources, "features": {"ev": spec}}) as fed:
        first = fed.features.materialize("ev")
        again = fed.features.materialize("ev")
        rows = fed.sql("SELECT id, n FROM features.ev ORDER BY id").to_arrow().to_pylist()
        plan = fed.explain("SELECT id FROM features.ev WHERE n > 3")
    assert 'WHERE "ev"."n" > 3' in plan and "no residual" in plan  # the files rules apply
    assert (first.rows, first.until, again.rows, again.since) == (2, "2026-12-02", 0, "2026-12-02")
    assert rows == [{"id": 1, "n": 3}, {"id": 2, "n": 5}]


def test_an_unreachable_online_store_is_a_source_error_naming_it(tmp_path: Any) -> None:
    import socket

    import federator

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sources = {"kv": {"kind": "redis", "url": f"redis://:sekret@127.0.0.1:{port}/0"}}
    spec = view(query="SELECT 1 AS user_id, 2 AS ts", offline=None, ttl=None)
    with federator.connect({"sources": sources, "features": {"user_stats": spec}}) as fed:
        for call in (
            lambda: fed.features.lookup("user_stats", [1]),
            lambda: fed.features.materialize("user_stats"),
        ):
            with pytest.raises(federator.SourceUnreachableError, match="'kv' unreachable") as e:
                call()
            assert f"127.0.0.1:{port}" in str(e.value) and "sekret" not in str(e.value)
