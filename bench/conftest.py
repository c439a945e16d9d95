"""pytest-benchmark suites: ``pytest bench/ --benchmark-only`` (servers started like the tests')."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from bench import env as benv

ROWS = 100_000


@pytest.fixture(scope="session")
def bench_env() -> Iterator[benv.Env]:
    e = benv.start(None, None)
    asyncio.run(benv.load_scan(e, ROWS))
    yield e
    e.stop()
