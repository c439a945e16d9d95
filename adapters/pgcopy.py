"""PostgreSQL's binary COPY format decoded straight into Arrow columns, with numpy.

The bulk path of the PostgreSQL adapter runs a large fragment as

    COPY (SELECT <marker>::int8, f."c0", ... FROM (<fragment SQL>) AS f("c0", ...))
    TO STDOUT (FORMAT binary)

and decodes the stream here without a Python object per value: every column of a block of
rows is gathered with one numpy fancy-index and viewed as big-endian integers or floats, and
text columns become Arrow string buffers (offsets + bytes) directly.

Finding where each row starts is the only sequential part of the format (a row's length
depends on its values). The marker column makes it vectorizable: every row begins with the
same 14 bytes (field count, length 8, the marker), whose first byte 0xFF never occurs in UTF-8
text. Candidate starts come from a numpy search; the chain start[i] + length(row i) ==
start[i + 1] is then checked for every row at once, so a marker lookalike inside binary data
is detected and that block is walked row by row instead (exact either way).

Types (``ColumnSpec.kind``): int2/int4/int8/float4/float8/bool, date (days since 2000-01-01),
timestamp/timestamptz (µs since 2000-01-01 UTC), time (µs), text-like and bytea (raw bytes),
``numeric`` with a known scale and precision ≤ 18 (base-10000 digits → int64 → decimal128),
and ``decimal_text`` (NUMERIC sent as text, cast by Arrow: wide or unconstrained NUMERIC).
Anything else is sent as text by the query that :func:`copy_query` builds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MARKER = -0x0001020304050607 - 1  # int8 whose big-endian bytes are ff fe fd fc fb fa f9 f8
MARKER_BYTES = b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8"
SIGNATURE = b"PGCOPY\n\xff\r\n\x00"
HEADER_LEN = 19  # signature, flags int32, header extension length int32 (0)
_PG_EPOCH_DAYS = 10_957  # 2000-01-01 - 1970-01-01
_PG_EPOCH_US = _PG_EPOCH_DAYS * 86_400 * 1_000_000
_DATE_MIN, _DATE_MAX = -719_162, 2_932_896  # date.min, date.max in days since 1970
_TS_MIN, _TS_MAX = -62_135_596_800_000_000, 253_402_300_799_999_999  # datetime.min/max in µs
_PAD = b"\x00" * 32  # lets gathers of NULL fields at the very end stay in bounds

assert MARKER.to_bytes(8, "big", signed=True) == MARKER_BYTES

FIXED = {
    "int2": ("int2", 2, ">i2", pa.int16()),
    "int4": ("int4", 4, ">i4", pa.int32()),
    "int8": ("int8", 8, ">i8", pa.int64()),
    "float4": ("float4", 4, ">f4", pa.float32()),
    "float8": ("float8", 8, ">f8", pa.float64()),
    "bool": ("bool", 1, "u1", pa.bool_()),
    "date": ("date", 4, ">i4", pa.date32()),
    "timestamp": ("timestamp", 8, ">i8", pa.timestamp("us")),
    "timestamptz": ("timestamptz", 8, ">i8", pa.timestamp("us", tz="UTC")),
    "time": ("time", 8, ">i8", pa.time64("us")),
}
TEXT_TYPES = {"text", "varchar", "bpchar", "name", "char", "json", "xml", "citext"}


class CopyDecodeError(ValueError):
    """The stream is not what the query asked for (a bug or a non-finite NUMERIC)."""


@dataclass(frozen=True)
class ColumnSpec:
    """One output column: how it travels (``kind``) and the Arrow type it becomes."""

    name: str
    kind: str  # a key of FIXED, "text", "bytes", "numeric", "decimal_text"
    type: pa.DataType
    trim: bool = False  # CHAR(n): drop the blank padding


def plan_columns(
    names: list[str], typnames: list[str], known: dict[str, pa.DataType]
) -> tuple[list[ColumnSpec], list[str]]:
    """Column specs plus, per column, the cast the COPY query applies ('' for none).

    >>> specs, casts = plan_columns(["a", "n"], ["int4", "numeric"], {"n": pa.decimal128(12, 2)})
    >>> [s.kind for s in specs], casts
    (['int4', 'numeric'], ['', '::numeric(12,2)'])
    """
    specs: list[ColumnSpec] = []
    casts: list[str] = []
    for name, typ in zip(names, typnames, strict=True):
        want = known.get(name)
        if typ in FIXED:
            kind, _, _, arrow = FIXED[typ]
            specs.append(ColumnSpec(name, kind, want or arrow))
            casts.append("")
        elif typ == "numeric":
            if want is not None and pa.types.is_decimal128(want) and want.precision <= 18:
                specs.append(ColumnSpec(name, "numeric", want))
                casts.append(f"::numeric({want.precision},{want.scale})")
            else:
                t = want if want is not None and pa.types.is_decimal(want) else None
                specs.append(ColumnSpec(name, "decimal_text", t or pa.null()))
                casts.append("::text")
        elif typ == "bytea":
            specs.append(ColumnSpec(name, "bytes", pa.binary()))
            casts.append("")
        elif typ in TEXT_TYPES:
            specs.append(ColumnSpec(name, "text", pa.string(), trim=typ == "bpchar"))
            casts.append("")
        else:  # uuid, jsonb, inet, enums, ...: PostgreSQL's own text form
            specs.append(ColumnSpec(name, "text", pa.string()))
            casts.append("::text")
    return specs, casts


def copy_query(select_sql: str, casts: list[str]) -> str:
    """The SELECT that COPY (FORMAT binary) runs around the fragment's SELECT. Output columns
    are renamed positionally, so duplicate or odd names in the fragment's output do not matter.
    """
    cols = [f'"c{i}"' for i in range(len(casts))]
    items = ", ".join(f"f.{c}{cast}" for c, cast in zip(cols, casts, strict=True))
    return f"SELECT {MARKER}::int8, {items} FROM ({select_sql}) AS f({', '.join(cols)})"


class CopyDecoder:
    """Feed it the COPY stream in any chunks; take record batches from :meth:`decode`."""

    def __init__(self, columns: list[ColumnSpec]):
        self.columns = columns
        self.schema = pa.schema([pa.field(c.name, _out_type(c)) for c in columns])
        self._chunks: list[bytes] = []
        self._pending = 0
        self._header_seen = False
        self._done = False
        self._prefix = (len(columns) + 1).to_bytes(2, "big") + b"\x00\x00\x00\x08" + MARKER_BYTES

    @property
    def pending(self) -> int:
        return self._pending

    def feed(self, data: bytes) -> None:
        self._chunks.append(bytes(data))
        self._pending += len(data)

    def decode(self, final: bool = False) -> pa.RecordBatch | None:
        """A batch of every complete row fed so far (None when there is none)."""
        buf = b"".join(self._chunks) if len(self._chunks) != 1 else self._chunks[0]
        start = 0
        if not self._header_seen:
            if len(buf) < HEADER_LEN:
                if final:
                    raise CopyDecodeError("COPY stream ended inside its header")
                return None
            if buf[:11] != SIGNATURE:
                raise CopyDecodeError("not a binary COPY stream")
            ext = int.from_bytes(buf[15:19], "big")
            start = HEADER_LEN + ext
            self._header_seen = True
        data = np.frombuffer(b"".join((memoryview(buf)[start:], _PAD)), dtype=np.uint8)
        usable = len(data) - len(_PAD)
        starts, end, lengths = self._row_starts(data, usable)
        tail = bytes(data[end:usable])
        if final:
            if tail not in (b"\xff\xff", b""):
                raise CopyDecodeError(f"{len(tail)} bytes left after the last row")
        elif tail == b"\xff\xff":
            self._done = True
            tail = b""
        self._chunks = [tail] if tail else []
        self._pending = len(tail)
        if len(starts) == 0:
            return None
        return self._columns(data, starts, lengths)

    # ---- rows ----------------------------------------------------------------------------
    def _row_starts(
        self, data: np.ndarray, usable: int
    ) -> tuple[np.ndarray, int, list[np.ndarray] | None]:
        """Starts of the complete rows in data[:usable], where the last one ends, and the
        field lengths per column when the vectorized pass found them."""
        prefix = np.frombuffer(self._prefix, dtype=np.uint8)
        # marker's first byte sits at offset 6 of a row
        cand = np.flatnonzero(data[6:usable] == prefix[6])
        for k in (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11, 12, 13):
            if len(cand) == 0:
                break
            cand = cand[data[cand + k] == prefix[k]]
        if len(cand) == 0 or cand[0] != 0:
            return (*self._walk(data, usable), None)
        ends, lengths = self._row_ends(data, cand, usable)
        complete = ends <= usable
        ok = complete[:-1].all() and np.array_equal(ends[:-1], cand[1:])
        if ok:
            if complete[-1]:
                return cand, int(ends[-1]), lengths
            return cand[:-1], int(cand[-1]), [n[:-1] for n in lengths]
        return (*self._walk(data, usable), None)

    def _row_ends(
        self, data: np.ndarray, starts: np.ndarray, usable: int
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        pos = starts + 14
        limit = len(data) - 8
        lengths = []
        for _ in self.columns:
            n = _be(data, np.minimum(pos, limit), 4, ">i4").astype(np.int64)
            lengths.append(n)
            pos = pos + 4 + np.maximum(n, 0)
            pos = np.minimum(pos, usable + 1)  # a lookalike may point anywhere
        return pos, lengths

    def _walk(self, data: np.ndarray, usable: int) -> tuple[np.ndarray, int]:
        """Exact row-by-row walk (used only when the vectorized chain check fails)."""
        raw = data[:usable].tobytes()
        starts = []
        pos = 0
        while pos + 2 <= usable:
            count = int.from_bytes(raw[pos : pos + 2], "big", signed=True)
            if count == -1:
                break
            if count != len(self.columns) + 1:
                raise CopyDecodeError(f"row with {count} fields, expected {len(self.columns) + 1}")
            p = pos + 2
            for _ in range(count):
                if p + 4 > usable:
                    break
                n = int.from_bytes(raw[p : p + 4], "big", signed=True)
                p += 4 + max(n, 0)
            if p > usable:
                break
            starts.append(pos)
            pos = p
        return np.array(starts, dtype=np.int64), pos

    # ---- columns -------------------------------------------------------------------------
    def _columns(
        self, data: np.ndarray, starts: np.ndarray, lengths: list[np.ndarray] | None
    ) -> pa.RecordBatch:
        pos = starts + 14
        arrays = []
        for i, col in enumerate(self.columns):
            if lengths is not None:
                length = lengths[i]
            else:
                length = _be(data, pos, 4, ">i4").astype(np.int64)
            valid = length >= 0
            body = pos + 4
            arrays.append(_column(col, data, body, length, valid))
            pos = body + np.maximum(length, 0)
        return pa.RecordBatch.from_arrays(arrays, names=[c.name for c in self.columns])


def _out_type(col: ColumnSpec) -> pa.DataType:
    if col.kind == "decimal_text" and pa.types.is_null(col.type):
        return pa.decimal128(38, 0)  # placeholder; the batch schema is rebuilt per block
    return col.type


def _be(data: np.ndarray, pos: np.ndarray, width: int, dtype: str) -> np.ndarray:
    """Big-endian values of ``width`` bytes at every position, as a native numpy array.

    The buffer is viewed as one (unaligned, overlapping) value at every byte offset, so the
    gather is a single 1-D fancy index.
    """
    view = np.ndarray(shape=(len(data) - width + 1,), dtype=dtype, buffer=data, strides=(1,))
    return view[pos].astype(dtype[1:] if dtype[0] == ">" else dtype)


def _infinities(shifted: np.ndarray, raw: np.ndarray, low: int, high: int) -> np.ndarray:
    """±infinity (the type's min/max on the wire) as Python's date/datetime min and max, the
    values asyncpg gives for them on the row path."""
    info = np.iinfo(raw.dtype)
    lo, hi = raw == info.min, raw == info.max
    if lo.any() or hi.any():
        shifted = np.where(lo, low, np.where(hi, high, shifted))
    return shifted


def _mask(valid: np.ndarray) -> np.ndarray | None:
    return None if valid.all() else ~valid


def _column(
    col: ColumnSpec, data: np.ndarray, body: np.ndarray, length: np.ndarray, valid: np.ndarray
) -> pa.Array:
    kind = col.kind
    if kind in FIXED:
        _, width, dtype, natural = FIXED[kind]
        bad = valid & (length != width)
        if bad.any():
            raise CopyDecodeError(f"column {col.name!r}: field of {length[bad][0]} bytes")
        values = _be(data, body, width, dtype)
        mask = _mask(valid)
        if kind == "bool":
            arr = pa.array(values.astype(bool), mask=mask)
        elif kind == "date":
            days = _infinities(values + _PG_EPOCH_DAYS, values, _DATE_MIN, _DATE_MAX)
            arr = pa.array(days, type=pa.int32(), mask=mask).view(pa.date32())
        elif kind in ("timestamp", "timestamptz"):
            us = _infinities(values + _PG_EPOCH_US, values, _TS_MIN, _TS_MAX)
            arr = pa.array(us, type=pa.int64(), mask=mask).view(natural)
        elif kind == "time":
            arr = pa.array(values, type=pa.int64(), mask=mask).view(natural)
        else:
            arr = pa.array(values, type=natural, mask=mask)
        return arr if arr.type == col.type else arr.cast(col.type)
    if kind in ("text", "bytes"):
        arr = _binary(data, body, length, valid, pa.string() if kind == "text" else pa.binary())
        if col.trim:
            arr = pc.utf8_rtrim(arr, characters=" ")
        return arr if arr.type == col.type else arr.cast(col.type)
    if kind == "numeric":
        return _numeric(col, data, body, length, valid)
    if kind == "decimal_text":
        text = _binary(data, body, length, valid, pa.string())
        if pc.any(pc.is_in(text, pa.array(["NaN", "Infinity", "-Infinity"]))).as_py():
            raise CopyDecodeError(
                f"column {col.name!r} holds a non-finite NUMERIC, which decimal128 cannot hold; "
                f"cast it to double precision in the query"
            )
        target = col.type if not pa.types.is_null(col.type) else _infer_decimal(text)
        return pc.cast(text, target)
    raise CopyDecodeError(f"no decoder for {kind}")  # pragma: no cover


def _binary(
    data: np.ndarray, body: np.ndarray, length: np.ndarray, valid: np.ndarray, type_: pa.DataType
) -> pa.Array:
    lens = np.maximum(length, 0)
    offsets = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=offsets[1:])
    total = int(offsets[-1])
    if total:
        idx = np.repeat(body - offsets[:-1], lens) + np.arange(total, dtype=np.int64)
        values = data[idx]
    else:
        values = np.zeros(0, dtype=np.uint8)
    large = total >= 2**31
    off = offsets if large else offsets.astype(np.int32)
    validity = None if valid.all() else pa.array(valid).buffers()[1]
    t = (pa.large_string() if type_ == pa.string() else pa.large_binary()) if large else type_
    arr = pa.Array.from_buffers(
        t, len(lens), [validity, pa.py_buffer(off), pa.py_buffer(values)], null_count=-1
    )
    return arr.cast(type_) if large else arr


def _numeric(
    col: ColumnSpec, data: np.ndarray, body: np.ndarray, length: np.ndarray, valid: np.ndarray
) -> pa.Array:
    """NUMERIC(p ≤ 18, s) from base-10000 digits into int64 units of 10^-s, then decimal128."""
    scale = col.type.scale
    n = len(body)
    safe = np.where(valid, body, 0)
    ndigits = _be(data, safe, 2, ">i2").astype(np.int64)
    weight = _be(data, safe + 2, 2, ">i2").astype(np.int64)
    sign = _be(data, safe + 4, 2, ">u2")
    if (valid & (sign != 0) & (sign != 0x4000)).any():
        raise CopyDecodeError(
            f"column {col.name!r} holds a non-finite NUMERIC, which decimal128 cannot hold; "
            f"cast it to double precision in the query"
        )
    ndigits = np.where(valid, ndigits, 0)
    units = np.zeros(n, dtype=np.int64)
    pow10 = 10 ** np.arange(19, dtype=np.int64)
    for k in range(int(ndigits.max()) if n else 0):
        has = ndigits > k
        digit = np.where(has, _be(data, safe + 8 + 2 * k, 2, ">i2").astype(np.int64), 0)
        e = 4 * (weight - k) + scale
        up = np.where(e >= 0, pow10[np.clip(e, 0, 18)], 1)
        down = np.where(e < 0, pow10[np.clip(-e, 0, 18)], 1)
        if ((digit % down) != 0).any():
            raise CopyDecodeError(f"column {col.name!r}: more digits than scale {scale}")
        units += (digit // down) * up
    units = np.where(sign == 0x4000, -units, units)
    pairs = np.empty((n, 2), dtype=np.int64)
    pairs[:, 0] = units
    pairs[:, 1] = units >> 63
    validity = None if valid.all() else pa.array(valid).buffers()[1]
    return pa.Array.from_buffers(
        col.type, n, [validity, pa.py_buffer(pairs.tobytes())], null_count=-1
    )


def _infer_decimal(text: pa.Array) -> pa.DataType:
    """The decimal128(38, s) that holds every value (as the row path's ``infer_decimal``)."""
    if text.null_count == len(text):
        return pa.decimal128(38, 0)
    dot = pc.find_substring(text, ".")
    size = pc.binary_length(text)
    negative = pc.cast(pc.starts_with(text, "-"), pa.int32())
    scale = pc.if_else(pc.less(dot, 0), 0, pc.subtract(pc.subtract(size, dot), 1))
    whole = pc.subtract(pc.if_else(pc.less(dot, 0), size, dot), negative)
    s = pc.max(scale).as_py() or 0
    w = max(1, pc.max(whole).as_py() or 1)
    return pa.decimal128(38, max(0, min(s, 38 - w)))
