"""The query deadline: one point in time that bounds everything a query waits for.

A query's ``timeout`` covers planning (catalog reads, connects, handshakes) and running
(connects, streaming) together: the run gets what planning left of it (``spent``); after an
interruption, tearing connections down and cancelling the server-side work take at most
:data:`CLEANUP_SECONDS` more. The deadline lives in a context variable, so adapters deep in a
call read it without it being passed through every layer.

>>> import asyncio
>>> async def main():
...     with scope(5.0):
...         return round(remaining())
>>> asyncio.run(main())
5
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

from federator.errors import QueryTimeoutError

T = TypeVar("T")

# Bound on the work after an interruption: closing a connection, a server-side cancel or KILL.
CLEANUP_SECONDS = 0.5
# A bound of ours (connect, handshake) expires this much before the query's deadline, so the
# error names the source rather than "timed out".
_AHEAD = 0.05


@dataclass
class Deadline:
    """When the current query must end (event-loop time) and what it is waiting for."""

    at: float
    timeout: float
    waiting: list[str] = field(default_factory=list)


_CURRENT: ContextVar[Deadline | None] = ContextVar("federator_deadline", default=None)


def current() -> Deadline | None:
    """The deadline of the query running in this task (None: no timeout)."""
    return _CURRENT.get()


def remaining() -> float | None:
    """Seconds left before the current query's deadline (None: no timeout)."""
    d = _CURRENT.get()
    return None if d is None else d.at - asyncio.get_running_loop().time()


def bound(seconds: float | None) -> float | None:
    """``seconds`` (a per-step limit such as a connect timeout) shortened to end just before
    the query's deadline; None when neither limits it."""
    left = remaining()
    if left is None:
        return seconds
    left = max(left - _AHEAD, 0.001)
    return left if seconds is None else min(seconds, left)


@contextlib.contextmanager
def scope(timeout: float | None, *, at: float | None = None) -> Iterator[Deadline | None]:
    """Set the deadline ``timeout`` seconds from now, or at event-loop time ``at``, for the code
    inside (an enclosing, earlier deadline stays in force)."""
    if timeout is None:
        yield _CURRENT.get()
        return
    if at is None:
        at = asyncio.get_running_loop().time() + timeout
    outer = _CURRENT.get()
    d = outer if outer is not None and outer.at <= at else Deadline(at, timeout)
    token = _CURRENT.set(d)
    try:
        yield d
    finally:
        try:
            _CURRENT.reset(token)
        except ValueError:  # an async generator resumed in another task's context
            _CURRENT.set(outer)


@contextlib.asynccontextmanager
async def ascope(
    timeout: float | None, *, at: float | None = None
) -> AsyncIterator[Deadline | None]:
    """:func:`scope` for an ``async with`` statement (next to ``asyncio.timeout``)."""
    with scope(timeout, at=at) as d:
        yield d


def run_deadline(timeout: float | None, spent: float = 0.0) -> float | None:
    """The event-loop time a query's run must end by: ``timeout`` from its planning's start,
    of which planning took ``spent`` seconds (None: no timeout).

    >>> async def main():
    ...     at = run_deadline(5.0, spent=2.0)
    ...     return round(at - asyncio.get_running_loop().time())
    >>> asyncio.run(main())
    3
    """
    if timeout is None:
        return None
    return asyncio.get_running_loop().time() + timeout - spent


@contextlib.contextmanager
def waiting_for(what: str) -> Iterator[None]:
    """Name what the query waits for while inside (a timeout message names it)."""
    d = _CURRENT.get()
    if d is None:
        yield
        return
    d.waiting.append(what)
    try:
        yield
    except asyncio.CancelledError:
        raise  # kept: the timeout that is unwinding names it
    except BaseException:
        d.waiting.remove(what)
        raise
    d.waiting.remove(what)


async def within(work: Awaitable[T], timeout: float | None, stage: str = "planning") -> T:
    """Await ``work`` under a deadline ``timeout`` seconds away; at the deadline raise
    :class:`QueryTimeoutError` naming what it was waiting for."""
    if timeout is None:
        return await work
    with scope(timeout) as d:
        assert d is not None
        try:
            async with asyncio.timeout_at(d.at):
                return await work
        except TimeoutError:
            what = ", ".join(d.waiting) or stage
            raise QueryTimeoutError(timeout, what) from None


async def cleanup(work: Awaitable[Any], seconds: float = CLEANUP_SECONDS) -> None:
    """Run teardown work (a cancel, a KILL, a close, a task being cancelled) for at most
    ``seconds``, then give up on it; its failures are swallowed: it runs while another error
    is already on its way to the caller."""
    task = asyncio.ensure_future(work)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
    except BaseException:
        task.cancel()
        raise
    if not done:
        task.cancel()
    elif not task.cancelled():
        task.exception()  # retrieved: a failed teardown is not worth a warning
