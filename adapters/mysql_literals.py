"""Parameter values as MySQL/MariaDB literals that need no escaping.

aiomysql only interpolates on the client, and its escaping of ``bytes`` assumes backslash
escapes: under ``sql_mode = NO_BACKSLASH_ESCAPES`` a quote in a bytes value ended the literal
(an injection). Here no value is ever written between quotes that it could close: text and
bytes become hexadecimal literals (``_utf8mb4 X'…'`` is a character string with the same
coercibility as ``'…'``, ``X'…'`` a binary string), numbers their digits, dates and times a
fixed format of digits. That is right under every ``sql_mode`` and every client character set.

>>> inline("SELECT * FROM t WHERE a = %s AND b LIKE 'x%%' AND c = %s", ["it's", b"\\x00'"])
"SELECT * FROM t WHERE a = _utf8mb4 X'69742773' AND b LIKE 'x%' AND c = X'0027'"
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import numbers
import uuid
from collections.abc import Sequence
from typing import Any

from federator.errors import ParameterError


def inline(text: str, params: Sequence[Any]) -> str:
    """``text`` (``%s`` placeholders, ``%%`` for a percent sign) with every parameter written
    as a literal by :func:`mysql_literal`."""
    literals = []
    for position, value in enumerate(params, start=1):
        try:
            literals.append(mysql_literal(value))
        except ParameterError as e:
            raise ParameterError(f"parameter {position}: {e}") from None
    return text % tuple(literals)


def mysql_literal(value: Any) -> str:
    """One value as a MySQL literal made of hex digits, digits and fixed punctuation only.

    >>> mysql_literal("O'Brien"), mysql_literal(b"\\xbf'"), mysql_literal(None)
    ("_utf8mb4 X'4F27427269656E'", "X'BF27'", 'NULL')
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, str):
        return f"_utf8mb4 X'{_utf8(value).hex().upper()}'"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"X'{bytes(value).hex().upper()}'"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, decimal.Decimal):
        return _decimal(value)
    if isinstance(value, numbers.Real):
        return _double(float(value))
    if isinstance(value, dt.datetime):
        return _quoted_digits(_datetime(value))
    if isinstance(value, dt.date):
        return _quoted_digits(value.isoformat())
    if isinstance(value, dt.time):
        if value.tzinfo is not None:
            raise ParameterError("a time of day with a time zone has no MySQL type; drop tzinfo")
        return _quoted_digits(value.isoformat())
    if isinstance(value, dt.timedelta):
        return _quoted_digits(_duration(value))
    if isinstance(value, uuid.UUID):
        return mysql_literal(str(value))
    if type(value).__module__ in ("numpy", "pyarrow.lib") and hasattr(value, "item"):
        return mysql_literal(value.item())  # numpy scalars (numpy.bool_ is no bool)
    if type(value).__module__ == "pyarrow.lib" and hasattr(value, "as_py"):
        return mysql_literal(value.as_py())
    if isinstance(value, list | tuple):
        if not value:
            raise ParameterError("an empty list has no SQL literal; give at least one value")
        return "(" + ", ".join(mysql_literal(v) for v in value) + ")"
    raise ParameterError(
        f"a value of type {type(value).__name__} cannot be bound on MySQL; "
        "use str, bytes, int, float, Decimal, bool, date, datetime, time, timedelta, UUID or None"
    )


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ParameterError(f"text is not valid Unicode ({e.reason} at {e.start})") from None


def _decimal(value: decimal.Decimal) -> str:
    if not value.is_finite():
        raise ParameterError(f"{value} has no MySQL literal")
    return format(value, "f")


def _double(value: float) -> str:
    if not math.isfinite(value):
        raise ParameterError(f"{value} has no MySQL literal")
    text = repr(value)
    return text if "e" in text else text + "e0"  # a DOUBLE literal, not a DECIMAL one


def _datetime(value: dt.datetime) -> str:
    """Naive datetimes as given; aware ones in UTC, the sessions' time zone."""
    if value.tzinfo is not None:
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    return value.isoformat(sep=" ")


def _duration(value: dt.timedelta) -> str:
    sign = "-" if value < dt.timedelta(0) else ""
    micros = abs(value) // dt.timedelta(microseconds=1)
    seconds, micro = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hours, minute = divmod(minutes, 60)
    return f"{sign}{hours}:{minute:02d}:{second:02d}.{micro:06d}"


def _quoted_digits(text: str) -> str:
    # isoformat gives digits, '-', ':', '.', ' ' and '+' only; checked, since it is quoted.
    if not set(text) <= set("0123456789-:. +"):
        raise ParameterError(f"unexpected characters in {text!r}")
    return f"'{text}'"
