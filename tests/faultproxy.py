"""A TCP proxy the fault-injection tests control: it sits between federator and a real server
on a free loopback port and misbehaves on request.

Modes (:meth:`FaultProxy.set_mode`):

``pass``       forward both ways.
``blackhole``  accept new connections and never answer; existing ones stop forwarding.
``freeze``     every connection, open now or later, stops forwarding once ``after`` more
               bytes came from the server on it (0: at once), as on a stalled route; with
               ``after`` > 0 a short exchange on a new connection (a cancel, a KILL) passes.
``close``      the same, but the connection is reset instead: the server seems to die
               mid-result (``after`` 0: every connection is reset at once).

>>> proxy = FaultProxy("127.0.0.1", 5432).start()  # doctest: +SKIP
>>> proxy.set_mode("blackhole"); proxy.stop()  # doctest: +SKIP

The proxy runs on its own thread with its own event loop, so a test's blocking calls never
stall it. :attr:`open_connections` counts client connections still open (a leak check).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field

MODES = ("pass", "blackhole", "freeze", "close")


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    budget: int | None = None  # server bytes still forwarded before the fault applies
    fault: str = "pass"  # the fault this link is under once its budget is spent
    resumed: asyncio.Event = field(default_factory=asyncio.Event)

    def stalled(self) -> bool:
        return self.fault in ("freeze", "blackhole") and self.budget == 0


class FaultProxy:
    """A loopback TCP proxy to ``host:port`` with switchable faults (see the module doc)."""

    def __init__(self, host: str, port: int):
        self.upstream = (host, port)
        self.port = 0
        self.mode = "pass"
        self._after = 0
        self._links: set[_Link] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.base_events.Server | None = None

    # ---- control (any thread) -----------------------------------------------------------
    def start(self) -> FaultProxy:
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def set_mode(self, mode: str, after: int = 0) -> None:
        """Switch to ``mode``; freeze and close hit open connections after ``after`` more
        bytes from the server."""
        if mode not in MODES:
            raise ValueError(f"mode {mode!r} is not one of {MODES}")
        self._call(self._set_mode(mode, after))

    @property
    def open_connections(self) -> int:
        return self._call(self._count())

    def dsn(self, dsn: str) -> str:
        """``dsn`` with its host:port replaced by the proxy's."""
        host, port = self.upstream
        return dsn.replace(f"@{host}:{port}", f"@127.0.0.1:{self.port}", 1)

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # ---- on the proxy's loop --------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _count(self) -> int:
        return sum(1 for link in self._links if not link.client.is_closing())

    async def _set_mode(self, mode: str, after: int) -> None:
        self.mode, self._after = mode, after
        for link in list(self._links):
            if mode == "pass":
                link.fault, link.budget = "pass", None
                link.resumed.set()
            else:
                link.fault, link.budget = mode, after
                link.resumed.clear()
                if after == 0 and mode == "close":
                    _reset(link)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            _reset(link)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = _Link(client=writer)
        self._links.add(link)
        try:
            if self.mode == "close" and self._after == 0:
                _reset(link)
                return
            if self.mode in ("freeze", "close"):
                link.fault, link.budget = self.mode, self._after
            if self.mode == "blackhole":
                link.fault, link.budget = "blackhole", 0
                await _discard(reader)
                return
            up_reader, link.upstream = await asyncio.open_connection(*self.upstream)
            await asyncio.gather(
                self._pump(reader, link.upstream, link, from_server=False),
                self._pump(up_reader, writer, link, from_server=True),
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            _reset(link)
            self._links.discard(link)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: _Link,
        from_server: bool,
    ) -> None:
        while True:
            data = await reader.read(65536)
            if not data:
                break
            if from_server and link.budget is not None and link.fault != "pass":
                head, data = data[: link.budget], data[link.budget :]
                link.budget -= len(head)
                if head:
                    writer.write(head)
                    await writer.drain()
                if link.budget == 0 and link.fault == "close":
                    _reset(link)
                    return
            while link.stalled():  # held back, not dropped: "pass" resumes the stream
                await link.resumed.wait()
            if data:
                writer.write(data)
                await writer.drain()
        with contextlib.suppress(OSError):
            writer.write_eof()


async def _discard(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


def _reset(link: _Link) -> None:
    """Close both sides at once with a TCP reset (SO_LINGER 0), as a dead host would."""
    for w in (link.client, link.upstream):
        if w is None or w.is_closing():
            continue
        sock = w.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()
