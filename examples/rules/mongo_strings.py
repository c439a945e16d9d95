"""Teach MongoDB a string function (a worked rule-authoring example).

``starts_with(field, 'prefix')`` is not pushed to MongoDB by the built-in rules, so the
collection is fetched whole and DuckDB filters it. This rule accepts the function when its
arguments are a field and a string literal without LIKE wildcards (the guard: the Mongo
adapter's LIKE has no escape character) and *writes* it as ``field LIKE 'prefix%'``, which the
Mongo adapter already turns into an anchored ``$regex`` in the ``$match`` stage.

Load it like any rule plug-in: ``rules = ["examples/rules/mongo_strings.py"]`` in the catalog,
``fed.rules.add(*RULES, kind="mongo")``, or the entry point group ``federator.rules``.
Check it with its fixtures (they name this file in a ``-- rules:`` line)::

    federator rules test examples/rules

>>> from sqlglot import parse_one
>>> _like(parse_one("starts_with(name, 'Ad')")).sql()
"name LIKE 'Ad%'"
>>> _field_and_text(parse_one("starts_with(name, 'a_b')"))
False
"""

from __future__ import annotations

from typing import Any

from federator.rules import Rule
from sqlglot import exp


def _field_and_text(node: exp.Expression) -> bool:
    """Guard: ``starts_with(column, 'literal text')`` with no ``%`` or ``_`` in the text."""
    return (
        isinstance(node.this, exp.Column)
        and isinstance(node.expression, exp.Literal)
        and node.expression.is_string
        and not any(c in node.expression.this for c in "%_")
    )


def _like(node: exp.Expression) -> exp.Expression:
    """``starts_with(f, 'p')`` → ``f LIKE 'p%'``."""
    prefix = node.expression.this
    return exp.Like(this=node.this.copy(), expression=exp.Literal.string(prefix + "%"))


RULES = [
    Rule(
        exp.StartsWith,
        guard=_field_and_text,
        write=_like,
        name="mongo.starts_with",
        note="starts_with(field, 'p') is written as field LIKE 'p%' ($regex ^p)",
    ),
]


def federator_rules(fed: Any) -> None:
    """Every MongoDB source of the federation pushes ``starts_with``."""
    fed.rules.add(*RULES, kind="mongo")
