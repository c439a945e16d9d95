"""Column types declared in a catalog by name, for the schemaless backends (documents, key-value).

>>> parse_type("int64"), parse_type("list<string>"), parse_type("decimal(12, 2)")
(DataType(int64), ListType(list<item: string>), Decimal128Type(decimal128(12, 2)))
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
_LIST = re.compile(r"list\s*<\s*(.+)\s*>")


def parse_type(text: str) -> pa.DataType:
    """An Arrow type from a declared name: ``int64``, ``string``, ``decimal(12,2)``,
    ``timestamp`` (ms, UTC), ``list<int64>``, ``objectid`` and ``json`` (both strings)."""
    name = text.strip().lower()
    if name in SIMPLE:
        return SIMPLE[name]
    if m := _DECIMAL.fullmatch(name):
        return pa.decimal128(int(m.group(1)), int(m.group(2)))
    if m := _LIST.fullmatch(name):
        return pa.list_(parse_type(m.group(1)))
    known = ", ".join(sorted(SIMPLE))
    raise CatalogError(f"unknown column type {text!r} (known: {known}, decimal(p,s), list<type>)")
