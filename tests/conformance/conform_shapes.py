"""The conformance catalog: query shapes written once in federated SQL.

``{p}`` is the people table and ``{o}`` the orders table of whichever source kinds a cell
puts them on (see conform_data). The truth runs the same text on DuckDB over the tables loaded
directly (``{p}`` → ``people``), except where DuckDB's own semantics differ from the federated
dialect's (integer division): those shapes carry a ``truth`` text written for DuckDB by hand.

Ordered shapes order by a total key (ties broken by an id), so the order is the truth's too.
"""

# ruff: noqa: E501  (one shape per line reads as a catalog; SQL is not wrapped)
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Shape:
    name: str
    sql: str
    ordered: bool = False
    truth: str | None = None  # DuckDB text where the federated semantics differ from DuckDB's
    error: str | None = None  # the truth is an error whose message contains this
    params: tuple[tuple[str, object], ...] = ()  # bound parameters (the truth: literals)

    @property
    def tables(self) -> set[str]:
        return {t for t in ("p", "o") if "{" + t + "}" in self.sql}

    def text(self, p: str, o: str) -> str:
        return self.sql.format(p=p, o=o)

    def truth_text(self) -> str:
        return (self.truth or self.sql).format(p="people", o="orders")


SHAPES: list[Shape] = [
    # ---- filters -------------------------------------------------------------------------
    Shape("filter_eq_int", "SELECT id FROM {p} WHERE n = 10"),
    Shape("filter_neq_3vl", "SELECT id FROM {p} WHERE n <> 10"),
    Shape("filter_range", "SELECT id FROM {p} WHERE n >= 0 AND n < 100"),
    Shape("filter_is_null", "SELECT id FROM {p} WHERE name IS NULL OR score IS NULL"),
    Shape("filter_is_not_null", "SELECT id FROM {p} WHERE city IS NOT NULL AND x IS NOT NULL"),
    Shape("filter_not_3vl", "SELECT id FROM {p} WHERE NOT (n > 5)"),
    Shape("filter_or_null", "SELECT id FROM {p} WHERE n > 100 OR x < 0"),
    Shape("filter_string_eq", "SELECT id FROM {p} WHERE name = 'bob'"),
    Shape("filter_empty_string", "SELECT id FROM {p} WHERE city = ''"),
    Shape("filter_unicode", "SELECT id FROM {p} WHERE name = 'Zoë' OR city = 'Zürich'"),
    Shape("filter_like_prefix", "SELECT id FROM {p} WHERE name LIKE 'a%'"),
    Shape("filter_like_underscore", "SELECT id FROM {p} WHERE name LIKE '_ob'"),
    Shape("filter_like_case", "SELECT id FROM {p} WHERE name LIKE 'b%' OR name NOT LIKE '%o%'"),
    Shape("filter_not_like", "SELECT id FROM {p} WHERE name NOT LIKE '%e%'"),
    Shape("filter_in_list", "SELECT id FROM {p} WHERE city IN ('Paris', 'Lima')"),
    Shape("filter_in_with_null", "SELECT id FROM {p} WHERE n IN (3, NULL, 7)"),
    Shape("filter_not_in_with_null", "SELECT id FROM {p} WHERE n NOT IN (3, NULL)"),
    Shape("filter_not_in_list", "SELECT id FROM {p} WHERE n NOT IN (3, 7, 10)"),
    Shape("filter_between", "SELECT id FROM {p} WHERE score BETWEEN 0 AND 12.5"),
    Shape("filter_decimal", "SELECT id FROM {p} WHERE score > 12.49 AND score < 1000.01"),
    Shape("filter_double_extreme", "SELECT id FROM {p} WHERE x > 1e299 OR x < 0"),
    Shape("filter_int_extreme", "SELECT id FROM {p} WHERE n = 2147483647 OR n = -2147483648"),
    Shape(
        "filter_date_range",
        "SELECT id FROM {p} WHERE born >= DATE '1990-01-01' AND born < DATE '2001-01-01'",
    ),
    Shape(
        "filter_timestamp_range",
        "SELECT id FROM {p} WHERE seen >= TIMESTAMP '2024-01-01 09:00:00' AND seen < TIMESTAMP '2024-01-02 18:00:00'",
    ),
    Shape("filter_bool", "SELECT id FROM {p} WHERE active"),
    Shape("filter_bool_not", "SELECT id FROM {p} WHERE NOT active"),
    # ---- projections ---------------------------------------------------------------------
    Shape(
        "project_arith",
        "SELECT id, n + 1 AS a, score * 2 AS b, x - 1 AS c FROM {p} WHERE n BETWEEN -5 AND 100",
    ),
    Shape(
        "project_case",
        "SELECT id, CASE WHEN n > 5 THEN 'big' WHEN n IS NULL THEN 'none' ELSE 'small' END AS k FROM {p}",
    ),
    Shape(
        "project_coalesce",
        "SELECT id, COALESCE(name, city, '?') AS label, COALESCE(n, 0) AS n0 FROM {p}",
    ),
    Shape("project_nullif", "SELECT id, NULLIF(n, 10) AS v FROM {p}"),
    Shape(
        "project_string_funcs",
        "SELECT id, UPPER(name) AS u, LOWER(city) AS l, LENGTH(name) AS len FROM {p}",
    ),
    Shape(
        "project_substring_concat",
        "SELECT id, SUBSTRING(name, 1, 2) AS s, name || '-' || city AS c FROM {p}",
    ),
    Shape("project_cast_int_text", "SELECT id, CAST(n AS TEXT) AS t FROM {p} WHERE n IS NOT NULL"),
    Shape("project_cast_text_int", "SELECT id, CAST('42' AS INTEGER) + id AS v FROM {p}"),
    Shape(
        "project_abs_round",
        "SELECT id, ABS(n) AS a, ROUND(score) AS r FROM {p} WHERE n BETWEEN -5 AND 100",
    ),
    Shape("distinct", "SELECT DISTINCT city FROM {p}"),
    Shape("distinct_multi", "SELECT DISTINCT name, n FROM {p}"),
    # ---- aggregates ----------------------------------------------------------------------
    Shape("agg_count_star", "SELECT count(*) AS c FROM {p}"),
    Shape(
        "agg_all",
        "SELECT count(n) AS c, sum(n) AS s, min(score) AS lo, max(score) AS hi, avg(x) AS m FROM {p} WHERE n BETWEEN -5 AND 100",
    ),
    Shape(
        "agg_empty_input",
        "SELECT count(*) AS c, sum(n) AS s, max(name) AS m FROM {p} WHERE n > 1000 AND n < 2000",
    ),
    Shape("agg_group_by", "SELECT city, count(*) AS c, sum(score) AS s FROM {p} GROUP BY city"),
    Shape(
        "agg_count_distinct", "SELECT count(DISTINCT city) AS c, count(DISTINCT n) AS d FROM {p}"
    ),
    Shape("agg_having", "SELECT n, count(*) AS c FROM {p} GROUP BY n HAVING count(*) > 1"),
    Shape("agg_group_null_key", "SELECT name, max(id) AS m FROM {p} GROUP BY name"),
    # ---- ordering ------------------------------------------------------------------------
    Shape(
        "order_limit", "SELECT id, n FROM {p} ORDER BY n DESC NULLS LAST, id LIMIT 5", ordered=True
    ),
    Shape("order_nulls_first", "SELECT id, n FROM {p} ORDER BY n NULLS FIRST, id", ordered=True),
    Shape("order_offset", "SELECT id FROM {p} ORDER BY id LIMIT 4 OFFSET 3", ordered=True),
    Shape(
        "order_desc_default_nulls",
        "SELECT id, score FROM {p} ORDER BY score DESC, id",
        ordered=True,
    ),
    Shape(
        "order_by_expression",
        "SELECT id FROM {p} ORDER BY COALESCE(n, 0) % 4 DESC, id",
        ordered=True,
    ),
    # ---- joins ---------------------------------------------------------------------------
    Shape("join_inner", "SELECT p.id, o.oid FROM {p} p JOIN {o} o ON o.pid = p.id"),
    Shape("join_left", "SELECT p.id, o.oid FROM {p} p LEFT JOIN {o} o ON o.pid = p.id"),
    Shape("join_right", "SELECT p.id, o.oid FROM {p} p RIGHT JOIN {o} o ON o.pid = p.id"),
    Shape("join_full", "SELECT p.id, o.oid FROM {p} p FULL JOIN {o} o ON o.pid = p.id"),
    Shape(
        "join_filter_both",
        "SELECT p.name, o.amount FROM {p} p JOIN {o} o ON o.pid = p.id WHERE p.n > 0 AND o.qty >= 2",
    ),
    Shape(
        "join_aggregate",
        "SELECT p.city, count(*) AS c, sum(o.amount) AS s FROM {p} p JOIN {o} o ON o.pid = p.id GROUP BY p.city",
    ),
    Shape(
        "join_non_equi", "SELECT p.id, o.oid FROM {p} p JOIN {o} o ON o.qty > p.n AND o.pid = p.id"
    ),
    Shape(
        "join_order_limit",
        "SELECT p.id, o.oid, o.amount FROM {p} p JOIN {o} o ON o.pid = p.id ORDER BY o.amount DESC NULLS LAST, o.oid LIMIT 5",
        ordered=True,
    ),
    # ---- subqueries ----------------------------------------------------------------------
    Shape("semi_in", "SELECT id FROM {p} WHERE id IN (SELECT pid FROM {o} WHERE qty > 1)"),
    Shape("anti_not_in_null", "SELECT id FROM {p} WHERE id NOT IN (SELECT pid FROM {o})"),
    Shape(
        "anti_not_in_no_null",
        "SELECT id FROM {p} WHERE id NOT IN (SELECT pid FROM {o} WHERE pid IS NOT NULL)",
    ),
    Shape(
        "semi_exists_correlated",
        "SELECT id FROM {p} p WHERE EXISTS (SELECT 1 FROM {o} o WHERE o.pid = p.id AND o.amount > 5)",
    ),
    Shape(
        "anti_not_exists_correlated",
        "SELECT id FROM {p} p WHERE NOT EXISTS (SELECT 1 FROM {o} o WHERE o.pid = p.id)",
    ),
    Shape("scalar_subquery_agg", "SELECT id FROM {p} WHERE score > (SELECT avg(amount) FROM {o})"),
    Shape(
        "scalar_subquery_correlated",
        "SELECT p.id, (SELECT count(*) FROM {o} o WHERE o.pid = p.id) AS c FROM {p} p",
    ),
    Shape(
        "scalar_subquery_one_row",
        "SELECT id FROM {p} WHERE id = (SELECT pid FROM {o} WHERE oid = 102)",
    ),
    Shape(
        "scalar_subquery_many_rows",
        "SELECT id FROM {p} WHERE id = (SELECT pid FROM {o} WHERE oid < 103)",
        error="more than one row|more than 1 row",
    ),
    # ---- CTEs, set operations, windows ---------------------------------------------------
    Shape(
        "cte",
        "WITH big AS (SELECT id, n FROM {p} WHERE n >= 7) SELECT b.id FROM big b WHERE b.n < 100",
    ),
    Shape(
        "cte_join",
        "WITH t AS (SELECT pid, sum(qty) AS q FROM {o} GROUP BY pid) SELECT p.id, t.q FROM {p} p JOIN t ON t.pid = p.id",
    ),
    Shape("union_all", "SELECT city AS v FROM {p} UNION ALL SELECT note FROM {o}"),
    Shape("union", "SELECT city AS v FROM {p} UNION SELECT note FROM {o}"),
    Shape("intersect", "SELECT id FROM {p} INTERSECT SELECT pid FROM {o}"),
    Shape("except", "SELECT id FROM {p} EXCEPT SELECT pid FROM {o}"),
    Shape(
        "window_row_number",
        "SELECT id, row_number() OVER (PARTITION BY city ORDER BY id) AS r FROM {p}",
    ),
    Shape(
        "window_rank_sum",
        "SELECT id, rank() OVER (ORDER BY n DESC NULLS LAST) AS r, sum(score) OVER (PARTITION BY city) AS s FROM {p}",
    ),
    # ---- one semantics per construct (issue 19 item 5) -------------------------------------
    Shape(
        "int_division",
        "SELECT id, id / 2 AS h, n / 3 AS t FROM {p} WHERE n BETWEEN -5 AND 100",
        truth="SELECT id, CAST(trunc(id / 2) AS BIGINT) AS h, CAST(trunc(n / 3) AS BIGINT) AS t"
        " FROM {p} WHERE n BETWEEN -5 AND 100",
    ),
    Shape(
        "join_int_division",
        "SELECT o.oid, p.id / 2 AS h FROM {p} p JOIN {o} o ON o.pid = p.id",
        truth="SELECT o.oid, CAST(trunc(p.id / 2) AS BIGINT) AS h FROM {p} p JOIN {o} o"
        " ON o.pid = p.id",
    ),
    Shape(
        "param_int_division",
        "SELECT id, n / :d AS h, :x / 2 AS g, :x % 4 AS m FROM {p} WHERE n BETWEEN -5 AND 100",
        truth="SELECT id, CAST(trunc(n / 2) AS BIGINT) AS h, -3 AS g, -3 AS m FROM {p}"
        " WHERE n BETWEEN -5 AND 100",
        params=(("d", 2), ("x", -7)),
    ),
    Shape(
        "param_float_division",
        "SELECT id, n / :d AS h, :x / 2 AS g FROM {p} WHERE n BETWEEN -5 AND 100",
        truth="SELECT id, n / 2.0 AS h, -3.5 AS g FROM {p} WHERE n BETWEEN -5 AND 100",
        params=(("d", 2.0), ("x", -7.0)),
    ),
    Shape(
        "join_param_int_division",
        "SELECT o.oid, o.qty / :d AS h FROM {p} p JOIN {o} o ON o.pid = p.id WHERE p.n > :lo",
        truth="SELECT o.oid, CAST(trunc(o.qty / 3) AS BIGINT) AS h FROM {p} p JOIN {o} o"
        " ON o.pid = p.id WHERE p.n > 0",
        params=(("d", 3), ("lo", 0)),
    ),
    Shape("decimal_division", "SELECT id, score / 4 AS q FROM {p} WHERE score BETWEEN -10 AND 100"),
    Shape(
        "division_by_zero",
        "SELECT id, 10 / (n - n) AS v FROM {p} WHERE n = 10",
        error="division by zero",
    ),
]
