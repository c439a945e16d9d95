"""The query deadline (federator.deadline), offline: scopes nest, a timeout names what the
query waited for, and teardown work is given up on after its bound."""

from __future__ import annotations

import asyncio
import time

import pytest

from federator.deadline import bound, cleanup, remaining, scope, waiting_for, within
from federator.errors import QueryTimeoutError


def test_no_deadline_outside_a_scope() -> None:
    async def main() -> tuple[float | None, float | None]:
        return remaining(), bound(10.0)

    assert asyncio.run(main()) == (None, 10.0)


def test_inner_scope_never_extends_the_outer_deadline() -> None:
    async def main() -> tuple[float, float]:
        with scope(1.0):
            with scope(60.0):
                longer = remaining()
            with scope(0.2):
                shorter = remaining()
        assert longer is not None and shorter is not None
        return longer, shorter

    longer, shorter = asyncio.run(main())
    assert 0.9 < longer <= 1.0
    assert 0.1 < shorter <= 0.2


def test_bound_ends_just_before_the_deadline() -> None:
    async def main() -> tuple[float | None, float | None]:
        with scope(2.0):
            return bound(10.0), bound(0.5)

    before_deadline, own_limit = asyncio.run(main())
    assert before_deadline is not None and 1.9 < before_deadline < 2.0
    assert own_limit == 0.5


def test_timeout_names_what_the_query_waited_for() -> None:
    async def read_catalog() -> None:
        with waiting_for("reading the catalog of source 'pg' at db:5432"):
            await asyncio.sleep(10)

    started = time.monotonic()
    with pytest.raises(QueryTimeoutError, match="reading the catalog of source 'pg' at db:5432"):
        asyncio.run(within(read_catalog(), 0.2))
    assert time.monotonic() - started < 1.0


def test_timeout_without_a_named_wait_names_the_stage() -> None:
    with pytest.raises(QueryTimeoutError, match=r"after 0\.1s while running planning"):
        asyncio.run(within(asyncio.sleep(10), 0.1))


def test_within_without_timeout_just_awaits() -> None:
    async def answer() -> int:
        return 42

    assert asyncio.run(within(answer(), None)) == 42


def test_cleanup_gives_up_after_its_bound_and_swallows_failures() -> None:
    cancelled = []

    async def stuck() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def failing() -> None:
        raise OSError("the network is gone")

    async def main() -> float:
        started = time.monotonic()
        await cleanup(stuck(), 0.1)
        await cleanup(failing(), 0.1)
        await asyncio.sleep(0)  # let the cancellation land
        return time.monotonic() - started

    assert asyncio.run(main()) < 0.5
    assert cancelled == [True]
