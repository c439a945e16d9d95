"""The federation's loop thread: work racing stop() ends with FederationClosedError, never waits
forever on a loop that no longer runs (issue 19, the stop/close race)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from federator._loop import LoopThread
from federator.errors import FederationClosedError

NO_UNAWAITED = pytest.mark.filterwarnings(
    "error::RuntimeWarning", "error::pytest.PytestUnraisableExceptionWarning"
)


def _in_thread(fn: Any) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as e:  # the test inspects it
            outcome["error"] = e

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


@NO_UNAWAITED
def test_work_in_flight_when_stopped_gets_a_closed_error() -> None:
    loop = LoopThread()
    thread, outcome = _in_thread(lambda: loop.run(asyncio.sleep(30)))
    time.sleep(0.1)
    started = time.monotonic()
    loop.stop()
    thread.join(5)
    assert not thread.is_alive(), "run() waited on a stopped loop"
    assert isinstance(outcome.get("error"), FederationClosedError), outcome
    assert time.monotonic() - started < 2
    assert loop.loop.is_closed()


@NO_UNAWAITED
def test_submissions_racing_stop_all_end() -> None:
    """Threads submit work as fast as they can while the loop stops: every call returns or
    raises FederationClosedError; none hangs, none sees 'Event loop is closed'."""
    for _ in range(20):
        loop = LoopThread()
        errors: list[BaseException] = []

        def hammer(loop: LoopThread = loop, errors: list[BaseException] = errors) -> None:
            while True:
                try:
                    loop.run(asyncio.sleep(0.001))
                except FederationClosedError:
                    return
                except BaseException as e:
                    errors.append(e)
                    return

        threads = [threading.Thread(target=hammer, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.02)
        loop.stop()
        for t in threads:
            t.join(5)
        assert not any(t.is_alive() for t in threads), "a call waited on a stopped loop"
        assert errors == []


@NO_UNAWAITED
def test_stop_from_several_threads_at_once() -> None:
    loop = LoopThread()
    ran: list[int] = []

    async def final() -> None:
        ran.append(1)

    stoppers = [_in_thread(lambda: loop.stop(final())) for _ in range(4)]
    for thread, outcome in stoppers:
        thread.join(10)
        assert not thread.is_alive() and "error" not in outcome, outcome
    assert ran == [1]  # the first stop's final work ran once; the others were refused unstarted
    assert loop.loop.is_closed()


@NO_UNAWAITED
def test_run_async_in_flight_when_stopped_gets_a_closed_error() -> None:
    loop = LoopThread()

    async def caller() -> BaseException | None:
        task = asyncio.ensure_future(loop.run_async(asyncio.sleep(30)))
        await asyncio.sleep(0.1)
        await asyncio.to_thread(loop.stop)
        try:
            await asyncio.wait_for(task, 5)
        except BaseException as e:
            return e
        return None

    assert isinstance(asyncio.run(caller()), FederationClosedError)


def test_the_final_work_error_is_raised_after_the_loop_is_closed() -> None:
    loop = LoopThread()

    async def failing() -> None:
        raise ValueError("release failed")

    with pytest.raises(ValueError, match="release failed"):
        loop.stop(failing())
    assert loop.loop.is_closed()
    with pytest.raises(FederationClosedError):
        loop.run(asyncio.sleep(0))
