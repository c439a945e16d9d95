"""PostgreSQL types as Arrow types, rows as Arrow batches, parameters as asyncpg values.

The catalog queries (columns with their types and row estimates; unique column sets) and the
mapping from a column's ``typname``/``atttypmod`` to Arrow: NUMERIC(p, s) → decimal128(p, s),
TIMESTAMPTZ → UTC, CHAR(n) without its blank padding, JSON as text, pgvector's ``vector`` →
list<float32>. Rows from the row path become Arrow batches here, and parameter values become
the Python values asyncpg wants for the parameter's server type.
"""

from __future__ import annotations

import datetime as dt
import decimal
from typing import Any

import pyarrow as pa
from federator.adapters.arrowconv import rows_to_batch

from federator.errors import SourceError
from federator.sql.dialect import vector_text

_CATALOG_SQL = """
SELECT n.nspname, c.relname, a.attname, t.typname, a.atttypmod,
       CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint ELSE s.n_live_tup END AS rows
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_catalog.pg_stat_all_tables s ON s.relid = c.oid
WHERE c.relkind IN ('r', 'v', 'm', 'p', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%'
  AND has_schema_privilege(n.oid, 'USAGE')
ORDER BY n.nspname, c.relname, a.attnum
"""

# Column sets unique on their own: primary keys and unique indexes without predicate or expression.
_UNIQUE_SQL = """
SELECT n.nspname, c.relname,
       array_agg(a.attname::text ORDER BY k.ord) AS cols
FROM pg_catalog.pg_index i
JOIN pg_catalog.pg_class c ON c.oid = i.indrelid
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
WHERE i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
GROUP BY n.nspname, c.relname, i.indexrelid
"""


_SIMPLE_TYPES: dict[str, pa.DataType] = {
    "bool": pa.bool_(),
    "int2": pa.int16(),
    "int4": pa.int32(),
    "int8": pa.int64(),
    "oid": pa.int64(),
    "float4": pa.float32(),
    "float8": pa.float64(),
    "text": pa.string(),
    "varchar": pa.string(),
    "bpchar": pa.string(),
    "name": pa.string(),
    "char": pa.string(),
    "uuid": pa.string(),
    "json": pa.string(),
    "jsonb": pa.string(),
    "xml": pa.string(),
    "inet": pa.string(),
    "cidr": pa.string(),
    "citext": pa.string(),
    "bytea": pa.binary(),
    "date": pa.date32(),
    "time": pa.time64("us"),
    "timestamp": pa.timestamp("us"),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "interval": pa.month_day_nano_interval(),
}
_ARRAYS = {f"_{name}": pa.list_(t) for name, t in _SIMPLE_TYPES.items()}


def pg_arrow_type(typname: str, typmod: int = -1) -> pa.DataType | None:
    """Arrow type of a PostgreSQL type; None where only the values can tell (bare NUMERIC).

    >>> pg_arrow_type("numeric", (15 << 16) + 2 + 4)
    Decimal128Type(decimal128(15, 2))
    """
    if typname == "numeric":
        if typmod < 4:
            return None
        precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
        return (
            pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)
        )
    if typname == "vector":
        return VECTOR
    return _SIMPLE_TYPES.get(typname) or _ARRAYS.get(typname) or pa.string()


VECTOR = pa.list_(pa.float32())  # pgvector's vector


def _vector_lists(batch: pa.RecordBatch, vectors: list[bool]) -> pa.RecordBatch:
    """pgvector columns, text ('[1,2,3]') on the wire and in COPY, as list<float32>."""
    if not any(vectors):
        return batch
    import pyarrow.compute as pc

    arrays = [
        pc.split_pattern(pc.utf8_trim(col, "[]"), ",").cast(VECTOR) if is_vector else col
        for col, is_vector in zip(batch.columns, vectors, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _output_type(name: str, typname: str, schema: pa.Schema | None) -> pa.DataType | None:
    if schema is not None and name in schema.names:
        return schema.field(name).type
    return pg_arrow_type(typname)


def _to_batch(
    rows: list[Any], names: list[str], types: list[pa.DataType | None], padded: list[bool]
) -> pa.RecordBatch:
    if any(padded) and rows:
        rows = [
            tuple(
                v.rstrip(" ") if p and v is not None else v for v, p in zip(r, padded, strict=True)
            )
            for r in rows
        ]
    for i, t in enumerate(types):
        if t is not None and pa.types.is_decimal(t) and rows:
            _check_finite_decimals(rows, i, names[i])
    return rows_to_batch(rows, names, types)


def _check_finite_decimals(rows: list[Any], i: int, name: str) -> None:
    for r in rows:
        v = r[i]
        if v is not None and not v.is_finite():
            raise SourceError(
                f"column {name!r} holds NUMERIC {v}, which decimal128 cannot hold; "
                f"cast it to double precision in the query"
            )


def _coerce_params(params: list[Any], types: list[str]) -> list[Any]:
    """asyncpg wants Python values of the parameter's server type; accept text for dates,
    timestamps and numbers as PostgreSQL itself would."""
    return [_coerce(v, t) for v, t in zip(params, types, strict=False)]


def _coerce(value: Any, typname: str) -> Any:
    if typname == "vector":  # pgvector: asyncpg has no codec for it and sends text
        return vector_text(value)
    if not isinstance(value, str):
        if typname == "numeric" and isinstance(value, (int, float)):
            return decimal.Decimal(str(value))
        if typname in ("float4", "float8") and isinstance(value, decimal.Decimal):
            return float(value)
        return value
    try:
        if typname == "date":
            return dt.date.fromisoformat(value)
        if typname in ("timestamp", "timestamptz"):
            parsed = dt.datetime.fromisoformat(value)
            if typname == "timestamptz" and parsed.tzinfo is None:
                parsed = parsed.replace(tzinfo=dt.UTC)
            return parsed
        if typname in ("int2", "int4", "int8"):
            return int(value)
        if typname in ("float4", "float8"):
            return float(value)
        if typname == "numeric":
            return decimal.Decimal(value)
    except (ValueError, decimal.InvalidOperation):
        from federator.errors import ParameterError

        raise ParameterError(f"parameter value {value!r} is not a valid {typname}") from None
    return value
