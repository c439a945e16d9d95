"""MySQL parameter literals: only hex digits, digits and fixed punctuation reach the SQL."""

from __future__ import annotations

import datetime as dt
import decimal
import re

import pytest
from federator.adapters.mysql_literals import inline, mysql_literal

from federator.errors import ParameterError

SAFE = re.compile(
    r"^(NULL|TRUE|FALSE|-?[0-9.]+(e[-+]?[0-9]+)?|(_utf8mb4 )?X'[0-9A-F]*'|'[0-9 :.+-]*')$"
)


@pytest.mark.parametrize(
    "value",
    [
        "x'; DROP TABLE t; -- ",
        "\\'",
        "",
        "\u00bf'",
        b"\xbf'",
        b"\x00\\'",
        bytearray(b"'"),
        0,
        -(2**63),
        2**64,
        1.5,
        -1e300,
        decimal.Decimal("-0.000001"),
        decimal.Decimal("1E+30"),
        dt.date(1, 1, 1),
        dt.datetime(2026, 1, 2, 3, 4, 5, 6),
        dt.time(23, 59, 59, 999999),
        dt.timedelta(days=-1, seconds=5),
        None,
        True,
    ],
)
def test_every_literal_is_made_of_safe_characters(value: object) -> None:
    assert SAFE.match(mysql_literal(value)), mysql_literal(value)


def test_text_and_bytes_are_hex() -> None:
    assert mysql_literal("a'b") == "_utf8mb4 X'612762'"
    assert mysql_literal(b"a'b") == "X'612762'"


def test_numbers_keep_their_type() -> None:
    assert mysql_literal(0.5) == "0.5e0"  # DOUBLE, not DECIMAL
    assert mysql_literal(decimal.Decimal("1E+3")) == "1000"
    assert mysql_literal(dt.timedelta(hours=-1, seconds=-3)) == "'-1:00:03.000000'"


def test_aware_datetimes_are_written_in_utc() -> None:
    tz = dt.timezone(dt.timedelta(hours=-5))
    assert mysql_literal(dt.datetime(2026, 1, 1, 20, 0, tzinfo=tz)) == "'2026-01-02 01:00:00'"


def test_inline_keeps_percent_escapes_and_names_the_bad_parameter() -> None:
    assert inline("a LIKE 'x%%' AND b = %s", [1]) == "a LIKE 'x%' AND b = 1"
    with pytest.raises(ParameterError, match=r"parameter 2: .*object"):
        inline("%s, %s", [1, object()])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), decimal.Decimal("NaN"), [], {1}])
def test_values_without_a_literal_are_parameter_errors(value: object) -> None:
    with pytest.raises(ParameterError):
        mysql_literal(value)


def test_lists_become_parenthesised_lists() -> None:
    assert mysql_literal([1, "a"]) == "(1, _utf8mb4 X'61')"


def test_uuid_numpy_and_arrow_scalars_are_written_as_their_values() -> None:
    import uuid

    import numpy as np
    import pyarrow as pa

    value = uuid.UUID(int=1)
    assert mysql_literal(value) == mysql_literal(str(value))
    assert mysql_literal(np.bool_(True)) == "TRUE"
    assert mysql_literal(np.int32(-3)) == "-3"
    assert mysql_literal(pa.scalar("a'")) == "_utf8mb4 X'6127'"
