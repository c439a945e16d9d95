"""The binary COPY decoder against streams written here by PostgreSQL's format rules."""

from __future__ import annotations

import datetime as dt
import decimal
import random
import struct

import pyarrow as pa
import pytest
from federator.adapters import pgcopy
from federator.adapters.pg_bulk import replace_parameters

D = decimal.Decimal
PG_EPOCH = dt.datetime(2000, 1, 1)


def _numeric(value: D) -> bytes:
    sign = 0x4000 if value < 0 else 0
    exp = value.as_tuple().exponent
    dscale = max(0, -exp)
    text = f"{abs(value):f}"
    whole, _, frac = text.partition(".")
    whole = whole.lstrip("0")
    whole = "0" * (-len(whole) % 4) + whole
    frac = frac + "0" * (-len(frac) % 4)
    groups = [int(whole[i : i + 4]) for i in range(0, len(whole), 4)]
    weight = len(groups) - 1
    groups += [int(frac[i : i + 4]) for i in range(0, len(frac), 4)]
    while groups and groups[-1] == 0:
        groups.pop()
    while groups and groups[0] == 0:
        groups.pop(0)
        weight -= 1
    if not groups:
        weight = 0
    return struct.pack(f">hhHh{len(groups)}h", len(groups), weight, sign, dscale, *groups)


def _field(kind: str, value: object) -> bytes:
    if value is None:
        return struct.pack(">i", -1)
    if kind == "int8":
        body = struct.pack(">q", value)
    elif kind == "int4":
        body = struct.pack(">i", value)
    elif kind == "int2":
        body = struct.pack(">h", value)
    elif kind == "float8":
        body = struct.pack(">d", value)
    elif kind == "float4":
        body = struct.pack(">f", value)
    elif kind == "bool":
        body = b"\x01" if value else b"\x00"
    elif kind == "date":
        body = struct.pack(">i", (value - PG_EPOCH.date()).days)
    elif kind in ("timestamp", "timestamptz"):
        naive = value.astimezone(dt.UTC).replace(tzinfo=None) if value.tzinfo else value
        delta = naive - PG_EPOCH
        body = struct.pack(">q", (delta.days * 86400 + delta.seconds) * 10**6 + delta.microseconds)
    elif kind == "numeric":
        body = _numeric(value)
    elif kind == "bytes":
        body = value
    else:
        body = value.encode()
    return struct.pack(">i", len(body)) + body


def _stream(kinds: list[str], rows: list[tuple]) -> bytes:
    out = [pgcopy.SIGNATURE, struct.pack(">ii", 0, 0)]
    for row in rows:
        out.append(struct.pack(">h", len(kinds) + 1))
        out.append(struct.pack(">iq", 8, pgcopy.MARKER))
        out.extend(_field(k, v) for k, v in zip(kinds, row, strict=True))
    out.append(b"\xff\xff")
    return b"".join(out)


def _decode(specs: list[pgcopy.ColumnSpec], data: bytes, split: int | None) -> pa.Table:
    dec = pgcopy.CopyDecoder(specs)
    batches = []
    rng = random.Random(split)
    i = 0
    while i < len(data):
        step = rng.randint(1, 40) if split is not None else len(data)
        dec.feed(data[i : i + step])
        i += step
        b = dec.decode()
        if b is not None:
            batches.append(b)
    b = dec.decode(final=True)
    if b is not None:
        batches.append(b)
    return pa.Table.from_batches(batches, schema=None if batches else dec.schema)


COLUMNS = ["id", "i2", "f8", "f4", "ok", "d", "ts", "tz", "n", "t", "c", "by", "wide"]
TYPES = ["int8", "int2", "float8", "float4", "bool", "date", "timestamp", "timestamptz"]
TYPES += ["numeric", "text", "bpchar", "bytea", "numeric"]
KNOWN = {"n": pa.decimal128(12, 2), "wide": pa.decimal128(38, 10)}
ROWS = [
    (
        1,
        -32768,
        1.5,
        0.25,
        True,
        dt.date(1, 1, 1),
        dt.datetime(1970, 1, 1),
        dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        D("-9999999999.99"),
        "héllo\n\t'x'",
        "ab    ",
        b"\x00\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8",
        "1234567890123456789012345678.0123456789",
    ),
    (2, 32767, -0.0, -1.0, False, dt.date(9999, 12, 31),
     dt.datetime(2024, 2, 29, 23, 59, 59, 999999), dt.datetime(1999, 12, 31, 23, tzinfo=dt.UTC),
     D("0.01"), "", "abcdef", b"", "-0.0000000001"),
    (3, None, None, None, None, None, None, None, None, None, None, None, None),
    (-(2**63), 7, float("inf"), 3.5, True, dt.date(2000, 1, 1), dt.datetime(2000, 1, 1),
     dt.datetime(2000, 1, 1, tzinfo=dt.UTC), D("12345.60"), "x" * 300, "z", b"\xff" * 20, "0"),
]  # fmt: skip


def _kinds() -> list[str]:
    return [
        "bytes" if t == "bytea" else "text" if t in ("text", "bpchar") or c == "wide" else t
        for c, t in zip(COLUMNS, TYPES, strict=True)
    ]


def _expected() -> list[dict[str, object]]:
    out = []
    for row in ROWS:
        rec = dict(zip(COLUMNS, row, strict=True))
        if rec["c"] is not None:
            rec["c"] = rec["c"].rstrip(" ")
        if rec["tz"] is not None:
            rec["tz"] = rec["tz"].astimezone(dt.UTC)
        if rec["wide"] is not None:
            rec["wide"] = D(rec["wide"]).quantize(D("1e-10"), context=decimal.Context(prec=50))
        if rec["f4"] is not None:
            rec["f4"] = float(rec["f4"])
        out.append(rec)
    return out


@pytest.mark.parametrize("split", [None, 1, 2, 3])
def test_decodes_every_type_exactly(split: int | None) -> None:
    specs, casts = pgcopy.plan_columns(COLUMNS, TYPES, KNOWN)
    assert casts[-1] == "::text" and casts[8] == "::numeric(12,2)"
    table = _decode(specs, _stream(_kinds(), ROWS), split)
    assert table.schema.field("n").type == pa.decimal128(12, 2)
    assert table.schema.field("wide").type == pa.decimal128(38, 10)
    assert table.schema.field("tz").type == pa.timestamp("us", tz="UTC")
    assert table.schema.field("d").type == pa.date32()
    assert table.to_pylist() == _expected()


def test_marker_lookalike_inside_binary_data_is_detected() -> None:
    """A bytea value holding a whole row prefix must not be taken for a row start."""
    specs, _ = pgcopy.plan_columns(["id", "by"], ["int8", "bytea"], {})
    fake = struct.pack(">hiq", 3, 8, pgcopy.MARKER) + struct.pack(">iq", 8, 99) + b"\x00" * 8
    rows = [(i, fake if i % 3 == 0 else b"ab") for i in range(50)]
    table = _decode(specs, _stream(["int8", "bytes"], rows), None)
    assert table.column("id").to_pylist() == list(range(50))
    assert table.column("by").to_pylist() == [r[1] for r in rows]


def test_unconstrained_numeric_is_inferred_like_the_row_path() -> None:
    specs, casts = pgcopy.plan_columns(["s"], ["numeric"], {})
    assert casts == ["::text"]
    table = _decode(specs, _stream(["text"], [("12.5",), ("-3",), (None,), ("0.125",)]), None)
    assert table.schema.field("s").type == pa.decimal128(38, 3)
    assert table.column("s").to_pylist() == [D("12.500"), D("-3.000"), None, D("0.125")]


def test_non_finite_numeric_is_an_error() -> None:
    specs, _ = pgcopy.plan_columns(["n"], ["numeric"], {"n": pa.decimal128(10, 2)})
    nan = struct.pack(">hhHh", 0, 0, 0xC000, 0)
    data = _stream(["bytes"], [(nan,)])
    with pytest.raises(pgcopy.CopyDecodeError, match="non-finite"):
        _decode(specs, data, None)


def test_empty_result_and_truncated_stream() -> None:
    specs, _ = pgcopy.plan_columns(["id"], ["int8"], {})
    assert _decode(specs, _stream(["int8"], []), None).num_rows == 0
    data = _stream(["int8"], [(1,), (2,)])
    dec = pgcopy.CopyDecoder(specs)
    dec.feed(data[:-5])
    with pytest.raises(pgcopy.CopyDecodeError):
        dec.decode(final=True)


def test_copy_query_renames_positionally() -> None:
    sql = pgcopy.copy_query('SELECT "a", "a" FROM t', ["", "::text"])
    assert sql == (
        f'SELECT {pgcopy.MARKER}::int8, f."c0", f."c1"::text'
        ' FROM (SELECT "a", "a" FROM t) AS f("c0", "c1")'
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("SELECT $1, $2", "SELECT A, B"),
        ("SELECT '$1', \"$1\", $1 -- $2\n, $2", "SELECT '$1', \"$1\", A -- $2\n, B"),
        ("SELECT E'\\'$1', $2 /* $1 */", "SELECT E'\\'$1', B /* $1 */"),
        ("SELECT $$ $1 $$, $tag$ $2 $tag$, $1", "SELECT $$ $1 $$, $tag$ $2 $tag$, A"),
        ("SELECT 'it''s $1', $12x", "SELECT 'it''s $1', Lx"),
    ],
)
def test_replace_parameters(text: str, expected: str) -> None:
    names = [chr(ord("A") + i) for i in range(11)] + ["L"]
    assert replace_parameters(text, names) == expected
