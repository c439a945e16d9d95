"""Fixtures of the short fuzz run: the conformance data set in databases named ``fuzz``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).parent
sys.path.insert(0, str(_HERE.parent / "conformance"))  # conform_data: the data and the truth

from conform_data import load_all, truth  # noqa: E402
from fuzz_gen import Federations, open_federations  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def fuzz_federations(
    pg_dsn: str,
    mysql_dsn: str,
    mongo_dsn: str,
    pgvector_dsn: str,
    redis_dsn: str,
    falkordb_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Federations]:
    folder = tmp_path_factory.mktemp("fuzz")
    catalog = load_all(
        pg_dsn,
        mysql_dsn,
        mongo_dsn,
        folder,
        "fuzz",
        pgvector_dsn=pgvector_dsn,
        redis_url=redis_dsn,
        falkordb_url=falkordb_url,
    )
    feds = open_federations(catalog)
    yield feds
    feds.close()


@pytest.fixture(scope="session")
def fuzz_truth() -> Iterator[Any]:
    con = truth()
    yield con
    con.close()
