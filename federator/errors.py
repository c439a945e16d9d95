"""One exception family for everything a user can cause.

Every message names what to fix. Secrets never appear: sources are described by name and
host:port only.

>>> import federator
>>> issubclass(federator.UnknownTableError, federator.FederatorError)
True
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class FederatorError(Exception):
    """Root of every error federator raises on purpose."""


class CatalogError(FederatorError):
    """The catalog (TOML or dict) is malformed or names something impossible."""


class SQLSyntaxError(FederatorError):
    """The query text does not parse; carries line and column of the problem."""

    def __init__(self, message: str, line: int | None = None, col: int | None = None):
        where = f" (line {line}, column {col})" if line is not None else ""
        super().__init__(f"SQL syntax error{where}: {message}")
        self.line = line
        self.col = col


class BindError(FederatorError):
    """A name in the query does not resolve."""


def clip(text: str, width: int = 80) -> str:
    """``text`` whole if it fits in ``width`` characters, else cut at a word and ended with
    an ellipsis: for a value echoed in a message, never for the message itself.

    >>> clip("features of user 42 from the cache tier", 24)
    'features of user 42 …'
    """
    if len(text) <= width:
        return text
    cut = text[: width - 1]
    space = cut.rfind(" ")
    return (cut[: space + 1] if space > width // 2 else cut) + "…"


def _suggest(name: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


class UnknownSourceError(BindError):
    def __init__(self, name: str, known: Iterable[str]):
        known = sorted(known)
        super().__init__(
            f"unknown source {name!r}{_suggest(name, known)}"
            f" (sources: {', '.join(known) or 'none'})"
        )


class UnknownTableError(BindError):
    def __init__(self, name: str, known: Iterable[str]):
        super().__init__(f"unknown table {name!r}{_suggest(name, known)}")


class UnknownColumnError(BindError):
    def __init__(self, name: str, known: Iterable[str]):
        super().__init__(f"unknown column {name!r}{_suggest(name, known)}")


class AmbiguousColumnError(BindError):
    """An unqualified column that more than one table of the query has."""

    def __init__(self, name: str, candidates: Iterable[str]):
        self.candidates = sorted(candidates)
        super().__init__(
            f"column {name!r} is ambiguous: it could be {' or '.join(self.candidates)};"
            " qualify it with its table's name or alias"
        )


class RuleError(FederatorError):
    """A pushdown rule is malformed, or its guard or write failed: names the rule, where it
    was defined (file:line) and what is wrong.

    >>> str(RuleError("guard raised ZeroDivisionError", "pg_trgm.match", "my_rules.py:12"))
    "rule 'pg_trgm.match' (defined at my_rules.py:12): guard raised ZeroDivisionError"
    """

    def __init__(self, problem: str, rule: str | None = None, where: str | None = None):
        self.problem = problem
        self.rule = rule
        self.where = where
        if rule:
            at = f" (defined at {where})" if where else ""
            super().__init__(f"rule {rule!r}{at}: {problem}")
        else:
            super().__init__(f"at {where}: {problem}" if where else problem)


class UnsupportedError(FederatorError):
    """A construct the planner cannot handle; the message names it."""


class ParameterError(FederatorError):
    """A :name parameter is missing from params, or a value cannot be bound."""


class FederationClosedError(FederatorError):
    """The Federation was closed (``fed.close()``, or its ``with`` block ended)."""

    def __init__(self) -> None:
        super().__init__("this Federation is closed; open a new one with federator.connect(...)")


class SourceError(FederatorError):
    """A source failed while running a request. ``retryable``: a transient failure (the
    connection reset or closed by the server) that running the same request again may not meet.
    """

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class SourceUnreachableError(SourceError):
    def __init__(self, source: str, where: str, reason: str):
        super().__init__(f"source {source!r} unreachable at {where}: {reason}")
        self.source = source


class QueryTimeoutError(FederatorError):
    def __init__(self, seconds: float, what: str):
        super().__init__(f"query timed out after {seconds:g}s while running {what}")


class JoinKeyTypeError(FederatorError):
    """The two sides of a cross-source join have incompatible key types."""


class ClusterError(FederatorError):
    """The Ray cluster failed a query: unreachable, or a node lost with work that could not be
    run again (``retryable`` says whether running it again may succeed)."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable
