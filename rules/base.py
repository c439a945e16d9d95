"""The API rule sets are written with: :class:`Rule`, :class:`RuleSet`, their helpers, and the
registry of each backend kind's rule set (:func:`register`).

The built-in rule modules (``sql``, ``mongo``, ``redis``, ``graph``, ``milvus``) import from
here, never from :mod:`federator.rules`, whose :func:`~federator.rules.rule_set_for` imports
them; users import the same names from :mod:`federator.rules`.

>>> from sqlglot import exp, parse_one
>>> rs = RuleSet("toy", rules_for_classes(exp.Column, exp.Identifier, exp.GT, exp.Literal))
>>> rs.refusal(parse_one("a > 1")) is None
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlglot import exp

Matcher = type[exp.Expression] | str
Guard = Callable[[exp.Expression], bool]
Writer = Callable[[exp.Expression], exp.Expression]


@dataclass(frozen=True)
class Rule:
    """One pushable expression.

    ``match`` is an expression class (``exp.Like``) or an upper-case function name
    (``"SIMILARITY"``) for functions sqlglot parses as anonymous. ``guard`` refuses nodes it
    returns False for; ``write`` rewrites an accepted node before the backend renders it.
    """

    match: Matcher
    guard: Guard | None = None
    write: Writer | None = None
    name: str = ""
    note: str = ""

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return self.match if isinstance(self.match, str) else self.match.__name__

    def matches(self, node: exp.Expression) -> bool:
        if isinstance(self.match, str):
            return function_name(node) == self.match
        return type(node) is self.match


def function_name(node: exp.Expression) -> str | None:
    """Upper-case SQL name of a function node (anonymous or modelled), else None."""
    if isinstance(node, exp.Anonymous):
        return str(node.this).upper()
    if isinstance(node, exp.Func):
        return node.sql_name().upper()
    return None


@dataclass
class RuleSet:
    """The rules of one backend kind (or one source), most recently added first.

    ``capabilities`` holds whole-plan abilities the planner may ask about by name, such as
    ``"bind_join"`` or ``"join"``; they are declarations, not code paths.
    """

    name: str
    rules: list[Rule] = field(default_factory=list)
    capabilities: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        self.rules = list(self.rules)

    def add(self, *rules: Rule) -> RuleSet:
        """Add rules that take precedence over the ones already present."""
        self.rules[:0] = rules
        return self

    def extend(
        self, name: str, rules: Iterable[Rule] = (), capabilities: Iterable[str] = ()
    ) -> RuleSet:
        """A new rule set with these rules on top of this one's."""
        return RuleSet(name, [*rules, *self.rules], self.capabilities | frozenset(capabilities))

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    def rule_for(self, node: exp.Expression) -> Rule | None:
        # The first rule that matches decides: a guard that says no is a refusal, not a pass to
        # a more general rule further down (rules added later sit in front).
        for rule in self.rules:
            if rule.matches(node):
                return rule if rule.guard is None or rule.guard(node) else None
        return None

    def refusal(self, tree: exp.Expression) -> str | None:
        """Why ``tree`` cannot be pushed to this backend, or None when every node is accepted."""
        for node in tree.walk():
            if self.rule_for(node) is None:
                return self._why(node)
        return None

    def _why(self, node: exp.Expression) -> str:
        refused = [r for r in self.rules if r.matches(node)]
        text = node.sql()
        if len(text) > 60:
            text = text[:57] + "..."
        if refused:
            return (
                f"rule {refused[0].label!r} of {self.name!r} refuses {type(node).__name__} ({text})"
            )
        return f"no rule of {self.name!r} pushes {type(node).__name__} ({text})"

    def rewrite(self, tree: exp.Expression) -> exp.Expression:
        """Apply the ``write`` of every matching rule, bottom up."""

        def visit(node: exp.Expression) -> exp.Expression:
            rule = self.rule_for(node)
            if rule is not None and rule.write is not None:
                return rule.write(node)
            return node

        return tree.transform(visit, copy=True)


# Literals, parameters and boolean comparisons: the filter vocabulary every backend with a
# filter language of its own (Milvus expressions, Cypher WHERE) takes as it is.
SIMPLE_FILTERS: tuple[type[exp.Expression], ...] = (
    exp.Paren,
    exp.Literal,
    exp.Boolean,
    exp.Null,
    exp.Neg,
    exp.Placeholder,
    exp.And,
    exp.Or,
    exp.Not,
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.Is,
    exp.Between,
)


def nonzero_literal_divisor(node: exp.Expression) -> bool:
    """A division or modulo whose divisor is a non-zero number literal: a backend that answers
    a division by zero with NULL, inf or an error text of its own can take it.

    >>> nonzero_literal_divisor(exp.Div(this=exp.column("a"), expression=exp.Literal.number(2)))
    True
    """
    d = node.expression
    return isinstance(d, exp.Literal) and d.is_number and float(d.this) != 0


def rules_for_classes(*classes: type[exp.Expression]) -> list[Rule]:
    return [Rule(c) for c in classes]


_REGISTRY: dict[str, RuleSet] = {}


def register(kind: str, rule_set: RuleSet) -> None:
    """Register the built-in (or a replacement) rule set for a backend kind."""
    _REGISTRY[kind] = rule_set
