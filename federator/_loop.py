"""A private event loop on a daemon thread: every pool and request of a Federation lives there,
so the same Federation serves sync scripts, notebooks and any caller's event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from federator.errors import FederationClosedError

T = TypeVar("T")


class LoopThread:
    def __init__(self, name: str = "federator"):
        self.loop = asyncio.new_event_loop()
        self.stopped = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it from this (non-loop) thread."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("federator's sync API was called from its own event loop")
        self._check_open(coro)
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the loop from any other event loop; cancellation flows through."""
        self._check_open(coro)
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def _check_open(self, coro: Coroutine[Any, Any, Any]) -> None:
        if self.stopped or self.loop.is_closed():
            coro.close()  # never started: no "was never awaited" warning
            raise FederationClosedError()

    def stop(self) -> None:
        self.stopped = True
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()
