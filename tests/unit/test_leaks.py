"""No growth of live Python objects over many queries (issue 19: memory flat under load).

800 small queries — single-source, cross-source through the DuckDB residual, streamed and
closed early, failing — on one Federation over two SQLite files; after a warm-up (pools, the
plan cache, the engine), the Python memory tracemalloc sees live must grow by less than a
generous bound. A leak of one small object per query (a dict entry keyed by query, a task, a
stream, an Execution) shows as a few hundred KiB here."""

from __future__ import annotations

import gc
import sqlite3
import tracemalloc

import pytest

import federator

QUERIES = 800
# bytes of live Python memory the 800 queries may leave behind: 128 a query (about 24 KB stay in
# a clean run), so even a dict entry per query (a short string key and a small value) fails it
BOUND = QUERIES * 128


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("leaks")
    for name, rows in (("a", [(i, f"n{i % 7}") for i in range(200)]), ("b", None)):
        con = sqlite3.connect(d / f"{name}.db")
        if rows is not None:
            con.execute("CREATE TABLE t (id INTEGER, name TEXT)")
            con.executemany("INSERT INTO t VALUES (?, ?)", rows)
        else:
            con.execute("CREATE TABLE o (id INTEGER, qty INTEGER)")
            con.executemany("INSERT INTO o VALUES (?, ?)", [(i % 200, i) for i in range(1_000)])
        con.commit()
        con.close()
    return {
        "sources": {
            "a": {"kind": "sqlite", "path": str(d / "a.db")},
            "b": {"kind": "sqlite", "path": str(d / "b.db"), "batch_rows": 100},
        }
    }


def _one(fed: federator.Federation, i: int) -> None:
    kind = i % 4
    if kind == 0:
        rows = fed.sql("SELECT name FROM a.t WHERE id = :i", {"i": i % 200}).to_arrow()
        assert rows.num_rows == 1
    elif kind == 1:
        got = fed.sql(
            "SELECT t.name, sum(o.qty) AS q FROM a.t t JOIN b.o o ON o.id = t.id"
            " WHERE t.id BETWEEN :lo AND :lo + 4 GROUP BY t.name",
            {"lo": i % 190},
        ).to_arrow()
        assert got.num_rows >= 1
    elif kind == 2:
        with fed.sql("SELECT id, qty FROM b.o").to_batches() as reader:
            assert reader.read_next_batch().num_rows == 100  # closed early: the rest unread
    else:
        with pytest.raises(federator.FederatorError):
            fed.sql("SELECT nme FROM a.t")  # an error: nothing of it may stay


def test_live_python_memory_is_flat_over_800_queries(catalog: dict[str, object]) -> None:
    with federator.connect(catalog) as fed:
        for i in range(200):  # warm-up: pools, catalog, plan cache, the residual engine
            _one(fed, i)
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for i in range(QUERIES):
                _one(fed, i)
            gc.collect()
            grown = tracemalloc.get_traced_memory()[0] - before
            top = tracemalloc.take_snapshot().statistics("lineno")[:5]
        finally:
            tracemalloc.stop()
    assert grown < BOUND, f"{grown:,} bytes left by {QUERIES:,} queries; largest: {top}"
