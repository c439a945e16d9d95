"""Optimizer passes: sqlglot's rewrites over the query, with the catalog as schema.

Passes follow sqlglot's convention: the tree is copied once when planning starts, and every
pass after that mutates it in place and returns it.

>>> from federator.plan.passes import pass_names
>>> pass_names()[:2]
('qualify', 'pushdown_projections')
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.eliminate_ctes import eliminate_ctes
from sqlglot.optimizer.eliminate_joins import eliminate_joins
from sqlglot.optimizer.merge_subqueries import merge_subqueries
from sqlglot.optimizer.normalize import normalize
from sqlglot.optimizer.optimize_joins import optimize_joins
from sqlglot.optimizer.pushdown_predicates import pushdown_predicates
from sqlglot.optimizer.pushdown_projections import pushdown_projections
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.simplify import simplify
from sqlglot.optimizer.unnest_subqueries import unnest_subqueries
from sqlglot.schema import MappingSchema

from federator.adapters.base import TableInfo
from federator.catalog import arrow_to_sql_type
from federator.errors import (
    AmbiguousColumnError,
    BindError,
    FederatorError,
    UnknownColumnError,
    UnsupportedError,
)
from federator.sql.dialect import (
    Federated,
    mark_float_averages,
    mark_integer_division,
    may_return_rows,
)


def _qualify(expression: exp.Expression, **kwargs: object) -> exp.Expression:
    return qualify(
        expression,
        schema=kwargs["schema"],
        dialect=Federated,
        validate_qualify_columns=True,
        quote_identifiers=False,
        identify=False,
    )


# eliminate_subqueries is left out on purpose: it turns derived tables into CTEs, and derived
# tables are what the splitter pushes down whole.
PASSES: tuple[Callable[..., exp.Expression], ...] = (
    _qualify,
    lambda e, **k: pushdown_projections(e),
    lambda e, **k: normalize(e),
    lambda e, **k: unnest_keeping_scalars(e),
    lambda e, **k: _asof_as_outer(pushdown_predicates, e, dialect=Federated),
    lambda e, **k: _asof_as_outer(optimize_joins, e),
    lambda e, **k: merge_subqueries(e),
    lambda e, **k: eliminate_joins(e),
    lambda e, **k: eliminate_ctes(e),
    lambda e, **k: simplify(e, dialect=Federated),
)
PASS_NAMES = (
    "qualify",
    "pushdown_projections",
    "normalize",
    "unnest_subqueries",
    "pushdown_predicates",
    "optimize_joins",
    "merge_subqueries",
    "eliminate_joins",
    "eliminate_ctes",
    "simplify",
)


def pass_names() -> tuple[str, ...]:
    return PASS_NAMES


def unnest_keeping_scalars(expression: exp.Expression) -> exp.Expression:
    """sqlglot's ``unnest_subqueries``, except for scalar subqueries that may return more than
    one row: those stay subqueries, so the engine that runs them raises "more than one row" as
    SQL requires (unnested, they became joins that returned one row per subquery row).

    >>> from sqlglot import parse_one
    >>> q = parse_one("SELECT a FROM x WHERE a = (SELECT b FROM y)")
    >>> unnest_keeping_scalars(q).sql()
    'SELECT a FROM x WHERE a = (SELECT b FROM y)'
    """
    kept = [s for s in expression.find_all(exp.Subquery) if may_return_rows(s)]
    stand_ins = []
    for i, subquery in enumerate(kept):
        stand_in = exp.Anonymous(this=f"__fed_scalar_{i}")  # unnest leaves calls alone
        subquery.replace(stand_in)
        stand_ins.append(stand_in)
    expression = unnest_subqueries(expression)
    for stand_in, subquery in zip(stand_ins, kept, strict=True):
        stand_in.replace(subquery)
    return expression


def _asof_as_outer(
    run: Callable[..., exp.Expression], tree: exp.Expression, **kwargs: Any
) -> exp.Expression:
    """Run a sqlglot pass that treats an inner ``ASOF JOIN`` as a plain inner join as if it
    were a LEFT JOIN: a WHERE filter on its right side must stay after the as-of match (in its
    ON it would pick an older row instead of dropping the row), and it is not reordered.

    >>> from sqlglot import parse_one
    >>> q = parse_one("SELECT * FROM l ASOF JOIN f ON l.k = f.k AND l.t >= f.t WHERE f.v > 0")
    >>> _asof_as_outer(pushdown_predicates, q).sql()
    'SELECT * FROM l ASOF JOIN f ON f.k = l.k AND f.t <= l.t WHERE f.v > 0'
    """
    for join in tree.find_all(exp.Join):
        if join.method.upper() == "ASOF" and not join.side:
            join.set("side", "LEFT")
            join.meta["asof_inner"] = True
    tree = run(tree, **kwargs)
    for join in tree.find_all(exp.Join):
        if join.meta.pop("asof_inner", False):
            join.set("side", None)
    return tree


def optimize(
    tree: exp.Query,
    schema: MappingSchema,
    tables: Iterable[TableInfo],
    params: Mapping[str, Any] | None = None,
) -> exp.Query:
    """Run the optimizer passes; unknown columns become :class:`UnknownColumnError`.
    ``params``: the values whose types decide which divisions are of integers."""
    try:
        for run in PASSES:
            tree = run(tree, schema=schema)  # type: ignore[assignment]
        mark_integer_division(tree, schema, params)
        mark_float_averages(tree, schema)
    except OptimizeError as e:
        raise _optimize_error(str(e), tree, list(tables)) from None
    return tree


def _optimize_error(message: str, tree: exp.Query, tables: list[TableInfo]) -> FederatorError:
    """The typed error for one of sqlglot's optimizer messages."""
    found = re.search(r"Column '([^']+)' could not be resolved|Unknown column: ([\w.]+)", message)
    if found:
        name = found.group(1) or found.group(2)
        holders = _tables_having(name, tree, tables)
        if len(holders) > 1:
            return AmbiguousColumnError(name, [f"{h}.{name}" for h in holders])
        known = sorted({f.name for info in tables for f in info.schema})
        return UnknownColumnError(name, known)
    reused = re.search(r"Alias already used: (\w+)", message)
    if reused:
        return BindError(
            f"table name {reused.group(1)!r} is used more than once in one FROM clause;"
            " give each an alias (FROM a.t AS x JOIN b.t AS y)"
        )
    return UnsupportedError(f"cannot plan this query: {message}")


def _tables_having(column: str, tree: exp.Query, tables: list[TableInfo]) -> list[str]:
    """Names (aliases) of the query's tables that have ``column``, case-insensitively."""
    by_name = {info.ref.name.lower(): info for info in tables}
    holders = []
    for table in tree.find_all(exp.Table):
        info = by_name.get(table.name.lower())
        if info and column.lower() in (f.name.lower() for f in info.schema):
            holders.append(table.alias_or_name)
    return sorted(set(holders))


def sqlglot_schema(
    tables: Iterable[TableInfo], folded_sources: Iterable[str] = ()
) -> MappingSchema:
    """The catalog as sqlglot's schema for the qualify and annotate passes.

    Names are kept exactly as the servers spell them (``normalize=False``): the query's own
    identifiers were already folded the PostgreSQL way (unquoted → lower case). Sources whose
    column names are case-insensitive (MySQL, SQLite, DuckDB) list their columns in lower
    case, so ``userid`` finds ``UserId`` there; the server reads either spelling.
    """
    folded = set(folded_sources)
    out: dict[str, dict[str, dict[str, dict[str, str]]]] = {}
    for info in tables:
        cols = {
            (f.name.lower() if info.source in folded else f.name): arrow_to_sql_type(f.type)
            for f in info.schema
        }
        out.setdefault(info.source, {}).setdefault(info.ref.schema, {})[info.ref.name] = cols
    return MappingSchema(out, dialect=Federated, normalize=False)
