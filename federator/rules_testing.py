r"""Pushdown fixtures: federated SQL in, each fragment's native request and the residual out.

The loop of a rule author (and of federator's own tests): write cases of federated SQL with the
native requests you expect, then check them with ``federator rules test FILE...`` or from
pytest with :func:`assert_fixtures` / :func:`pytest_params`.

Planning needs only table metadata, so :func:`planning_federation` builds a federation from
real adapters whose ``tables()`` is replaced by a fixed "shop" (tables ``customers``,
``orders``, ``products`` on sources ``pg`` (postgres), ``my`` (mysql), ``lite`` (sqlite),
``lake`` (files) and ``docs`` (mongo, when its driver is installed)); no server, no file is
opened. A real catalog can be used instead.

Fixture file format (``*.sql``)::

    -- case: projection and filter are pushed
    -- params: lo=10
    SELECT name FROM lite.customers WHERE id > :lo
    -- fragment lite
    SELECT "customers"."name" AS "name" FROM "customers" AS "customers"
    WHERE "customers"."id" > ?
    -- bind: "o"."customer_id" <- f1.id
    -- residual
    none

A case starts at ``-- case: NAME``. Its SQL runs up to the first section line. Sections:

* ``-- fragment SOURCE``: the next fragment (in plan order) runs on SOURCE and its native
  text is what follows. An optional ``-- bind: KEY <- PRODUCER.COLUMN`` line inside it says the
  fragment is bind-joined; without one, the fragment must not be.
* ``-- residual``: the residual SQL (DuckDB), or ``none`` when one fragment is the whole query.
* ``-- note: TEXT`` (anywhere after the SQL): some plan or fragment note contains TEXT.
* ``-- error: ErrorClass: TEXT``: planning raises ErrorClass with TEXT in its message.
* ``-- params: a=1 b=x``: values for ``:a`` and ``:b`` (parsed like the CLI's ``--param``).
* ``-- xfail: REASON``: a known planner gap; the case is a strict xfail.

Before the first case, ``-- rules: PLUGIN...`` names the rule plug-ins the file tests (module
paths, or ``.py`` files relative to the fixture file; several lines add up), so a folder of
fixtures and rule modules is self-contained: ``federator rules test DIR`` loads each file's
plug-ins into a federation of its own.

Native text and residual are compared with runs of whitespace collapsed, so expected SQL may
be laid out on several lines. Lines starting with ``#`` are comments.

>>> import tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "cases.sql"
>>> _ = path.write_text(
...     "-- case: filter pushed\n"
...     "SELECT name FROM lite.customers WHERE id = 1\n"
...     "-- fragment lite\n"
...     'SELECT "customers"."name" AS "name" FROM "customers" AS "customers"\n'
...     'WHERE "customers"."id" = 1\n'
...     "-- residual\n"
...     "none\n")
>>> assert_fixtures(path)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
from sqlglot import exp

import federator
from federator.adapters.base import TableInfo, TableRef
from federator.errors import FederatorError, RuleError, clip
from federator.formats import parse_params
from federator.plan.model import Plan

# One logical shop on every backend, so single-source and cross-source cases mix freely.
CUSTOMERS = pa.schema(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("country", pa.string()),
        ("signup", pa.date32()),
    ]
)
ORDERS = pa.schema(
    [
        ("id", pa.int64()),
        ("customer_id", pa.int64()),
        ("product_id", pa.int64()),
        ("amount", pa.decimal128(12, 2)),
        ("status", pa.string()),
        ("ordered_at", pa.timestamp("us")),
    ]
)
PRODUCTS = pa.schema(
    [
        ("id", pa.int64()),
        ("name", pa.string()),
        ("category", pa.string()),
        ("price", pa.decimal128(10, 2)),
    ]
)
SHOP_TABLES = {
    "customers": (CUSTOMERS, 1_000),
    "orders": (ORDERS, 100_000),
    "products": (PRODUCTS, 200),
}

# source name -> (catalog entry, schema of its tables)
SOURCES: dict[str, tuple[dict[str, Any], str]] = {
    "pg": (
        {"kind": "postgres", "dsn": "postgresql://fixture:s3cret@pg.invalid:5432/shop"},
        "public",
    ),
    "my": ({"kind": "mysql", "dsn": "mysql://fixture:s3cret@my.invalid:3306/shop"}, "shop"),
    "lite": ({"kind": "sqlite", "path": "fixture.db"}, "main"),
    "lake": ({"kind": "files", "path": "lake"}, "main"),
    "docs": (
        {
            "kind": "mongo",
            "url": "mongodb://fixture:s3cret@mongo.invalid:27017/",
            "database": "shop",
            "discover": False,
        },
        "shop",
    ),
}


def fixed_tables(source: str, schema: str) -> list[TableInfo]:
    return [
        TableInfo(source, TableRef(schema, name), arrow, rows)
        for name, (arrow, rows) in SHOP_TABLES.items()
    ]


def planning_federation(
    sources: Iterable[str] = tuple(SOURCES), *, rules: Iterable[str] = ()
) -> federator.Federation:
    """A federation over the fixture shop's sources whose adapters report fixed tables (no I/O).

    ``rules`` names rule plug-ins (modules or ``.py`` files) loaded as a catalog's
    ``rules = [...]`` would be.
    """
    from federator.adapters import adapter_class
    from federator.errors import CatalogError

    def installed(name: str) -> bool:  # a source whose driver is missing is left out
        try:
            adapter_class(SOURCES[name][0]["kind"])
        except CatalogError:
            return False
        return True

    catalog: dict[str, Any] = {
        "sources": {name: SOURCES[name][0] for name in sources if installed(name)},
        "planner": {"source_estimate_seconds": 0},  # the catalog's estimates: no I/O
    }
    if rules:
        catalog["rules"] = [str(r) for r in rules]
    fed = federator.connect(catalog)
    for name, adapter in fed.catalog.adapters.items():
        infos = fixed_tables(name, SOURCES[name][1])

        async def tables(infos: list[TableInfo] = infos) -> list[TableInfo]:
            return infos

        adapter.tables = tables  # type: ignore[method-assign]
    return fed


# ---- the fixture format ------------------------------------------------------------------
@dataclass
class ExpectedFragment:
    source: str
    text: str = ""
    bind: str | None = None


@dataclass
class Case:
    path: Path
    name: str
    line: int
    sql: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    fragments: list[ExpectedFragment] = field(default_factory=list)
    residual: str | None = None
    notes: list[str] = field(default_factory=list)
    error: tuple[str, str] | None = None
    xfail: str | None = None
    comments: list[str] = field(default_factory=list)
    rules: tuple[str, ...] = ()  # the file's ``-- rules:`` plug-ins

    @property
    def id(self) -> str:
        return f"{self.path.parent.name}/{self.path.stem}: {self.name}"


_SECTION = re.compile(
    r"^--\s*(case|params|fragment|bind|residual|note|error|xfail|rules)\b:?\s*(.*)$"
)


def plugin_path(fixture: Path, number: int, name: str) -> str:
    """A ``-- rules:`` entry as :func:`~federator.rules.load_rule_modules` takes it: a ``.py``
    file (or any path) resolved against the fixture's folder, a module path as it is."""
    if not (name.endswith(".py") or "/" in name or "\\" in name):
        return name
    path = (fixture.parent / name).resolve()
    if not path.is_file():
        raise ValueError(
            f"{fixture}:{number}: rules file {name!r} not found "
            f"(looked for {path}; paths are relative to the fixture file)"
        )
    return str(path)


def parse_fixture(path: Path) -> list[Case]:
    cases: list[Case] = []
    plugins: list[str] = []
    case: Case | None = None
    target: str | None = None  # "sql", "fragment", "residual"
    buffer: list[str] = []

    def flush() -> None:
        nonlocal buffer
        text = "\n".join(buffer).strip()
        buffer = []
        if case is None or target is None:
            if text:
                raise ValueError(f"{path}: text outside a case: {text[:40]!r}")
            return
        if target == "sql":
            case.sql = text
        elif target == "fragment":
            case.fragments[-1].text = text
        elif target == "residual":
            case.residual = None if text.lower() == "none" else text

    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.rstrip()
        if line.lstrip().startswith("#"):
            if case is not None:
                case.comments.append(line)
            continue
        m = _SECTION.match(line)
        if m is None:
            buffer.append(line)
            continue
        word, rest = m.group(1), m.group(2).strip()
        if word == "case":
            flush()
            case = Case(path, rest, number, rules=tuple(plugins))
            cases.append(case)
            target = "sql"
            continue
        if word == "rules":
            if case is not None:
                raise ValueError(f"{path}:{number}: '-- rules:' belongs before the first case")
            plugins.extend(plugin_path(path, number, n) for n in rest.replace(",", " ").split())
            continue
        if case is None:
            raise ValueError(f"{path}:{number}: {word!r} before any '-- case:'")
        if word == "params":
            case.params.update(parse_params(rest.split()))
        elif word == "note":
            case.notes.append(rest)
        elif word == "xfail":
            case.xfail = rest
        elif word == "error":
            cls, _, text = rest.partition(":")
            case.error = (cls.strip(), text.strip())
        elif word == "bind":
            if target != "fragment":
                raise ValueError(f"{path}:{number}: '-- bind:' belongs inside a fragment section")
            case.fragments[-1].bind = rest
        elif word == "fragment":
            flush()
            case.fragments.append(ExpectedFragment(rest))
            target = "fragment"
        elif word == "residual":
            flush()
            target = "residual"
    flush()
    return cases


# ---- checking ----------------------------------------------------------------------------
def squash(text: str | None) -> str | None:
    return None if text is None else " ".join(text.split())


def bind_text(plan: Plan, fid: str) -> str | None:
    """A fragment's bind as ``key <- producer.column``, each alternative after ``or``."""
    b = plan.fragment(fid).bind
    if b is None:
        return None
    return " or ".join(
        f"{x.key.sql()} <- {x.producer}.{x.producer_column}" for x in (b, *b.alternatives)
    )


def actual(fed: federator.Federation, case: Case) -> tuple[Plan | None, BaseException | None]:
    try:
        return fed.sql(case.sql, case.params).plan, None
    except federator.FederatorError as e:
        return None, e


def differences(fed: federator.Federation, case: Case) -> list[str]:
    """What differs between a case's expectations and the planner (empty when it passes)."""
    plan, error = actual(fed, case)
    out: list[str] = []
    if case.error is not None:
        cls, text = case.error
        if error is None:
            return [f"expected {cls} ({text}) but the query planned"]
        if type(error).__name__ != cls or text not in str(error):
            out.append(f"expected {cls}: {text}\n     got {type(error).__name__}: {error}")
        return out
    if error is not None:
        return [f"planning failed: {type(error).__name__}: {error}"]
    assert plan is not None
    if len(plan.fragments) != len(case.fragments):
        out.append(f"expected {len(case.fragments)} fragment(s), got {len(plan.fragments)}")
    for i, (want, frag) in enumerate(zip(case.fragments, plan.fragments, strict=False)):
        got_text = plan.requests[frag.id].text
        if want.source != frag.source:
            out.append(f"fragment {i}: expected source {want.source}, got {frag.source}")
        if squash(want.text) != squash(got_text):
            out.append(
                f"fragment {i} ({frag.source}) native request:\n  expected: "
                f"{squash(want.text)}\n       got: {squash(got_text)}"
            )
        got_bind = bind_text(plan, frag.id)
        if want.bind != got_bind:
            out.append(f"fragment {i}: expected bind {want.bind}, got {got_bind}")
    if squash(case.residual) != squash(plan.residual_sql):
        want, got = squash(case.residual), squash(plan.residual_sql)
        out.append(f"residual:\n  expected: {want}\n       got: {got}")
    notes = plan.notes + [n for f in plan.fragments for n in f.notes]
    for note in case.notes:
        if not any(note in n for n in notes):
            out.append(f"no note contains {note!r}; notes: {notes}")
    return out


def render_case(fed: federator.Federation, case: Case) -> Iterator[str]:
    """The case's text with expected sections taken from the current planner (update mode)."""
    yield f"-- case: {case.name}"
    yield from case.comments
    if case.xfail:
        yield f"-- xfail: {case.xfail}"
    if case.params:
        yield "-- params: " + " ".join(f"{k}={v}" for k, v in case.params.items())
    yield case.sql
    for note in case.notes:
        yield f"-- note: {note}"
    plan, error = actual(fed, case)
    if case.xfail:  # keep the hand-written expectation of a known gap
        for f in case.fragments:
            yield f"-- fragment {f.source}"
            yield f.text
            if f.bind:
                yield f"-- bind: {f.bind}"
        if case.error:
            yield f"-- error: {case.error[0]}: {case.error[1]}"
        else:
            yield "-- residual"
            yield case.residual or "none"
        return
    if error is not None:
        yield f"-- error: {type(error).__name__}: {case.error[1] if case.error else error}"
        return
    assert plan is not None
    for frag in plan.fragments:
        yield f"-- fragment {frag.source}"
        yield plan.requests[frag.id].text
        bind = bind_text(plan, frag.id)
        if bind:
            yield f"-- bind: {bind}"
    yield "-- residual"
    yield plan.residual_sql or "none"


def update_file(fed: federator.Federation, path: Path) -> None:
    """Rewrite the expected sections of ``path`` from ``fed``'s planner. A rule that fails
    while planning a case (a RuleError the case does not expect) raises, naming the case,
    rather than being written into the file as its expectation."""
    for case in parse_fixture(path):
        error = actual(fed, case)[1]
        expected = case.error is not None and case.error[0] == "RuleError"
        if isinstance(error, RuleError) and not expected:
            raise RuleError(
                f"{error.problem} (planning {path}:{case.line}: {case.name})",
                error.rule,
                error.where,
            ) from error
    header = []
    for line in path.read_text().splitlines():
        if line.startswith("-- case:"):
            break
        header.append(line)
    body = ["\n".join(render_case(fed, case)) for case in parse_fixture(path)]
    path.write_text(
        "\n".join(header).rstrip("\n") + ("\n\n" if header else "") + "\n\n".join(body) + "\n"
    )


# ---- running fixture files ---------------------------------------------------------------
@dataclass
class CaseResult:
    case: Case
    problems: list[str]

    @property
    def status(self) -> str:
        """``pass``, ``fail``, ``xfail`` (known gap still failing) or ``xpass`` (a failure:
        the gap is fixed, remove the ``-- xfail:`` line)."""
        if self.case.xfail:
            return "xfail" if self.problems else "xpass"
        return "fail" if self.problems else "pass"

    @property
    def ok(self) -> bool:
        return self.status in ("pass", "xfail")


def fixture_files(paths: Iterable[str | Path]) -> list[Path]:
    """The ``*.sql`` files named, folders searched recursively; a missing path raises."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(p.rglob("*.sql")))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"no fixture file or folder {str(p)!r}")
    return out


def collect_cases(paths: Iterable[str | Path]) -> list[Case]:
    return [case for path in fixture_files(paths) for case in parse_fixture(path)]


def check(fed: federator.Federation, paths: Iterable[str | Path]) -> list[CaseResult]:
    """Every case of the files against ``fed`` (the files' ``-- rules:`` lines are not loaded:
    the federation is the caller's; :func:`check_files` loads them)."""
    return [CaseResult(case, differences(fed, case)) for case in collect_cases(paths)]


def fixture_federation(
    rules: Iterable[str] = (), catalog: str | Path | None = None
) -> federator.Federation:
    """The federation cases plan against: the offline shop (or ``catalog``'s sources, whose
    metadata is read) with the rule plug-ins ``rules`` loaded."""
    from federator.rules import load_rule_modules, run_hooks

    if catalog is None:
        return planning_federation(rules=rules)
    hooks = load_rule_modules(rules, entry_points=False)
    fed = federator.connect(catalog)
    try:
        run_hooks(fed, hooks)
    except BaseException:
        fed.close()
        raise
    return fed


def _plugins(*groups: Iterable[str]) -> tuple[str, ...]:
    """The plug-ins of several lists, each once (a ``.py`` file by its resolved path)."""
    names = (str(Path(n).resolve()) if n.endswith(".py") else n for g in groups for n in g)
    return tuple(dict.fromkeys(names))


def check_files(
    paths: Iterable[str | Path], *, rules: Iterable[str] = (), catalog: str | Path | None = None
) -> list[CaseResult]:
    r"""Every case of the files (folders: every ``*.sql`` inside), each file planned with the
    plug-ins of its ``-- rules:`` lines on top of ``rules``. A plug-in that fails to load
    fails the cases that need it, with the reason; the other files still run.

    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "my_rules.py").write_text(
    ...     "from federator.rules import Rule\n"
    ...     "def federator_rules(fed):\n"
    ...     "    fed.rules.add(Rule('SIMILARITY'), kind='sqlite')\n")
    >>> _ = (folder / "cases.sql").write_text(
    ...     "-- rules: my_rules.py\n"
    ...     "-- case: similarity() is pushed\n"
    ...     "SELECT id FROM lite.customers WHERE similarity(name, 'ada') > 0.3\n"
    ...     "-- fragment lite\n"
    ...     'SELECT "customers"."id" AS "id" FROM "customers" AS "customers"\n'
    ...     "WHERE SIMILARITY(\"customers\".\"name\", 'ada') > 0.3\n"
    ...     "-- residual\n"
    ...     "none\n")
    >>> [r.status for r in check_files([folder])]
    ['pass']
    """
    extra = list(rules)
    feds: dict[tuple[str, ...], federator.Federation | FederatorError] = {}
    results = []
    try:
        for case in collect_cases(paths):
            key = _plugins(extra, case.rules)
            if key not in feds:
                try:
                    feds[key] = fixture_federation(key, catalog)
                except FederatorError as e:
                    feds[key] = e
            fed = feds[key]
            if isinstance(fed, FederatorError):
                problems = [f"rule plug-ins could not be loaded: {type(fed).__name__}: {fed}"]
            else:
                problems = differences(fed, case)
            results.append(CaseResult(case, problems))
    finally:
        for fed in feds.values():
            if isinstance(fed, federator.Federation):
                fed.close()
    return results


def update_files(
    paths: Iterable[str | Path], *, rules: Iterable[str] = (), catalog: str | Path | None = None
) -> Iterator[Path]:
    """Rewrite each file's expected sections (:func:`update_file`), planned with its
    ``-- rules:`` plug-ins on top of ``rules``; yields each file once it is written."""
    extra = list(rules)
    for path in fixture_files(paths):
        cases = parse_fixture(path)
        plugins = _plugins(extra, cases[0].rules if cases else ())
        with fixture_federation(plugins, catalog) as fed:
            update_file(fed, path)
        yield path


def report(results: Iterable[CaseResult], *, verbose: bool = False) -> Iterator[str]:
    """Lines for people: one per failing case with its diff (every case when ``verbose``),
    then a summary."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
        where = f"{r.case.path}:{r.case.line}"
        if r.status == "fail":
            yield f"FAIL {where}: {r.case.name}"
            for problem in r.problems:
                yield from ("    " + ln for ln in problem.splitlines())
        elif r.status == "xpass":
            yield f"XPASS {where}: {r.case.name} (known gap fixed: remove '-- xfail:')"
        elif verbose:
            yield f"{r.status} {where}: {r.case.name}"
    words = {"pass": "passed", "fail": "failed", "xfail": "xfailed", "xpass": "xpassed"}
    summary = ", ".join(f"{counts[k]} {w}" for k, w in words.items() if counts.get(k))
    yield summary or "no cases found"


def assert_fixtures(
    *paths: str | Path, fed: federator.Federation | None = None, rules: Iterable[str] = ()
) -> None:
    """pytest helper: raise AssertionError with a readable diff when a case of the fixture
    files (or folders) does not match the planner. Without ``fed`` the offline shop
    federation is used, with the rule plug-ins ``rules`` and each file's ``-- rules:`` loaded;
    with ``fed``, that federation as it is."""
    results = check_files(paths, rules=rules) if fed is None else check(fed, paths)
    if not results:
        raise AssertionError(f"no fixture cases in {[str(p) for p in paths]}")
    if not all(r.ok for r in results):
        raise AssertionError("\n".join(report(results)))


def pytest_params(*paths: str | Path) -> list[Any]:
    """``pytest.param`` per case (id from file and name; ``-- xfail:`` cases strict xfails),
    for ``@pytest.mark.parametrize("case", pytest_params(folder))`` with
    ``assert not differences(fed, case)``."""
    import pytest

    return [
        pytest.param(
            case,
            id=case.id,
            marks=[pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else [],
        )
        for case in collect_cases(paths)
    ]


# ---- which rule pushed or refused what ---------------------------------------------------
_QUIET = (
    exp.Column,
    exp.Identifier,
    exp.Literal,
    exp.Null,
    exp.Boolean,
    exp.Star,
    exp.Alias,
    exp.Paren,
    exp.And,
    exp.Or,
    exp.Placeholder,
    exp.Parameter,
    exp.DataType,
    exp.Var,
)


def _interesting(node: exp.Expression) -> bool:
    if isinstance(node, _QUIET):
        return False
    return isinstance(node, (exp.Func, exp.Binary, exp.Predicate, exp.Unary, exp.Anonymous))


def _short(node: exp.Expression, width: int = 60) -> str:
    return clip(node.sql(), width)


def explain_rules(fed: federator.Federation, plan: Plan) -> list[str]:
    """For EXPLAIN: which rule pushed each expression of each fragment (and whether it is
    written natively), and which rule refused each expression kept in the residual."""
    lines = ["Rules:"]
    for frag in plan.fragments:
        rules = fed.catalog.adapter(frag.source).rules
        lines.append(f"  Fragment {frag.id} ({frag.source}, rule set {rules.name!r}):")
        seen: set[str] = set()
        for node in frag.query.walk():
            if not _interesting(node):
                continue
            rule = rules.rule_for(node)
            if rule is None:  # not expected: the planner pushed it, so some rule accepted it
                continue
            written = ", written natively" if rule.write is not None else ""
            line = f"    pushed {_short(node)} by rule {rule.label!r}{written}"
            if line not in seen:
                seen.add(line)
                lines.append(line)
        if not seen:
            lines.append("    (columns and tables only)")
    if plan.residual is not None:
        lines.append("  Residual (DuckDB):")
        sources = {f.id: f.source for f in plan.fragments}
        aliases = {
            t.alias_or_name: sources[t.name]
            for t in plan.residual.find_all(exp.Table)
            if t.name in sources
        }
        seen = set()
        for node in plan.residual.walk():
            if not _interesting(node) or node.find(exp.Select) is not None:
                continue
            refused = _refusal_of(fed, node, aliases)
            if refused is None:
                continue
            if refused not in seen:  # the outermost expression a refusal keeps, once
                seen.add(refused)
                lines.append(f"    kept {_short(node)}: {refused}")
        if not seen:
            lines.append("    (no expression refused: it only combines the fragments' results)")
    return lines


def _refusal_of(
    fed: federator.Federation, node: exp.Expression, aliases: dict[str, str]
) -> str | None:
    """The refusal by the rules of the one source this expression's columns come from."""
    tables = {c.table for c in node.find_all(exp.Column)}
    if not tables or any(t not in aliases for t in tables):
        return None
    found = {aliases[t] for t in tables}
    if len(found) > 1:
        return f"needs columns of several sources ({', '.join(sorted(found))})"
    source = found.pop()
    rules = fed.catalog.adapter(source).rules
    for sub in node.walk():
        if rules.rule_for(sub) is None:
            return f"{source}: {rules._why(sub)}"
    return None
