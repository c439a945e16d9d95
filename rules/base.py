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

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from federator.rules.checks import (
    definition_site,
    describe,
    function_label,
    function_problem,
    match_problem,
    written_problem,
)
from sqlglot import exp

from federator.errors import RuleError, clip

Matcher = type[exp.Expression] | str
Guard = Callable[[exp.Expression], bool]
Writer = Callable[[exp.Expression], exp.Expression]


@dataclass(frozen=True)
class Rule:
    """One pushable expression.

    ``match`` is an expression class (``exp.Like``) or a function name (``"SIMILARITY"``, any
    case) for functions sqlglot parses as anonymous. ``guard(node) -> bool`` refuses nodes it
    returns False for; ``write(node) -> exp.Expression`` rewrites an accepted node before the
    backend renders it (a tree, never SQL text: it is checked against the backend's dialect
    first). ``name`` shows in EXPLAIN and in errors, with where the rule was defined.

    Mistakes raise :class:`~federator.errors.RuleError` when the rule is made, or when a guard
    or write fails while planning:

    >>> from sqlglot import exp
    >>> Rule(exp.Like, guard=lambda node: node.expression.is_string, name="like literal").label
    'like literal'
    >>> Rule(123)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    federator.errors.RuleError: rule '123' (defined at ...): match must be a sqlglot ...
    """

    match: Matcher
    guard: Guard | None = None
    write: Writer | None = None
    name: str = ""
    note: str = ""
    # file:line of the code that made the rule; found on its own, for error messages
    defined_at: str = field(default="", compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.defined_at:
            object.__setattr__(self, "defined_at", definition_site())
        for problem in self._problems():
            raise RuleError(problem, self.label, self.defined_at)
        if isinstance(self.match, str):
            object.__setattr__(self, "match", self.match.upper())

    def _problems(self) -> Iterator[str]:
        for what in ("name", "note"):
            value = getattr(self, what)
            if not isinstance(value, str):
                yield f"{what} must be a str; got {describe(value)}"
        problem = match_problem(self.match)
        if problem is not None:
            yield problem
        for role in ("guard", "write"):
            problem = function_problem(role, getattr(self, role))
            if problem is not None:
                yield problem

    @property
    def label(self) -> str:
        if self.name and isinstance(self.name, str):
            return self.name
        if isinstance(self.match, str):
            return self.match
        if isinstance(self.match, type):
            return self.match.__name__
        return repr(self.match)

    def matches(self, node: exp.Expression) -> bool:
        if isinstance(self.match, str):
            return function_name(node) == self.match
        return type(node) is self.match

    def accepts(self, node: exp.Expression) -> bool:
        """Whether the guard (if any) lets ``node`` be pushed; a guard that raises is a
        RuleError naming this rule, chained to what it raised."""
        if self.guard is None:
            return True
        try:
            return bool(self.guard(node))
        except RuleError:  # another rule's, already named
            raise
        except Exception as e:
            raise self._failed("guard", e, node) from e

    def written(self, node: exp.Expression, dialect: str | None = None) -> exp.Expression:
        """``node`` as the write renders it, checked as an expression of ``dialect`` before it
        reaches any native text."""
        if self.write is None:
            return node
        try:
            result = self.write(node)
        except RuleError:
            raise
        except Exception as e:
            raise self._failed("write", e, node) from e
        problem = written_problem(result, dialect)
        if problem is not None:
            raise RuleError(f"{problem} (on {_shown(node)})", self.label, self.defined_at)
        return result

    def _failed(self, role: str, error: Exception, node: exp.Expression) -> RuleError:
        fn = function_label(getattr(self, role))
        return RuleError(
            f"{role} {fn} raised {type(error).__name__}: {error} (on {_shown(node)})",
            self.label,
            self.defined_at,
        )


def _shown(node: exp.Expression) -> str:
    try:
        return clip(node.sql(), 60)
    except Exception:  # a node the default dialect cannot write: name its class
        return type(node).__name__


def check_rules(rules: Iterable[object], where: str) -> None:
    """Raise RuleError unless every item is a :class:`Rule` (``where`` names the call, such as
    ``fed.rules.add``): a string, a list not unpacked, or anything else is named with a fix."""
    for item in rules:
        if isinstance(item, Rule):
            continue
        site = definition_site()
        if isinstance(item, str):
            raise RuleError(
                f"{where} takes Rule objects, not the string {item!r}; write Rule({item!r})",
                item,
                site,
            )
        if isinstance(item, (list, tuple)):
            raise RuleError(
                f"{where} takes Rule objects, not a {type(item).__name__} of {len(item)}; "
                f"unpack it: {where}(*RULES, ...)",
                None,
                site,
            )
        raise RuleError(
            f"{where} takes Rule objects; got {describe(item)}: build it with Rule(...)",
            None,
            site,
        )


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
        check_rules(self.rules, "RuleSet")

    def add(self, *rules: Rule) -> RuleSet:
        """Add rules that take precedence over the ones already present."""
        check_rules(rules, "RuleSet.add")
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
                return rule if rule.accepts(node) else None
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

    def rewrite(self, tree: exp.Expression, dialect: str | None = None) -> exp.Expression:
        """Apply the ``write`` of every matching rule, bottom up; what a write returns is
        checked as an expression of ``dialect`` (the backend's sqlglot dialect) first."""

        def visit(node: exp.Expression) -> exp.Expression:
            rule = self.rule_for(node)
            return node if rule is None else rule.written(node, dialect)

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
    if not isinstance(rule_set, RuleSet):
        raise RuleError(
            f"register({kind!r}, ...) takes a RuleSet; got {describe(rule_set)}: "
            f"wrap the rules, register({kind!r}, RuleSet({kind!r}, RULES))",
            None,
            definition_site(),
        )
    _REGISTRY[kind] = rule_set
