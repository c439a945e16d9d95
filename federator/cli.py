"""The ``federator`` command line: ``query``, ``explain``, ``sources``, ``demo``, ``repl``,
``serve``, ``rules test`` and ``features materialize``.

Exit codes: 0 ok, 1 query error (one ``error: ...`` line on stderr; ``--debug`` adds the
traceback), 2 usage error. The catalog comes from ``--catalog``, else ``$FEDERATOR_CATALOG``,
else ``./federator.toml``. SQL given as ``-`` is read from stdin.

>>> main(["query", "--help"])  # doctest: +ELLIPSIS
usage: federator query [-h] ...
0
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from federator.errors import FederatorError
from federator.formats import (
    BINARY_FORMATS,
    FORMATS,
    UsageError,
    _format_from_path,
    parse_params,
    write_result,
    write_table,
)

if TYPE_CHECKING:
    from federator.federation import Federation
    from federator.result import Result

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
CATALOG_ENV = "FEDERATOR_CATALOG"
DEFAULT_CATALOG = "federator.toml"
QUERY_PROGRESS_DELAY_S = 1.0  # `federator query` shows progress for queries longer than this


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

    _add_serve_parser(sub, common)

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
        "Plans against an offline shop (sources pg, my, lite, lake, docs with tables "
        "customers, orders, products) unless --catalog is given. A file loads the rule "
        "plug-ins its '-- rules: PLUGIN...' lines name (paths relative to the file), on top "
        "of --rules. Exit 1 when a case fails.",
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

    features = sub.add_parser(
        "features",
        help="work with feature views (features materialize VIEW)",
        description="Feature views declared as [features.NAME] in the catalog.",
    )
    features.set_defaults(command="features", run=lambda a: _usage(features))
    fsub = features.add_subparsers(title="features commands", metavar="COMMAND")
    fm = fsub.add_parser(
        "materialize",
        parents=[common],
        help="compute a feature view and write its offline and online copies",
        description="Run the view's query from its last materialized timestamp on (in full "
        "on a first run or after the query changed: a new version) and write its copies "
        "atomically; prints what was written.",
    )
    fm.add_argument("view", metavar="VIEW", help="the view's name ([features.VIEW])")
    fm.add_argument(
        "--since",
        metavar="T",
        help="on a first run, only rows with timestamp >= T (ISO date or date-time)",
    )
    fm.set_defaults(command="features materialize", run=cmd_features_materialize)
    return parser


def _add_serve_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    sv = sub.add_parser(
        "serve",
        parents=[common],
        help="serve the catalog over Arrow Flight SQL (ADBC, JDBC, DBeaver)",
        description="Serve federated queries over Arrow Flight SQL. Clients log in with a "
        "user and password from the catalog's [serve.users] or a bearer token from "
        "[serve.tokens]; --insecure-local serves loopback without authentication.",
    )
    sv.add_argument(
        "catalog_file", nargs="?", metavar="CATALOG", help="catalog TOML (same as --catalog)"
    )
    sv.add_argument("--port", type=int, default=8815, help="port to listen on (default 8815)")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sv.add_argument("--metrics-port", type=int, metavar="N", help="serve Prometheus /metrics here")
    sv.add_argument(
        "--insecure-local",
        action="store_true",
        help="no authentication; only with a loopback --host",
    )
    sv.add_argument("--tls-cert", metavar="FILE", help="TLS certificate chain (PEM)")
    sv.add_argument("--tls-key", metavar="FILE", help="TLS private key (PEM)")
    sv.add_argument(
        "--hash-password",
        action="store_true",
        help="read a password (stdin or prompt), print its [serve.users] entry and exit",
    )
    sv.add_argument(
        "--new-token",
        action="store_true",
        help="print a new bearer token and its [serve.tokens] entry and exit",
    )
    sv.set_defaults(command="serve", run=cmd_serve)


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
        with ProgressLine(result, sys.stderr) as progress:
            reader = result.to_batches()
            if args.output is None and sys.stdout.isatty():
                progress.stop()  # the table goes to the same terminal from here
            _write_query_result(reader, fmt, args)
    return EXIT_OK


def _write_query_result(reader: Any, fmt: str, args: argparse.Namespace) -> None:
    if args.output is None:
        write_result(reader, fmt, sys.stdout, max_rows=args.max_rows)
        sys.stdout.flush()
    else:
        mode = "wb" if fmt in BINARY_FORMATS else "w"
        with open(
            args.output, mode, **({} if mode == "wb" else {"encoding": "utf-8", "newline": ""})
        ) as out:
            write_result(reader, fmt, out, max_rows=args.max_rows)


class ProgressLine:
    """While a query runs, the REPL's progress line (rows and bytes per source) on ``out``, a
    terminal, from :data:`QUERY_PROGRESS_DELAY_S` on; ``stop()`` or leaving the ``with`` block
    clears it. Nothing is written where ``out`` is not a terminal.

    >>> with ProgressLine(result, sys.stderr):  # doctest: +SKIP
    ...     reader = result.to_batches()
    """

    def __init__(self, result: Result, out: IO[str]):
        self.result = result
        self.out = out
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._show, name="federator-progress", daemon=True)

    def __enter__(self) -> ProgressLine:
        if self.out.isatty():
            self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Clear the line and stop updating it (safe to call twice)."""
        self.done.set()
        if self.thread.is_alive():
            self.thread.join()

    def _show(self) -> None:
        from federator.repl import Progress

        started = time.perf_counter()
        progress = None
        try:
            while not self.done.wait(0.1):
                execution = self.result.last_execution  # set once the run starts
                if progress is None and execution is not None:
                    progress = Progress(
                        self.result.plan, execution, self.out, delay=QUERY_PROGRESS_DELAY_S
                    )
                if progress is not None:
                    progress.update(time.perf_counter() - started)
        finally:
            if progress is not None:
                progress.clear()


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


def cmd_serve(args: argparse.Namespace) -> int:
    from federator.serve import main as serve

    try:
        if args.hash_password:
            serve.print_password_entry(sys.stdin, sys.stdout)
            return EXIT_OK
        if args.new_token:
            serve.print_new_token(sys.stdout)
            return EXIT_OK
        if args.catalog_file and args.catalog:
            raise UsageError("give the catalog once: CATALOG or --catalog")
        serve.serve_catalog(
            catalog_path(args.catalog_file or args.catalog),
            host=args.host,
            port=args.port,
            metrics_port=args.metrics_port,
            insecure_local=args.insecure_local,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
    except serve.ServeUsageError as e:
        raise UsageError(str(e)) from None
    return EXIT_OK


def cmd_rules_test(args: argparse.Namespace) -> int:
    from federator import rules_testing as rt
    from federator.rules import load_rule_modules

    load_rule_modules(args.rules, entry_points=False)  # a --rules that fails to load: error
    try:
        files = rt.fixture_files(args.fixtures)
    except FileNotFoundError as e:
        raise UsageError(str(e)) from None
    if not files:
        raise UsageError(f"no *.sql fixture files in {', '.join(args.fixtures)}")
    try:
        if args.update:
            for path in rt.update_files(files, rules=args.rules, catalog=args.catalog):
                print(f"updated {path}")
            return EXIT_OK
        results = rt.check_files(files, rules=args.rules, catalog=args.catalog)
    except ValueError as e:  # a malformed fixture file
        raise UsageError(str(e)) from None
    for line in rt.report(results, verbose=args.verbose):
        print(line)
    return EXIT_OK if results and all(r.ok for r in results) else EXIT_ERROR


def cmd_features_materialize(args: argparse.Namespace) -> int:
    since = _iso_time(args.since) if args.since else None
    with open_catalog(args.catalog) as fed:
        done = fed.features.materialize(args.view, since=since)
    kind = "new version" if done.new_version else "version"
    print(
        f"{done.view}: {kind} {done.version}, {done.rows} row(s) from {done.since} to "
        f"{done.until}; offline files {done.offline_files}, online namespace "
        f"{done.online_namespace or '-'}"
    )
    return EXIT_OK


def _iso_time(text: str) -> Any:
    import datetime as dt

    try:
        return dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--since {text!r} is not an ISO date or date-time") from None


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


def _silence_stdout() -> None:
    devnull = os.open(os.devnull, os.O_WRONLY)
    with contextlib.suppress(OSError, ValueError):
        os.dup2(devnull, sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
