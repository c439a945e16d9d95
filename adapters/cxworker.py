"""ConnectorX reads in child processes, so that they can neither freeze nor crash the event loop.

ConnectorX's Arrow stream holds the GIL while it waits for the server (measured: a thread
reading ``SELECT SLEEP(2)`` stalled every other thread for 2.0 s), retries a refused login for
30 s, prints Rust log lines on stderr and raises ``pyo3_runtime.PanicException`` — not an
``Exception`` — when the server kills its query. A read therefore runs in a worker process
(:mod:`federator.adapters._cxchild`) that streams Arrow IPC back over a pipe; the event loop only
awaits the pipe. An interrupted read (timeout, cancel, consumer gone) kills the worker; every
failure becomes a :class:`~federator.errors.SourceError`. Workers are kept for the next read
(starting one imports pyarrow and connectorx: about half a second).

>>> workers = CXWorkers(size=2)  # one pool per MySQL source; close() ends the idle ones
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa

from federator.deadline import cleanup
from federator.errors import SourceError

_CHILD = Path(__file__).with_name("_cxchild.py")
_HEADER = struct.Struct("<cQ")


class CXWorkers:
    """Idle ConnectorX worker processes of one source, at most ``size`` kept."""

    def __init__(self, size: int):
        self.size = size
        self._idle: list[asyncio.subprocess.Process] = []

    async def read(
        self, uri: str, queries: list[str], batch_rows: int, pre: list[str]
    ) -> AsyncIterator[pa.RecordBatch]:
        """The batches of ``queries`` (one, or the partitions of one, read at once), read by a
        worker; the first batch is the (maybe empty) schema-carrying one of the first frame.
        Errors are :class:`SourceError` with ConnectorX's message (the caller masks secrets)."""
        proc = await self._take()
        request = {"uri": uri, "queries": queries, "batch_size": batch_rows, "pre": pre}
        reusable = False  # only a worker that finished its read cleanly serves the next one
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            await proc.stdin.drain()
            schema: pa.Schema | None = None
            yielded = False
            while True:
                kind, payload = await _frame(proc.stdout)
                if kind == b"S":
                    schema = pa.ipc.read_schema(pa.py_buffer(payload))
                elif kind == b"B":
                    assert schema is not None
                    yielded = True
                    yield pa.ipc.read_record_batch(pa.py_buffer(payload), schema)
                elif kind == b"D":
                    reusable = True
                    if not yielded and schema is not None:
                        yield pa.RecordBatch.from_pylist([], schema=schema)
                    return
                else:
                    report = json.loads(payload)
                    raise SourceError(f"ConnectorX: {report['type']}: {report['message']}")
        except (asyncio.IncompleteReadError, BrokenPipeError, ConnectionResetError):
            code = await _ended(proc)
            raise SourceError(f"ConnectorX worker exited (code {code}) during the read") from None
        finally:
            if reusable:
                self._give_back(proc)
            else:
                await _kill(proc)

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for proc in idle:
            await _kill(proc)

    async def _take(self) -> asyncio.subprocess.Process:
        while self._idle:
            proc = self._idle.pop()
            if proc.returncode is None:
                return proc
        return await asyncio.create_subprocess_exec(
            sys.executable,
            str(_CHILD),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "RUST_LOG": "off"},
        )

    def _give_back(self, proc: asyncio.subprocess.Process) -> None:
        if len(self._idle) < self.size and proc.returncode is None:
            self._idle.append(proc)
        else:
            proc.kill()


async def _frame(stream: asyncio.StreamReader) -> tuple[bytes, bytes]:
    kind, size = _HEADER.unpack(await stream.readexactly(_HEADER.size))
    return kind, await stream.readexactly(size) if size else b""


async def _ended(proc: asyncio.subprocess.Process) -> int | None:
    with contextlib.suppress(TimeoutError):
        return await asyncio.wait_for(proc.wait(), 1.0)
    return proc.returncode


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill a worker and reap it (within the cleanup bound)."""
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    await cleanup(proc.wait())
