"""Teach federator to push PostgreSQL's pg_trgm functions (a worked rule-authoring example).

Without these rules ``similarity(name, 'ada')`` is not pushed to PostgreSQL: no built-in rule
accepts the function, so the planner keeps it in the residual (and DuckDB has no such
function). With them:

* ``similarity(a, b)`` and ``word_similarity(a, b)`` are pushed as they are;
* ``trgm_match(a, b)`` is pushed and *written natively* as pg_trgm's index-friendly operator
  ``a % b`` (a ``write`` function returns the sqlglot tree PostgreSQL's dialect renders).

Load it from a catalog (``rules = ["examples/rules/pg_trgm.py"]``, or a module path when it is
installed), from Python (``fed.rules.add(*RULES, kind="postgres")``), or from the entry point
group ``federator.rules``. Check it with its fixtures (they name this file in a
``-- rules:`` line)::

    federator rules test examples/rules

>>> import federator
>>> fed = federator.connect({"sources": {"pg": {"kind": "postgres",
...                                            "dsn": "postgresql://u@pg.invalid/db"}}})
>>> fed.rules.add(*RULES, kind="postgres")
['pg']
>>> fed.close()
"""

from __future__ import annotations

from typing import Any

from federator.rules import Rule
from sqlglot import exp


def _two_plain_arguments(node: exp.Expression) -> bool:
    """Guard: exactly two arguments, neither a subquery."""
    args = node.expressions if isinstance(node, exp.Anonymous) else []
    return len(args) == 2 and not any(a.find(exp.Select) for a in args)


def _as_percent_operator(node: exp.Expression) -> exp.Expression:
    """``trgm_match(a, b)`` → ``a % b`` (pg_trgm's similarity operator; sqlglot's Mod node
    renders as ``%`` in PostgreSQL's dialect)."""
    left, right = node.expressions
    return exp.Paren(this=exp.Mod(this=left.copy(), expression=right.copy()))


RULES = [
    Rule(
        "SIMILARITY",
        guard=_two_plain_arguments,
        name="pg_trgm.similarity",
        note="pg_trgm similarity(text, text) -> real",
    ),
    Rule(
        "WORD_SIMILARITY",
        guard=_two_plain_arguments,
        name="pg_trgm.word_similarity",
        note="pg_trgm word_similarity(text, text) -> real",
    ),
    Rule(
        "TRGM_MATCH",
        guard=_two_plain_arguments,
        write=_as_percent_operator,
        name="pg_trgm.match",
        note="trgm_match(a, b) is written as pg_trgm's a % b",
    ),
]


def federator_rules(fed: Any) -> None:
    """Hook called with each federation that loads this module: every PostgreSQL source of
    that federation pushes the pg_trgm functions (other federations are not changed)."""
    fed.rules.add(*RULES, kind="postgres")
