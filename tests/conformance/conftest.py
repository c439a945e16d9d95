"""Fixtures of the conformance matrix: the data set loaded once per session into every source
kind, one federation over all of them, and DuckDB over the same data as the truth."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conform_data import load_all, truth

import federator

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def conform_catalog(
    pg_dsn: str,
    mysql_dsn: str,
    mongo_dsn: str,
    pgvector_dsn: str,
    redis_dsn: str,
    falkordb_url: str,
    milvus_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("conform")
    return load_all(
        pg_dsn,
        mysql_dsn,
        mongo_dsn,
        folder,
        pgvector_dsn=pgvector_dsn,
        redis_url=redis_dsn,
        falkordb_url=falkordb_url,
        milvus_url=milvus_url,
        bolt=True,
        qdrant=True,
    )


@pytest.fixture(scope="session")
def conform_fed(conform_catalog: dict[str, Any]) -> Iterator[federator.Federation]:
    with federator.connect(conform_catalog, timeout=60) as fed:
        yield fed


@pytest.fixture(scope="session")
def conform_truth() -> Iterator[Any]:
    con = truth()
    yield con
    con.close()
