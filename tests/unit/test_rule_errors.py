"""Rule mistakes explain themselves (issue 15): each is a RuleError naming the rule, the
file:line it was made at and what is wrong — when the rule is made or added where that can be
known, while planning otherwise — and a write's result is checked against the backend's
dialect before any native text is rendered. Offline: plans against the fixture shop."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from federator.rules import Rule, RuleSet, add_rules
from sqlglot import exp

import federator
from federator import rules as rules_module
from federator.errors import RuleError
from federator.rules_testing import planning_federation

SIMILAR = "SELECT name FROM pg.customers WHERE similarity(name, 'ada') > 0.3"
STARTS = "SELECT name FROM docs.customers WHERE starts_with(name, 'Ad')"


def here() -> str:
    """``file:line`` of the caller's next line, as RuleError shows where a rule was made."""
    return f"{Path(__file__).name}:{sys._getframe(1).f_lineno + 1}"


def defined_at(error: RuleError) -> str:
    """The file name and line of ``error.where`` (its folder depends on the working directory)."""
    assert error.where is not None
    return Path(error.where).name


@pytest.fixture
def fed() -> Iterator[federator.Federation]:
    federation = planning_federation()
    yield federation
    federation.close()


@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(rules_module._REGISTRY)
    yield
    rules_module._REGISTRY.clear()
    rules_module._REGISTRY.update(saved)


def _boom(node: exp.Expression) -> bool:
    return 1 / 0 > 0


# ---- when a rule is made ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "label", "text"),
    [
        (lambda: Rule(123), "123", "match must be a sqlglot expression class such as exp.Like"),
        (lambda: Rule(exp.Like()), "Like()", "got an expression, not its class: write exp.Like"),
        (lambda: Rule("a LIKE b"), "A LIKE B", "or a function name such as 'SIMILARITY'"),
        (lambda: Rule(exp.Binary), "Binary", "no node is exactly exp.Binary (a base class)"),
        (lambda: Rule(exp.Like, "my like"), "Like", "got 'my like' (str); to name the rule"),
        (
            lambda: Rule(exp.Like, guard=lambda: True),
            "Like",
            "guard <lambda>() must take one argument (the sqlglot node)",
        ),
        (
            lambda: Rule("F", write=lambda node, dialect: node),
            "F",
            "write <lambda>(node, dialect) must take one argument (the sqlglot node) and "
            "return the sqlglot expression",
        ),
        (lambda: Rule("F", write="F2"), "F", "write must be a function that can take one"),
        (lambda: Rule("F", name=5), "F", "name must be a str; got 5 (int)"),
    ],
    ids=["int", "instance", "not-a-name", "base-class", "str-guard", "guard-args", "write-args",
         "str-write", "name-type"],
)  # fmt: skip
def test_a_malformed_rule_is_refused_when_made(
    make: Callable[[], Rule], label: str, text: str
) -> None:
    with pytest.raises(RuleError) as info:
        make()
    assert str(info.value.rule).upper() == label.upper()
    assert text in str(info.value)
    assert isinstance(info.value, federator.FederatorError)
    assert defined_at(info.value).startswith(f"{Path(__file__).name}:")


def test_where_a_rule_was_made_is_its_callers_line() -> None:
    where = here()
    rule = Rule("SIMILARITY")
    assert Path(rule.defined_at).name == where
    where = here()
    made = rules_module.rules_for_classes(exp.EQ)  # inside the rule API: its caller's line
    assert Path(made[0].defined_at).name == where
    with pytest.raises(RuleError, match=r"^rule '123' \(defined at \S*test_rule_errors.py:\d+\): "):
        Rule(123)


def test_a_function_name_is_matched_in_any_case(fed: federator.Federation) -> None:
    assert Rule("similarity").match == "SIMILARITY"
    fed.rules.add(Rule("similarity"), kind="postgres")
    assert fed.sql(SIMILAR).plan.residual is None


# ---- when rules are added ---------------------------------------------------------------
def test_a_string_passed_to_fed_rules_add_is_refused(fed: federator.Federation) -> None:
    with pytest.raises(RuleError) as info:
        where = here()
        fed.rules.add("SIMILARITY", kind="postgres")  # type: ignore[arg-type]
    assert str(info.value).endswith(
        "fed.rules.add takes Rule objects, not the string 'SIMILARITY'; write Rule('SIMILARITY')"
    )
    assert info.value.rule == "SIMILARITY" and defined_at(info.value) == where
    # refused even where no source of the kind exists (nothing would be added)
    with pytest.raises(RuleError, match="not the string 'X'"):
        fed.rules.add("X", kind="redis")  # type: ignore[arg-type]
    assert fed.sql(SIMILAR).plan.residual is not None  # nothing was added


def test_a_list_or_other_object_passed_to_add_is_refused(
    fed: federator.Federation, clean_registry: None
) -> None:
    rules = [Rule("SIMILARITY")]
    with pytest.raises(RuleError, match=r"not a list of 1; unpack it: fed.rules.add\(\*RULES"):
        fed.rules.add(rules, kind="postgres")  # type: ignore[arg-type]
    with pytest.raises(RuleError, match=r"got 42 \(int\): build it with Rule"):
        fed.rules.add(42, source="pg")  # type: ignore[arg-type]
    with pytest.raises(RuleError, match=r"RuleSet\.add takes Rule objects, not the string 'F'"):
        add_rules("postgres", "F")  # type: ignore[arg-type]
    with pytest.raises(RuleError, match="RuleSet takes Rule objects, not the string 'F'"):
        RuleSet("toy", ["F"])  # type: ignore[list-item]
    with pytest.raises(RuleError, match=r"register\('postgres', \.\.\.\) takes a RuleSet; got \["):
        rules_module.register("postgres", [Rule("F")])  # type: ignore[arg-type]


# ---- while planning ---------------------------------------------------------------------
def test_a_guard_that_raises_names_the_rule_and_chains_the_cause(
    fed: federator.Federation,
) -> None:
    where = here()
    fed.rules.add(Rule("SIMILARITY", guard=_boom, name="trgm.sim"), kind="postgres")
    with pytest.raises(RuleError) as info:
        fed.sql(SIMILAR)
    assert info.value.rule == "trgm.sim" and defined_at(info.value) == where
    assert str(info.value).endswith(
        "guard _boom raised ZeroDivisionError: division by zero "
        "(on SIMILARITY(customers.name, 'ada'))"
    )
    assert isinstance(info.value.__cause__, ZeroDivisionError)
    with pytest.raises(RuleError, match="guard _boom raised"):  # EXPLAIN asks the rules too
        fed.explain(SIMILAR)


def test_a_write_that_raises_names_the_rule_and_chains_the_cause(
    fed: federator.Federation,
) -> None:
    fed.rules.add(Rule("SIMILARITY", write=lambda node: node.this.nope), kind="postgres")
    with pytest.raises(RuleError) as info:
        fed.sql(SIMILAR)
    assert info.value.rule == "SIMILARITY"
    assert "write <lambda> raised AttributeError: " in str(info.value)
    assert isinstance(info.value.__cause__, AttributeError)


BAD_WRITES: list[tuple[str, Callable[[exp.Expression], Any], str]] = [
    (
        "string",
        lambda node: "name % 'ada'",
        "write returned the string \"name % 'ada'\", not a sqlglot expression; build the "
        "replacement from the node's parts",
    ),
    ("none", lambda node: None, "write returned None (NoneType), not a sqlglot expression"),
    ("dict", lambda node: {"$regex": "x"}, "write returned {'$regex': 'x'} (dict), not a sql"),
    (
        "raw-text-inside",
        lambda node: exp.EQ(this="1=1 OR name", expression=exp.Literal.number(1)),
        "write returned an expression holding the raw text '1=1 OR name' at EQ.this",
    ),
    (
        "unquoted-name-with-text",
        lambda node: exp.Column(this=exp.Identifier(this="name) OR (1", quoted=False)),
        "holding the text 'name) OR (1' at Identifier.this, not a plain name",
    ),
    (
        "number-literal-with-text",
        lambda node: exp.GT(this=node.expressions[0].copy(), expression=exp.Literal(
            this="0 OR 1=1", is_string=False)),
        "holding the text '0 OR 1=1' at Literal.this",
    ),
    (
        "python-value-inside",
        lambda node: exp.Anonymous(this="F", expressions=[3.5]),
        "holding the Python value 3.5 (float) at Anonymous.expressions",
    ),
    (
        "missing-argument",
        lambda node: exp.Like(this=node.expressions[0].copy()),
        "holding Required keyword: 'expression' missing",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("write", "text"), [b[1:] for b in BAD_WRITES], ids=[b[0] for b in BAD_WRITES]
)
def test_a_bad_write_result_is_refused_before_any_native_text(
    fed: federator.Federation, write: Callable[[exp.Expression], Any], text: str
) -> None:
    where = here()
    fed.rules.add(Rule("SIMILARITY", write=write, name="w"), kind="postgres")
    with pytest.raises(RuleError) as info:
        fed.sql(SIMILAR)
    assert text in str(info.value), str(info.value)
    assert info.value.rule == "w" and defined_at(info.value) == where
    assert str(info.value).endswith("(on SIMILARITY(customers.name, 'ada'))")


def test_a_bad_write_for_a_non_sql_backend_is_refused_too(fed: federator.Federation) -> None:
    if "docs" not in fed.catalog.adapters:
        pytest.skip("the mongo driver is not installed")  # planning_federation leaves it out
    fed.rules.add(Rule(exp.StartsWith, write=lambda node: "^Ad"), kind="mongo")
    with pytest.raises(RuleError, match="write returned the string '\\^Ad'"):
        fed.sql(STARTS)


def test_a_good_write_renders(fed: federator.Federation) -> None:
    def percent(node: exp.Expression) -> exp.Expression:
        left, right = node.expressions
        return exp.Paren(this=exp.Mod(this=left.copy(), expression=right.copy()))

    fed.rules.add(Rule("TRGM_MATCH", write=percent), kind="postgres")
    plan = fed.sql("SELECT name FROM pg.customers WHERE trgm_match(name, :q)", {"q": "a"}).plan
    assert plan.requests[plan.fragments[0].id].text.endswith('WHERE ("customers"."name" % $1)')


# ---- plug-ins -----------------------------------------------------------------------------
def test_a_plugin_with_a_malformed_rule_raises_rule_error(tmp_path: Path) -> None:
    plugin = tmp_path / "bad_plugin.py"
    plugin.write_text("from federator.rules import Rule\nRULES = [\n    Rule(123),\n]\n")
    with pytest.raises(RuleError) as info:
        planning_federation(rules=[str(plugin)])
    assert defined_at(info.value) == "bad_plugin.py:3"


def test_a_plugin_hook_that_raises_is_named(tmp_path: Path) -> None:
    plugin = tmp_path / "hook_plugin.py"
    plugin.write_text(
        textwrap.dedent("""
        def federator_rules(fed):
            fed.no_such_thing.add()
        """)
    )
    with pytest.raises(RuleError) as info:
        planning_federation(rules=[str(plugin)])
    text = str(info.value)
    assert text.startswith(f"at {plugin}:2: rules hook ")
    assert "federator_rules(fed) raised AttributeError:" in text
    assert isinstance(info.value.__cause__, AttributeError)
