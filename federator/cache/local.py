"""The in-process tier: an LRU of entries within a byte budget (``max_bytes``), owned by the
federation's loop thread.
"""

from __future__ import annotations

import collections
import threading
from typing import TYPE_CHECKING

from federator.telemetry import count_eviction

if TYPE_CHECKING:
    from federator._loop import LoopThread
    from federator.cache.entries import Entry
    from federator.cache.settings import CacheSettings


class LocalEntries:
    """Entries held in this process, least recently used first; evicted past ``max_bytes``."""

    settings: CacheSettings
    loop: LoopThread | None
    _entries: collections.OrderedDict[str, Entry]
    _bytes: int
    _counters: collections.Counter[str]

    def clear(self) -> None:
        """Forget the in-process entries (not Redis's, not the statistics)."""
        if self.loop is not None and threading.current_thread() is not self.loop._thread:
            self.loop.run(self._clear())  # the loop's thread owns the entries
        else:
            self._entries.clear()
            self._bytes = 0

    async def _clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def _put_local(self, key: str, entry: Entry) -> None:
        if entry.nbytes > min(self.settings.max_entry_bytes, self.settings.max_bytes):
            return
        self._drop(key)
        self._entries[key] = entry
        self._bytes += entry.nbytes
        while self._bytes > self.settings.max_bytes and self._entries:
            old_key = next(iter(self._entries))
            self._drop(old_key)
            self._counters["evictions"] += 1
            count_eviction()

    def bytes_held(self) -> int:
        """Bytes of the entries held in this process (the telemetry gauge reads it)."""
        return self._bytes

    def _drop(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes
