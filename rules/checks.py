"""Checks of what rule authors write: a :class:`~federator.rules.Rule`'s fields when it is
made, and what its ``write`` returns before that reaches any native text.

Each check returns the problem as a sentence (or None); :mod:`federator.rules.base` raises it
as a :class:`~federator.errors.RuleError` naming the rule and where it was defined.

>>> from sqlglot import exp
>>> match_problem(123)[-15:]
'; got 123 (int)'
>>> written_problem(exp.column("a"), "postgres") is None
True
>>> written_problem("a % b", "postgres")[:44]
"write returned the string 'a % b', not a sql"
"""

from __future__ import annotations

import enum
import inspect
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from sqlglot import exp
from sqlglot.errors import ErrorLevel

from federator.errors import clip

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_FUNCTION = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)*")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")

# Where sqlglot keeps plain text in a tree, and the shape that text must have to be rendered
# safely (a quoted identifier and a string literal are escaped by the dialect; the rest is
# written out verbatim, so it must be a name or a number).
_TEXT_SHAPES: dict[tuple[type[exp.Expression], str], re.Pattern[str]] = {
    (exp.Identifier, "this"): _NAME,
    (exp.Literal, "this"): _NUMBER,
    (exp.Var, "this"): _NAME,
    (exp.Anonymous, "this"): _FUNCTION,
    (exp.Placeholder, "this"): _NAME,
    (exp.Join, "kind"): _NAME,
    (exp.Join, "side"): _NAME,
    (exp.Join, "method"): _NAME,
    (exp.Window, "over"): _NAME,
}

# Classes sqlglot builds no node of exactly: a rule matches a node's exact class, so a rule on
# one of these would never match anything.
_BASE_CLASSES = tuple(
    getattr(exp, name)
    for name in (
        "Expression", "Condition", "Predicate", "Binary", "Unary", "Func", "AggFunc",
        "Connector", "Query", "DerivedTable", "SubqueryPredicate",
    )
    if hasattr(exp, name)
)  # fmt: skip

_INTERNAL_FILES = {os.path.abspath(__file__), os.path.join(os.path.dirname(__file__), "base.py")}
_INTERNAL_FILES.add(os.path.join(os.path.dirname(__file__), "__init__.py"))


def definition_site() -> str:
    """``file:line`` of the code outside the rule API that is running now (where a rule is
    being made or added); paths under the working directory are shown relative to it."""
    frame = sys._getframe(1)
    while frame.f_back is not None and (
        frame.f_code.co_filename == "<string>"  # a dataclass's generated __init__
        or os.path.abspath(frame.f_code.co_filename) in _INTERNAL_FILES
    ):
        frame = frame.f_back
    path = frame.f_code.co_filename
    if not path.startswith("<"):
        relative = os.path.relpath(path)
        path = path if relative.startswith("..") else relative
    return f"{path}:{frame.f_lineno}"


def describe(value: Any) -> str:
    """A value in a message: its repr (clipped) and its type."""
    return f"{clip(repr(value), 60)} ({type(value).__name__})"


def match_problem(match: Any) -> str | None:
    """What is wrong with a rule's ``match``, or None when it is an expression class or a
    function name."""
    if isinstance(match, type) and match in _BASE_CLASSES:
        return (
            f"a rule matches a node's exact class, and no node is exactly exp.{match.__name__} "
            "(a base class): name the classes, e.g. rules_for_classes(exp.EQ, exp.GT)"
        )
    if isinstance(match, type) and issubclass(match, exp.Expression):
        return None
    if isinstance(match, str) and _FUNCTION.fullmatch(match):
        return None
    wanted = (
        "match must be a sqlglot expression class such as exp.Like, or a function name such "
        "as 'SIMILARITY'"
    )
    if isinstance(match, exp.Expression):
        return f"{wanted}; got an expression, not its class: write exp.{type(match).__name__}"
    return f"{wanted}; got {describe(match)}"


_ROLES = {
    "guard": "take one argument (the sqlglot node) and return True to push it",
    "write": "take one argument (the sqlglot node) and return the sqlglot expression to "
    "render instead",
}


def function_problem(role: str, fn: Any) -> str | None:
    """What is wrong with a rule's ``guard`` or ``write`` (``role``), or None."""
    if fn is None:
        return None
    if not callable(fn):
        hint = "; to name the rule pass name=..." if role == "guard" and isinstance(fn, str) else ""
        return f"{role} must be a function that can {_ROLES[role]}; got {describe(fn)}{hint}"
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: trust it
        return None
    try:
        signature.bind(None)
    except TypeError:
        return f"{role} {function_label(fn)}{signature} must {_ROLES[role]}"
    return None


def function_label(fn: Callable[..., Any]) -> str:
    """A function's name for a message: ``Class.method``, ``_guard`` or ``<lambda>``."""
    name = str(getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn))
    return name.rsplit("<locals>.", 1)[-1]


def text_problem(node: exp.Expression, key: str, text: str) -> str | None:
    """Plain text at ``node.args[key]`` that the dialect would not write out safely."""
    if isinstance(node, exp.Identifier) and key == "this" and node.args.get("quoted"):
        return None  # quoted and escaped by the dialect
    if isinstance(node, exp.Literal) and key == "this" and node.is_string:
        return None  # a string literal, escaped by the dialect
    shape = next(
        (p for (cls, k), p in _TEXT_SHAPES.items() if isinstance(node, cls) and k == key), None
    )
    if shape is None:
        return f"the raw text {clip(repr(text), 50)} at {type(node).__name__}.{key}"
    if shape.fullmatch(text):
        return None
    return f"the text {clip(repr(text), 50)} at {type(node).__name__}.{key}, not a plain name"


def value_problem(node: exp.Expression, key: str, value: Any) -> str | None:
    """A value in a tree that is neither a sqlglot expression nor a flag sqlglot keeps."""
    if value is None or isinstance(value, (exp.Expression, bool, enum.Enum)):
        return None
    if isinstance(value, str):
        return text_problem(node, key, value)
    return f"the Python value {describe(value)} at {type(node).__name__}.{key}"


def tree_problem(tree: exp.Expression) -> str | None:
    """The first foreign value, raw text or missing argument in ``tree``, else None."""
    for node in tree.walk():
        for key, value in node.args.items():
            for item in value if isinstance(value, list) else [value]:
                problem = value_problem(node, key, item)
                if problem is not None:
                    return problem
        missing = node.error_messages()
        if missing:
            return missing[0]
    return None


def written_problem(result: Any, dialect: str | None) -> str | None:
    """What is wrong with what a ``write`` returned, checked as an expression of ``dialect``
    before it reaches any native text; None when it is fine."""
    fix = (
        "build the replacement from the node's parts (exp.Func(...), node.this.copy(), "
        "exp.Literal.string(...)) so values stay bound and names quoted"
    )
    if isinstance(result, str):
        text = clip(repr(result), 50)
        return f"write returned the string {text}, not a sqlglot expression; {fix}"
    if not isinstance(result, exp.Expression):
        return f"write returned {describe(result)}, not a sqlglot expression; {fix}"
    problem = tree_problem(result)
    if problem is not None:
        return f"write returned an expression holding {problem}; {fix}"
    try:
        result.sql(dialect=dialect, unsupported_level=ErrorLevel.RAISE)
    except Exception as e:  # sqlglot's UnsupportedError, or a generator that cannot cope
        where = dialect or "sqlglot's default dialect"
        return f"write returned {type(result).__name__}, which {where} cannot render: {e}"
    return None
