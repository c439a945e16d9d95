"""What the REPL reads: statements split at ``;`` (meta commands end at the line), and Tab
completion of sources, tables, columns, SQL keywords and meta commands from the catalog.

>>> split_statements("SELECT 1; SELECT ';' AS s;\\nSELECT 2")
['SELECT 1', "SELECT ';' AS s", 'SELECT 2']
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prompt_toolkit.completion import CompleteEvent, Completion
    from prompt_toolkit.document import Document

    from federator.federation import Federation

KEYWORDS = (
    "SELECT", "FROM", "WHERE", "GROUP BY", "ORDER BY", "HAVING", "LIMIT", "OFFSET", "JOIN",
    "LEFT JOIN", "RIGHT JOIN", "FULL JOIN", "INNER JOIN", "CROSS JOIN", "ON", "USING", "AS",
    "AND", "OR", "NOT", "IN", "IS", "NULL", "LIKE", "ILIKE", "BETWEEN", "EXISTS", "DISTINCT",
    "UNION", "UNION ALL", "INTERSECT", "EXCEPT", "WITH", "CASE", "WHEN", "THEN", "ELSE", "END",
    "CAST", "COUNT", "SUM", "AVG", "MIN", "MAX", "ASC", "DESC", "NULLS FIRST", "NULLS LAST",
    "OVER", "PARTITION BY", "ROW_NUMBER", "RANK", "COALESCE", "TRUE", "FALSE", "EXPLAIN",
    "EXPLAIN ANALYZE",
)  # fmt: skip

META_COMMANDS = ("\\sources", "\\d", "\\timing", "\\explain", "\\format", "\\o", "\\cache")
META_COMMANDS += ("\\?", "\\q")


# ---- completion --------------------------------------------------------------------------------
try:
    from prompt_toolkit.completion import Completer as _CompleterBase
except ImportError:  # pragma: no cover - the repl extra is not installed
    _CompleterBase = object  # type: ignore[misc,assignment]


class CatalogCompleter(_CompleterBase):  # type: ignore[misc]
    """Sources, ``source.table``, columns (of the tables the statement names, or after
    ``alias.``), SQL keywords and meta commands. Uses metadata already read; a source not
    read yet is read in the background and completes on the next Tab."""

    def __init__(self, fed: Federation):
        self.fed = fed

    def get_completions(self, document: Document, event: CompleteEvent) -> Iterator[Completion]:
        from prompt_toolkit.completion import Completion

        text = document.text_before_cursor
        if text.lstrip().startswith("\\") and " " not in text.lstrip():
            word = text.lstrip()
            for cmd in META_COMMANDS:
                if cmd.startswith(word):
                    yield Completion(cmd, -len(word))
            return
        if text.lstrip().startswith(("\\d ", "\\dt ")):
            word = re.search(r"[\w.]*$", text).group(0)  # type: ignore[union-attr]
            for name in self.table_names():
                if name.startswith(word):
                    yield Completion(name, -len(word))
            return
        word = re.search(r"[\w.]*$", text).group(0)  # type: ignore[union-attr]
        for candidate, meta in self.candidates(word, document.text):
            yield Completion(candidate, -len(word), display_meta=meta)

    def candidates(self, word: str, statement: str) -> Iterable[tuple[str, str]]:
        adapters = self.fed.catalog.adapters
        if "." in word:
            head, _, _ = word.rpartition(".")
            parts = head.split(".")
            if parts[0] in adapters:  # source. or source.schema.
                for name in self.table_names(parts[0]):
                    if name.startswith(word):
                        yield name, "table"
                return
            # alias. or table. : columns of the table the statement gives that name to
            schema = self.columns_for_alias(head, statement)
            for column in schema:
                full = f"{head}.{column}"
                if full.startswith(word):
                    yield full, "column"
            return
        lower = word.lower()
        for name in sorted(adapters):
            if name.lower().startswith(lower):
                yield name + ".", f"source ({adapters[name].kind})"
        seen: set[str] = set()
        for table_name in self.tables_in(statement):
            for column in self.columns_of(table_name):
                if column.lower().startswith(lower) and column not in seen:
                    seen.add(column)
                    yield column, f"column of {table_name}"
        if word:
            for keyword in KEYWORDS:
                if keyword.lower().startswith(lower):
                    yield (keyword if word[:1].isupper() else keyword.lower()), "keyword"

    # metadata already read, without waiting on a server
    def known_tables(self, source: str) -> dict[Any, Any]:
        tables = self.fed.catalog._tables.get(source)
        if tables is None:
            future = asyncio.run_coroutine_threadsafe(
                self.fed.catalog.tables(source), self.fed._loop.loop
            )
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
            with contextlib.suppress(Exception):
                future.result(timeout=0.5)
            tables = self.fed.catalog._tables.get(source, {})
        return tables

    def table_names(self, only: str | None = None) -> list[str]:
        names = []
        for source, adapter in sorted(self.fed.catalog.adapters.items()):
            if only is not None and source != only:
                continue
            default = getattr(adapter, "default_schema", "")
            for ref in sorted(self.known_tables(source), key=lambda r: (r.schema, r.name)):
                shown = ref.name if ref.schema == default else f"{ref.schema}.{ref.name}"
                names.append(f"{source}.{shown}")
        return names

    def tables_in(self, statement: str) -> list[str]:
        sources = "|".join(re.escape(s) for s in self.fed.catalog.adapters)
        if not sources:
            return []
        return re.findall(rf"\b(?:{sources})\.[\w.]+", statement)

    def columns_of(self, table_name: str) -> list[str]:
        source, schema, name = _split_name(table_name)
        if source is None:
            return []
        adapter = self.fed.catalog.adapters.get(source)
        if adapter is None:
            return []
        wanted = schema if schema is not None else getattr(adapter, "default_schema", "")
        for ref, info in self.known_tables(source).items():
            if ref.name.lower() == name.lower() and ref.schema.lower() == wanted.lower():
                return list(info.schema.names)
        return []

    def columns_for_alias(self, alias: str, statement: str) -> list[str]:
        for table_name in self.tables_in(statement):
            pattern = rf"{re.escape(table_name)}\s+(?:AS\s+)?(\w+)"
            m = re.search(pattern, statement, re.IGNORECASE)
            named = m.group(1) if m else None
            if alias in (named, table_name, table_name.rsplit(".", 1)[-1]):
                return self.columns_of(table_name)
        return []


# ---- statements ------------------------------------------------------------------------------
def statement_complete(text: str) -> bool:
    """Whether Enter should run the buffer: a meta command, an empty line, or SQL whose last
    statement ends with ``;`` (outside quotes and comments).

    >>> statement_complete("SELECT 1"), statement_complete("SELECT ';'"), statement_complete("x;")
    (False, False, True)
    >>> statement_complete("\\\\d"), statement_complete(""), statement_complete("SELECT 1; -- c")
    (True, True, True)
    """
    stripped = text.strip()
    if not stripped or stripped.startswith("\\") or stripped.lower() in ("quit", "exit"):
        return True
    return _scan(text)[1]


def split_statements(text: str) -> list[str]:
    """Statements separated by ``;`` outside quotes and comments; a line starting with ``\\``
    between statements is a meta command of its own."""
    out: list[str] = []
    buffer: list[str] = []

    def flush(pieces: list[str]) -> None:
        out.extend(p.strip() for p in pieces if p.strip() and not _only_comments(p))

    for line in text.splitlines():
        pieces, _ = _scan("\n".join(buffer))
        if line.strip().startswith("\\") and _only_comments(pieces[-1]):
            flush(pieces)
            buffer = []
            out.append(line.strip())
        else:
            buffer.append(line)
    flush(_scan("\n".join(buffer))[0])
    return out


def _scan(text: str) -> tuple[list[str], bool]:
    """Split at top-level ``;``; also say whether the text ends with one (ignoring trailing
    blanks and comments)."""
    pieces: list[str] = []
    start = 0
    quote: str | None = None
    i = 0
    ended = False
    while i < len(text):
        ch = text[i]
        if quote is not None:
            if ch == quote:
                if text[i + 1 : i + 2] == quote:
                    i += 1
                else:
                    quote = None
        elif ch in "'\"`":
            quote = ch
            ended = False
        elif text.startswith("--", i):
            nl = text.find("\n", i)
            i = len(text) if nl < 0 else nl
            continue
        elif ch == ";":
            pieces.append(text[start:i])
            start = i + 1
            ended = True
        elif not ch.isspace():
            ended = False
        i += 1
    pieces.append(text[start:])
    return pieces, ended and quote is None


def _only_comments(text: str) -> bool:
    return all(not ln.strip() or ln.strip().startswith("--") for ln in text.splitlines())


def _split_name(name: str) -> tuple[str | None, str | None, str]:
    parts = [p.strip('"') for p in name.split(".")]
    if len(parts) == 2:
        return parts[0], None, parts[1]
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    return None, None, name
