"""The ``federator`` command line: ``query``, ``explain``, ``sources``, ``demo``, ``repl`` and
``rules test``.

Exit codes: 0 ok, 1 query error (one ``error: ...`` line on stderr; ``--debug`` adds the
traceback), 2 usage error. The catalog comes from ``--catalog``, else ``$FEDERATOR_CATALOG``,
else ``./federator.toml``. SQL given as ``-`` is read from stdin.

>>> main(["query", "--help"])  # doctest: +ELLIPSIS
usage: federator query [-h] ...
0
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import decimal
import json
import math
import os
import sys
import traceback
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from federator.errors import FederatorError

if TYPE_CHECKING:
    import pyarrow as pa

    from federator.federation import Federation

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
CATALOG_ENV = "FEDERATOR_CATALOG"
DEFAULT_CATALOG = "federator.toml"
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


# ---- entry ------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (``sys.exit(main())`` in scripts)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help exits 0, a usage mistake exits 2
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    debug = bool(getattr(args, "debug", False) or args.debug_top)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return args.run(args)
    except UsageError as e:
        print(f"federator {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except FederatorError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `federator query ... | head`: the reader left; exit quietly
        _silence_stdout()
        return EXIT_ERROR
    except Exception as e:  # a bug, not the user's mistake: still one line unless --debug
        if debug:
            traceback.print_exc()
        print(
            f"error: internal error: {type(e).__name__}: {e} "
            "(rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return EXIT_ERROR


def build_parser() -> argparse.ArgumentParser:
    from federator import __version__

    parser = argparse.ArgumentParser(
        prog="federator",
        description="One SQL query over many databases, pushed down and merged in Arrow.",
        epilog="Start with `federator demo`; every command takes --help.",
    )
    parser.add_argument("--version", action="version", version=f"federator {__version__}")
    parser.add_argument(
        "--debug", dest="debug_top", action="store_true", help="show tracebacks of errors"
    )
    parser.set_defaults(command=None, debug_top=False)
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--catalog",
        "-c",
        metavar="FILE",
        help=f"catalog TOML (default: ${CATALOG_ENV}, else ./{DEFAULT_CATALOG})",
    )
    common.add_argument("--debug", action="store_true", help="show tracebacks of errors")

    sql = argparse.ArgumentParser(add_help=False)
    sql.add_argument("sql", metavar="SQL", help="the query; '-' reads it from stdin")
    sql.add_argument(
        "--param",
        "-p",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="bind :NAME (integers and decimals become numbers; quote a value to keep it text); "
        "repeatable",
    )
    sql.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="cancel the query after this long"
    )

    q = sub.add_parser(
        "query",
        parents=[common, sql],
        help="run a query and print or write its result",
        description="Run a federated query and print or write its result.",
    )
    q.add_argument(
        "--format",
        "-f",
        choices=FORMATS,
        help="output format (default: from -o's extension, else table)",
    )
    q.add_argument(
        "--output", "-o", metavar="FILE", help="write the result to FILE instead of stdout"
    )
    q.add_argument(
        "--max-rows",
        type=int,
        default=1000,
        metavar="N",
        help="rows shown by the table format (default 1000; 0 shows all)",
    )
    q.set_defaults(command="query", run=cmd_query)

    e = sub.add_parser(
        "explain",
        parents=[common, sql],
        help="show the plan: native requests and residual",
        description="Show each fragment's native request and the residual query.",
    )
    e.add_argument(
        "--analyze", action="store_true", help="run the query and add rows, bytes and times"
    )
    e.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="also show which rule pushed or refused each expression",
    )
    e.set_defaults(command="explain", run=cmd_explain)

    s = sub.add_parser(
        "sources",
        parents=[common],
        help="list the catalog's sources",
        description="List the catalog's sources (never a password).",
    )
    s.add_argument("--tables", "-t", action="store_true", help="also list each source's tables")
    s.set_defaults(command="sources", run=cmd_sources)

    d = sub.add_parser(
        "demo",
        help="run a cross-source query on a sample dataset (no server needed)",
        description="Write a small SQLite database and a folder of Parquet/CSV files, "
        "then run a federated query over both and print its plan and result.",
    )
    d.add_argument(
        "--dir",
        metavar="DIR",
        help="write the sample data and a federator.toml here and keep them "
        "(default: a temporary folder, removed after)",
    )
    d.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    d.set_defaults(command="demo", run=cmd_demo)

    r = sub.add_parser(
        "repl",
        parents=[common],
        help="an interactive SQL terminal over the catalog",
        description="Interactive federated SQL: multi-line statements end at ';', history, "
        "completion of sources, tables and columns; \\? lists the meta commands.",
    )
    r.add_argument(
        "catalog_file", nargs="?", metavar="CATALOG", help="catalog TOML (same as --catalog)"
    )
    r.add_argument(
        "--history",
        metavar="FILE",
        help="history file (default: $FEDERATOR_HISTORY, else ~/.federator_history)",
    )
    r.add_argument(
        "--max-rows",
        type=int,
        default=100,
        metavar="N",
        help="rows shown per result (default 100; 0 shows all)",
    )
    r.set_defaults(command="repl", run=cmd_repl)

    rules = sub.add_parser(
        "rules",
        help="work with pushdown rules (rules test FIXTURES...)",
        description="Pushdown rule authoring: check fixture files of federated SQL in and "
        "native requests out.",
    )
    rules.set_defaults(command="rules", run=lambda a: _usage(rules))
    rsub = rules.add_subparsers(title="rules commands", metavar="COMMAND")
    rt = rsub.add_parser(
        "test",
        help="check pushdown fixture files against the planner",
        description="Plan every case of the fixture files (folders: every *.sql inside) and "
        "compare fragments, native requests and residual; a difference is printed as a diff. "
        "Plans against an offline shop (sources pg, my, lite, lake with tables customers, "
        "orders, products) unless --catalog is given. Exit 1 when a case fails.",
    )
    rt.add_argument("fixtures", nargs="+", metavar="FIXTURES", help="fixture files or folders")
    rt.add_argument(
        "--catalog",
        "-c",
        metavar="FILE",
        help="plan against this catalog's sources (reads their metadata) instead of the shop",
    )
    rt.add_argument(
        "--rules",
        "-r",
        action="append",
        default=[],
        metavar="MODULE",
        help="load a rule plug-in first (module path or .py file); repeatable",
    )
    rt.add_argument("--verbose", "-v", action="store_true", help="list passing cases too")
    rt.add_argument(
        "--update",
        action="store_true",
        help="rewrite the expected sections from the current planner (read the diff after)",
    )
    rt.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    rt.set_defaults(command="rules test", run=cmd_rules_test)
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return EXIT_USAGE


# ---- commands ---------------------------------------------------------------------------
def cmd_query(args: argparse.Namespace) -> int:
    fmt = args.format or _format_from_path(args.output) or "table"
    if fmt in BINARY_FORMATS and args.output is None and sys.stdout.isatty():
        raise UsageError(f"{fmt} is binary; write it to a file with -o FILE or redirect stdout")
    text = read_sql(args.sql)
    params = parse_params(args.param)
    with open_catalog(args.catalog) as fed:
        result = fed.sql(text, params, timeout=args.timeout)
        reader = result.to_batches()
        if args.output is None:
            write_result(reader, fmt, sys.stdout, max_rows=args.max_rows)
            sys.stdout.flush()
        else:
            mode = "wb" if fmt in BINARY_FORMATS else "w"
            with open(
                args.output, mode, **({} if mode == "wb" else {"encoding": "utf-8", "newline": ""})
            ) as out:
                write_result(reader, fmt, out, max_rows=args.max_rows)
    return EXIT_OK


def cmd_explain(args: argparse.Namespace) -> int:
    text = read_sql(args.sql)
    params = parse_params(args.param)
    with open_catalog(args.catalog) as fed:
        result = fed.sql(text, params, timeout=args.timeout)
        print(result.explain(analyze=args.analyze))
        if args.verbose:
            from federator.rules_testing import explain_rules

            print("\n".join(explain_rules(fed, result.plan)))
    return EXIT_OK


def cmd_sources(args: argparse.Namespace) -> int:
    import pyarrow as pa

    with open_catalog(args.catalog) as fed:
        rows: dict[str, list[Any]] = {"source": [], "kind": [], "where": []}
        if args.tables:
            rows.update({"table": [], "columns": [], "rows": []})
        for name, adapter in sorted(fed.catalog.adapters.items()):
            if not args.tables:
                rows["source"].append(name)
                rows["kind"].append(adapter.kind)
                rows["where"].append(adapter.where)
                continue
            tables = fed._loop.run(fed.catalog.tables(name))
            default = getattr(adapter, "default_schema", "")
            for ref, info in sorted(tables.items(), key=lambda kv: (kv[0].schema, kv[0].name)):
                rows["source"].append(name)
                rows["kind"].append(adapter.kind)
                rows["where"].append(adapter.where)
                shown = ref.name if ref.schema == default else f"{ref.schema}.{ref.name}"
                rows["table"].append(f"{name}.{shown}")
                rows["columns"].append(", ".join(f"{f.name} {f.type}" for f in info.schema))
                rows["rows"].append(info.rows)
        table = pa.table(rows)
        write_table(table.to_batches(), sys.stdout, schema=table.schema, footer=False)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from federator.demo import run_demo

    run_demo(args.dir, out=sys.stdout)
    return EXIT_OK


def cmd_repl(args: argparse.Namespace) -> int:
    from federator.repl import run_repl

    if args.catalog_file and args.catalog:
        raise UsageError("give the catalog once: CATALOG or --catalog")
    path = catalog_path(args.catalog_file or args.catalog)
    return run_repl(path, history=args.history, debug=args.debug, max_rows=args.max_rows)


def cmd_rules_test(args: argparse.Namespace) -> int:
    from federator import rules_testing as rt
    from federator.federation import connect
    from federator.rules import load_rule_modules

    try:
        files = rt.fixture_files(args.fixtures)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    if not files:
        raise UsageError(f"no *.sql fixture files in {', '.join(args.fixtures)}")
    if args.catalog:
        hooks = load_rule_modules(args.rules, entry_points=False)
        fed = connect(args.catalog)
        for hook in hooks:
            hook(fed)
    else:
        fed = rt.planning_federation(rules=args.rules)
    with fed:
        if args.update:
            for path in files:
                rt.update_file(fed, path)
                print(f"updated {path}")
            return EXIT_OK
        try:
            results = rt.check(fed, files)
        except ValueError as e:  # a malformed fixture file
            raise UsageError(str(e)) from None
    for line in rt.report(results, verbose=args.verbose):
        print(line)
    return EXIT_OK if results and all(r.ok for r in results) else EXIT_ERROR


# ---- inputs -----------------------------------------------------------------------------
def catalog_path(explicit: str | None) -> str:
    """The catalog file to use: ``--catalog``, ``$FEDERATOR_CATALOG``, or ./federator.toml."""
    if explicit:
        return explicit
    env = os.environ.get(CATALOG_ENV)
    if env:
        return env
    if Path(DEFAULT_CATALOG).exists():
        return DEFAULT_CATALOG
    raise UsageError(
        f"no catalog: pass --catalog FILE, set ${CATALOG_ENV}, or create ./{DEFAULT_CATALOG} "
        "(`federator demo --dir DIR` writes an example)"
    )


def open_catalog(explicit: str | None) -> Federation:
    from federator.federation import connect

    return connect(catalog_path(explicit))


def read_sql(sql: str) -> str:
    text = sys.stdin.read() if sql == "-" else sql
    if not text.strip():
        raise UsageError("the SQL text is empty")
    return text


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


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
