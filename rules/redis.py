"""The Redis rule set: key lookups on tables declared by key template.

Redis cannot filter values, sort, join or aggregate, so a fragment is a projection of one
declared table, optionally with equality / IN conditions on the template's key columns (→
pipelined HGETALL / MGET of exactly those keys) and a LIMIT. Which columns are key columns is
known per source, so the adapter adds :func:`key_rules` for its own tables on top of
:data:`REDIS`. Every other condition stays in the residual.

>>> from sqlglot import parse_one
>>> rules = REDIS.extend("redis", key_rules({"user_id"}))
>>> rules.refusal(parse_one("SELECT f.a FROM kv.main.f AS f WHERE f.user_id IN (1, 2)")) is None
True
>>> rules.refusal(parse_one("SELECT f.clicks FROM kv.main.f AS f WHERE f.clicks > 2"))
"no rule of 'redis' pushes GT (f.clicks > 2)"
"""

from __future__ import annotations

from collections.abc import Collection

from federator.rules.base import Rule, RuleSet, register, rules_for_classes
from sqlglot import exp

VALUES = (exp.Literal, exp.Placeholder, exp.Boolean)


def _select(node: exp.Expression) -> bool:
    return not any(
        node.args.get(k)
        for k in ("joins", "laterals", "windows", "qualify", "with_", "group", "having", "order")
    ) and not node.args.get("distinct")


def _limit(node: exp.Expression) -> bool:
    return isinstance(node.expression, exp.Literal) and node.expression.is_int


def _is_value(node: exp.Expression) -> bool:
    if isinstance(node, exp.Neg):
        return isinstance(node.this, exp.Literal) and not node.this.is_string
    return isinstance(node, VALUES)


def _where(node: exp.Expression) -> bool:
    """No conjunct that is a bare value (``WHERE active``, ``WHERE TRUE``): the adapter turns
    conditions into keys, so such a filter stays in the residual. Comparisons are judged by
    their own rules (only those on key columns pass)."""
    cond = node.this.unnest()
    conjuncts = cond.flatten() if isinstance(cond, exp.And) else [cond]
    return not any(isinstance(c.unnest(), (exp.Column, *VALUES)) for c in conjuncts)


def key_rules(key_columns: Collection[str]) -> list[Rule]:
    """Rules accepting ``key = value`` and ``key IN (values)`` for these column names."""
    keys = frozenset(key_columns)

    def is_key(node: exp.Expression) -> bool:
        return isinstance(node, exp.Column) and node.name in keys

    def equality(node: exp.Expression) -> bool:
        left, right = node.this, node.expression
        return (is_key(left) and _is_value(right)) or (_is_value(left) and is_key(right))

    def in_list(node: exp.Expression) -> bool:
        return (
            is_key(node.this)
            and not node.args.get("query")
            and not node.args.get("unnest")
            and bool(node.expressions)
            and all(_is_value(v) for v in node.expressions)
        )

    return [
        Rule(exp.EQ, guard=equality, name="key = value"),
        Rule(exp.In, guard=in_list, name="key IN (values)"),
        Rule(exp.Neg, guard=_is_value, name="negative number"),
    ]


REDIS = RuleSet(
    "redis",
    [
        Rule(exp.Select, guard=_select, name="projection of one table"),
        Rule(exp.From, guard=lambda n: isinstance(n.this, exp.Table), name="from one table"),
        Rule(exp.Limit, guard=_limit, name="limit by a number"),
        Rule(exp.Where, guard=_where, name="key conditions"),
        *rules_for_classes(
            exp.Table,
            exp.TableAlias,
            exp.Identifier,
            exp.Column,
            exp.Alias,
            exp.And,
            exp.Paren,
            *VALUES,
        ),
    ],
    frozenset({"bind_join"}),
)

register("redis", REDIS)
