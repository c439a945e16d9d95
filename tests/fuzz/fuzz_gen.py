"""Differential fuzzing: random federated queries over the conformance data set, each run
through federator and through DuckDB over the same data, answers compared as bags (in order
where the query orders by all its output columns).

Besides the truth, three metamorphic checks need none: ternary partitioning (rows where ``p``,
``NOT p`` and ``p IS NULL`` together are the rows without the filter), the same query with
pushdown disabled (every source a scan, everything in the residual), and with bind joins
forced on and off. Seeded: query ``i`` of seed ``s`` is always the same; every failure carries
the seed, the index and a minimized query.

The generator keeps to what the federated dialect defines identically on every source kind:
numeric and date columns (strings only with IS NULL: MariaDB's collation is a documented
difference), no decimals on MongoDB (CongoDB's Decimal128 comparisons are a known gap).

>>> q = generate(random.Random(1), {"p": "pg", "o": "my"})
>>> "FROM pg.people" in q.sql("people", "orders", "pg", "my")
True
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from conform_data import rows_of, same_answer
from federator.rules import Rule, RuleSet
from sqlglot import exp

import federator

KINDS = ("pg", "my", "lite", "files", "mongo", "pgv", "kv", "g")
# numeric and date columns; decimals left out on MongoDB (see the module docstring)
P_COLS = {"id": "int", "n": "int", "x": "float", "score": "dec", "born": "date"}
O_COLS = {"oid": "int", "pid": "int", "qty": "int", "amount": "dec"}
VALUES = {
    "int": ["0", "1", "3", "7", "10", "-1", "2147483647", "NULL"],
    "float": ["0", "0.5", "-1.5", "1e300", "2.25", "NULL"],
    "dec": ["0", "12.5", "-3.25", "5.55", "1000", "NULL"],
    "date": ["DATE '1990-05-01'", "DATE '2000-01-01'", "DATE '1970-01-01'", "NULL"],
    "str": ["'bob'", "'Bob'", "''", "'Zoë'", "'Paris'", "'alice'", "NULL"],
}
AGGS = ("count", "sum", "min", "max", "avg")


@dataclass
class Query:
    """One generated query in parts, so the minimizer can drop them."""

    select: list[str]
    join: str | None  # "JOIN" | "LEFT JOIN" | None
    where: list[str]  # conjuncts
    group: list[str] = field(default_factory=list)
    order: bool = False  # ORDER BY every output column
    limit: int | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def sql(self, p: str, o: str, p_src: str | None = None, o_src: str | None = None) -> str:
        """The federated text over ``p_src.p`` and ``o_src.o``; without sources, the truth's
        text for DuckDB (integer division spelled out: DuckDB's own ``/`` is a double)."""
        text = self._sql(p, o, p_src, o_src)
        return _integer_ops(text, truth=p_src is None)

    def _sql(self, p: str, o: str, p_src: str | None, o_src: str | None) -> str:
        pt = f"{p_src}.{p}" if p_src else p
        ot = f"{o_src}.{o}" if o_src else o
        text = f"SELECT {', '.join(self.select)} FROM {pt} p"
        if self.join:
            text += f" {self.join} {ot} o ON o.pid = p.id"
        if self.where:
            text += " WHERE " + " AND ".join(f"({c})" for c in self.where)
        if self.group:
            text += " GROUP BY " + ", ".join(self.group)
        if self.order:
            text += " ORDER BY " + ", ".join(str(i + 1) for i in range(len(self.select)))
        if self.limit is not None:
            text += f" LIMIT {self.limit}"
        return text.replace("{o}", ot)

    @property
    def ordered(self) -> bool:
        return self.order


_INT_OP = re.compile(r"I(DIV|MOD)\[([^|\]]+)\|([^\]]+)\]")


def _integer_ops(text: str, truth: bool) -> str:
    """``IDIV[a|b]``/``IMOD[a|b]`` (integer operands) as federated SQL, or as DuckDB must run
    them to mean the same: truncating division, and an error on a zero divisor."""

    def spell(m: re.Match[str]) -> str:
        op, a, b = m.group(1), m.group(2), m.group(3)
        if not truth:
            return f"{a} {'/' if op == 'DIV' else '%'} ({b})"
        value = f"CAST(trunc(({a}) / ({b})) AS BIGINT)" if op == "DIV" else f"({a}) % ({b})"
        return f"CASE WHEN ({b}) = 0 THEN error('division by zero') ELSE {value} END"

    return _INT_OP.sub(spell, text)


def _columns(q_join: bool, kinds: dict[str, str]) -> list[tuple[str, str]]:
    cols = [(f"p.{c}", t) for c, t in P_COLS.items() if not (t == "dec" and kinds["p"] == "mongo")]
    if kinds["p"] != "my":  # MariaDB's case-insensitive collation is a documented difference
        cols += [("p.name", "str"), ("p.city", "str")]
    if q_join:
        cols += [
            (f"o.{c}", t) for c, t in O_COLS.items() if not (t == "dec" and kinds["o"] == "mongo")
        ]
    return cols


def _expression(rng: random.Random, col: str, typ: str) -> str:
    """A projection over ``col``: integer division and modulo (by literals and by an
    expression that can be zero), arithmetic, COALESCE, CASE, string functions."""
    k = rng.choice((2, 3, -4))
    by_type = {
        "int": (
            f"IDIV[{col}|{k}]",
            f"IMOD[{col}|{k}]",
            f"{col} % 1000 + {k}",  # no overflow: it follows the source (documented)
            f"COALESCE({col}, 0) % 1000 * 2",
            f"IDIV[100|{col} - 7]",
            f"CASE WHEN {col} > 3 THEN 'big' WHEN {col} IS NULL THEN 'none' ELSE 'small' END",
        ),
        "float": (f"{col} * 2", f"{col} / {k}", f"COALESCE({col}, -1.0)"),
        "dec": (f"{col} / 4", f"{col} * 2", f"-{col}"),
        "date": (f"COALESCE({col}, DATE '2000-01-01')",),
        # not UPPER/LOWER: non-ASCII case mapping follows the backend's locale (documented)
        "str": (f"LENGTH({col})", f"COALESCE({col}, '?') || '!'", f"SUBSTRING({col}, 1, 2)"),
    }
    return rng.choice(by_type[typ])


def _literal(rng: random.Random, typ: str, params: dict[str, Any]) -> str:
    value = rng.choice(VALUES[typ])
    if typ == "int" and value != "NULL" and rng.random() < 0.15:
        name = f"v{len(params)}"
        params[name] = int(value)
        return f":{name}"
    return value


def _predicate(
    rng: random.Random, cols: list[tuple[str, str]], params: dict[str, Any], depth: int = 0
) -> str:
    roll = rng.random()
    if depth < 2 and roll < 0.25:
        op = rng.choice(("AND", "OR"))
        return (
            f"({_predicate(rng, cols, params, depth + 1)} {op} "
            f"{_predicate(rng, cols, params, depth + 1)})"
        )
    if depth < 2 and roll < 0.32:
        return f"NOT ({_predicate(rng, cols, params, depth + 1)})"
    col, typ = rng.choice(cols)
    kind = rng.random()
    if typ == "str" and kind < 0.2:
        pattern = rng.choice(("'a%'", "'%o%'", "'_ob'", "'%'", "''"))
        return f"{col} {rng.choice(('', 'NOT '))}LIKE {pattern}"
    if kind < 0.5:
        op = rng.choice(("=", "<>", "<", "<=", ">", ">="))
        return f"{col} {op} {_literal(rng, typ, params)}"
    if kind < 0.62:
        return f"{col} IS {rng.choice(('', 'NOT '))}NULL"
    if kind < 0.77:
        items = ", ".join(_literal(rng, typ, params) for _ in range(rng.randint(1, 3)))
        return f"{col} {rng.choice(('', 'NOT '))}IN ({items})"
    if kind < 0.87:
        a, b = sorted(
            (v for v in (rng.choice(VALUES[typ]) for _ in range(2))),
            key=lambda v: v == "NULL",
        )
        return f"{col} BETWEEN {a} AND {b}"
    if typ == "int" and col.startswith("p."):
        sub = rng.choice(
            (
                "p.id {neg}IN (SELECT pid FROM {o} WHERE qty > 1)",
                "{neg}EXISTS (SELECT 1 FROM {o} o2 WHERE o2.pid = p.id)",
                "p.id {neg}IN (SELECT pid FROM {o} WHERE pid IS NOT NULL)",
            )
        )
        return sub.replace("{neg}", rng.choice(("", "NOT "))).replace("o2", "q")
    return f"{col} IS NOT NULL"


def generate(rng: random.Random, kinds: dict[str, str]) -> Query:
    """A random query with people on ``kinds['p']`` and orders on ``kinds['o']``."""
    join = rng.choice((None, None, "JOIN", "LEFT JOIN"))
    cols = _columns(join is not None, kinds)
    params: dict[str, Any] = {}
    where = [_predicate(rng, cols, params) for _ in range(rng.randint(0, 2))]
    if rng.random() < 0.3:
        key, _ = rng.choice(cols)
        num = [c for c, t in cols if t in ("int", "float", "dec")]
        aggs = ["count(*) AS c"] + [
            f"{rng.choice(AGGS)}({rng.choice(num)}) AS a{i}" for i in range(rng.randint(1, 2))
        ]
        select = [f"{key} AS k", *aggs]
        query = Query(select, join, where, group=[key], params=params)
    else:
        picked = rng.sample(cols, rng.randint(1, min(3, len(cols))))
        select = [
            f"{_expression(rng, c, t) if rng.random() < 0.3 else c} AS c{i}"
            for i, (c, t) in enumerate(picked)
        ]
        if rng.random() < 0.2:
            select[0] = "DISTINCT " + select[0]
        query = Query(select, join, where, params=params)
    if rng.random() < 0.3:
        query.order = True
        query.limit = rng.choice((None, 1, 3, 10))
    return query


# ---- running one query ---------------------------------------------------------------------
@dataclass
class Outcome:
    kind: str  # equal | refused | both-error | wrong | crash
    check: str  # truth | tlp | no-pushdown | bind-on | bind-off
    detail: str = ""


def run_federated(fed: federator.Federation, text: str, params: dict[str, Any]) -> Any:
    """Rows, or the exception raised."""
    try:
        return rows_of(fed.sql(text, params).to_arrow())
    except Exception as e:
        return e


def run_truth(con: Any, text: str, params: dict[str, Any]) -> Any:
    try:
        return rows_of(con.sql(text.replace(":", "$"), params=params).to_arrow_table())
    except Exception as e:
        return e


def compare(got: Any, want: Any, ordered: bool, check: str) -> Outcome:
    if isinstance(got, federator.UnsupportedError):
        return Outcome("refused", check, str(got))
    if isinstance(want, Exception):
        if isinstance(got, federator.FederatorError):
            return Outcome("both-error", check, str(got))
        return Outcome("wrong" if not isinstance(got, Exception) else "crash", check, str(want))
    if isinstance(got, Exception):
        return Outcome("crash", check, f"{type(got).__name__}: {got}")
    if same_answer(got, want, ordered):
        return Outcome("equal", check)
    return Outcome("wrong", check, f"got {got[:6]} want {want[:6]}")


@dataclass
class Federations:
    """The default federation and the ones the metamorphic checks compare it with."""

    default: federator.Federation
    variants: dict[str, federator.Federation]

    def close(self) -> None:
        for fed in (self.default, *self.variants.values()):
            fed.close()


SCAN_ONLY = (
    exp.Select,
    exp.From,
    exp.Table,
    exp.TableAlias,
    exp.Identifier,
    exp.Column,
    exp.Alias,
    exp.Star,
)


def open_federations(catalog: dict[str, Any]) -> Federations:
    """Default; pushdown disabled (every source's rules: a bare scan); bind joins forced on
    (any producer bound, whatever the sizes) and off (none bound)."""

    def with_planner(**settings: Any) -> federator.Federation:
        cat = {**catalog, "planner": settings}
        return federator.connect(cat, timeout=60)

    no_push = federator.connect(catalog, timeout=60)
    for adapter in no_push.catalog.adapters.values():
        adapter.rules = RuleSet("scan only", [Rule(c) for c in SCAN_ONLY])
    return Federations(
        federator.connect(catalog, timeout=60),
        {
            "no-pushdown": no_push,
            "bind-on": with_planner(bind_ratio=1e-9, bind_min_share_left=2.0, bind_max_keys=10**9),
            "bind-off": with_planner(bind_max_keys=0, bind_large_max_keys=0),
        },
    )


def check_query(
    feds: Federations, truth: Any, q: Query, kinds: dict[str, str], metamorphic: bool = True
) -> list[Outcome]:
    """The truth check, then the metamorphic ones (where asked and the first was equal)."""
    text = q.sql("people", "orders", kinds["p"], kinds["o"])
    truth_text = q.sql("people", "orders")
    want = run_truth(truth, truth_text, q.params)
    first = compare(run_federated(feds.default, text, q.params), want, q.ordered, "truth")
    outcomes = [first]
    if first.kind != "equal" or not metamorphic:
        return outcomes
    for name, fed in feds.variants.items():
        outcomes.append(compare(run_federated(fed, text, q.params), want, q.ordered, name))
    if q.where and not q.group and q.limit is None and not q.select[0].startswith("DISTINCT"):
        outcomes.append(_ternary(feds.default, q, kinds))
    return outcomes


def _ternary(fed: federator.Federation, q: Query, kinds: dict[str, str]) -> Outcome:
    p = " AND ".join(f"({c})" for c in q.where)
    whole = dataclasses.replace(q, where=[], order=False)
    parts = [
        dataclasses.replace(q, where=[w], order=False) for w in (p, f"NOT ({p})", f"({p}) IS NULL")
    ]
    want = run_federated(fed, whole.sql("people", "orders", kinds["p"], kinds["o"]), q.params)
    got: list[Any] = []
    for part in parts:
        rows = run_federated(fed, part.sql("people", "orders", kinds["p"], kinds["o"]), q.params)
        if isinstance(rows, Exception):
            return compare(rows, want, False, "tlp")
        got += rows
    return compare(got, want, False, "tlp")


# ---- minimizing ------------------------------------------------------------------------------
def minimize(q: Query, fails: Callable[[Query], bool]) -> Query:
    """Drop parts of ``q`` (conjuncts, ORDER BY/LIMIT, GROUP BY, the join) while it still fails."""
    changed = True
    while changed:
        changed = False
        for smaller in _smaller(q):
            if fails(smaller):
                q, changed = smaller, True
                break
    return q


def _smaller(q: Query) -> list[Query]:
    out = [
        dataclasses.replace(q, where=q.where[:i] + q.where[i + 1 :]) for i in range(len(q.where))
    ]
    if q.limit is not None:
        out.append(dataclasses.replace(q, limit=None))
    if q.order:
        out.append(dataclasses.replace(q, order=False, limit=None))
    if len(q.select) > 1 and not q.group:
        out += [
            dataclasses.replace(q, select=[s]) for s in q.select if not s.startswith("DISTINCT")
        ]
    if q.join and not any("o." in s for s in (*q.select, *q.where, *q.group)):
        out.append(dataclasses.replace(q, join=None))
    return out


# ---- a run -------------------------------------------------------------------------------------
@dataclass
class Report:
    seed: int
    queries: int = 0
    counts: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # both-error: federator's error kinds

    def text(self) -> str:
        lines = [
            f"fuzz seed {self.seed}: {self.queries} queries, "
            + ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        ]
        lines += [f"  both-error {n}x: {why}" for why, n in self.errors.most_common(10)]
        lines += self.failures
        return "\n".join(lines)


def _error_kind(detail: str) -> str:
    """An error message with its literals blanked, so that like errors count together."""
    return re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "…", detail)[:100]


def run(
    feds: Federations,
    truth: Any,
    queries: int,
    seed: int,
    metamorphic_every: int = 1,
    progress: Callable[[Report], None] | None = None,
    progress_every: int = 500,
) -> Report:
    """``queries`` random queries of ``seed``; kinds of both tables chosen per query; the
    metamorphic checks on every ``metamorphic_every``-th query; ``progress`` is called with
    the report so far every ``progress_every`` queries (a long run killed early keeps its
    counts)."""
    report = Report(seed)
    for i in range(queries):
        if progress is not None and i and i % progress_every == 0:
            progress(report)
        rng = random.Random(f"{seed}:{i}")
        kinds = {"p": rng.choice(KINDS), "o": rng.choice(KINDS)}
        q = generate(rng, kinds)
        outcomes = check_query(feds, truth, q, kinds, i % metamorphic_every == 0)
        report.queries += 1
        for o in outcomes:
            report.counts[f"{o.check}:{o.kind}"] += 1
            if o.kind == "both-error" and o.check == "truth":
                report.errors[_error_kind(o.detail)] += 1
        bad = [o for o in outcomes if o.kind in ("wrong", "crash")]
        if bad:
            check = bad[0].check

            def fails(candidate: Query, check: str = check, kinds: dict = kinds) -> bool:
                return any(
                    o.kind in ("wrong", "crash") and o.check == check
                    for o in check_query(feds, truth, candidate, kinds)
                )

            small = minimize(q, fails)
            report.failures.append(
                f"seed {seed} query {i} [{check}: {bad[0].kind}] "
                f"{small.sql('people', 'orders', kinds['p'], kinds['o'])} "
                f"params={small.params} -- {bad[0].detail[:300]}"
            )
    return report


# Failures found and not fixed yet: (check, kind, text in the detail) → why. A run counts them
# apart from new failures; see the README's Semantics section and the report of issue 12.
KNOWN_FAILURES: dict[tuple[str, str, str], str] = {}


# README, Semantics, Integers: integer overflow follows the source that computes it; MySQL,
# SQLite, MongoDB and Cypher widen people.n (an INT holding -2147483648) to 64 bits where the
# truth (DuckDB, like PostgreSQL) raises.
_WIDENING_OVERFLOW = re.compile(
    r"\[truth: wrong\] .*FROM (my|lite|mongo|g)\.people p .*Overflow in"
)


def known(failure: str) -> bool:
    if _WIDENING_OVERFLOW.search(failure):
        return True
    return any(
        f"[{check}: {kind}]" in failure and text in failure for check, kind, text in KNOWN_FAILURES
    )
