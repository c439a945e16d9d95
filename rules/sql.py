"""Built-in rule sets of the relational backends.

Shared relational rules live once in :data:`RELATIONAL`; each backend adds or guards only
what differs (ibis's ``SIMPLE_OPS`` idea): PostgreSQL takes ILIKE and FULL joins, MySQL has
no FULL OUTER JOIN, and so on.
"""

from __future__ import annotations

from federator.rules import Rule, RuleSet, register, rules_for_classes
from sqlglot import exp

STRUCTURE = (
    exp.Select,
    exp.From,
    exp.Join,
    exp.Where,
    exp.Group,
    exp.Having,
    exp.Order,
    exp.Ordered,
    exp.Limit,
    exp.Offset,
    exp.Table,
    exp.TableAlias,
    exp.Identifier,
    exp.Column,
    exp.Alias,
    exp.Subquery,
    exp.With,
    exp.CTE,
    exp.Paren,
    exp.Star,
    exp.Distinct,
    exp.Union,
    exp.Intersect,
    exp.Except,
    exp.Tuple,
    exp.DataType,
    exp.DataTypeParam,
    exp.Var,
    exp.Placeholder,
    exp.Parameter,
)
PREDICATES = (
    exp.Literal,
    exp.Null,
    exp.Boolean,
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
    exp.In,
    exp.Between,
    exp.Like,
    exp.Exists,
    exp.Any,
    exp.All,
)
SCALARS = (
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.Mod,
    exp.Neg,
    exp.Case,
    exp.If,
    exp.Coalesce,
    exp.Cast,
    exp.Nullif,
    exp.Greatest,
    exp.Least,
    exp.Abs,
    exp.Round,
    exp.Floor,
    exp.Ceil,
    exp.Extract,
    exp.Interval,
    exp.Upper,
    exp.Lower,
    exp.Length,
    exp.Substring,
    exp.Trim,
    exp.Concat,
    exp.DPipe,
    exp.CurrentDate,
    exp.CurrentTimestamp,
    exp.StrPosition,
)
AGGREGATES = (exp.Count, exp.Sum, exp.Avg, exp.Min, exp.Max)
WINDOWS = (exp.Window, exp.WindowSpec, exp.RowNumber, exp.Rank, exp.DenseRank, exp.Lag, exp.Lead)

RELATIONAL = RuleSet(
    "relational",
    rules_for_classes(*STRUCTURE, *PREDICATES, *SCALARS, *AGGREGATES),
    frozenset({"join", "aggregate", "subquery", "order_limit"}),
)


def _not_full_join(node: exp.Expression) -> bool:
    return node.side.upper() != "FULL"


POSTGRES = RELATIONAL.extend(
    "postgres",
    [*rules_for_classes(*WINDOWS, exp.ILike, exp.DateTrunc, exp.TimestampTrunc, exp.RegexpLike)],
    {"window", "bind_join"},
)
MYSQL = RELATIONAL.extend(
    "mysql",
    [
        Rule(
            exp.Join, guard=_not_full_join, name="join without FULL", note="MySQL has no FULL JOIN"
        ),
        *rules_for_classes(*WINDOWS),
    ],
    {"window", "bind_join"},
)
SQLITE = RELATIONAL.extend(
    "sqlite",
    [Rule(exp.Join, guard=_not_full_join, name="join without FULL")],
    {"bind_join"},
)
DUCKDB_FILES = RELATIONAL.extend(
    "files",
    rules_for_classes(*WINDOWS, exp.ILike, exp.DateTrunc, exp.TimestampTrunc, exp.RegexpLike),
    {"window", "bind_join"},
)

for _kind, _rules in {
    "postgres": POSTGRES,
    "mysql": MYSQL,
    "sqlite": SQLITE,
    "files": DUCKDB_FILES,
}.items():
    register(_kind, _rules)
