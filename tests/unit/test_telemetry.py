"""Offline parts of federator.telemetry: the caller's context reaches the federation's loop
thread (so a query span is a child of the caller's span), and how a run's end is named."""

from __future__ import annotations

import asyncio
import contextvars

import pytest

from federator._loop import LoopThread
from federator.errors import QueryTimeoutError, SourceError
from federator.telemetry import outcome_of

CALLER = contextvars.ContextVar("caller", default="unset")


async def _seen() -> str:
    await asyncio.sleep(0)
    return CALLER.get()


def test_the_callers_context_reaches_the_loop_thread() -> None:
    loop = LoopThread()
    try:
        token = CALLER.set("sync caller")
        assert loop.run(_seen()) == "sync caller"
        CALLER.reset(token)

        async def from_another_loop() -> str:
            CALLER.set("async caller")
            return await loop.run_async(_seen())

        assert asyncio.run(from_another_loop()) == "async caller"
        assert loop.run(_seen()) == "unset"
    finally:
        loop.stop()


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (QueryTimeoutError(1.0, "fragment f0 on source 'pg'"), "timeout"),
        (TimeoutError(), "timeout"),
        (asyncio.CancelledError(), "cancelled"),
        (GeneratorExit(), "cancelled"),
        (SourceError("fragment f0 on source 'pg' failed"), "error"),
        (ValueError("x"), "error"),
    ],
)
def test_outcome_of_an_error(error: BaseException, outcome: str) -> None:
    assert outcome_of(error) == outcome
