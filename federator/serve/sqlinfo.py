"""The fixed Arrow schemas of Flight SQL's catalog calls and the ``GetSqlInfo`` answer.

>>> sql_info_table([0], "1.0", "20.0").column("info_name").to_pylist()
[0]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pyarrow as pa

CATALOGS_SCHEMA = pa.schema([pa.field("catalog_name", pa.utf8(), nullable=False)])
DB_SCHEMAS_SCHEMA = pa.schema(
    [pa.field("catalog_name", pa.utf8()), pa.field("db_schema_name", pa.utf8(), nullable=False)]
)
TABLES_SCHEMA = pa.schema(
    [
        pa.field("catalog_name", pa.utf8()),
        pa.field("db_schema_name", pa.utf8()),
        pa.field("table_name", pa.utf8(), nullable=False),
        pa.field("table_type", pa.utf8(), nullable=False),
    ]
)
TABLES_WITH_SCHEMA = TABLES_SCHEMA.append(pa.field("table_schema", pa.binary(), nullable=False))
TABLE_TYPES_SCHEMA = pa.schema([pa.field("table_type", pa.utf8(), nullable=False)])

# SqlInfo ids (FlightSql.proto) and the union member their value takes
SERVER_NAME, SERVER_VERSION, SERVER_ARROW_VERSION, SERVER_READ_ONLY = 0, 1, 2, 3
SERVER_SQL, SERVER_SUBSTRAIT, SERVER_TRANSACTION, SERVER_CANCEL = 4, 5, 8, 9
STATEMENT_TIMEOUT, TRANSACTION_TIMEOUT = 100, 101
IDENTIFIER_QUOTE_CHAR = 504
_STRING, _BOOL, _BIGINT, _INT32 = 0, 1, 2, 3


def _value_type() -> pa.DenseUnionType:
    members = [
        pa.field("string_value", pa.utf8()),
        pa.field("bool_value", pa.bool_()),
        pa.field("bigint_value", pa.int64()),
        pa.field("int32_bitmask", pa.int32()),
        pa.field("string_list", pa.list_(pa.utf8())),
        pa.field(
            "int32_to_int32_list_map",
            pa.map_(pa.int32(), pa.list_(pa.int32())),
        ),
    ]
    return pa.dense_union(members, type_codes=[0, 1, 2, 3, 4, 5])


def sql_info_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field("info_name", pa.uint32(), nullable=False),
            pa.field("value", _value_type(), nullable=False),
        ]
    )


def _infos(version: str, arrow_version: str) -> dict[int, tuple[int, Any]]:
    return {
        SERVER_NAME: (_STRING, "federator"),
        SERVER_VERSION: (_STRING, version),
        SERVER_ARROW_VERSION: (_STRING, arrow_version),
        SERVER_READ_ONLY: (_BOOL, True),
        SERVER_SQL: (_BOOL, True),
        SERVER_SUBSTRAIT: (_BOOL, False),
        SERVER_TRANSACTION: (_INT32, 0),  # SQL_SUPPORTED_TRANSACTION_NONE
        SERVER_CANCEL: (_BOOL, False),  # cancel by closing the DoGet stream
        STATEMENT_TIMEOUT: (_INT32, 0),
        TRANSACTION_TIMEOUT: (_INT32, 0),
        IDENTIFIER_QUOTE_CHAR: (_STRING, '"'),
    }


def sql_info_table(requested: Iterable[int], version: str, arrow_version: str) -> pa.Table:
    """The ``GetSqlInfo`` answer for the ``requested`` ids (none: every id known here)."""
    infos = _infos(version, arrow_version)
    ids = [i for i in requested if i in infos] if requested else sorted(infos)
    type_ids: list[int] = []
    offsets: list[int] = []
    values: dict[int, list[Any]] = {code: [] for code in range(6)}
    for info in ids:
        code, value = infos[info]
        type_ids.append(code)
        offsets.append(len(values[code]))
        values[code].append(value)
    union_type = _value_type()
    children = [pa.array(values[code], type=union_type.field(code).type) for code in range(6)]
    union = pa.UnionArray.from_dense(
        pa.array(type_ids, pa.int8()),
        pa.array(offsets, pa.int32()),
        children,
        [union_type.field(code).name for code in range(6)],
        list(range(6)),
    )
    return pa.Table.from_arrays([pa.array(ids, pa.uint32()), union], schema=sql_info_schema())
