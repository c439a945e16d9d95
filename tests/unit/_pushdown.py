"""The pushdown fixture machinery lives in :mod:`federator.rules_testing` (format, parser,
offline shop federation, checks); this module adds the location of federator's own fixtures.

``python tests/unit/_pushdown.py FILE...`` rewrites the expected sections of fixture files
from the current planner (read the diff before committing it).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from federator.adapters.base import TableInfo

import federator
from federator.rules_testing import (
    CUSTOMERS,
    ORDERS,
    PRODUCTS,
    SHOP_TABLES,
    SOURCES,
    Case,
    ExpectedFragment,
    actual,
    bind_text,
    differences,
    fixed_tables,
    parse_fixture,
    planning_federation,
    pytest_params,
    render_case,
    squash,
    update_file,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "pushdown"

__all__ = [
    "CUSTOMERS",
    "FIXTURES",
    "ORDERS",
    "PRODUCTS",
    "SHOP_TABLES",
    "SOURCES",
    "Case",
    "ExpectedFragment",
    "actual",
    "bind_text",
    "collect",
    "differences",
    "fixed_tables",
    "parse_fixture",
    "planning_federation",
    "render_case",
    "squash",
    "update_file",
]


def collect(backend: str) -> list[Case]:
    return [
        case for path in sorted((FIXTURES / backend).glob("*.sql")) for case in parse_fixture(path)
    ]


def params(backend: str) -> list[Any]:
    """One ``pytest.param`` per fixture case of ``backend`` (strict xfail where marked)."""
    return pytest_params(*sorted((FIXTURES / backend).glob("*.sql")))


def use_fixed_tables(fed: federator.Federation, tables: dict[str, list[TableInfo]]) -> None:
    """Plan offline: the named sources answer ``tables()`` from fixed metadata, no I/O."""
    for name, infos in tables.items():

        async def fixed(infos: list[TableInfo] = infos) -> list[TableInfo]:
            return infos

        fed.catalog.adapters[name].tables = fixed  # type: ignore[method-assign]


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]] or sorted(FIXTURES.glob("*/*.sql"))
    federation = planning_federation()
    try:
        for p in paths:
            update_file(federation, p)
            print(f"updated {p}")
    finally:
        federation.close()
