"""The pushdown fixture machinery lives in :mod:`federator.rules_testing` (format, parser,
offline shop federation, checks); this module adds the location of federator's own fixtures.

``python tests/unit/_pushdown.py FILE...`` rewrites the expected sections of fixture files
from the current planner (read the diff before committing it).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
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
    "federation_fixture",
    "fixed_tables",
    "offline_federation",
    "parse_fixture",
    "planning_federation",
    "render_case",
    "squash",
    "update_file",
    "update_fixtures",
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


def offline_federation(
    sources: dict[str, dict[str, Any]],
    tables: dict[str, list[TableInfo]] | None = None,
    *,
    beside: Iterable[str] = ("lite",),
    planner: dict[str, Any] | None = None,
) -> federator.Federation:
    """A federation over ``sources`` beside the fixture sources named in ``beside``, planning
    offline: those and ``tables`` (by source) answer ``tables()`` from fixed metadata.

    >>> fed = offline_federation({})  # the fixture SQLite shop alone
    >>> fed.close()
    """
    beside = list(beside)
    catalog: dict[str, Any] = {"sources": {**sources, **{n: SOURCES[n][0] for n in beside}}}
    if planner:
        catalog["planner"] = dict(planner)
    fed = federator.connect(catalog)
    fixed = {name: fixed_tables(name, SOURCES[name][1]) for name in beside}
    use_fixed_tables(fed, {**(tables or {}), **fixed})
    return fed


def federation_fixture(make: Callable[[], federator.Federation]) -> Any:
    """A module-scoped pytest fixture ``fed`` over ``make()``, closed after the module:
    ``fed = federation_fixture(mongo_federation)`` in a test module."""

    @pytest.fixture(scope="module")
    def fed() -> Iterator[federator.Federation]:
        federation = make()
        yield federation
        federation.close()

    return fed


def update_fixtures(
    make: Callable[[], federator.Federation], backend: str, paths: Sequence[str] = ()
) -> None:
    """Rewrite the expected sections of ``paths`` (default: every fixture file of ``backend``)
    from the current planner; a test module's ``__main__`` (read the diff after)."""
    federation = make()
    try:
        for p in [Path(a) for a in paths] or sorted((FIXTURES / backend).glob("*.sql")):
            update_file(federation, p)
            print(f"updated {p}")
    finally:
        federation.close()


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]] or sorted(FIXTURES.glob("*/*.sql"))
    federation = planning_federation()
    try:
        for p in paths:
            update_file(federation, p)
            print(f"updated {p}")
    finally:
        federation.close()
