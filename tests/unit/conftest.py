"""Fixtures: the embedded sources of ``_data`` made in tmp_path, and a federation over them."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _data import truth_db, write_lake, write_shop

import federator


@pytest.fixture
def shop_db(tmp_path: Path) -> Path:
    return write_shop(tmp_path / "shop.db")


@pytest.fixture
def lake_dir(tmp_path: Path) -> Path:
    return write_lake(tmp_path / "lake")


@pytest.fixture
def catalog(shop_db: Path, lake_dir: Path) -> dict[str, Any]:
    return {
        "sources": {
            "shop": {"kind": "sqlite", "path": str(shop_db)},
            "lake": {"kind": "files", "path": str(lake_dir)},
        }
    }


@pytest.fixture
def fed(catalog: dict[str, Any]) -> Iterator[federator.Federation]:
    with federator.connect(catalog) as federation:
        yield federation


@pytest.fixture
def truth(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    con = truth_db(tmp_path / "truth.db")
    yield con
    con.close()
