"""How deeply a query may nest, and room on Python's stack to plan one that deep.

sqlglot parses and rewrites by recursion, about 25 Python frames per level of parentheses, so
Python's default limit of 1,000 frames gave up near 45 levels with a ``RecursionError``. A query
may nest :data:`MAX_NESTING` levels (parentheses, brackets, function calls, subqueries, CASE,
counted together; ``ARRAY[...]`` constructors at most :data:`MAX_ARRAY_NESTING` of them);
one that nests deeper is refused before parsing with
:class:`~federator.errors.SQLSyntaxError` at the first token past the limit. Planning runs
inside :func:`nesting_room`, which raises Python's recursion limit for as long as any query is
being planned, and turns a ``RecursionError`` from a shape the count does not see (a chain of
thousands of ``NOT``) into ``SQLSyntaxError`` too.

>>> from federator.sql.dialect import parse
>>> _ = parse("SELECT " + "(" * MAX_NESTING + "1" + ")" * MAX_NESTING)
>>> parse("SELECT " + "(" * (MAX_NESTING + 1) + "1" + ")" * (MAX_NESTING + 1))  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
federator.errors.SQLSyntaxError: SQL syntax error (line 1, column 108): query nests more than ...
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar

from sqlglot.tokens import Token, TokenType

from federator.errors import SQLSyntaxError

MAX_NESTING = 100
# sqlglot parses nested ARRAY[...] constructors in time exponential in their depth (12 levels
# took a second, 18 a minute): they are held to a depth that parses in milliseconds.
MAX_ARRAY_NESTING = 8
# Frames to allow while planning: ~25 per level measured for the deepest-costing constructs
# (function calls, unary minus), with room for the caller's stack and the rewrite passes.
_FRAMES = 2_000 + 30 * MAX_NESTING
_OPEN = frozenset({TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE, TokenType.CASE})
_CLOSE = frozenset({TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE, TokenType.END})

P = ParamSpec("P")
T = TypeVar("T")
_lock = threading.Lock()
_users = 0  # plannings inside nesting_room() right now
_saved_limit = 0  # the recursion limit before the first of them raised it


def check_nesting(tokens: Iterable[Token]) -> None:
    """Raise :class:`SQLSyntaxError` at the first token nested past :data:`MAX_NESTING`, or
    at an ``ARRAY[`` nested past :data:`MAX_ARRAY_NESTING`."""
    opened: list[bool] = []  # per open bracket: whether it is an ARRAY[ constructor's
    arrays = 0
    previous: TokenType | None = None
    for token in tokens:
        kind = token.token_type
        if kind in _OPEN:
            is_array = kind == TokenType.L_BRACKET and previous == TokenType.ARRAY
            opened.append(is_array)
            arrays += is_array
            if len(opened) > MAX_NESTING:
                _too_deep(
                    token,
                    f"{MAX_NESTING} levels deep (parentheses, function calls, subqueries, CASE)",
                )
            if arrays > MAX_ARRAY_NESTING:
                _too_deep(token, f"{MAX_ARRAY_NESTING} ARRAY[...] constructors deep")
        elif kind in _CLOSE and opened:
            arrays -= opened.pop()
        previous = kind


def _too_deep(token: Token, what: str) -> None:
    raise SQLSyntaxError(f"query nests more than {what}; write it flatter", token.line, token.col)


@contextlib.contextmanager
def nesting_room() -> Iterator[None]:
    """Plan inside this: Python's recursion limit is at least ``_FRAMES`` until the last
    planning leaves (then it is put back unless someone else changed it meanwhile), and a
    ``RecursionError`` becomes :class:`SQLSyntaxError`."""
    global _users, _saved_limit
    with _lock:
        if _users == 0:
            _saved_limit = sys.getrecursionlimit()
            if _saved_limit < _FRAMES:
                sys.setrecursionlimit(_FRAMES)
        _users += 1
    try:
        yield
    except RecursionError:
        raise SQLSyntaxError(
            f"query nests too deeply to plan (at most {MAX_NESTING} levels of parentheses,"
            " function calls, subqueries or CASE; long chains of NOT or unary minus count too)"
        ) from None
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _saved_limit < _FRAMES == sys.getrecursionlimit():
                with contextlib.suppress(RecursionError):  # some thread is still that deep
                    sys.setrecursionlimit(_saved_limit)


def with_nesting_room(fn: Callable[P, Awaitable[T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    """Decorate a coroutine function that plans: it runs inside :func:`nesting_room`."""

    @functools.wraps(fn)
    async def planned(*args: P.args, **kwargs: P.kwargs) -> T:
        with nesting_room():
            return await fn(*args, **kwargs)

    return planned
