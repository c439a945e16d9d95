"""The Flight SQL protocol messages the server speaks, in protobuf's wire format by hand.

Flight SQL wraps its commands (``FlightSql.proto``, package ``arrow.flight.protocol.sql``) in
a ``google.protobuf.Any`` inside a Flight descriptor, ticket or action body. The few messages
used here hold only strings, bytes, bools and repeated strings or integers, so a small codec
replaces generated classes and a protobuf dependency: :func:`decode` turns an ``Any`` into a
:class:`Command` (its message name and fields by name), :func:`encode` does the reverse.

>>> data = encode("CommandStatementQuery", query="SELECT 1")
>>> decode(data)
Command(name='CommandStatementQuery', fields={'query': 'SELECT 1'})
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from federator.errors import FederatorError

TYPE_PREFIX = "type.googleapis.com/arrow.flight.protocol.sql."

_STR, _BYTES, _BOOL, _UINTS, _STRS = "str", "bytes", "bool", "uints", "strs"

# message name -> field number -> (field name, kind); field numbers are FlightSql.proto's
MESSAGES: dict[str, dict[int, tuple[str, str]]] = {
    "CommandStatementQuery": {1: ("query", _STR), 2: ("transaction_id", _BYTES)},
    "TicketStatementQuery": {1: ("statement_handle", _BYTES)},
    "CommandPreparedStatementQuery": {1: ("prepared_statement_handle", _BYTES)},
    "ActionCreatePreparedStatementRequest": {1: ("query", _STR), 2: ("transaction_id", _BYTES)},
    "ActionCreatePreparedStatementResult": {
        1: ("prepared_statement_handle", _BYTES),
        2: ("dataset_schema", _BYTES),
        3: ("parameter_schema", _BYTES),
    },
    "ActionClosePreparedStatementRequest": {1: ("prepared_statement_handle", _BYTES)},
    "DoPutPreparedStatementResult": {1: ("prepared_statement_handle", _BYTES)},
    "CommandGetCatalogs": {},
    "CommandGetDbSchemas": {1: ("catalog", _STR), 2: ("db_schema_filter_pattern", _STR)},
    "CommandGetTables": {
        1: ("catalog", _STR),
        2: ("db_schema_filter_pattern", _STR),
        3: ("table_name_filter_pattern", _STR),
        4: ("table_types", _STRS),
        5: ("include_schema", _BOOL),
    },
    "CommandGetTableTypes": {},
    "CommandGetSqlInfo": {1: ("info", _UINTS)},
}


class ProtocolError(FederatorError):
    """A Flight SQL message this server cannot read (malformed, or a command it lacks)."""


@dataclass
class Command:
    """One decoded Flight SQL message: its name and the fields it carried."""

    name: str
    fields: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


def encode(name: str, **values: Any) -> bytes:
    """The ``Any`` holding message ``name`` with ``values`` (fields by name; None: absent)."""
    return _message({1: (TYPE_PREFIX + name).encode(), 2: encode_message(name, **values)})


def encode_message(name: str, **values: Any) -> bytes:
    """Message ``name`` alone (not in an ``Any``), e.g. a DoPut's ``PutResult`` metadata."""
    by_name = {fname: (number, kind) for number, (fname, kind) in MESSAGES[name].items()}
    out = bytearray()
    for fname, value in values.items():
        if value is None:
            continue
        number, kind = by_name[fname]
        if kind == _BOOL:
            out += _varint(number << 3) + _varint(int(bool(value)))
        elif kind in (_STR, _BYTES):
            out += _field(number, value.encode() if isinstance(value, str) else bytes(value))
        elif kind == _STRS:
            for item in value:
                out += _field(number, item.encode())
        else:  # packed repeated integers
            out += _field(number, b"".join(_varint(v) for v in value))
    return bytes(out)


def decode(data: bytes) -> Command:
    """The Flight SQL command inside an ``Any`` (a descriptor's cmd, a ticket, an action body);
    :class:`ProtocolError` for anything else."""
    raw = _fields(data)
    type_url = raw.get(1, [b""])[0]
    if not isinstance(type_url, bytes) or not type_url.startswith(TYPE_PREFIX.encode()):
        raise ProtocolError("not a Flight SQL command (expected a google.protobuf.Any)")
    name = type_url[len(TYPE_PREFIX) :].decode()
    if name not in MESSAGES:
        raise ProtocolError(f"Flight SQL command {name} is not supported by federator serve")
    body = raw.get(2, [b""])[0]
    return Command(name, decode_message(name, body if isinstance(body, bytes) else b""))


def decode_message(name: str, data: bytes) -> dict[str, Any]:
    """The fields of message ``name`` in ``data``; unknown fields are skipped."""
    known = MESSAGES[name]
    values: dict[str, Any] = {}
    for number, items in _fields(data).items():
        if number not in known:
            continue
        fname, kind = known[number]
        if kind == _STR:
            values[fname] = _text(items[-1])
        elif kind == _BYTES:
            values[fname] = items[-1] if isinstance(items[-1], bytes) else b""
        elif kind == _BOOL:
            values[fname] = bool(items[-1])
        elif kind == _STRS:
            values[fname] = [_text(item) for item in items]
        else:
            values[fname] = _uints(items)
    return values


# ---- wire format ------------------------------------------------------------------------
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _message(fields: dict[int, bytes]) -> bytes:
    return b"".join(_field(number, payload) for number, payload in fields.items())


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ProtocolError("malformed Flight SQL message (a truncated number)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> dict[int, list[int | bytes]]:
    """Field number → its values in order: ints (varint) or bytes (length-delimited)."""
    out: dict[int, list[int | bytes]] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, pos = _read_varint(data, pos)
        elif wire == 2:
            size, pos = _read_varint(data, pos)
            if pos + size > len(data):
                raise ProtocolError("malformed Flight SQL message (a field runs past its end)")
            value, pos = bytes(data[pos : pos + size]), pos + size
        elif wire in (1, 5):  # fixed 64/32-bit: no message here has one; skipped
            value, pos = 0, pos + (8 if wire == 1 else 4)
        else:
            raise ProtocolError(f"malformed Flight SQL message (wire type {wire})")
        out.setdefault(number, []).append(value)
    return out


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ProtocolError("malformed Flight SQL message (a number where text belongs)")
    return value.decode("utf-8", errors="replace")


def _uints(items: list[int | bytes]) -> list[int]:
    """A repeated integer field, packed (bytes of varints) or not (one int per item)."""
    values: list[int] = []
    for item in items:
        if isinstance(item, int):
            values.append(item)
            continue
        pos = 0
        while pos < len(item):
            value, pos = _read_varint(item, pos)
            values.append(value)
    return values
