"""Scan suites for pytest-benchmark; ``python -m bench`` prints the same comparisons as ratios."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

import federator
from bench import env as benv
from bench import scan

QUERY = f"SELECT * FROM {benv.SCAN_TABLE}"


@pytest.fixture(scope="module")
def fed(bench_env: benv.Env) -> Iterator[Any]:
    catalog = {"sources": {"pg": {"kind": "postgres", "dsn": bench_env.pg_dsn},
                           "my": {"kind": "mysql", "dsn": bench_env.mysql_dsn}}}  # fmt: skip
    with federator.connect(catalog) as f:
        yield f


@pytest.mark.parametrize("source", ["pg", "my"])
def test_federator_scan(benchmark: Any, fed: Any, source: str) -> None:
    table = benchmark(lambda: fed.sql(f"SELECT * FROM {source}.{benv.SCAN_TABLE}").to_arrow())
    assert table.num_rows == 100_000


def test_asyncpg_fetch(benchmark: Any, bench_env: benv.Env) -> None:
    loop = asyncio.new_event_loop()
    conn = loop.run_until_complete(asyncpg.connect(bench_env.pg_dsn))
    try:
        table = benchmark(lambda: scan._asyncpg_fetch(loop, conn, QUERY))
        assert table.num_rows == 100_000
    finally:
        loop.run_until_complete(conn.close())
        loop.close()


def test_adbc(benchmark: Any, bench_env: benv.Env) -> None:
    pytest.importorskip("adbc_driver_postgresql")
    assert benchmark(lambda: scan._adbc(bench_env.pg_dsn, QUERY)).num_rows == 100_000


def test_connectorx_mariadb(benchmark: Any, bench_env: benv.Env) -> None:
    pytest.importorskip("connectorx")
    assert benchmark(lambda: scan._cx(bench_env.mysql_dsn, QUERY)).num_rows == 100_000
