"""How long the running query may still take, for the adapters that tell their server
(MongoDB ``maxTimeMS``, FalkorDB's ``GRAPH.QUERY … timeout``, a Bolt transaction timeout, a
Milvus request's gRPC deadline), so server-side work ends with the query even where a
cancel cannot reach the server; and a bounded teardown for the cancel itself.

The query's deadline is kept by :mod:`federator.deadline` (the executor sets it for each
run); outside a query only the per-call limits apply.

>>> import asyncio
>>> asyncio.run(teardown(asyncio.sleep(10), seconds=0.01))  # gives up after 0.01 s
>>> server_ms(cap=60.0)  # outside a query: the cap
60000
"""

from __future__ import annotations

from federator.deadline import CLEANUP_SECONDS as TEARDOWN_SECONDS
from federator.deadline import cleanup as teardown
from federator.deadline import current, remaining

__all__ = [
    "TEARDOWN_SECONDS",
    "query_timeout",
    "remaining",
    "server_ms",
    "server_seconds",
    "teardown",
]

# A server's own limit runs this much past the query's deadline.
SERVER_GRACE_SECONDS = 0.25


def query_timeout() -> float | None:
    """The running query's whole ``timeout`` in seconds (None: none, or outside a query)."""
    deadline = current()
    return None if deadline is None else deadline.timeout


def server_seconds(cap: float | None = None) -> float | None:
    """The limit to give the server for one request: the query's remaining time plus
    :data:`SERVER_GRACE_SECONDS` (the query's own timeout fires first and names the fragment;
    the server's limit is the backstop), at most ``cap``; None when neither limits it."""
    left = remaining()
    limits = [s for s in (None if left is None else left + SERVER_GRACE_SECONDS, cap) if s]
    return max(min(limits), 0.001) if limits else None


def server_ms(cap: float | None = None) -> int | None:
    """:func:`server_seconds` in whole milliseconds (at least 1)."""
    seconds = server_seconds(cap)
    return None if seconds is None else max(1, int(seconds * 1000))
