"""Column types declared in a catalog by name, for the schemaless backends (documents, key-value).

>>> parse_type("int64"), parse_type("list<string>"), parse_type("decimal(12, 2)")
(DataType(int64), ListType(list<item: string>), Decimal128Type(decimal128(12, 2)))
>>> parse_type("list<struct<productId: int64, qty: int64>>")
ListType(list<item: struct<productId: int64, qty: int64>>)
"""

from __future__ import annotations

import re

import pyarrow as pa

from federator.errors import CatalogError

SIMPLE: dict[str, pa.DataType] = {
    "string": pa.string(),
    "str": pa.string(),
    "text": pa.string(),
    "json": pa.string(),
    "objectid": pa.string(),
    "int": pa.int64(),
    "int8": pa.int8(),
    "int16": pa.int16(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "bigint": pa.int64(),
    "float": pa.float64(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "double": pa.float64(),
    "bool": pa.bool_(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("ms", tz="UTC"),
    "datetime": pa.timestamp("ms", tz="UTC"),
    "binary": pa.binary(),
    "bytes": pa.binary(),
    "decimal": pa.decimal128(38, 10),
}
_DECIMAL = re.compile(r"decimal(?:128)?\s*\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_LIST = re.compile(r"list\s*<\s*(.+)\s*>", re.IGNORECASE | re.DOTALL)
_STRUCT = re.compile(r"struct\s*<(.*)>", re.IGNORECASE | re.DOTALL)


def parse_type(text: str) -> pa.DataType:
    """An Arrow type from a declared name: ``int64``, ``string``, ``decimal(12,2)``,
    ``timestamp`` (ms, UTC), ``list<int64>``, ``struct<name: type, …>`` (an embedded
    document; names keep their case), ``objectid`` and ``json`` (both strings)."""
    name = text.strip().lower()
    if name in SIMPLE:
        return SIMPLE[name]
    if m := _DECIMAL.fullmatch(name):
        return pa.decimal128(int(m.group(1)), int(m.group(2)))
    if m := _LIST.fullmatch(text.strip()):
        return pa.list_(parse_type(m.group(1)))
    if m := _STRUCT.fullmatch(text.strip()):
        return pa.struct([_struct_field(part, text) for part in _top_level_parts(m.group(1))])
    known = ", ".join(sorted(SIMPLE))
    raise CatalogError(
        f"unknown column type {text!r} (known: {known}, decimal(p,s), list<type>, "
        "struct<name: type, ...>)"
    )


def _struct_field(part: str, text: str) -> pa.Field:
    name, colon, type_text = part.partition(":")
    if not colon or not name.strip():
        raise CatalogError(f"column type {text!r}: write each struct field as 'name: type'")
    return pa.field(name.strip(), parse_type(type_text))


def _top_level_parts(text: str) -> list[str]:
    """``a: int64, b: list<x>`` split at the commas outside <> and ()."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch in "<("
        depth -= ch in ">)"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p.strip()]
