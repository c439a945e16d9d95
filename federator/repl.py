"""``federator repl``: an interactive federated SQL terminal.

A statement may span lines and ends at ``;`` (meta commands end at the line). History persists
in ``~/.federator_history`` (or ``$FEDERATOR_HISTORY`` / ``--history``); Tab completes
sources, tables, columns, SQL keywords and meta commands from the live catalog; SQL is
highlighted with pygments' SqlLexer. Results are rich tables (types in the header, NULL shown
dimmed, row count and time below, long results truncated with a note). While fragments stream
a progress line shows rows and bytes per source; Ctrl-C cancels the running query (every
fragment) and returns to the prompt; Ctrl-D exits. ``EXPLAIN`` and ``EXPLAIN ANALYZE``
prefixes show the plan. ``\\?`` lists the meta commands.

The REPL only drives the public pieces (Federation, Result, Plan, Execution.stats); the core
never imports it. Without a terminal (stdin piped) statements are read from stdin and run in
order, with the same output.

>>> split_statements("SELECT 1; SELECT ';' AS s;\\nSELECT 2")
['SELECT 1', "SELECT ';' AS s", 'SELECT 2']
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from federator.errors import FederatorError, SQLSyntaxError
from federator.repl_input import (
    CatalogCompleter,
    _split_name,
    split_statements,
    statement_complete,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from federator.execute import Execution
    from federator.federation import Federation
    from federator.plan.model import Plan

HISTORY_ENV = "FEDERATOR_HISTORY"
DEFAULT_HISTORY = "~/.federator_history"
PROGRESS_DELAY_S = 0.3
CANCEL_WAIT_S = 10.0


META_HELP = (
    ("\\sources", "list the catalog's sources"),
    ("\\d [TABLE]", "list tables, or describe one (source.table)"),
    ("\\timing [on|off]", "show the elapsed time of each query (toggles)"),
    ("\\explain on|off", "print the plan before each result"),
    ("\\format table|csv|json", "how results are printed"),
    ("\\o [FILE]", "write results to FILE (.csv .json .parquet .arrow), \\o alone: terminal"),
    ("\\cache", "cache statistics"),
    ("\\?", "this help"),
    ("\\q", "quit (or Ctrl-D)"),
)
HELP_TEXT = (
    "Statements end at ';' and may span lines. EXPLAIN [ANALYZE] <query> shows the plan.\n"
    "Ctrl-C cancels a running query, Ctrl-D exits. Tab completes names.\n"
    + "\n".join(f"  {cmd:<24} {text}" for cmd, text in META_HELP)
)

_EXPLAIN = re.compile(r"^\s*explain(\s+analyze)?(\s+verbose)?\s+(.*)$", re.IGNORECASE | re.DOTALL)


class Cancelled(Exception):
    """The user pressed Ctrl-C while a query ran; it was cancelled."""


@dataclass
class Settings:
    timing: bool = True
    explain: bool = False
    format: str = "table"
    output: str | None = None
    max_rows: int = 100
    debug: bool = False


# ---- entry ---------------------------------------------------------------------------------
def run_repl(
    catalog: str,
    *,
    history: str | None = None,
    debug: bool = False,
    max_rows: int = 100,
    stdin: IO[str] | None = None,
    stdout: IO[str] | None = None,
) -> int:
    """Run the REPL on a catalog until ``\\q`` or Ctrl-D; returns the exit code."""
    from federator.federation import connect

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    try:
        import prompt_toolkit  # noqa: F401
        import rich  # noqa: F401
    except ImportError as e:
        print(
            f"error: the REPL needs {e.name}; install it with: pip install 'federator[repl]'",
            file=sys.stderr,
        )
        return 1
    try:
        fed = connect(catalog)
    except FederatorError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 1
    with fed:
        repl = Repl(fed, Settings(max_rows=max_rows, debug=debug), stdout)
        if not stdin.isatty():
            return repl.run_script(stdin.read())
        return repl.run_interactive(history_path(history))


def history_path(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get(HISTORY_ENV) or DEFAULT_HISTORY).expanduser()


class Repl:
    def __init__(self, fed: Federation, settings: Settings, out: IO[str]):
        from rich.console import Console

        self.fed = fed
        self.settings = settings
        self.out = out
        self.console = Console(file=out, highlight=False, soft_wrap=True)
        self.err = Console(file=sys.stderr, highlight=False, soft_wrap=True)
        self.done = False
        self._background: list[Any] = []

    # ---- loops ---------------------------------------------------------------------------
    def run_interactive(self, history: Path) -> int:
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory
        from prompt_toolkit.key_binding import KeyBindings
        from prompt_toolkit.lexers import PygmentsLexer
        from pygments.lexers.sql import SqlLexer

        with contextlib.suppress(OSError):
            history.parent.mkdir(parents=True, exist_ok=True)
        bindings = KeyBindings()

        @bindings.add("enter")
        @bindings.add("c-j")  # a newline typed before the prompt took the terminal is Ctrl-J
        def _(event: Any) -> None:
            buffer = event.current_buffer
            if statement_complete(buffer.text):
                buffer.validate_and_handle()
            else:
                buffer.insert_text("\n")

        session: PromptSession[str] = PromptSession(
            history=FileHistory(str(history)),
            lexer=PygmentsLexer(SqlLexer),
            completer=CatalogCompleter(self.fed),
            complete_while_typing=False,
            multiline=True,
            key_bindings=bindings,
            prompt_continuation=lambda width, line, wrapped: "...> ".rjust(width),
            enable_history_search=False,
        )
        self.prefetch_metadata()
        sources = ", ".join(sorted(self.fed.catalog.adapters))
        self.console.print(
            f"federator REPL: sources {sources}. End statements with ';'. "
            "\\? for help, \\q or Ctrl-D to quit.",
            markup=False,
        )
        while not self.done:
            try:
                text = session.prompt("federator> ")
            except KeyboardInterrupt:  # at the prompt: forget the line, stay
                continue
            except EOFError:  # Ctrl-D
                break
            self.handle_text(text)
        for future in self._background:  # metadata still being read: not needed any more
            future.cancel()
        return 0

    def run_script(self, text: str) -> int:
        failed = False
        for statement in split_statements(text):
            if self.done:
                break
            failed |= not self.handle(statement)
        return 1 if failed else 0

    def handle_text(self, text: str) -> None:
        stripped = text.strip()
        if stripped.startswith("\\"):
            self.handle(stripped)
            return
        for statement in split_statements(text):
            if self.done or not self.handle(statement):
                break

    # ---- one statement -------------------------------------------------------------------
    def handle(self, statement: str) -> bool:
        """Run one statement or meta command; False when it failed (the message is shown)."""
        statement = statement.strip().rstrip(";").strip()
        if not statement:
            return True
        try:
            if statement.startswith("\\"):
                self.meta(statement)
            elif statement.lower() in ("quit", "exit"):
                self.done = True
            else:
                self.query(statement)
            return True
        except Cancelled:
            self.err.print("cancelled", style="yellow", markup=False)
        except FederatorError as e:
            self.show_error(e, statement)
        except KeyboardInterrupt:
            self.err.print("cancelled", style="yellow", markup=False)
        except Exception as e:
            if self.settings.debug:
                self.err.print(traceback.format_exc(), markup=False)
            self.err.print(
                f"internal error: {type(e).__name__}: {e} (start with --debug for the traceback)",
                style="red",
                markup=False,
            )
        return False

    def show_error(self, e: FederatorError, statement: str) -> None:
        if self.settings.debug:
            self.err.print(traceback.format_exc(), markup=False)
        self.err.print(f"error: {e}", style="bold red", markup=False)
        if isinstance(e, SQLSyntaxError) and e.line is not None and e.col is not None:
            text = statement
            match = _EXPLAIN.match(statement)
            if match:  # positions are within the query after the EXPLAIN prefix
                text = match.group(3)
            lines = text.splitlines()
            if 1 <= e.line <= len(lines):
                line = lines[e.line - 1]
                self.err.print("  " + line, markup=False)
                self.err.print("  " + " " * max(0, min(e.col, len(line)) - 1) + "^", style="red")

    def query(self, statement: str) -> None:
        match = _EXPLAIN.match(statement)
        if match:
            analyze, verbose, query = bool(match.group(1)), bool(match.group(2)), match.group(3)
            result = self.fed.sql(query)
            if analyze:
                execution, _, _ = self.execute(result)
                text = result.plan.explain(
                    execution.stats,
                    execution.residual_stats if result.plan.residual is not None else None,
                )
            else:
                text = result.plan.explain()
            self.console.print(text, markup=False)
            if verbose:
                from federator.rules_testing import explain_rules

                self.console.print("\n".join(explain_rules(self.fed, result.plan)), markup=False)
            return
        result = self.fed.sql(statement)
        if self.settings.explain:
            self.console.print(result.plan.explain(), markup=False, style="dim")
        _, table, seconds = self.execute(result)
        self.show(table, seconds)

    # ---- running with progress and cancel --------------------------------------------------
    def execute(self, result: Any) -> tuple[Execution, pa.Table, float]:
        """Run a planned result on the federation's loop, showing progress; Ctrl-C cancels."""
        import pyarrow as pa

        execution: Execution = result._execution()
        finished = threading.Event()

        async def collect() -> list[pa.RecordBatch]:
            try:
                stream = execution.stream()
                self.fed.open_streams.add(stream)
                batches = []
                async with contextlib.aclosing(stream):
                    async for batch in stream:
                        batches.append(batch)
                return batches
            finally:
                finished.set()

        started = time.perf_counter()
        future = asyncio.run_coroutine_threadsafe(collect(), self.fed._loop.loop)
        progress = Progress(result.plan, execution, sys.stderr)
        try:
            while True:
                try:
                    batches = future.result(timeout=0.1)
                    break
                except TimeoutError:
                    progress.update(time.perf_counter() - started)
        except KeyboardInterrupt:
            progress.clear()
            future.cancel()
            self.err.print("cancelling...", style="yellow", markup=False)
            with contextlib.suppress(KeyboardInterrupt):
                finished.wait(CANCEL_WAIT_S)
            raise Cancelled() from None
        finally:
            progress.clear()
        seconds = time.perf_counter() - started
        schema = batches[0].schema if batches else pa.schema([])
        return execution, pa.Table.from_batches(batches, schema=schema), seconds

    # ---- output ----------------------------------------------------------------------------
    def show(self, table: pa.Table, seconds: float) -> None:
        from federator import formats

        rows = table.num_rows
        timing = f" in {_duration(seconds)}" if self.settings.timing else ""
        if self.settings.output:
            path = self.settings.output
            fmt = formats._format_from_path(path) or "csv"
            fmt = "csv" if fmt == "table" else fmt
            binary = fmt in formats.BINARY_FORMATS
            mode = "wb" if binary else "w"
            kwargs = {} if binary else {"encoding": "utf-8", "newline": ""}
            with open(path, mode, **kwargs) as out:  # type: ignore[call-overload]
                formats.write_result(_reader(table), fmt, out)
            self.console.print(
                f"wrote {rows:,} row{'s' if rows != 1 else ''} to {path} ({fmt}){timing}",
                markup=False,
            )
            return
        if self.settings.format == "csv":
            formats.write_csv(_reader(table), self.out)
        elif self.settings.format == "json":
            formats.write_json(_reader(table), self.out)
        else:
            self.console.print(render_table(table, self.settings.max_rows))
        self.out.flush()
        note = f"({rows:,} row{'s' if rows != 1 else ''}"
        limit = self.settings.max_rows
        if self.settings.format == "table" and 0 < limit < rows:
            note += f"; first {limit:,} shown, --max-rows 0 shows all or \\o FILE writes all"
        self.console.print(note + ")" + timing, style="dim", markup=False)

    # ---- meta commands ---------------------------------------------------------------------
    def meta(self, line: str) -> None:
        command, _, arg = line.partition(" ")
        arg = arg.strip().rstrip(";").strip()
        handler = {
            "\\q": self._quit,
            "\\quit": self._quit,
            "\\?": self._help,
            "\\h": self._help,
            "\\help": self._help,
            "\\sources": self._sources,
            "\\d": self._describe,
            "\\dt": self._describe,
            "\\timing": self._timing,
            "\\explain": self._explain,
            "\\format": self._format,
            "\\o": self._output,
            "\\cache": self._cache,
        }.get(command.lower())
        if handler is None:
            raise UsageMistake(f"unknown command {command}; \\? lists the commands")
        handler(arg)

    def _quit(self, arg: str) -> None:
        self.done = True

    def _help(self, arg: str) -> None:
        self.console.print(HELP_TEXT, markup=False)

    def _sources(self, arg: str) -> None:
        from rich.table import Table

        table = Table(show_edge=True, header_style="bold")
        for name in ("source", "kind", "where"):
            table.add_column(name)
        for name, adapter in sorted(self.fed.catalog.adapters.items()):
            table.add_row(name, adapter.kind, adapter.where)
        self.console.print(table)

    def _describe(self, arg: str) -> None:
        from rich.table import Table
        from rich.text import Text

        if not arg:
            table = Table(show_edge=True, header_style="bold")
            for name in ("table", "columns", "rows"):
                table.add_column(name, justify="right" if name == "rows" else "left")
            for source in sorted(self.fed.catalog.adapters):
                for shown, info in self.tables_of(source):
                    rows = "" if info.rows is None else f"{info.rows:,}"
                    table.add_row(shown, str(len(info.schema)), rows)
            self.console.print(table)
            return
        source, schema, name = _split_name(arg)
        if source is None:
            raise UsageMistake(f"\\d wants source.table, got {arg!r}")
        info = self.fed._loop.run(self.fed.catalog.resolve(source, schema, name))
        table = Table(title=Text(arg, style="bold"), show_edge=True, header_style="bold")
        table.add_column("column")
        table.add_column("type")
        table.add_column("nullable")
        for f in info.schema:
            table.add_row(f.name, str(f.type), "yes" if f.nullable else "no")
        self.console.print(table)
        if info.rows is not None:
            self.console.print(f"(about {info.rows:,} rows)", style="dim", markup=False)

    def _timing(self, arg: str) -> None:
        self.settings.timing = _on_off(arg, not self.settings.timing, "\\timing")
        self.console.print(f"timing is {'on' if self.settings.timing else 'off'}", markup=False)

    def _explain(self, arg: str) -> None:
        self.settings.explain = _on_off(arg, not self.settings.explain, "\\explain")
        self.console.print(f"explain is {'on' if self.settings.explain else 'off'}", markup=False)

    def _format(self, arg: str) -> None:
        if arg not in ("table", "csv", "json"):
            raise UsageMistake("\\format wants table, csv or json")
        self.settings.format = arg
        self.console.print(f"format is {arg}", markup=False)

    def _output(self, arg: str) -> None:
        from federator import formats

        if not arg:
            self.settings.output = None
            self.console.print("results go to the terminal", markup=False)
            return
        fmt = formats._format_from_path(arg)
        if fmt is None:
            raise UsageMistake("\\o wants a file ending in .csv, .json, .parquet or .arrow")
        self.settings.output = arg
        self.console.print(f"results go to {arg} ({'csv' if fmt == 'table' else fmt})")

    def _cache(self, arg: str) -> None:
        cache = getattr(self.fed, "cache", None)
        if cache is None:
            self.console.print("cache not configured", markup=False)
            return
        stats = cache.stats() if callable(getattr(cache, "stats", None)) else cache
        if isinstance(stats, dict):
            for key, value in stats.items():
                self.console.print(f"  {key}: {value}", markup=False)
        else:
            self.console.print(str(stats), markup=False)

    # ---- metadata ----------------------------------------------------------------------------
    def tables_of(self, source: str) -> list[tuple[str, Any]]:
        adapter = self.fed.catalog.adapter(source)
        tables = self.fed._loop.run(self.fed.catalog.tables(source))
        default = getattr(adapter, "default_schema", "")
        out = []
        for ref, info in sorted(tables.items(), key=lambda kv: (kv[0].schema, kv[0].name)):
            shown = ref.name if ref.schema == default else f"{ref.schema}.{ref.name}"
            out.append((f"{source}.{shown}", info))
        return out

    def prefetch_metadata(self) -> None:
        """Start reading every source's tables in the background (for completion)."""
        for source in self.fed.catalog.adapters:
            future = asyncio.run_coroutine_threadsafe(
                self.fed.catalog.tables(source), self.fed._loop.loop
            )
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            self._background.append(future)


class UsageMistake(FederatorError):
    """A meta command used wrongly."""


# ---- progress ----------------------------------------------------------------------------------
class Progress:
    """One status line on a terminal while fragments stream: rows and bytes per source."""

    def __init__(
        self, plan: Plan, execution: Execution, out: IO[str], delay: float = PROGRESS_DELAY_S
    ):
        self.plan = plan
        self.execution = execution
        self.out = out
        self.delay = delay  # seconds a query runs before the line appears
        self.tty = hasattr(out, "isatty") and out.isatty()
        self.shown = False

    def line(self, seconds: float) -> str:
        per_source: dict[str, list[int]] = {}
        for frag in self.plan.fragments:
            stats = self.execution.stats.get(frag.id)
            if stats is None:
                continue
            total = per_source.setdefault(frag.source, [0, 0])
            total[0] += stats.rows
            total[1] += stats.bytes
        parts = [f"{s}: {r:,} rows {_bytes(b)}" for s, (r, b) in per_source.items()]
        if self.plan.residual is not None:
            rs = self.execution.residual_stats
            parts.append(f"residual: {rs.rows:,} rows")
        return f"running {seconds:.1f}s · " + " · ".join(parts) + " · Ctrl-C cancels"

    def update(self, seconds: float) -> None:
        if not self.tty or seconds < self.delay:
            return
        width = _terminal_width() - 1
        self.out.write("\r\x1b[2K" + self.line(seconds)[:width])
        self.out.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            self.out.write("\r\x1b[2K")
            self.out.flush()
            self.shown = False


# ---- helpers ---------------------------------------------------------------------------------
def _on_off(arg: str, toggled: bool, command: str) -> bool:
    if not arg:
        return toggled
    if arg.lower() in ("on", "true", "1"):
        return True
    if arg.lower() in ("off", "false", "0"):
        return False
    raise UsageMistake(f"{command} wants on or off")


def render_table(table: pa.Table, max_rows: int) -> Any:
    """A rich Table: names with types in the header, numbers right-aligned, NULL dimmed,
    at most ``max_rows`` rows (0: all)."""
    from rich.table import Table
    from rich.text import Text

    from federator import formats

    shown = table if max_rows <= 0 else table.slice(0, max_rows)
    rows, _ = formats._collect_rows(shown.to_batches(), 0)
    out = Table(show_edge=True, header_style="bold")
    for f in table.schema:
        type_ = str(f.type)
        numeric = any(k in type_ for k in ("int", "float", "double", "decimal"))
        out.add_column(
            Text.assemble((f.name, "bold"), "\n", (type_, "dim")),
            justify="right" if numeric else "left",
            overflow="fold" if not numeric else "ellipsis",
        )
    for row in rows:
        out.add_row(*(Text("NULL", style="dim italic") if v is None else Text(v) for v in row))
    return out


def _reader(table: pa.Table) -> pa.RecordBatchReader:
    import pyarrow as pa

    return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"  # pragma: no cover


def _terminal_width() -> int:
    import shutil

    return shutil.get_terminal_size((100, 24)).columns


__all__ = ["CatalogCompleter", "Repl", "run_repl", "split_statements", "statement_complete"]
