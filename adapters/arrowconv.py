"""Row tuples from DB-API style drivers → Arrow columns, with exact types where known."""

from __future__ import annotations

import datetime as dt
import decimal
import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa


def rows_to_batch(
    rows: Sequence[Sequence[Any]],
    names: Sequence[str],
    types: Sequence[pa.DataType | None],
) -> pa.RecordBatch:
    """Columns from rows. A known type is used as is; an unknown one is inferred per batch."""
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
    arrays = [to_array(list(col), t) for col, t in zip(columns, types, strict=True)]
    return pa.RecordBatch.from_arrays(arrays, names=list(names))


def to_array(values: list[Any], type_: pa.DataType | None) -> pa.Array:
    if type_ is None:
        return _infer(values)
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        values = [_text(v) for v in values]
    elif pa.types.is_boolean(type_):
        values = [None if v is None else bool(v) for v in values]
    elif pa.types.is_decimal(type_):
        values = [_decimal(v, type_.scale) for v in values]
    elif (pa.types.is_date(type_) or pa.types.is_timestamp(type_)) and any(
        isinstance(v, str) for v in values
    ):
        return pa.array(values, type=pa.string()).cast(type_)
    elif pa.types.is_timestamp(type_) and type_.tz:
        values = [
            v.astimezone(dt.UTC) if isinstance(v, dt.datetime) and v.tzinfo else v for v in values
        ]
    return pa.array(values, type=type_)


def _text(v: Any) -> Any:
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v).decode()
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return str(v)


def _decimal(v: Any, scale: int) -> Any:
    """A value for a decimal column of ``scale``: a float (SQLite keeps NUMERIC(p, s) values,
    and their SUM, as doubles) is rounded to the scale, as the column's type says it is.

    >>> _decimal(100000005.54000001, 2), _decimal(3, 2)
    (Decimal('100000005.54'), Decimal('3'))
    """
    if v is None or isinstance(v, decimal.Decimal):
        return v
    if isinstance(v, float):
        return decimal.Decimal(repr(v)).quantize(decimal.Decimal(1).scaleb(-scale))
    return decimal.Decimal(str(v))


def _infer(values: list[Any]) -> pa.Array:
    sample = next((v for v in values if v is not None), None)
    if isinstance(sample, decimal.Decimal):
        return pa.array(values, type=infer_decimal(values))
    if isinstance(sample, (dict, list)):
        return pa.array([_text(v) for v in values], type=pa.string())
    if isinstance(sample, dt.datetime) and sample.tzinfo is not None:
        return pa.array(
            [v.astimezone(dt.UTC) if v is not None else None for v in values],
            type=pa.timestamp("us", tz="UTC"),
        )
    if sample is None:
        return pa.nulls(len(values))
    return pa.array(values)


def infer_decimal(values: list[Any]) -> pa.DataType:
    """The narrowest decimal128 that holds every value exactly (capped at precision 38)."""
    scale = 0
    integer_digits = 1
    for v in values:
        if v is None or not v.is_finite():
            continue
        _, digits, exponent = v.as_tuple()
        scale = max(scale, -exponent if isinstance(exponent, int) and exponent < 0 else 0)
        integer_digits = max(
            integer_digits, len(digits) + (exponent if isinstance(exponent, int) else 0)
        )
    scale = min(scale, 38 - integer_digits)
    return pa.decimal128(38, max(scale, 0))


def next_batch(reader: pa.RecordBatchReader) -> pa.RecordBatch | None:
    """The reader's next batch, None at the end (for a worker thread, where StopIteration
    cannot cross an ``await``)."""
    try:
        return reader.read_next_batch()
    except StopIteration:
        return None


def conform(batch: pa.RecordBatch, schema: pa.Schema | None, strict: bool) -> pa.RecordBatch:
    """Cast ``batch``'s columns to the types ``schema`` (the catalog's) names for them.

    The casts are safe: one that would lose a digit raises, or with ``strict=False`` leaves
    the column as it came (a type the engine chose on purpose, e.g. for an expression).
    """
    if schema is None:
        return batch
    arrays, changed = [], False
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        want = schema.field(name).type if name in schema.names else None
        if want is not None and column.type != want:
            try:
                column, changed = column.cast(want), True
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                if strict:
                    raise
        arrays.append(column)
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names) if changed else batch
