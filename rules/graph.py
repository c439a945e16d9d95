"""What a graph source (Cypher) takes: label tables and relationship tables joined with inner
joins (one MATCH pattern), filters, projections, GROUP BY on properties with COUNT(*),
COUNT([DISTINCT] x), SUM, AVG, MIN, MAX and HAVING (``WITH … WHERE``), ORDER BY, LIMIT/SKIP
and DISTINCT. Window functions, subqueries, other aggregates and grouping by expressions stay
in the residual.

>>> from federator.sql.dialect import parse
>>> GRAPH.refusal(parse("SELECT p.name FROM g.Person AS p JOIN g.FOLLOWS AS f ON f._src = p._id"))
>>> GRAPH.refusal(parse("SELECT name, count(*) FROM g.Person GROUP BY name"))
>>> GRAPH.refusal(parse("SELECT name, count(*) FROM g.Person GROUP BY ROLLUP (name)"))[:45]
"rule 'group by properties' of 'graph' refuses"
"""

from __future__ import annotations

from federator.rules.base import (
    SIMPLE_FILTERS,
    Rule,
    RuleSet,
    nonzero_literal_divisor,
    register,
    rules_for_classes,
)
from sqlglot import exp

AGGREGATES = (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)


def _plain_select(node: exp.Expression) -> bool:
    return not any(node.args.get(k) for k in ("with_", "qualify", "windows", "laterals"))


def _group(node: exp.Expression) -> bool:
    """GROUP BY properties with an aggregate: Cypher groups by the other WITH items only when
    there is one (``WITH o.pid`` alone keeps every row: a decorrelated IN came back doubled)."""
    select = node.parent
    aggregated = isinstance(select, exp.Select) and any(
        s.find(*AGGREGATES) is not None for s in select.selects
    )
    return (
        aggregated
        and not any(node.args.get(k) for k in ("grouping_sets", "cube", "rollup", "totals"))
        and all(isinstance(e, exp.Column) for e in node.expressions)
    )


def _default_nulls(node: exp.Expression) -> bool:
    """Cypher puts NULLs last ascending and first descending, as the federated dialect does by
    default; an explicit NULLS FIRST/LAST against that stays in the residual."""
    return bool(node.args.get("nulls_first")) == bool(node.args.get("desc"))


def _aggregate(node: exp.Expression) -> bool:
    """COUNT(*), COUNT([DISTINCT] x), SUM/AVG/MIN/MAX(x), x not itself an aggregate."""
    arg = node.this
    if isinstance(arg, exp.Distinct):
        return isinstance(node, exp.Count) and len(arg.expressions) == 1
    if isinstance(arg, exp.Star):
        return isinstance(node, exp.Count)
    return arg is not None and not node.args.get("expressions") and arg.find(*AGGREGATES) is None


def _count_star(node: exp.Expression) -> bool:
    return isinstance(node.parent, exp.Count)


def _inner(node: exp.Expression) -> bool:
    assert isinstance(node, exp.Join)
    return (
        not node.side
        and node.kind.upper() in ("", "INNER", "CROSS")
        and not node.args.get("method")  # ASOF: matched in the residual
    )


def _literal_in(node: exp.Expression) -> bool:
    return not node.args.get("query") and all(
        isinstance(e, (exp.Literal, exp.Placeholder, exp.Neg)) for e in node.expressions
    )


def _simple_like(node: exp.Expression) -> bool:
    """LIKE 'abc%', '%abc' or '%abc%' (STARTS WITH / ENDS WITH / CONTAINS), nothing else."""
    pattern = node.expression
    if not (isinstance(pattern, exp.Literal) and pattern.is_string):
        return False
    core = pattern.this.strip("%")
    return "%" not in core and "_" not in core and "\\" not in core


def _derived_table(node: exp.Expression) -> bool:
    """``FROM (SELECT … GROUP BY …) AS c``: its own Cypher, continued with WITH."""
    return isinstance(node.parent, (exp.From, exp.Join)) and isinstance(node.this, exp.Select)


def _graph_table(node: exp.Expression) -> bool:
    """A label or relationship type, or the result of cypher()/paths() (a table of its own)."""
    return isinstance(node.this, exp.Identifier)


DIVISION = (exp.Div, exp.Mod)


GRAPH = RuleSet(
    "graph",
    [
        Rule(exp.Select, guard=_plain_select, name="MATCH … [WITH grouping] RETURN"),
        Rule(exp.Group, guard=_group, name="group by properties"),
        Rule(exp.Ordered, guard=_default_nulls, name="order with NULLs where Cypher puts them"),
        *(Rule(c, guard=_aggregate, name="aggregate of a value") for c in AGGREGATES),
        Rule(exp.Star, guard=_count_star, name="COUNT(*)"),
        Rule(exp.Join, guard=_inner, name="inner join (one pattern)"),
        Rule(exp.In, guard=_literal_in, name="IN a literal list"),
        Rule(exp.Like, guard=_simple_like, name="LIKE as STARTS WITH/ENDS WITH/CONTAINS"),
        Rule(exp.Table, guard=_graph_table, name="label or relationship table"),
        Rule(exp.Subquery, guard=_derived_table, name="derived table (its RETURN as WITH)"),
        *rules_for_classes(
            exp.From,
            exp.TableAlias,
            exp.Identifier,
            exp.Column,
            exp.Alias,
            exp.Where,
            exp.Having,
            exp.Order,
            exp.Limit,
            exp.Offset,
            exp.Distinct,
            *SIMPLE_FILTERS,
            exp.Add,
            exp.Sub,
            exp.Mul,
        ),
        # Cypher truncates integer / integer toward zero as the federated dialect does, but a
        # float divided by zero is Infinity/NaN there (an error here) and FalkorDB's Bolt
        # endpoint reports an integer one as "unknown error": only a non-zero literal divisor
        *(
            Rule(c, guard=nonzero_literal_divisor, name="division by a non-zero literal")
            for c in DIVISION
        ),
    ],
    frozenset({"join", "bind_join", "order_limit"}),
)

for _kind in ("falkordb", "neo4j"):
    register(_kind, GRAPH)
