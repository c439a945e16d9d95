"""The federated dialect: PostgreSQL's syntax, registered under the name ``federated``.

It adds pgvector's similarity operators, read as their own expressions (out of the box sqlglot
reads ``<=>`` as MySQL's null-safe equality and cannot read ``<#>`` at all):

=====================  ==========================  =====================================
operator / function    expression                  meaning
=====================  ==========================  =====================================
``a <-> b``            :class:`L2Distance`         Euclidean distance
``a <=> b``            :class:`CosineDistance`     cosine distance (1 - cosine similarity)
``a <#> b``            :class:`NegInnerProduct`    negative inner product
``l2_distance(a, b)``  :class:`L2Distance`         same as ``<->``
``cosine_distance``    :class:`CosineDistance`     same as ``<=>``
``inner_product``      :class:`InnerProduct`       inner product (``-(a <#> b)``)
=====================  ==========================  =====================================

The query vector is a bound parameter (``:q`` with a list, numpy array or torch tensor, see
:func:`vector_params`) or a ``'[1, 2, 3]'`` literal.

>>> parse("SELECT a FROM pg.t WHERE b = :b").sql(dialect="federated")
'SELECT a FROM pg.t WHERE b = :b'
>>> q = parse("SELECT id FROM m.items ORDER BY emb <=> :q LIMIT 5")
>>> type(q.args["order"].expressions[0].this).__name__
'CosineDistance'
>>> q.sql(dialect="federated")
'SELECT id FROM m.items ORDER BY emb <=> :q LIMIT 5'
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar

from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import ParseError, TokenError
from sqlglot.generator import Generator
from sqlglot.tokens import TokenType

from federator.errors import ParameterError, SQLSyntaxError, UnsupportedError, clip
from federator.sql.depth import check_nesting, nesting_room

# ``<#>`` needs a token of its own; this one is unused by PostgreSQL's tokenizer and parser.
_NEG_IP_TOKEN = TokenType.DCOLONQMARK


class VectorDistance(exp.Expression, exp.Binary):
    """Base of the vector similarity expressions: ``this`` and ``expression`` are vectors.

    ``metric`` names the measure (``l2``, ``cosine``, ``neg_ip``, ``ip``); ``operator`` is the
    pgvector operator, or None where pgvector only has a function; ``function`` is pgvector's
    function name. Smaller is nearer for every metric except ``ip``.
    """

    metric: ClassVar[str] = ""
    operator: ClassVar[str | None] = None
    function: ClassVar[str] = ""
    ascending: ClassVar[bool] = True  # ORDER BY … ASC gives nearest first


class L2Distance(VectorDistance):
    metric, operator, function = "l2", "<->", "l2_distance"


class CosineDistance(VectorDistance):
    metric, operator, function = "cosine", "<=>", "cosine_distance"


class NegInnerProduct(VectorDistance):
    metric, operator, function = "neg_ip", "<#>", "negative_inner_product"


class InnerProduct(VectorDistance):
    metric, operator, function, ascending = "ip", None, "inner_product", False


VECTOR_OPS: tuple[type[VectorDistance], ...] = (
    L2Distance,
    CosineDistance,
    NegInnerProduct,
    InnerProduct,
)


def _vector_sql(self: Any, expression: VectorDistance) -> str:
    """pgvector's spelling: the operator where there is one, else the function.

    PostgreSQL binds user-defined operators looser than + and -, sqlglot's tree does not say
    so: arithmetic around or inside the operator is parenthesized explicitly."""
    if expression.operator is None:
        return self.func(expression.function, expression.this, expression.expression)
    left, right = (
        f"({self.sql(e)})" if _arithmetic(e) else self.sql(e)
        for e in (expression.this, expression.expression)
    )
    text = f"{left} {expression.operator} {right}"
    return f"({text})" if _arithmetic(expression.parent) else text


def _arithmetic(node: exp.Expression | None) -> bool:
    return isinstance(node, (exp.Binary, exp.Neg)) and not isinstance(
        node, (exp.Predicate, exp.Connector, VectorDistance)
    )


def _builder(cls: type[VectorDistance]) -> Any:
    def build(args: list[exp.Expression]) -> exp.Expression:
        if len(args) != 2:
            raise ParseError(f"{cls.function}() takes two vectors, got {len(args)} argument(s)")
        return cls(this=args[0], expression=args[1])

    return build


class Federated(Postgres):
    """PostgreSQL syntax with ``:name`` parameters and pgvector's operators."""

    class Tokenizer(Postgres.Tokenizer):
        KEYWORDS = {**Postgres.Tokenizer.KEYWORDS, "<#>": _NEG_IP_TOKEN}

    class Parser(Postgres.Parser):
        # PostgreSQL gives user-defined operators one precedence; sqlglot already reads <->
        # at the level of * and /, so all three sit there.
        EQUALITY = {k: v for k, v in Postgres.Parser.EQUALITY.items() if k != TokenType.NULLSAFE_EQ}
        FACTOR = {
            **Postgres.Parser.FACTOR,
            TokenType.LR_ARROW: L2Distance,
            TokenType.NULLSAFE_EQ: CosineDistance,
            _NEG_IP_TOKEN: NegInnerProduct,
        }
        FUNCTIONS = {
            **Postgres.Parser.FUNCTIONS,
            "L2_DISTANCE": _builder(L2Distance),
            "COSINE_DISTANCE": _builder(CosineDistance),
            "INNER_PRODUCT": _builder(InnerProduct),
            "NEGATIVE_INNER_PRODUCT": _builder(NegInnerProduct),
        }

    class Generator(Postgres.Generator):
        TRANSFORMS = {**Postgres.Generator.TRANSFORMS, **dict.fromkeys(VECTOR_OPS, _vector_sql)}

        def placeholder_sql(self, expression: exp.Placeholder) -> str:
            return f":{expression.name}" if expression.name else "?"


# Adapters render fragments in sqlglot's own "postgres" dialect (pgvector's home), and messages
# use sqlglot's default one: teach both our expressions. Only entries for classes defined here.
for _cls in VECTOR_OPS:
    Postgres.Generator.TRANSFORMS.setdefault(_cls, _vector_sql)
    Generator.TRANSFORMS.setdefault(_cls, _vector_sql)


# ---- scalar subqueries -----------------------------------------------------------------------
_NOT_SCALAR_PARENTS = (
    *(exp.From, exp.Join, exp.Lateral, exp.In, exp.Exists, exp.Any, exp.All),
    *(exp.SetOperation, exp.CTE, exp.Subquery),
)


def is_scalar_subquery(node: exp.Expression) -> bool:
    """A subquery used as a value (not a table, IN/EXISTS operand or set-operation branch)."""
    return isinstance(node, exp.Subquery) and not isinstance(
        node.parent,
        _NOT_SCALAR_PARENTS,
    )


def may_return_rows(node: exp.Expression) -> bool:
    """A scalar subquery that is not provably at most one row: one row is guaranteed by an
    aggregate without GROUP BY, or by LIMIT 1."""
    if not is_scalar_subquery(node):
        return False
    query = node.this
    if not isinstance(query, exp.Select):
        return True
    limit = query.args.get("limit")
    if limit is not None and limit.expression is not None and limit.expression.name == "1":
        return False
    grouped = query.args.get("group") is not None or query.args.get("having") is not None
    aggregated = bool(query.selects) and all(
        s.find(exp.AggFunc) is not None and s.find(exp.Window) is None for s in query.selects
    )
    return grouped or not aggregated


# ---- division -------------------------------------------------------------------------------
def mark_integer_division(
    tree: exp.Expression, schema: Any, params: Mapping[str, Any] | None = None
) -> exp.Expression:
    """Mark each ``/`` whose operands are both integers (arg ``integer``), from the types of
    ``schema``'s columns and of the ``params`` values: the federated dialect divides integers
    as PostgreSQL does (an integer, truncated toward zero), and the residual needs to know
    which divisions those are once the columns come from fragments. Marks only; the tree is
    otherwise unchanged.

    >>> q = parse("SELECT t.a / 2 AS h, t.b / 2 AS g, :x / 2 AS p FROM t AS t")
    >>> q = mark_integer_division(q, {"t": {"a": "INT", "b": "DOUBLE"}}, {"x": 7})
    >>> [d.args["integer"] for d in q.find_all(exp.Div)]
    [True, False, True]
    """
    if tree.find(exp.Div) is None:
        return tree
    from sqlglot.optimizer.annotate_types import annotate_types

    typed = tree.copy()
    for node in list(typed.find_all(exp.Placeholder)):
        stand_in = _typed_stand_in((params or {}).get(node.name))
        if stand_in is not None:
            node.replace(stand_in)  # a leaf for a leaf: the walks below stay in step
    typed = annotate_types(typed, schema=schema, dialect=Federated)
    for node, twin in zip(tree.walk(), typed.walk(), strict=True):
        if isinstance(node, exp.Div) and isinstance(twin, exp.Div):
            ints = exp.DataType.INTEGER_TYPES
            node.set("integer", twin.left.is_type(*ints) and twin.right.is_type(*ints))
    return tree


def mark_float_averages(tree: exp.Expression, schema: Any) -> exp.Expression:
    """Mark each ``AVG`` whose argument is a floating-point number (``meta["float"]``), from the
    types of ``schema``'s columns, so a backend rule can rewrite it (PostgreSQL's AVG of a
    double also sums the squares, and fails with "value out of range" from |x| > 1e154).

    >>> q = parse("SELECT AVG(t.a) AS i, AVG(t.b) AS f FROM t AS t")
    >>> q = mark_float_averages(q, {"t": {"a": "INT", "b": "DOUBLE"}})
    >>> [a.meta["float"] for a in q.find_all(exp.Avg)]
    [False, True]
    """
    if tree.find(exp.Avg) is None:
        return tree
    from sqlglot.optimizer.annotate_types import annotate_types

    typed = annotate_types(tree.copy(), schema=schema, dialect=Federated)
    floats = (exp.DataType.Type.DOUBLE, exp.DataType.Type.FLOAT)
    for node, twin in zip(tree.walk(), typed.walk(), strict=True):
        if isinstance(node, exp.Avg) and isinstance(twin, exp.Avg):
            argument = twin.this.this if isinstance(twin.this, exp.Distinct) else twin.this
            node.meta["float"] = bool(argument is not None and argument.is_type(*floats))
    return tree


def param_type_class(value: Any) -> str:
    """What a parameter value's type means to planning: ``int``, ``float`` (any other
    number) or ``other``; plans of one text may differ by it (integer division).

    >>> [param_type_class(v) for v in (7, True, 7.5, "7")]
    ['int', 'other', 'float', 'other']
    """
    if isinstance(value, bool):
        return "other"
    if isinstance(value, numbers.Integral):
        return "int"
    if isinstance(value, numbers.Number):
        return "float"
    return "other"


_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Mod)


def cast_float_params(tree: exp.Expression, params: Mapping[str, Any]) -> exp.Expression:
    """Cast each parameter whose value is a non-integer number to DOUBLE where it is an
    operand of arithmetic: a backend infers an untyped parameter's type from the other operand
    (PostgreSQL took ``n / $1`` with 2.0 as an integer division; the federated dialect divides
    exactly when an operand is not an integer). Mutates and returns ``tree``.

    >>> cast_float_params(parse("SELECT n / :d, n > :d"), {"d": 2.0}).sql()
    'SELECT n / CAST(:d AS DOUBLE), n > :d'
    """
    for node in list(tree.find_all(exp.Placeholder)):
        value_class = param_type_class(params.get(node.name))
        if value_class == "float" and isinstance(node.parent, _ARITHMETIC):
            node.replace(exp.cast(node.copy(), exp.DataType.Type.DOUBLE))
    return tree


def _typed_stand_in(value: Any) -> exp.Expression | None:
    """A literal of the type a parameter value has, for type annotation; None: unknown."""
    kind = param_type_class(value)
    if kind == "int":
        return exp.Literal.number("1")
    if kind == "float":
        return exp.Literal.number("1.5")
    return None


def duckdb_division(node: exp.Div | exp.Mod) -> exp.Expression:
    """``a / b`` (or ``a % b``) as DuckDB must run it for the federated dialect's meaning:
    integer division where ``mark_integer_division`` marked it, and division by zero an error
    (DuckDB alone gives NULL or inf).

    >>> q = parse("SELECT t.a / t.b FROM t AS t")
    >>> q = mark_integer_division(q, {"t": {"a": "INT", "b": "INT"}})
    >>> duckdb_division(q.find(exp.Div)).sql("duckdb")
    "t.a // CASE WHEN t.b = 0 THEN ERROR('division by zero') ELSE t.b END"
    """
    divisor = node.expression
    if isinstance(divisor, exp.Literal) and divisor.is_number and float(divisor.this) != 0:
        guarded: exp.Expression = divisor.copy()
    else:
        guarded = _error_if_zero(divisor)
    if isinstance(node, exp.Mod):
        return exp.Mod(this=node.this.copy(), expression=guarded)
    if node.args.get("integer"):
        return exp.IntDiv(this=node.this.copy(), expression=guarded)
    return exp.Div(this=node.this.copy(), expression=guarded)


def _error_if_zero(divisor: exp.Expression) -> exp.Expression:
    if isinstance(divisor, (exp.Binary, exp.Unary)):
        divisor = exp.paren(divisor, copy=False)
    zero = exp.EQ(this=divisor.copy(), expression=exp.Literal.number(0))
    return exp.Case(
        ifs=[exp.If(this=zero, true=exp.func("error", exp.Literal.string("division by zero")))],
        default=divisor.copy(),
    )


# ---- the residual (DuckDB) ------------------------------------------------------------------
_DUCKDB_FUNCS = {
    "l2": "list_distance",
    "cosine": "list_cosine_distance",
    "neg_ip": "list_negative_inner_product",
    "ip": "list_inner_product",
}


def to_duckdb_vector(node: exp.Expression) -> exp.Expression:
    """A vector expression as DuckDB's list function over DOUBLE[] operands (anything else
    unchanged). Vectors reach the residual as lists or as pgvector text '[1,2,3]'; both cast.

    >>> to_duckdb_vector(parse("SELECT a <=> b").selects[0]).sql("duckdb")
    'LIST_COSINE_DISTANCE(CAST(a AS DOUBLE[]), CAST(b AS DOUBLE[]))'
    """
    if not isinstance(node, VectorDistance):
        return node
    dtype = exp.DataType.build("DOUBLE[]", dialect="duckdb")
    args = [exp.cast(arg.copy(), dtype) for arg in (node.this, node.expression)]
    return exp.Anonymous(this=_DUCKDB_FUNCS[node.metric], expressions=args)


# ---- vector values -------------------------------------------------------------------------
def vector_value(value: Any) -> list[float] | None:
    """A query vector as a list of floats: from a list/tuple of numbers, a numpy array, a torch
    tensor (anything 1-D with ``tolist``), or pgvector text ``'[1,2,3]'``; None if not a vector.

    >>> vector_value("[1, 2.5]")
    [1.0, 2.5]
    """
    if isinstance(value, str):
        text = value.strip()
        if not (text.startswith("[") and text.endswith("]")):
            return None
        try:
            items = json.loads(text)
        except ValueError:
            return None
        return [float(x) for x in items] if all(_is_number(x) for x in items) else None
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # torch tensor
        value = value.detach().cpu()
    if hasattr(value, "tolist") and getattr(value, "ndim", 1) == 1:
        value = value.tolist()
    if isinstance(value, (list, tuple)) and value and all(_is_number(x) for x in value):
        return [float(x) for x in value]
    return None


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def vector_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """Parameters with numpy arrays and torch tensors turned into lists of floats, so every
    driver (and DuckDB in the residual) takes them; other values pass unchanged."""
    out = dict(params)
    for name, value in params.items():
        if hasattr(value, "tolist") and getattr(value, "ndim", None) == 1:
            vec = vector_value(value)
            if vec is None:
                raise ParameterError(f"parameter :{name} is an array but not a vector")
            out[name] = vec
    return out


def vector_text(value: Any) -> str:
    """pgvector's text form of a vector value (what asyncpg sends for a ``::vector`` cast).

    >>> vector_text([1, 2.5])
    '[1.0,2.5]'
    """
    vec = vector_value(value)
    if vec is None:
        raise ParameterError(
            f"not a vector: {clip(repr(value), 60)}; pass a list of numbers, a numpy array, "
            "a torch tensor or '[1.0, 2.0, …]' text"
        )
    return "[" + ",".join(repr(x) for x in vec) + "]"


def parse(sql: str) -> exp.Query:
    """Parse one federated SQL statement; errors carry line and column. A query may nest
    :data:`~federator.sql.depth.MAX_NESTING` levels deep (parentheses, function calls,
    subqueries, CASE); deeper is a :class:`SQLSyntaxError`, never a ``RecursionError``."""
    dialect = Federated()
    try:
        tokens = dialect.tokenize(sql)
        check_nesting(tokens)
        with nesting_room():
            statements = [s for s in dialect.parser().parse(tokens, sql) if s is not None]
    except ParseError as e:
        err = e.errors[0] if e.errors else {}
        raise SQLSyntaxError(
            err.get("description") or str(e), err.get("line"), err.get("col")
        ) from None
    except TokenError as e:
        raise SQLSyntaxError(str(e)) from None
    if len(statements) != 1:
        raise UnsupportedError(f"expected exactly one SQL statement, got {len(statements)}")
    stmt = statements[0]
    if not isinstance(stmt, exp.Query):
        raise UnsupportedError(
            f"only queries (SELECT, WITH, UNION) are supported, not {stmt.key.upper()}"
        )
    _refuse_writes_inside(stmt)
    _refuse_cross_join_conditions(stmt)
    _check_asof_joins(stmt)
    return stmt


def _refuse_cross_join_conditions(query: exp.Query) -> None:
    """``CROSS JOIN t ON …`` is an error in standard SQL (MySQL reads it as an inner join);
    sqlglot's optimizer dropped the ON, which answered a cross product. Refused by name."""
    for join in query.find_all(exp.Join):
        if join.args.get("kind") == "CROSS" and (join.args.get("on") or join.args.get("using")):
            raise SQLSyntaxError(
                f"CROSS JOIN {join.this.sql()} takes no ON or USING condition;"
                " write JOIN … ON … for an inner join"
            )


_ASOF_INEQUALITIES = (exp.GT, exp.GTE, exp.LT, exp.LTE)


def _check_asof_joins(query: exp.Query) -> None:
    """An ``ASOF JOIN`` needs ``ON`` with exactly one time inequality (``l.ts >= f.ts``), the
    rest equalities and filters. ``USING (k, ts)`` is refused by name: the optimizer would
    read its last column as an equality, not as the time to match on."""
    for join in query.find_all(exp.Join):
        if (join.args.get("method") or "").upper() != "ASOF":
            continue
        shown = join.this.sql(dialect=Federated)
        if join.args.get("using"):
            raise UnsupportedError(
                f"ASOF JOIN {shown} USING (…) is not supported; write"
                " ON l.key = f.key AND l.ts >= f.ts"
            )
        on = join.args.get("on")
        conjuncts = list(on.flatten()) if isinstance(on, exp.And) else [on] if on else []
        times = [c for c in conjuncts if isinstance(c, _ASOF_INEQUALITIES)]
        if len(times) != 1:
            raise UnsupportedError(
                f"ASOF JOIN {shown} needs exactly one time inequality in its ON (found"
                f" {len(times)}), as in ON l.key = f.key AND l.ts >= f.ts"
            )


def _refuse_writes_inside(query: exp.Query) -> None:
    """A query that writes somewhere inside (``SELECT … INTO``, a data-modifying CTE) is
    refused before planning: federator only reads."""
    for select in query.find_all(exp.Select):
        into = select.args.get("into")
        if into is not None:
            raise UnsupportedError(
                f"SELECT … INTO {into.this.sql()} writes a table; federator only reads"
                " (drop the INTO clause and write the result yourself)"
            )
    for cte in query.find_all(exp.CTE):
        if not isinstance(cte.this, exp.Query):
            raise UnsupportedError(
                f"the WITH clause {cte.alias!r} runs {cte.this.key.upper()}; only queries"
                " (SELECT, WITH, UNION) are supported, and federator never writes"
            )


def residual_duckdb_sql(residual: exp.Query) -> str:
    """The residual query as DuckDB runs it: ``:name`` parameters as ``$name``, pgvector
    operators as DuckDB's list distance functions.

    >>> print(residual_duckdb_sql(parse("SELECT a FROM f0 WHERE b = :b")))
    SELECT
      a
    FROM f0
    WHERE
      b = $b
    """

    def to_duckdb_param(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Placeholder):
            return exp.Parameter(this=exp.var(node.name))
        if isinstance(node, (exp.Div, exp.Mod)):
            return duckdb_division(node)
        return to_duckdb_vector(node)  # pgvector operators → DuckDB's list_*distance

    return residual.transform(to_duckdb_param).sql(dialect="duckdb", pretty=True)


def exact_distances(metric: str, vectors: Any, q: Any) -> Any:
    """pgvector's distance of each row of ``vectors`` to ``q`` (numpy arrays), by ``metric``.

    >>> import numpy as np
    >>> exact_distances("cosine", np.array([[1.0, 0.0], [0.0, 2.0]]), np.array([1.0, 0.0]))
    array([0., 1.])
    """
    import numpy as np

    if metric == "l2":
        return np.linalg.norm(vectors - q, axis=1)
    dots = vectors @ q
    if metric == "cosine":
        norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(q)
        with np.errstate(invalid="ignore", divide="ignore"):
            return 1.0 - dots / norms
    return -dots if metric == "neg_ip" else dots


def nearest(metric: str, vectors: Any, q: Any, offset: int, limit: int) -> list[tuple[int, float]]:
    """(row, distance) of the rows of ``vectors`` nearest ``q`` by ``metric``, ranks
    ``offset`` to ``offset + limit``: ascending distance, descending for ``ip``; ties by row.

    >>> import numpy as np
    >>> nearest("l2", np.array([[3.0, 0.0], [1.0, 0.0], [2.0, 0.0]]), [0.0, 0.0], 1, 5)
    [(2, 2.0), (0, 3.0)]
    """
    import numpy as np

    distances = exact_distances(metric, vectors, np.asarray(q, dtype=np.float64))
    ranked = -distances if metric == "ip" else distances
    order = np.argsort(ranked, kind="stable")[offset : offset + limit]
    return [(i, float(distances[i])) for i in order.tolist()]
