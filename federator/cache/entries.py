"""Cache entries and their wire form: an Arrow table with the facts it was read under, and
the checksummed, compressed Arrow IPC bytes the Redis tier stores.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass

import pyarrow as pa

_MAGIC = b"FEDC\x01"


@dataclass
class Entry:
    table: pa.Table
    created: float  # wall-clock time its data was read (the fetch's start)
    expires: float  # wall-clock time
    gens: dict[str, int]  # generation of each version field when the data was read
    tokens: dict[str, str]  # freshness token per source when the data was read
    nbytes: int = 0

    def __post_init__(self) -> None:
        self.nbytes = self.nbytes or self.table.nbytes


class CorruptEntry(Exception):
    pass


def encode_entry(entry: Entry, compression: str) -> bytes:
    """``FEDC\\x01``, header length, JSON header, CRC-32 of header and payload, then the
    Arrow IPC stream (compressed buffers)."""
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, entry.table.schema, options=options) as writer:
        writer.write_table(entry.table)
    payload = sink.getvalue().to_pybytes()
    header = json.dumps(
        {
            "created": entry.created,
            "expires": entry.expires,
            "gens": entry.gens,
            "tokens": entry.tokens,
            "size": len(payload),
        }
    ).encode()
    crc = zlib.crc32(payload, zlib.crc32(header))
    return _MAGIC + struct.pack(">I", len(header)) + header + struct.pack(">I", crc) + payload


def decode_entry(blob: bytes) -> Entry:
    """The entry a blob holds; :class:`CorruptEntry` for anything truncated or altered."""
    try:
        if not blob.startswith(_MAGIC):
            raise CorruptEntry("bad magic")
        (hlen,) = struct.unpack_from(">I", blob, len(_MAGIC))
        start = len(_MAGIC) + 4
        raw_header = blob[start : start + hlen]
        (crc,) = struct.unpack_from(">I", blob, start + hlen)
        payload = memoryview(blob)[start + hlen + 4 :]
        if zlib.crc32(payload, zlib.crc32(raw_header)) != crc:
            raise CorruptEntry("checksum mismatch (truncated or altered)")
        header = json.loads(raw_header)
        if len(payload) != header["size"]:
            raise CorruptEntry("payload size mismatch")
        table = pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
        return Entry(
            table=table,
            created=float(header["created"]),
            expires=float(header["expires"]),
            gens={str(k): int(v) for k, v in header["gens"].items()},
            tokens={str(k): str(v) for k, v in header["tokens"].items()},
        )
    except CorruptEntry:
        raise
    except Exception as e:  # any parse failure of stored bytes is corruption
        raise CorruptEntry(f"{type(e).__name__}: {e}") from None
