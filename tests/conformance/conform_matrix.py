"""Running the conformance matrix: every shape on every source kind alone and on pairs.

A cell is one shape with ``{p}`` and ``{o}`` placed on sources. Its outcome is ``equal`` (the
truth's answer), ``refused`` (a typed UnsupportedError naming the construct), ``error-ok`` (the
truth is an error too, and federator raised a FederatorError saying the same), ``wrong``
(another answer) or ``crash`` (an untyped exception, or an error where the truth answers).
Where it ran: ``pushed`` (one native request, no residual), ``split`` (fragments + DuckDB
residual).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from typing import Any

from conform_data import rows_of, same_answer
from conform_shapes import SHAPES, Shape

import federator

KINDS = ("pg", "my", "lite", "files", "mongo", "pgv", "kv", "g", "mv", "gb", "qd")
KIND_NAMES = {
    "pg": "PostgreSQL 15",
    "my": "MariaDB",
    "lite": "SQLite",
    "files": "Parquet",
    "mongo": "MongoDB (CongoDB)",
    "pgv": "PostgreSQL 16 + pgvector",
    "kv": "Redis (JSON values by key template)",
    "g": "FalkorDB (label tables)",
    "mv": "Milvus scalar fields (milvus-lite server; decimals as DOUBLE, dates as text)",
    "gb": "FalkorDB over Bolt (the neo4j driver; dates as text)",
    "qd": "Qdrant payload fields (local mode on a folder; decimals as numbers, dates as text)",
}
# people on the first, orders on the second: every kind with PostgreSQL both ways, a few others
PAIRS = (
    ("pg", "my"),
    ("my", "pg"),
    ("pg", "lite"),
    ("files", "pg"),
    ("pg", "mongo"),
    ("mongo", "pg"),
    ("my", "lite"),
    ("lite", "files"),
    ("files", "mongo"),
    ("pgv", "my"),
    ("kv", "pg"),
    ("pg", "kv"),
    ("g", "pg"),
    ("pg", "g"),
)
# every other pair of kinds (people on the first in KINDS order) runs the cross-source shapes
CROSS_SHAPES = frozenset(
    {
        "join_inner",
        "join_left",
        "join_full",
        "join_aggregate",
        "semi_in",
        "anti_not_in_null",
        "anti_not_exists_correlated",
        "scalar_subquery_correlated",
        "union",
        "except",
        "join_param_int_division",
    }
)
ALL_PAIRS = tuple(pair for pair in combinations(KINDS, 2) if pair not in PAIRS)
CONFIGS: dict[str, tuple[str, str]] = {
    **{k: (k, k) for k in KINDS},
    **{f"{a}+{b}": (a, b) for a, b in PAIRS},
    **{f"{a}+{b}": (a, b) for a, b in ALL_PAIRS},
}


@dataclass
class Cell:
    shape: str
    config: str
    outcome: str  # equal | refused | error-ok | wrong | crash
    where: str = ""  # pushed | split | ""
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in ("equal", "refused", "error-ok")


def cells() -> list[tuple[Shape, str]]:
    """Every (shape, config) pair worth running: pairs only for shapes over both tables, the
    pairs beyond PAIRS only for CROSS_SHAPES."""
    out = []
    for shape in SHAPES:
        for name, (a, b) in CONFIGS.items():
            if a != b and len(shape.tables) < 2:
                continue
            if (a, b) in ALL_PAIRS and shape.name not in CROSS_SHAPES:
                continue
            out.append((shape, name))
    return out


def truth_answer(con: Any, shape: Shape) -> list[tuple[Any, ...]] | Exception:
    try:
        return rows_of(con.sql(shape.truth_text()).to_arrow_table())
    except Exception as e:
        return e


def run_cell(fed: federator.Federation, truth: Any, shape: Shape, config: str) -> Cell:
    a, b = CONFIGS[config]
    sql = shape.text(p=f"{a}.people", o=f"{b}.orders")
    want = truth_answer(truth, shape)
    try:
        result = fed.sql(sql, dict(shape.params))
        where = "pushed" if result.plan.residual is None else "split"
        got = rows_of(result.to_arrow())
    except federator.UnsupportedError as e:
        return Cell(shape.name, config, "refused", "", str(e))
    except federator.FederatorError as e:
        if shape.error and any(t in str(e).lower() for t in shape.error.split("|")):
            return Cell(shape.name, config, "error-ok", "", str(e))
        return Cell(shape.name, config, "crash", "", f"{type(e).__name__}: {e}")
    except Exception as e:
        return Cell(shape.name, config, "crash", "", f"{type(e).__name__}: {e}")
    if isinstance(want, Exception) or shape.error:
        return Cell(shape.name, config, "wrong", where, f"answered {got[:5]} where SQL errors")
    if same_answer(got, want, shape.ordered):
        return Cell(shape.name, config, "equal", where)
    return Cell(shape.name, config, "wrong", where, f"got {got[:8]} want {want[:8]}")


# ---- known differences (strict xfails in the suite, listed in docs/conformance.md) -----------
_MYSQL_COLLATION = (
    "MariaDB's default collation (utf8mb4_general_ci) compares strings case- and "
    "accent-insensitively in pushed filters, GROUP BY, DISTINCT and PARTITION BY"
)
_MONGO_DECIMAL = (
    "the CongoDB test server compares and sorts Decimal128 values as strings ('7.10' > "
    "'12.50') and a Decimal128 with a number never (a real MongoDB compares them numerically)"
)
_TEXT_DATES = (
    "the source holds dates and timestamps as ISO text (Milvus and Qdrant payloads have no "
    "date type; FalkorDB's Bolt endpoint crashes sending one): comparing that text with a "
    "DATE/TIMESTAMP is a type error (SourceError: cannot compare VARCHAR and DATE), as it is "
    "on PostgreSQL"
)
KNOWN: dict[tuple[str, str], str] = {
    **{
        (shape, kind): _TEXT_DATES
        for shape in ("filter_date_range", "filter_timestamp_range")
        for kind in ("mv", "gb", "qd")
    },
    **{
        (shape, "my"): _MYSQL_COLLATION
        for shape in (
            "filter_string_eq",
            "filter_not_like",
            "filter_like_case",
            "filter_in_list",
            "distinct",
            "agg_group_by",
            "agg_count_distinct",
            "agg_group_null_key",
            "join_aggregate",
            "union",
            "window_row_number",
            "window_rank_sum",
        )
    },
    **{
        (shape, "mongo"): _MONGO_DECIMAL
        for shape in (
            "filter_between",
            "filter_decimal",
            "agg_all",
            "order_desc_default_nulls",
            "decimal_division",
            "semi_exists_correlated",
        )
    },
    **{
        ("semi_exists_correlated", config): _MONGO_DECIMAL for config in ("pg+mongo", "files+mongo")
    },
    ("project_string_funcs", "pg"): "UPPER/LOWER of non-ASCII letters follow the server's "
    "locale (the test server's is C: ASCII only)",
    ("project_string_funcs", "lite"): "SQLite's UPPER/LOWER change ASCII letters only",
    ("project_string_funcs", "pgv"): "UPPER/LOWER of non-ASCII letters follow the server's "
    "locale (the pgvector test server's is C: ASCII only)",
}
