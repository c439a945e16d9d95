"""The base of adapters over a synchronous client that runs in worker threads (Milvus, Qdrant):
the client is made once, lazily, in a thread (connecting may block), and closed in one.

>>> from federator.config import SourceConfig
>>> class Toy(ThreadedClientAdapter):
...     kind = "toy"
...     def _connect(self): return "a client"
...     async def tables(self): return []
...     def translate(self, fragment): ...
...     def execute(self, request, bind_values=None): ...
>>> import asyncio; asyncio.run(Toy(SourceConfig("t", "toy", {}))._get_client())
'a client'
"""

from __future__ import annotations

import abc
import asyncio
from typing import Any

from federator.adapters.base import Adapter

from federator.config import SourceConfig


class ThreadedClientAdapter(Adapter):
    """An adapter holding one synchronous client; subclasses make it in :meth:`_connect`."""

    def __init__(self, config: SourceConfig):
        super().__init__(config)
        self._client: Any = None
        self._open_lock = asyncio.Lock()

    async def open(self) -> None:
        await self._get_client()

    async def _get_client(self) -> Any:
        if self._client is not None:
            return self._client
        async with self._open_lock:
            if self._client is None:
                self._client = await asyncio.to_thread(self._connect)
        return self._client

    @abc.abstractmethod
    def _connect(self) -> Any:
        """The client (called in a worker thread); a typed FederatorError where it fails."""

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await asyncio.to_thread(client.close)
