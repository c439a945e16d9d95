"""A private event loop on a daemon thread: every pool and request of a Federation lives there,
so the same Federation serves sync scripts, notebooks and any caller's event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from federator.errors import FederationClosedError

T = TypeVar("T")

# How long stop() lets work still on the loop (queries in flight, then the final release)
# unwind before the loop is stopped regardless.
STOP_SECONDS = 5.0


class LoopThread:
    """Runs coroutines on its own loop for callers on other threads or loops.

    Work is refused (:class:`FederationClosedError`) from the moment :meth:`stop` begins; work
    submitted before is cancelled by it, and its callers get the same error rather than waiting
    on a loop that no longer runs.

    >>> async def answer() -> int:
    ...     return 42
    >>> loop = LoopThread()
    >>> loop.run(answer())
    42
    >>> loop.stop()
    """

    def __init__(self, name: str = "federator"):
        self.loop = asyncio.new_event_loop()
        self.stopped = False
        self._submit_lock = threading.Lock()  # no work slips in once stop() has begun
        self._stop_lock = threading.Lock()  # one stop at a time; a second waits for the first
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for it from this (non-loop) thread."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("federator's sync API was called from its own event loop")
        future = self._submit(coro)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            if self.stopped:  # cancelled by stop(), not by this caller
                raise FederationClosedError() from None
            raise
        except BaseException:
            future.cancel()
            raise

    async def run_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the loop from any other event loop; cancellation flows through."""
        future = self._submit(coro)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self.stopped and future.cancelled() and not (task and task.cancelling()):
                raise FederationClosedError() from None
            raise

    def _submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        with self._submit_lock:
            if self.stopped or self.loop.is_closed():
                coro.close()  # never started: no "was never awaited" warning
                raise FederationClosedError()
            return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self, final: Coroutine[Any, Any, Any] | None = None) -> None:
        """Refuse new work, cancel the work in flight, run ``final`` (the federation's release
        of its pools) as the loop's last work, then stop and close the loop; safe to call twice
        and from several threads. ``final``'s error, if any, is raised once the loop is closed.
        """
        error: BaseException | None = None
        with self._stop_lock:
            with self._submit_lock:
                first = not self.stopped
                self.stopped = True
            if not first or self.loop.is_closed():
                if final is not None:
                    final.close()
                return
            if threading.current_thread() is self._thread:  # from the loop itself (a finalizer)
                if final is not None:
                    final.close()
                self.loop.stop()
                return
            last = asyncio.run_coroutine_threadsafe(_wind_down(final), self.loop)
            try:
                last.result(timeout=STOP_SECONDS * 2)
            except concurrent.futures.TimeoutError:
                last.cancel()
            except BaseException as e:  # the release failed: raised once the loop is closed
                error = e
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=STOP_SECONDS)
            if not self._thread.is_alive():
                self.loop.close()
        if error is not None:
            raise error


async def _wind_down(final: Coroutine[Any, Any, Any] | None) -> None:
    """On the loop: cancel every other task (the callers of run() then get
    FederationClosedError), let them unwind for a while, then run ``final``."""
    me = asyncio.current_task()
    others = [t for t in asyncio.all_tasks() if t is not me]
    for task in others:
        task.cancel()
    if others:
        await asyncio.wait(others, timeout=STOP_SECONDS)
    if final is not None:
        await final
    with contextlib.suppress(Exception):
        await asyncio.get_running_loop().shutdown_asyncgens()
