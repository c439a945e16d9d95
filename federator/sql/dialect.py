"""The federated dialect: PostgreSQL's syntax, registered under the name ``federated``.

Later additions (vector operators, table functions) are declared here, in sqlglot's style.

>>> parse("SELECT a FROM pg.t WHERE b = :b").sql(dialect="federated")
'SELECT a FROM pg.t WHERE b = :b'
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import ParseError, TokenError

from federator.errors import SQLSyntaxError, UnsupportedError


class Federated(Postgres):
    """PostgreSQL syntax with ``:name`` parameters."""

    class Generator(Postgres.Generator):
        TRANSFORMS = {**Postgres.Generator.TRANSFORMS}

        def placeholder_sql(self, expression: exp.Placeholder) -> str:
            return f":{expression.name}" if expression.name else "?"


def parse(sql: str) -> exp.Query:
    """Parse one federated SQL statement; errors carry line and column."""
    try:
        statements = [s for s in sqlglot.parse(sql, read=Federated) if s is not None]
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
    return stmt
