"""The SQL side of PostgreSQL's binary COPY path; the format itself is :mod:`pgcopy`.

COPY takes no parameters, so each bound value travels as a transaction-local setting and the
query reads it back once (``_setting_sql``), with ``$n`` placeholders replaced outside literals,
identifiers, comments and dollar-quoted strings (``replace_parameters``). Also the helpers the
decoding loop of :meth:`federator.adapters.postgres.PostgresAdapter.run_bulk` uses.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from federator.adapters import pgcopy

from federator.errors import SourceError

_BULK_BLOCK_BYTES = 4 << 20  # decode the COPY stream in blocks of about this size


def _filtered(query: Any) -> bool:
    """Whether a fragment's row count depends on predicates, joins, grouping or a limit."""
    from sqlglot import exp

    return any(query.find(kind) is not None for kind in (exp.Where, exp.Join, exp.Group, exp.Limit))


def _decode(decoder: pgcopy.CopyDecoder, final: bool) -> pa.RecordBatch | None:
    try:
        return decoder.decode(final)
    except pgcopy.CopyDecodeError as e:
        raise SourceError(str(e)) from None


def _split(batch: pa.RecordBatch, rows: int) -> list[pa.RecordBatch]:
    if batch.num_rows <= rows:
        return [batch]
    return [batch.slice(i, rows) for i in range(0, batch.num_rows, rows)]


def _empty_type(spec: pgcopy.ColumnSpec) -> pa.DataType:
    return pa.decimal128(38, 0) if pa.types.is_null(spec.type) else spec.type


def _setting_sql(number: int, t: Any) -> str:
    """Parameter ``$number`` read back from its setting, once per query: as a scalar subquery
    (an initplan; an expression would be re-read and re-parsed for every row). An array's
    subquery is cast again, so that ``= ANY(...)`` takes it as an array, not as a subquery's
    rows.

    >>> from types import SimpleNamespace as T
    >>> print(_setting_sql(1, T(schema=None, name="int4")))
    (SELECT current_setting('federator.p1')::"pg_catalog"."int4")
    >>> print(_setting_sql(2, T(schema=None, name="int8[]")))
    ((SELECT current_setting('federator.p2')::"pg_catalog"."int8"[])::"pg_catalog"."int8"[])
    """
    type_sql = _type_sql(t)
    read = f"(SELECT current_setting('federator.p{number}')::{type_sql})"
    return f"({read}::{type_sql})" if str(t.name).endswith("[]") else read


def _type_sql(t: Any) -> str:
    """A parameter's type as SQL: schema-qualified, quoted (asyncpg names arrays ``elem[]``).

    >>> from types import SimpleNamespace as T
    >>> _type_sql(T(schema="pg_catalog", name="int8[]")), _type_sql(T(schema=None, name="date"))
    ('"pg_catalog"."int8"[]', '"pg_catalog"."date"')
    """
    schema = str(t.schema or "pg_catalog").replace('"', '""')
    name = str(t.name)
    suffix = "[]" if name.endswith("[]") else ""
    name = name.removesuffix("[]").replace('"', '""')
    return f'"{schema}"."{name}"{suffix}'


def replace_parameters(text: str, replacements: list[str]) -> str:
    r"""``$n`` placeholders in SQL text replaced, skipping string literals, quoted identifiers,
    comments and dollar-quoted strings.

    >>> replace_parameters("SELECT '$1', \"$1\", $1 -- $1", ["x"])
    'SELECT \'$1\', "$1", x -- $1'
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "'" or c == '"':
            backslash = (
                c == "'"
                and i > 0
                and text[i - 1] in "eE"
                and not (i > 1 and (text[i - 2].isalnum() or text[i - 2] == "_"))
            )
            j = i + 1
            while j < n:
                if backslash and text[j] == "\\":
                    j += 2
                    continue
                if text[j] == c:
                    if j + 1 < n and text[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            out.append(text[i : j + 1])
            i = j + 1
        elif text.startswith("--", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(text[i:j])
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(text[i:j])
            i = j
        elif c == "$":
            j = i + 1
            while j < n and text[j].isdigit():
                j += 1
            if j > i + 1 and not (i > 0 and (text[i - 1].isalnum() or text[i - 1] == "_")):
                out.append(replacements[int(text[i + 1 : j]) - 1])
                i = j
                continue
            k = text.find("$", i + 1)
            tag = text[i : k + 1] if k >= 0 else ""
            if tag and all(ch.isalnum() or ch == "_" for ch in tag[1:-1]):
                end = text.find(tag, k + 1)
                end = n if end < 0 else end + len(tag)
                out.append(text[i:end])
                i = end
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)
