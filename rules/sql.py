"""Built-in rule sets of the relational backends.

Shared relational rules live once in :data:`RELATIONAL`; each backend adds or guards only
what differs (ibis's ``SIMPLE_OPS`` idea): PostgreSQL takes ILIKE and FULL joins, MySQL has
no FULL OUTER JOIN, and so on.
"""

from __future__ import annotations

from collections.abc import Mapping

from federator.rules.base import Rule, RuleSet, nonzero_literal_divisor, register, rules_for_classes
from sqlglot import exp

from federator.sql.dialect import VECTOR_OPS, may_return_rows

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


def _not_asof_join(node: exp.Expression) -> bool:
    """Any join but ``ASOF JOIN``: the as-of match runs in the residual (DuckDB), never in a
    source (PostgreSQL and MySQL have no ASOF JOIN; a rewrite as a lateral subquery is slow)."""
    return (node.args.get("method") or "").upper() != "ASOF"


RELATIONAL = RuleSet(
    "relational",
    [
        Rule(exp.Join, guard=_not_asof_join, name="join (not ASOF)"),
        *rules_for_classes(*STRUCTURE, *PREDICATES, *SCALARS, *AGGREGATES),
    ],
    # bind_under_group: a bind on a derived table's GROUP BY key is rendered under that GROUP
    # BY (adapters/sqlbase.py), so binding a grouped fragment saves the grouping's work.
    frozenset({"join", "aggregate", "subquery", "order_limit", "bind_under_group"}),
)


def _not_full_join(node: exp.Expression) -> bool:
    return node.side.upper() != "FULL" and _not_asof_join(node)


def _pgvector_operands(node: exp.Expression) -> exp.Expression:
    """pgvector: a query vector given as a parameter or '[…]' text is cast to ``vector``
    (asyncpg then sends it as text; see the postgres adapter)."""
    node = node.copy()
    for key in ("this", "expression"):
        arg = node.args.get(key)
        if isinstance(arg, exp.Placeholder) or (isinstance(arg, exp.Literal) and arg.is_string):
            node.set(key, exp.Cast(this=arg, to=exp.DataType.build("vector", udt=True)))
    return node


PGVECTOR = [Rule(cls, write=_pgvector_operands, note="pgvector") for cls in VECTOR_OPS]

# Division and modulo mean what they mean on PostgreSQL (integer / integer truncates toward
# zero, by zero is an error). PostgreSQL takes them all; the others only where their answer is
# the same: a divisor that is a non-zero literal (by zero they give NULL or inf), and for
# division the result type they would give (see _same_division). Else the residual computes.
DIVISION = (exp.Div, exp.Mod)


_nonzero_literal = nonzero_literal_divisor


def _sqlite_division(node: exp.Expression) -> bool:
    """SQLite truncates integer / integer and divides reals as doubles, as we do."""
    return _nonzero_literal(node)


def _duckdb_division(node: exp.Expression) -> bool:
    """DuckDB's ``/`` of integers is a double: only non-integer divisions go there."""
    return _nonzero_literal(node) and not node.args.get("integer", True)


_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.In, exp.Between)
MYSQL_COLLATION_NOTE = (
    "semantics: string comparisons run on MySQL/MariaDB under the column's collation "
    "(case- and accent-insensitive by default: 'bob' = 'Bob'), not byte order"
)


def collation_note(
    query: exp.Expression, collations: Mapping[tuple[str, str, str], str] | None = None
) -> str | None:
    """The EXPLAIN note for a fragment that compares strings on a backend whose default
    collation is case-insensitive. With ``collations`` ((schema, table, column) → collation
    name, lower case, from the server's catalog): the text columns compared, grouped, sorted
    or made DISTINCT under a collation that is not byte order, each with its collation.
    Without: any comparison or IN/BETWEEN with a string literal, or LIKE.

    >>> from federator.sql.dialect import parse
    >>> q = parse("SELECT p.id FROM s.people AS p WHERE p.name = :n ORDER BY p.city")
    >>> coll = {("s", "people", "name"): "utf8mb4_general_ci"}
    >>> coll[("s", "people", "city")] = "utf8mb4_bin"
    >>> collation_note(q, coll).split("byte order: ")[1]
    'people.name under utf8mb4_general_ci (case-insensitive)'
    >>> collation_note(parse("SELECT a FROM t WHERE name = 'bob'")) == MYSQL_COLLATION_NOTE
    True
    >>> collation_note(parse("SELECT a FROM t WHERE n = 1")) is None
    True
    """
    tables = {
        t.alias_or_name.lower(): (t.db.lower(), t.name.lower()) for t in query.find_all(exp.Table)
    }
    if collations is not None and any(key[:2] in tables.values() for key in collations):
        found: dict[str, str] = {}
        for col in _compared_columns(query):
            schema, table = tables.get(col.table.lower(), ("", ""))
            collation = collations.get((schema, table, col.name.lower()))
            if collation and not (collation.endswith("_bin") or collation == "binary"):
                found[f"{table}.{col.name}"] = collation
        if not found:
            return None
        listed = ", ".join(f"{c} under {k} ({_collation_meaning(k)})" for c, k in found.items())
        return f"{MYSQL_COLLATION_NOTE}: {listed}"
    if query.find(exp.Like) is not None:
        return MYSQL_COLLATION_NOTE
    for node in query.find_all(*_COMPARISONS):
        if any(literal.is_string for literal in node.find_all(exp.Literal)):
            return MYSQL_COLLATION_NOTE
    return None


def _compared_columns(query: exp.Expression) -> list[exp.Column]:
    """Columns whose values a query compares: operands of comparisons and LIKE, keys of GROUP
    BY, ORDER BY and windows, projections of SELECT DISTINCT."""
    out: list[exp.Column] = []
    for node in query.find_all(*_COMPARISONS, exp.Like, exp.ILike, exp.Group, exp.Order):
        out.extend(node.find_all(exp.Column))
    for window in query.find_all(exp.Window):
        for part in (*(window.args.get("partition_by") or []), window.args.get("order")):
            if part is not None:
                out.extend(part.find_all(exp.Column))
    for select in query.find_all(exp.Select):
        if select.args.get("distinct"):
            for projection in select.selects:
                out.extend(projection.find_all(exp.Column))
    return out


def _collation_meaning(collation: str) -> str:
    """What a MySQL/MariaDB collation name says about comparisons (``_ci``, ``_ai``)."""
    parts = collation.split("_")
    case = "case-insensitive" if "ci" in parts else "case-sensitive"
    return f"{case}, accent-insensitive" if "ai" in parts else case


MOD_RULE = Rule(
    exp.Mod,
    guard=_nonzero_literal,
    name="modulo by a non-zero literal",
    note="modulo by zero is NULL there and an error in the federated dialect",
)


def _average_as_sum_over_count(node: exp.Expression) -> exp.Expression:
    """PostgreSQL's AVG of a double keeps a sum of squares that overflows from |x| > 1e154 (an
    error, where the mean itself is fine): such an AVG goes as SUM / NULLIF(COUNT, 0)."""
    if not node.meta.get("float") or isinstance(node.parent, exp.Window):
        return node
    argument = node.this
    count = exp.Nullif(this=exp.Count(this=argument.copy()), expression=exp.Literal.number(0))
    return exp.Div(this=exp.Sum(this=argument.copy()), expression=count)


def _rows_parameter(node: exp.Expression) -> bool:
    """An ``unnest`` of array parameters cast to their types: rows the executor sends."""
    return all(
        isinstance(a, exp.Cast) and isinstance(a.this, exp.Placeholder) and a.to.is_type("array")
        for a in node.expressions
    )


POSTGRES = RELATIONAL.extend(
    "postgres",
    [
        *rules_for_classes(
            *WINDOWS, *DIVISION, exp.ILike, exp.DateTrunc, exp.TimestampTrunc, exp.RegexpLike
        ),
        *PGVECTOR,
        Rule(exp.Avg, write=_average_as_sum_over_count, name="AVG of a double as SUM / COUNT"),
        Rule(exp.Unnest, guard=_rows_parameter, name="rows parameter: unnest of typed arrays"),
    ],
    # rows_parameter: rows sent as one typed array parameter per column (federator.plan.ship).
    # correlated_subquery: PostgreSQL plans its own subqueries (indexed nested loops), so a
    # query it runs whole goes as written, not as the optimizer decorrelated it.
    # partial_aggregate: a GROUP BY of its rows may be pushed below a cross-source join
    # (federator.plan.partial_agg); group_by_bytes: strings group and compare by code point.
    {
        "window",
        "bind_join",
        "vector_search",
        "correlated_subquery",
        "partial_aggregate",
        "group_by_bytes",
        "rows_parameter",
    },
)
MYSQL = RELATIONAL.extend(
    "mysql",
    [
        Rule(
            exp.Join,
            guard=_not_full_join,
            name="join without FULL or ASOF",
            note="MySQL has no FULL JOIN",
        ),
        MOD_RULE,
        *rules_for_classes(*WINDOWS),
    ],
    {"window", "bind_join", "partial_aggregate"},
)


def _one_row_at_most(node: exp.Expression) -> bool:
    return not may_return_rows(node)


SQLITE = RELATIONAL.extend(
    "sqlite",
    [
        Rule(exp.Join, guard=_not_full_join, name="join without FULL or ASOF"),
        Rule(
            exp.Subquery,
            guard=_one_row_at_most,
            name="subquery (a scalar one of one row at most)",
            note="SQLite answers a scalar subquery of several rows with the first, not an error",
        ),
        MOD_RULE,
        Rule(
            exp.Div,
            guard=_sqlite_division,
            name="division by a non-zero literal",
            note="division by zero is NULL on SQLite and an error in the federated dialect",
        ),
    ],
    {"bind_join"},
)
DUCKDB_FILES = RELATIONAL.extend(
    "files",
    [
        *rules_for_classes(*WINDOWS, exp.ILike, exp.DateTrunc, exp.TimestampTrunc, exp.RegexpLike),
        MOD_RULE,
        Rule(
            exp.Div,
            guard=_duckdb_division,
            name="non-integer division by a non-zero literal",
            note="DuckDB divides integers as doubles and by zero gives NULL or inf",
        ),
    ],
    {"window", "bind_join", "partial_aggregate", "group_by_bytes"},
)

for _kind, _rules in {
    "postgres": POSTGRES,
    "mysql": MYSQL,
    "sqlite": SQLITE,
    "files": DUCKDB_FILES,
    "features": DUCKDB_FILES,  # feature views' offline copies: a files source
}.items():
    register(_kind, _rules)
