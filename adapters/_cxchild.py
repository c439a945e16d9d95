"""A ConnectorX reader in a child process (see :mod:`federator.adapters.cxworker`).

Run as a script, it reads one JSON request per line on stdin and answers each on stdout with
frames: ``S`` the Arrow schema, ``B`` a record batch (both IPC-serialized), then ``D`` (done)
or ``E`` (a JSON error: type and message). It imports nothing of federator, so it starts fast.

ConnectorX holds the GIL while it waits for MySQL, retries a refused login for 30 s, logs from
Rust onto stderr and raises ``PanicException`` (not an ``Exception``) when the server kills its
query: here none of that can reach the parent's event loop, and the parent kills the process
when the query's time is up.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from typing import Any, BinaryIO

os.environ.setdefault("RUST_LOG", "off")  # before connectorx loads its logger

import connectorx as cx
import pyarrow as pa


def _send(out: BinaryIO, kind: bytes, payload: bytes | pa.Buffer) -> None:
    out.write(kind + struct.pack("<Q", len(payload)))
    out.write(payload)
    out.flush()


def _serve(out: BinaryIO, request: dict[str, Any]) -> None:
    queries = request["queries"]
    reader = cx.read_sql(
        request["uri"],
        queries if len(queries) > 1 else queries[0],
        return_type="arrow_stream",
        batch_size=request["batch_size"],
        pre_execution_query=request["pre"],
    )
    _send(out, b"S", reader.schema.serialize())
    for batch in reader:
        _send(out, b"B", batch.serialize())
    _send(out, b"D", b"")


def main() -> None:
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        try:
            _serve(out, json.loads(line))
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as e:  # pyo3's PanicException derives from BaseException
            report = {"type": type(e).__name__, "message": str(e)}
            _send(out, b"E", json.dumps(report).encode())


if __name__ == "__main__":
    main()
