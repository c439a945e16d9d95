"""Feature views over real PostgreSQL, Redis and files: the materialized copies equal the view's
query run on PostgreSQL itself, refreshes are incremental and atomic, a changed query starts a
new version, and the online copy serves typed rows."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pytest
import redis

import federator
from federator.lookup import MissingKeysError

from .conftest import run_async

SCHEMA = "fvt"
USERS = 40
DAY0 = dt.datetime(2026, 11, 20, tzinfo=dt.UTC)
QUERY = (
    "SELECT user_id, ts, clicks * 2 AS clicks2, amount, segment "
    f"FROM pg.{SCHEMA}.events WHERE clicks >= 0"
)
TRUTH = (  # the same view, run by PostgreSQL itself
    f"SELECT user_id, ts, clicks * 2 AS clicks2, amount, segment FROM {SCHEMA}.events "
    "WHERE clicks >= 0"
)


def event(i: int, day: int) -> tuple[Any, ...]:
    """Event ``i`` on day ``day``: user, time, clicks (some negative: filtered), amount, segment."""
    return (
        i % USERS,
        DAY0 + dt.timedelta(days=day, minutes=i),
        (i % 7) - 1,
        None if i % 11 == 0 else i * 0.25,
        ("new", "loyal", None)[i % 3],
    )


async def _pg(dsn: str, sql: str, rows: list[tuple[Any, ...]] | None = None) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        if rows is not None:
            await conn.copy_records_to_table("events", records=rows, schema_name=SCHEMA)
            return []
        return [tuple(r) for r in await conn.fetch(sql)]
    finally:
        await conn.close()


def pg(dsn: str, sql: str) -> list[Any]:
    return run_async(_pg(dsn, sql))


def add_events(dsn: str, rows: list[tuple[Any, ...]]) -> None:
    run_async(_pg(dsn, "", rows))


def catalog(pg_dsn: str, redis_dsn: str, folder: Path, name: str, query: str = QUERY) -> dict:
    return {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg_dsn},
            "kv": {"kind": "redis", "url": redis_dsn},
        },
        "features": {
            name: {
                "query": query,
                "entity": "user_id",
                "timestamp": "ts",
                "offline": {"path": str(folder / name), "partition": "date"},
                "online": {"source": "kv", "key": f"{name}:{{user_id}}", "grace": 30},
            }
        },
    }


def rows_of(table: Any) -> list[tuple[Any, ...]]:
    return sorted((tuple(r.values()) for r in table.to_pylist()), key=lambda r: (r[0], r[1]))


def latest(rows: list[tuple[Any, ...]]) -> dict[int, tuple[Any, ...]]:
    """The latest row per user, by hand."""
    out: dict[int, tuple[Any, ...]] = {}
    for r in sorted(rows, key=lambda r: r[1]):
        out[r[0]] = r
    return out


@pytest.fixture(scope="module")
def events(pg_dsn: str) -> str:
    """PostgreSQL table fvt.events with two days of events."""

    async def create() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute(
                f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA};"
                f"CREATE TABLE {SCHEMA}.events (user_id bigint, ts timestamptz, clicks int,"
                " amount float8, segment text)"
            )
        finally:
            await conn.close()

    run_async(create())
    add_events(pg_dsn, [event(i, i % 2) for i in range(200)])
    return pg_dsn


@pytest.fixture(scope="module")
def flush(redis_dsn: str) -> Any:
    client = redis.Redis.from_url(redis_dsn, decode_responses=True)
    yield client
    client.close()


def test_materialize_equals_the_query_and_lookup_serves_the_latest_rows(
    events: str, redis_dsn: str, tmp_path: Path, flush: Any
) -> None:
    with federator.connect(catalog(events, redis_dsn, tmp_path, "fv_full")) as fed:
        done = fed.features.materialize("fv_full")
        truth = pg(events, TRUTH)
        assert (done.version, done.new_version, done.rows) == (1, True, len(truth))
        offline = fed.sql("SELECT * FROM features.fv_full").to_arrow()
        assert rows_of(offline) == sorted(truth, key=lambda r: (r[0], r[1]))
        days = sorted(p.parent.name for p in (tmp_path / "fv_full").rglob("*.parquet"))
        assert days == sorted({f"date={r[1].astimezone(dt.UTC).date()}" for r in truth})

        keys = [3, 999_999, 0, 3]
        got = fed.features.lookup("fv_full", keys, budget_ms=5_000)
        assert got.column_names == ["user_id", "ts", "clicks2", "amount", "segment"]
        assert got.schema.field("ts").type == pa.timestamp("us", tz="UTC")  # the view's type
        by_user = latest(truth)
        want = [by_user[3], (999_999, None, None, None, None), by_user[0], by_user[3]]
        assert [tuple(r.values()) for r in got.to_pylist()] == want
        with pytest.raises(MissingKeysError, match="999999"):
            fed.features.lookup("fv_full", keys, missing="error")
        with pytest.raises(federator.QueryTimeoutError, match="fv_full"):
            fed.features.lookup("fv_full", list(range(USERS)), budget_ms=0.001)
        assert fed.features.lookup("fv_full", keys).equals(got)  # the pool is fine after it
        assert flush.hget("federator:fv:fv_full:manifest", "rows") == str(len(truth))


def test_rows_older_than_the_ttl_read_as_missing(
    events: str, redis_dsn: str, tmp_path: Path
) -> None:
    cut = DAY0 + dt.timedelta(hours=12)  # after every day-0 event, before every day-1 event
    cat = catalog(events, redis_dsn, tmp_path, "fv_ttl")
    cat["features"]["fv_ttl"]["ttl"] = (dt.datetime.now(dt.UTC) - cut).total_seconds()
    with federator.connect(cat) as fed:
        fed.features.materialize("fv_ttl")
        got = fed.features.lookup("fv_ttl", list(range(USERS)))
    by_user = latest(pg(events, TRUTH))
    want = [r if r[1] >= cut else (u, None, None, None, None) for u, r in sorted(by_user.items())]
    assert [tuple(r.values()) for r in got.to_pylist()] == want
    assert any(r[1] is None for r in want) and any(r[1] is not None for r in want)


def test_incremental_run_adds_only_new_rows_and_equals_a_full_run(
    events: str, redis_dsn: str, tmp_path: Path
) -> None:
    cat = {**catalog(events, redis_dsn, tmp_path, "fv_inc"), "cache": {"enabled": True}}
    with federator.connect(cat) as fed:
        first = fed.features.materialize("fv_inc")
        count = "SELECT count(*) AS n FROM features.fv_inc"
        assert fed.sql(count).to_arrow()[0][0].as_py() == first.rows  # cached now
        new = [event(i, 2) for i in range(1000, 1060)]  # a later day; 20 new users
        add_events(events, new)
        again = fed.features.materialize("fv_inc")
        truth = pg(events, TRUTH)
        assert again.rows == len(truth) - first.rows == sum(1 for r in new if r[2] >= 0)
        assert again.since == first.until and again.version == 1 and not again.new_version
        offline = rows_of(fed.sql("SELECT * FROM features.fv_inc").to_arrow())
        assert fed.sql(count).to_arrow()[0][0].as_py() == len(truth)  # the refresh is seen
        online = fed.features.lookup("fv_inc", list(range(USERS)))
    with federator.connect(catalog(events, redis_dsn, tmp_path / "full", "fv_inc_full")) as fed:
        fed.features.materialize("fv_inc_full")
        full = rows_of(fed.sql("SELECT * FROM features.fv_inc_full").to_arrow())
        full_online = fed.features.lookup("fv_inc_full", list(range(USERS)))
    assert offline == full == sorted(truth, key=lambda r: (r[0], r[1]))
    assert online.equals(full_online)
    by_user = latest(truth)
    assert [tuple(r.values()) for r in online.to_pylist()] == [by_user[u] for u in range(USERS)]
    manifest = json.loads((tmp_path / "fv_inc" / "manifest.json").read_text())
    refreshes = manifest["versions"][-1]["refreshes"]
    assert [r["rows"] for r in refreshes] == [first.rows, again.rows]


def test_a_reader_during_a_refresh_sees_the_old_rows_or_the_new_never_half(
    events: str, redis_dsn: str, tmp_path: Path
) -> None:
    cat = catalog(events, redis_dsn, tmp_path, "fv_atomic")
    cat["features"]["fv_atomic"]["query"] = QUERY + " AND user_id < 1000"
    with federator.connect(cat) as fed:
        old = fed.features.materialize("fv_atomic").rows
        users = [*range(1000), 5000]
        old_found = fed.features.lookup("fv_atomic", users).column("ts").null_count
        # many new rows on many days and users, so the refresh writes many files and keys
        add_events(
            events,
            [
                (1 + i % 900, DAY0 + dt.timedelta(days=3 + i % 5, seconds=i), 1, 1.0, "x")
                for i in range(3000)
            ],
        )
        seen_offline: set[int] = set()
        seen_online: set[int] = set()
        stop = threading.Event()
        reads = [0]

        def read() -> None:
            while not stop.is_set():
                n = fed.sql("SELECT count(*) AS n FROM features.fv_atomic").to_arrow()
                seen_offline.add(n.column("n")[0].as_py())
                seen_online.add(fed.features.lookup("fv_atomic", users).column("ts").null_count)
                reads[0] += 1

        reader = threading.Thread(target=read)
        reader.start()
        try:
            new = old + fed.features.materialize("fv_atomic").rows
        finally:
            stop.set()
            reader.join(60)
        assert reads[0] > 0
        new_found = fed.features.lookup("fv_atomic", users).column("ts").null_count
        assert seen_offline <= {old, new} and seen_online <= {old_found, new_found}
        assert (
            fed.sql("SELECT count(*) AS n FROM features.fv_atomic").to_arrow()[0][0].as_py() == new
        )


def test_a_changed_query_starts_version_2(events: str, redis_dsn: str, tmp_path: Path) -> None:
    with federator.connect(catalog(events, redis_dsn, tmp_path, "fv_ver")) as fed:
        assert fed.features.materialize("fv_ver").version == 1
    changed = QUERY + " AND user_id % 2 = 0"
    with federator.connect(catalog(events, redis_dsn, tmp_path, "fv_ver", changed)) as fed:
        done = fed.features.materialize("fv_ver")
        assert (done.version, done.new_version) == (2, True)
        truth = pg(events, TRUTH + " AND user_id % 2 = 0")
        assert rows_of(fed.sql("SELECT * FROM features.fv_ver").to_arrow()) == sorted(
            truth, key=lambda r: (r[0], r[1])
        )
        assert fed.features.lookup("fv_ver", [1]).column("ts").null_count == 1  # odd: gone
    manifest = json.loads((tmp_path / "fv_ver" / "manifest.json").read_text())
    assert [v["version"] for v in manifest["versions"]] == [1, 2]
    assert manifest["versions"][0]["query_hash"] != manifest["versions"][1]["query_hash"]


def test_cli_materializes_a_view_end_to_end(
    events: str, redis_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "federator.toml"
    toml.write_text(
        f'[sources.pg]\nkind = "postgres"\ndsn = "{events}"\n'
        f'[sources.kv]\nkind = "redis"\nurl = "{redis_dsn}"\n'
        f'[features.fv_cli]\nquery = "{QUERY}"\nentity = "user_id"\ntimestamp = "ts"\n'
        f'offline = {{ path = "{tmp_path / "fv_cli"}" }}\n'
        'online = { source = "kv", key = "fv_cli:{user_id}" }\n'
    )
    argv = [sys.executable, "-m", "federator.cli", "features", "materialize", "fv_cli"]
    done = subprocess.run(
        [*argv, "--catalog", str(toml), "--since", "2026-11-21"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    since = pg(events, TRUTH + " AND ts >= '2026-11-21'")
    assert f"fv_cli: new version 1, {len(since)} row(s)" in done.stdout
    from federator.cli import main

    assert main(["features", "materialize", "nope", "--catalog", str(toml)]) == 1
    assert "unknown feature view 'nope' (views: fv_cli)" in capsys.readouterr().err


def test_a_composite_entity_is_looked_up_by_tuples_or_dicts(
    events: str, redis_dsn: str, tmp_path: Path
) -> None:
    cat = catalog(events, redis_dsn, tmp_path, "fv_comp")
    spec = cat["features"]["fv_comp"]
    spec["entity"] = ["user_id", "segment"]
    spec["online"]["key"] = "fv_comp:{segment}:{user_id}"
    del spec["offline"]
    with federator.connect(cat) as fed:
        fed.features.materialize("fv_comp")
        keys = [(1, "loyal"), {"segment": "new", "user_id": 3}, (1, "nope")]
        got = fed.features.lookup("fv_comp", keys)
    truth: dict[tuple[Any, Any], tuple[Any, ...]] = {}
    for r in sorted(pg(events, TRUTH), key=lambda r: r[1]):
        truth[(r[0], r[4])] = r
    want = [truth[(1, "loyal")], truth[(3, "new")], (1, None, None, None, "nope")]
    assert got.column_names == ["user_id", "segment", "ts", "clicks2", "amount"]
    assert [tuple(r.values()) for r in got.to_pylist()] == [
        (w[0], w[4], w[1], w[2], w[3]) for w in want
    ]
