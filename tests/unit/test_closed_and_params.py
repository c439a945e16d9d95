"""A closed Federation says so (FederationClosedError), and a parameter value no source can bind
is a ParameterError naming the parameter and its type, raised while planning — before any
request is sent."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import federator


@pytest.fixture
def catalog(tmp_path: Path) -> dict[str, Any]:
    for name, table in (("s.db", "t"), ("o.db", "v")):
        with sqlite3.connect(tmp_path / name) as db:
            db.execute(f"CREATE TABLE {table} (x INTEGER, name TEXT)")
            db.execute(f"INSERT INTO {table} VALUES (1, 'ada'), (2, 'bob')")
    return {
        "sources": {
            "s": {"kind": "sqlite", "path": str(tmp_path / "s.db")},
            "o": {"kind": "sqlite", "path": str(tmp_path / "o.db")},
        }
    }


@pytest.fixture
def fed(catalog: dict[str, Any]) -> Iterator[federator.Federation]:
    with federator.connect(catalog) as f:
        yield f


ONE = "SELECT name FROM s.t WHERE x = :v"


# A closed federation refuses work without leaving a coroutine it never awaited behind.
NO_UNAWAITED = pytest.mark.filterwarnings(
    "error::RuntimeWarning", "error::pytest.PytestUnraisableExceptionWarning"
)


@NO_UNAWAITED
def test_closed_federation_raises_a_typed_error(catalog: dict[str, Any]) -> None:
    fed = federator.connect(catalog)
    result = fed.sql(ONE, {"v": 1})
    stream = fed.sql("SELECT x FROM s.t").to_batches()
    fed.close()
    fed.close()  # twice is fine
    for use in (
        lambda: fed.sql(ONE, {"v": 1}),
        lambda: fed.explain(ONE, {"v": 1}),
        result.to_arrow,
        lambda: fed.cache.invalidate(),
        lambda: list(stream),
    ):
        with pytest.raises(federator.FederationClosedError, match=r"closed.*federator\.connect"):
            use()
    assert issubclass(federator.FederationClosedError, federator.FederatorError)


@NO_UNAWAITED
def test_closed_federation_async(catalog: dict[str, Any]) -> None:
    async def go() -> None:
        async with federator.connect(catalog) as fed:
            result = await fed.sql_async(ONE, {"v": 1})
        with pytest.raises(federator.FederationClosedError):
            await fed.sql_async(ONE, {"v": 1})
        with pytest.raises(federator.FederationClosedError):
            await result.to_arrow_async()

    asyncio.run(go())


@NO_UNAWAITED
def test_async_iteration_closed_after_its_federation(catalog: dict[str, Any]) -> None:
    """An ``async for`` left after the federation closed ends cleanly (closing the federation
    closed its stream)."""

    async def go() -> None:
        fed = federator.connect(catalog)
        batches = (await fed.sql_async("SELECT x FROM s.t")).__aiter__()
        assert (await anext(batches)).num_rows > 0
        await fed.aclose()
        await batches.aclose()  # raised FederationClosedError from its cleanup before

    asyncio.run(go())


class Opaque:
    pass


@pytest.mark.parametrize(
    ("value", "type_name", "hint"),
    [
        (object(), "object", ""),
        (Opaque(), "Opaque", ""),
        ({1, 2}, "set", "pass a list"),
        (frozenset({1}), "frozenset", "pass a list"),
        ({"a": 1}, "dict", "json.dumps"),
        ([1, object()], "list", ""),
        (1j, "complex", ""),
    ],
)
@pytest.mark.parametrize(
    "query",
    [ONE, "SELECT t.name FROM s.t JOIN o.v ON v.x = t.x WHERE t.x + v.x = :v"],
    ids=["one source", "residual"],
)
def test_unbindable_parameter_is_named_with_its_type(
    fed: federator.Federation, query: str, value: Any, type_name: str, hint: str
) -> None:
    with pytest.raises(federator.ParameterError) as info:
        fed.sql(query, {"v": value})  # planning only: nothing was sent
    message = str(info.value)
    assert f"parameter :v is a {type_name}," in message and hint in message


@pytest.mark.parametrize(
    "value",
    [
        1,
        1.0,
        "1",
        True,
        None,
        decimal.Decimal("1"),
        b"1",
        dt.date(2026, 1, 1),
        dt.datetime(2026, 1, 1),
        uuid.UUID(int=1),
    ],
)
def test_bindable_scalars_pass(fed: federator.Federation, value: Any) -> None:
    fed.sql(ONE, {"v": value})  # planned; whether SQLite takes a Decimal is SQLite's to say


def test_lists_pass_and_unused_values_are_not_checked(fed: federator.Federation) -> None:
    got = fed.sql("SELECT name FROM s.t WHERE x IN (:a, :b)", {"a": 1, "b": 2, "extra": object()})
    assert sorted(got.to_arrow().column("name").to_pylist()) == ["ada", "bob"]


def test_checked_on_every_call_of_a_cached_plan(fed: federator.Federation) -> None:
    assert fed.sql(ONE, {"v": 1}).to_arrow().column("name").to_pylist() == ["ada"]
    with pytest.raises(federator.ParameterError, match=r":v is a set"):
        fed.sql(ONE, {"v": {1}})
