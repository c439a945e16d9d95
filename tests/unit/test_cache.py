"""The result cache on embedded sources: hits, invalidation, TTL, staleness bounds, tokens,
single flight, the join cache, LRU, and the wire form of entries."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import federator
from federator.cache import CacheSettings, CorruptEntry, Entry, decode_entry, encode_entry
from federator.errors import CatalogError

JOIN = (
    "SELECT u.name, p.category, sum(o.qty) AS qty FROM shop.orders AS o JOIN shop.users AS u "
    "ON u.id = o.user_id JOIN lake.products AS p ON p.id = o.product_id "
    "WHERE p.category = :cat GROUP BY u.name, p.category ORDER BY u.name"
)


def _catalog(shop_db: Path, lake_dir: Path, **cache: Any) -> dict[str, Any]:
    return {
        "sources": {
            "shop": {"kind": "sqlite", "path": str(shop_db), "batch_rows": 4},
            "lake": {"kind": "files", "path": str(lake_dir)},
        },
        "cache": {"enabled": True, "tokens": False, **cache},
    }


@pytest.fixture
def cached(shop_db: Path, lake_dir: Path) -> Iterator[federator.Federation]:
    with federator.connect(_catalog(shop_db, lake_dir)) as fed:
        yield fed


def count_fetches(fed: federator.Federation) -> Counter[str]:
    """Count adapter.execute calls per source (each is one native request sent)."""
    counts: Counter[str] = Counter()
    for name, adapter in fed.catalog.adapters.items():
        original = adapter.execute

        def counted(request: Any, keys: Any = None, _o: Any = original, _n: str = name) -> Any:
            counts[_n] += 1
            return _o(request, keys)

        adapter.execute = counted  # type: ignore[method-assign]
    return counts


def write(shop_db: Path, sql: str, *args: Any) -> None:
    with sqlite3.connect(shop_db) as con:
        con.execute(sql, args)
    con.close()


def names(fed: federator.Federation, **kw: Any) -> list[str]:
    table = fed.sql("SELECT name FROM shop.users ORDER BY id", **kw).to_arrow()
    return table.column("name").to_pylist()


# ---- fragment cache -------------------------------------------------------------------------
def test_second_query_is_a_hit(cached: federator.Federation) -> None:
    fetches = count_fetches(cached)
    first = names(cached)
    result = cached.sql("SELECT name FROM shop.users ORDER BY id")
    text = result.explain(analyze=True)
    assert result.to_arrow().column("name").to_pylist() == first
    assert "from cache" in text and "cache hit" in text
    assert fetches["shop"] == 1
    stats = cached.cache.stats()
    assert stats["hits"] == 2 and stats["misses"] == 1 and stats["bytes"] > 0


def test_params_are_part_of_the_key(cached: federator.Federation) -> None:
    q = "SELECT name FROM shop.users WHERE id = :id"
    assert cached.sql(q, {"id": 1}).to_arrow().column(0).to_pylist() == ["ada"]
    assert cached.sql(q, {"id": 3}).to_arrow().column(0).to_pylist() == ["grace"]
    assert cached.sql(q, {"id": 1}).to_arrow().column(0).to_pylist() == ["ada"]
    assert cached.cache.stats()["hits"] == 1


def test_invalidation_then_the_write_shows(cached: federator.Federation, shop_db: Path) -> None:
    assert names(cached)[0] == "ada"
    write(shop_db, "UPDATE users SET name = 'lovelace' WHERE id = 1")
    assert names(cached)[0] == "ada"  # cached, tokens off: stale until invalidated
    assert cached.cache.invalidate(source="shop", table="users") == 1
    assert names(cached)[0] == "lovelace"


def test_invalidating_another_table_keeps_the_entry(cached: federator.Federation) -> None:
    names(cached)
    assert cached.cache.invalidate(source="shop", table="orders") == 0
    assert cached.cache.invalidate(source="lake") == 0
    names(cached)
    assert cached.cache.stats()["hits"] == 1
    assert cached.cache.invalidate() == 1  # everything


def test_invalidate_names_unknown_sources(cached: federator.Federation) -> None:
    with pytest.raises(federator.UnknownSourceError):
        cached.cache.invalidate(source="nope")


def test_ttl_expiry(shop_db: Path, lake_dir: Path) -> None:
    with federator.connect(_catalog(shop_db, lake_dir, ttl=0.3)) as fed:
        assert names(fed)[0] == "ada"
        write(shop_db, "UPDATE users SET name = 'lovelace' WHERE id = 1")
        assert names(fed)[0] == "ada"
        time.sleep(0.35)
        assert names(fed)[0] == "lovelace"


def test_source_and_table_ttl(shop_db: Path, lake_dir: Path) -> None:
    catalog = _catalog(shop_db, lake_dir, table_ttl={"shop.orders": 0.2})
    catalog["sources"]["lake"]["cache_ttl"] = {"default": 100, "events": 0.2}
    with federator.connect(catalog) as fed:
        ttl = fed.cache.ttl
        assert ttl("shop", [("main", "users")]) == 60
        assert ttl("shop", [("main", "users"), ("main", "orders")]) == 0.2
        assert ttl("lake", [("main", "products")]) == 100
        assert ttl("lake", [("main", "events")]) == 0.2


def test_max_staleness_zero_bypasses(cached: federator.Federation, shop_db: Path) -> None:
    fetches = count_fetches(cached)
    names(cached)
    write(shop_db, "UPDATE users SET name = 'lovelace' WHERE id = 1")
    result = cached.sql("SELECT name FROM shop.users ORDER BY id", max_staleness=0)
    assert result.to_arrow().column(0).to_pylist()[0] == "lovelace"
    assert "not cached: max_staleness=0" in result.explain(analyze=True)
    assert "Cache: bypassed (max_staleness=0)" in result.explain()
    assert fetches["shop"] == 3
    assert cached.cache.stats()["hits"] == 0


def test_max_staleness_bounds_the_age(cached: federator.Federation, shop_db: Path) -> None:
    names(cached)
    write(shop_db, "UPDATE users SET name = 'lovelace' WHERE id = 1")
    time.sleep(0.25)
    assert names(cached, max_staleness=10)[0] == "ada"
    assert names(cached, max_staleness=0.2)[0] == "lovelace"


def test_source_max_staleness(shop_db: Path, lake_dir: Path) -> None:
    catalog = _catalog(shop_db, lake_dir)
    catalog["sources"]["shop"]["max_staleness"] = 0
    with federator.connect(catalog) as fed:
        names(fed)
        assert "source 'shop' max_staleness=0" in fed.sql("SELECT id FROM shop.users").explain(
            analyze=True
        )
        assert fed.cache.stats()["stores"] == 0


def test_disabled_by_default(fed: federator.Federation) -> None:
    assert not fed.cache.enabled
    names(fed)
    names(fed)
    assert fed.cache.stats()["hits"] == 0
    assert "Cache" not in fed.sql("SELECT id FROM shop.users").explain()


def test_freshness_token_sees_a_write(shop_db: Path, lake_dir: Path) -> None:
    with federator.connect(_catalog(shop_db, lake_dir, tokens=True, token_interval=0)) as fed:
        time.sleep(0.1)  # a file written within the last 50 ms is not trusted
        assert names(fed)[0] == "ada"
        assert names(fed)[0] == "ada"
        assert fed.cache.stats()["hits"] == 1
        write(shop_db, "UPDATE users SET name = 'lovelace' WHERE id = 1")
        assert names(fed)[0] == "lovelace"  # no invalidate(): the file's stamp changed


def test_default_token_interval_bounds_an_unseen_write(shop_db: Path, lake_dir: Path) -> None:
    with federator.connect(_catalog(shop_db, lake_dir, tokens=True)) as fed:
        time.sleep(0.1)  # a file written within the last 50 ms is not trusted
        assert "tokens read at most every 1 s" in fed.sql("SELECT 1 FROM shop.users").explain()
        assert names(fed)[0] == "ada"
        result = fed.sql("SELECT name FROM shop.users ORDER BY id")
        assert result.to_arrow().column("name")[0].as_py() == "ada"
        assert "freshness token read 0." in result.explain(analyze=True)
        write(shop_db, "UPDATE users SET name = 'lovelace' WHERE id = 1")
        time.sleep(1.1)  # the interval passed: the next lookup reads the token again
        assert names(fed)[0] == "lovelace"


def test_token_interval_reuses_a_token(shop_db: Path, lake_dir: Path) -> None:
    with federator.connect(_catalog(shop_db, lake_dir, tokens=True, token_interval=30)) as fed:
        time.sleep(0.1)
        assert names(fed)[0] == "ada"
        write(shop_db, "UPDATE users SET name = 'lovelace' WHERE id = 1")
        assert names(fed)[0] == "ada"  # the token read a moment ago still stands
        assert names(fed, max_staleness=0)[0] == "lovelace"


def test_volatile_and_unkeyable_are_not_cached(cached: federator.Federation) -> None:
    import numpy as np

    from federator.cache import _canon, _Unkeyable

    class Opaque:
        pass

    with pytest.raises(_Unkeyable):
        _canon(Opaque())
    assert _canon(np.array([1.0, 2.0])) == _canon(np.array([1.0, 2.0]))
    assert _canon(np.array([1.0, 2.0])) != _canon(np.array([1.0, 2.5]))
    assert _canon(1) != _canon(1.0) != _canon("1")
    result = cached.sql("SELECT name, random() AS r FROM shop.users")
    assert "volatile" in result.explain(analyze=True)
    assert cached.cache.stats()["hits"] == 0


def test_partial_stream_is_never_stored(cached: federator.Federation) -> None:
    reader = cached.sql("SELECT id FROM shop.orders").to_batches()
    first = reader.read_next_batch()
    assert first.num_rows == 4  # batch_rows = 4: more batches follow
    reader.close()
    assert cached.cache.stats()["stores"] == 0
    full = cached.sql("SELECT id FROM shop.orders").to_arrow()
    assert full.num_rows == 60
    assert cached.cache.stats()["stores"] == 1
    again = cached.sql("SELECT id FROM shop.orders").to_arrow()
    assert again.equals(full)


def test_entry_limit_streams_through(shop_db: Path, lake_dir: Path) -> None:
    with federator.connect(_catalog(shop_db, lake_dir, max_entry_bytes=64)) as fed:
        result = fed.sql("SELECT id, status FROM shop.orders")
        assert result.to_arrow().num_rows == 60
        assert "entry limit" in result.explain(analyze=True)
        assert fed.cache.stats()["entries"] == 0


def test_lru_evicts_within_the_budget(shop_db: Path, lake_dir: Path) -> None:
    with federator.connect(_catalog(shop_db, lake_dir, max_bytes=50)) as fed:
        for i in range(1, 7):
            fed.sql("SELECT id, name FROM shop.users WHERE id = :id", {"id": i}).to_arrow()
        stats = fed.cache.stats()
        assert stats["bytes"] <= 50
        assert stats["evictions"] >= 1
        assert stats["entries"] < 6


def test_unreachable_redis_tier_only_costs_the_cache(shop_db: Path, lake_dir: Path) -> None:
    pytest.importorskip("redis")
    catalog = _catalog(shop_db, lake_dir, redis="redis://127.0.0.1:1/0", redis_timeout=0.5)
    with federator.connect(catalog) as fed:
        assert names(fed)[0] == "ada"
        result = fed.sql("SELECT name FROM shop.users ORDER BY id")
        assert result.to_arrow().num_rows == 6
        assert "Redis tier skipped: ConnectionError" in result.explain(analyze=True)
        fed.cache.invalidate(source="shop")  # logged, not raised
        stats = fed.cache.stats()
        assert stats["errors"] >= 1  # the first try; later ones skip the tier (circuit open)
        assert stats["redis"]["state"] == "open" and stats["redis"]["skipped"] >= 2


# ---- single flight -------------------------------------------------------------------------
def test_fifty_concurrent_queries_fetch_each_fragment_once(
    cached: federator.Federation,
) -> None:
    fetches = count_fetches(cached)

    async def run() -> list[pa.Table]:
        results = [await cached.sql_async(JOIN, {"cat": "books"}) for _ in range(50)]
        return await asyncio.gather(*(r.to_arrow_async() for r in results))

    tables = asyncio.run(run())
    assert all(t.equals(tables[0]) for t in tables)
    plan = cached.sql(JOIN, {"cat": "books"}).plan
    per_source = Counter(f.source for f in plan.fragments)
    assert dict(fetches) == dict(per_source)
    stats = cached.cache.stats()
    assert stats["hits"] + stats["shared_fetches"] > 0


def test_a_stalled_leader_hands_over_to_one_follower(cached: federator.Federation) -> None:
    fetches = count_fetches(cached)
    query = "SELECT id FROM shop.orders"
    reader = cached.sql(query).to_batches()
    assert reader.read_next_batch().num_rows == 4  # the leader, parked: more batches follow

    async def run() -> list[pa.Table]:
        results = [await cached.sql_async(query) for _ in range(10)]
        return await asyncio.gather(*(r.to_arrow_async() for r in results))

    tables = cached._loop.run(run())
    reader.close()
    assert all(t.num_rows == 60 and t.equals(tables[0]) for t in tables)
    assert sorted(tables[0].column("id").to_pylist()) == list(range(1, 61))
    assert fetches["shop"] == 2  # the parked leader's, then one follower's for the nine others
    assert cached.cache.stats()["shared_fetches"] == 9


# ---- join cache ----------------------------------------------------------------------------
def test_frequent_join_is_materialized(cached: federator.Federation, shop_db: Path) -> None:
    fetches = count_fetches(cached)
    truth = cached.sql(JOIN, {"cat": "books"}, max_staleness=0).to_arrow()
    before = sum(fetches.values())
    for _ in range(3):  # threshold 3: the third time materializes
        assert cached.sql(JOIN, {"cat": "books"}).to_arrow().equals(truth)
    result = cached.sql(JOIN, {"cat": "books"})
    text = result.explain(analyze=True)
    assert "not run: join answer from cache" in text
    assert sum(fetches.values()) == before + 2  # the fragments ran once (then fragment hits)
    shapes = cached.cache.stats()["shapes"]
    (shape,) = shapes.values()
    assert shape["seen"] == 4 and shape["hits"] == 1 and shape["stored"] == 1
    assert shape["bytes"] > 0
    # another parameter value: same shape, its own answer
    games = cached.sql(JOIN, {"cat": "games"}).to_arrow()
    assert games.equals(cached.sql(JOIN, {"cat": "games"}, max_staleness=0).to_arrow())
    assert not games.equals(truth)
    # a write plus invalidation reaches the join answer too
    write(shop_db, "UPDATE users SET name = 'lovelace' WHERE id = 1")
    cached.cache.invalidate(source="shop", table="users")
    fresh = cached.sql(JOIN, {"cat": "books"}).to_arrow()
    assert "lovelace" in fresh.column("name").to_pylist()


def test_literals_are_abstracted_in_the_shape(cached: federator.Federation) -> None:
    q = JOIN.replace(":cat", "'{}'")
    for cat in ("books", "games", "garden"):
        cached.sql(q.format(cat)).to_arrow()
    shapes = cached.cache.stats()["shapes"]
    assert len(shapes) == 1 and next(iter(shapes.values()))["seen"] == 3
    text = cached.sql(q.format("books")).explain()
    assert "join shape" in text and "seen 3 time(s)" in text


def test_join_cache_off(shop_db: Path, lake_dir: Path) -> None:
    with federator.connect(_catalog(shop_db, lake_dir, join_window=0)) as fed:
        for _ in range(4):
            fed.sql(JOIN, {"cat": "books"}).to_arrow()
        assert fed.cache.stats()["shapes"] == {}


def test_bound_fragment_keyed_by_its_keys(shop_db: Path, lake_dir: Path) -> None:
    q = (
        "SELECT o.id, p.name FROM lake.products AS p JOIN shop.orders AS o "
        "ON o.product_id = p.id WHERE p.category = :cat ORDER BY o.id"
    )
    with federator.connect(_catalog(shop_db, lake_dir, join_window=0)) as fed:
        books = fed.sql(q, {"cat": "books"}).to_arrow()
        games = fed.sql(q, {"cat": "games"}).to_arrow()
        assert books.column("name").to_pylist() != games.column("name").to_pylist()
        assert fed.sql(q, {"cat": "books"}).to_arrow().equals(books)
        assert fed.sql(q, {"cat": "games"}, max_staleness=0).to_arrow().equals(games)


# ---- settings and wire form ----------------------------------------------------------------
def test_settings_errors(shop_db: Path, lake_dir: Path) -> None:
    with pytest.raises(CatalogError, match="unknown \\[cache\\] setting"):
        federator.connect(_catalog(shop_db, lake_dir, size=1))
    with pytest.raises(CatalogError, match="compression"):
        CacheSettings.from_config({"compression": "gzip"})


@pytest.mark.parametrize("compression", ["zstd", "lz4"])
def test_entry_round_trip_and_corruption(compression: str) -> None:
    table = pa.table({"a": list(range(1000)), "b": [str(i) for i in range(1000)]})
    entry = Entry(table, created=1.0, expires=2.0, gens={"*": 3}, tokens={"pg": "x"})
    blob = encode_entry(entry, compression)
    assert len(blob) < table.nbytes
    back = decode_entry(blob)
    assert back.table.equals(table) and back.gens == {"*": 3} and back.tokens == {"pg": "x"}
    for bad in (
        blob[: len(blob) // 2],
        blob[:-1],
        b"junk" + blob,
        blob[:40] + bytes([blob[40] ^ 0xFF]) + blob[41:],
        blob[:-10] + bytes(b ^ 0x55 for b in blob[-10:]),
        b"",
    ):
        with pytest.raises(CorruptEntry):
            decode_entry(bad)
