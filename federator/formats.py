"""What the command-line faces share (``federator`` CLI, REPL, demo, rule tests): results
written as a table, CSV, JSON, Parquet or Arrow IPC, and ``NAME=VALUE`` parameters.

>>> parse_params(["id=3", "name=ada"])
{'id': 3, 'name': 'ada'}
"""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import json
import math
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

FORMATS = ("table", "csv", "json", "parquet", "arrow")
BINARY_FORMATS = ("parquet", "arrow")
_EXTENSIONS = {
    ".csv": "csv",
    ".json": "json",
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".feather": "arrow",
    ".ipc": "arrow",
    ".txt": "table",
}


class UsageError(Exception):
    """A mistake on the command line (exit code 2)."""


def parse_params(items: Iterable[str]) -> dict[str, Any]:
    """``["id=3", "name=ada", "code='007'"]`` → ``{"id": 3, "name": "ada", "code": "007"}``.

    >>> parse_params(["a=1", "b=2.5", "c=x y", "d='7'", "e="])
    {'a': 1, 'b': 2.5, 'c': 'x y', 'd': '7', 'e': ''}
    """
    params: dict[str, Any] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip().lstrip(":")
        if not sep or not name.isidentifier():
            raise UsageError(f"--param wants NAME=VALUE, got {item!r}")
        params[name] = parse_value(value)
    return params


def parse_value(value: str) -> Any:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    try:
        return int(value)
    except ValueError:
        pass
    try:
        number = float(value)
    except ValueError:
        return value
    return number if math.isfinite(number) else value


def _format_from_path(path: str | None) -> str | None:
    return _EXTENSIONS.get(Path(path).suffix.lower()) if path else None


# ---- outputs ----------------------------------------------------------------------------
def write_result(
    reader: pa.RecordBatchReader, fmt: str, out: IO[Any], *, max_rows: int = 0
) -> None:
    """Write a stream of batches in one of :data:`FORMATS` (binary ones need a binary ``out``,
    or a text stream with a ``buffer``)."""
    if fmt == "table":
        write_table(reader, out, max_rows=max_rows, schema=reader.schema)
    elif fmt == "csv":
        write_csv(reader, out)
    elif fmt == "json":
        write_json(reader, out)
    elif fmt in BINARY_FORMATS:
        binary = getattr(out, "buffer", out)
        write_binary(reader, fmt, binary)
        binary.flush()
    else:  # pragma: no cover - argparse restricts the choice
        raise UsageError(f"unknown format {fmt!r}")


def write_binary(reader: pa.RecordBatchReader, fmt: str, out: IO[bytes]) -> None:
    import pyarrow as pa

    sink = pa.PythonFile(out, mode="w")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        with pq.ParquetWriter(sink, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)
    else:
        with pa.ipc.new_file(sink, reader.schema) as writer:
            for batch in reader:
                writer.write_batch(batch)


def write_csv(reader: pa.RecordBatchReader, out: IO[str]) -> None:
    """CSV with a header; NULL is an empty field."""
    import csv

    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(reader.schema.names)
    for batch in reader:
        columns = [_python_column(c) for c in batch.columns]
        for row in zip(*columns, strict=True):
            writer.writerow(["" if v is None else _text(v) for v in row])


def write_json(reader: pa.RecordBatchReader, out: IO[str]) -> None:
    """A JSON array of objects, one per line; decimals exact, times ISO 8601, bytes base64."""
    names = [json.dumps(n) for n in reader.schema.names]
    out.write("[")
    first = True
    for batch in reader:
        columns = [_python_column(c) for c in batch.columns]
        for row in zip(*columns, strict=True):
            body = ",".join(f"{n}:{json_value(v)}" for n, v in zip(names, row, strict=True))
            out.write(("\n" if first else ",\n") + "{" + body + "}")
            first = False
    out.write("\n]\n" if not first else "]\n")


def json_value(v: Any) -> str:
    """One value as JSON text (exact decimals; NaN and infinities as null).

    >>> json_value(decimal.Decimal("1.10")), json_value(float("nan"))
    ('1.10', 'null')
    >>> json_value(dt.date(2024, 1, 2)), json_value({"a": [1, None]})
    ('"2024-01-02"', '{"a":[1,null]}')
    """
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, decimal.Decimal):
        return str(v) if v.is_finite() else "null"
    if isinstance(v, float):
        return json.dumps(v) if math.isfinite(v) else "null"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{json_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(json_value(x) for x in v) + "]"
    return json.dumps(_text(v))


def _text(v: Any) -> str:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(v)).decode()
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat()
    if isinstance(v, dt.timedelta):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _python_column(column: pa.Array) -> list[Any]:
    import pyarrow as pa

    if column.type == pa.month_day_nano_interval():
        return [
            None if x is None else f"{x.months} mons {x.days} days {x.nanoseconds} ns"
            for x in column.to_pylist()
        ]
    return column.to_pylist()


def write_table(
    batches: Iterable[pa.RecordBatch],
    out: IO[str],
    *,
    schema: pa.Schema,
    max_rows: int = 0,
    footer: bool = True,
) -> None:
    """A table for people: rich's when installed and ``out`` is a terminal, else aligned text.

    NULL is shown as ``NULL``. At most ``max_rows`` rows are shown (0: all), with a note.
    """
    rows, total = _collect_rows(batches, max_rows)
    names = schema.names
    types = [str(f.type) for f in schema]
    note = _footer(len(rows), total) if footer else ""
    if _use_rich(out):
        _rich_table(names, types, rows, note, out)
        return
    for line in plain_table(names, rows):
        out.write(line + "\n")
    if note:
        out.write(note + "\n")


def _collect_rows(
    batches: Iterable[pa.RecordBatch], max_rows: int
) -> tuple[list[list[str | None]], int]:
    rows: list[list[str | None]] = []
    total = 0
    for batch in batches:
        total += batch.num_rows
        room = batch.num_rows if max_rows <= 0 else max(0, max_rows - len(rows))
        if room:
            part = batch.slice(0, room)
            columns = [
                [None if v is None else _cell(v) for v in _python_column(c)] for c in part.columns
            ]
            rows.extend(list(r) for r in zip(*columns, strict=True))
    return rows, total


def _cell(v: Any) -> str:
    if isinstance(v, (bytes, bytearray, memoryview)):
        return "\\x" + bytes(v).hex()
    if isinstance(v, (dt.datetime, dt.date, dt.time)):
        return v.isoformat(sep=" ") if isinstance(v, dt.datetime) else v.isoformat()
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (dict, list)):
        return json.dumps(v, default=str)
    return str(v)


def _footer(shown: int, total: int) -> str:
    rows = f"({total:,} row{'s' if total != 1 else ''}"
    if shown < total:
        return f"{rows}; first {shown:,} shown, --max-rows 0 shows all)"
    return rows + ")"


def plain_table(names: Sequence[str], rows: Sequence[Sequence[str | None]]) -> Iterator[str]:
    """Aligned text lines: header, rule, rows; numbers right-aligned, NULL for nulls.

    >>> print("\\n".join(plain_table(["id", "name"], [["1", "ada"], ["10", None]])))
    id | name
    ---+-----
     1 | ada
    10 | NULL
    """
    shown = [["NULL" if v is None else v.replace("\n", "\\n") for v in row] for row in rows]
    widths = [max([len(n)] + [len(r[i]) for r in shown]) for i, n in enumerate(names)]
    numeric = [
        bool(rows) and all(r[i] is None or _looks_numeric(r[i]) for r in rows)  # type: ignore[arg-type]
        for i in range(len(names))
    ]
    yield " | ".join(n.ljust(w) for n, w in zip(names, widths, strict=True)).rstrip()
    yield "-+-".join("-" * w for w in widths)
    for r in shown:
        cells = [
            v.rjust(w) if num else v.ljust(w) for v, w, num in zip(r, widths, numeric, strict=True)
        ]
        yield " | ".join(cells).rstrip()


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _use_rich(out: IO[str]) -> bool:
    if not (hasattr(out, "isatty") and out.isatty()):
        return False
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


def _rich_table(
    names: Sequence[str],
    types: Sequence[str],
    rows: Sequence[Sequence[str | None]],
    note: str,
    out: IO[str],
) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(show_edge=True, header_style="bold")
    for name, type_ in zip(names, types, strict=True):
        numeric = any(k in type_ for k in ("int", "float", "double", "decimal"))
        header = Text.assemble((name, "bold"), "\n", (type_, "dim"))
        table.add_column(header, justify="right" if numeric else "left")
    for row in rows:
        table.add_row(*(Text("NULL", style="dim italic") if v is None else Text(v) for v in row))
    console = Console(file=out, highlight=False)
    console.print(table)
    if note:
        console.print(Text(note, style="dim"))
