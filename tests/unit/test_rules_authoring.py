"""Rule authoring: fed.rules.add, plug-ins from the catalog and entry points, the fixture
loop (`federator rules test`, pytest helpers), EXPLAIN naming the rule that pushed or refused,
and the worked pg_trgm example in examples/rules/."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from federator.rules import Rule, add_rules, rule_set_for

import federator
from federator import cli
from federator import rules as rules_module
from federator.demo import catalog_toml
from federator.rules_testing import (
    Case,
    assert_fixtures,
    differences,
    explain_rules,
    planning_federation,
    pytest_params,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "rules"
TRGM = str(EXAMPLE / "pg_trgm.py")
MONGO = str(EXAMPLE / "mongo_strings.py")
SIMILAR = "SELECT name FROM pg.customers WHERE similarity(name, 'ada') > 0.3"


@pytest.fixture(scope="module")
def trgm_fed() -> Iterator[federator.Federation]:
    fed = planning_federation(rules=[TRGM])
    yield fed
    fed.close()


@pytest.fixture(scope="module")
def examples_fed() -> Iterator[federator.Federation]:
    fed = planning_federation(rules=[TRGM, MONGO])
    yield fed
    fed.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---- the worked example --------------------------------------------------------------
@pytest.mark.parametrize("case", pytest_params(EXAMPLE / "fixtures"))
def test_example_fixture(examples_fed: federator.Federation, case: Case) -> None:
    assert not (diff := differences(examples_fed, case)), "\n".join(diff)


def test_example_fixtures_with_the_helper() -> None:
    assert_fixtures(EXAMPLE / "fixtures", rules=[TRGM, MONGO])


def test_example_fixtures_name_their_rules() -> None:
    assert_fixtures(EXAMPLE / "fixtures")  # each file's `-- rules:` line loads its plug-in


def test_example_fixtures_fail_without_the_rules(tmp_path: Path) -> None:
    text = (EXAMPLE / "fixtures" / "pg_trgm.sql").read_text()
    assert "-- rules: ../pg_trgm.py\n" in text
    copy = tmp_path / "pg_trgm.sql"
    copy.write_text(text.replace("-- rules: ../pg_trgm.py\n", ""))
    with pytest.raises(AssertionError, match=r"FAIL .*pg_trgm.sql:\d+") as info:
        assert_fixtures(copy)
    assert "expected: SELECT" in str(info.value) and "got: SELECT" in str(info.value)


def test_write_renders_natively(trgm_fed: federator.Federation) -> None:
    plan = trgm_fed.sql("SELECT name FROM pg.customers WHERE trgm_match(name, :q)", {"q": "x"}).plan
    assert plan.requests[plan.fragments[0].id].text.endswith('("customers"."name" % $1)')


# ---- fed.rules ------------------------------------------------------------------------
def test_rules_add_by_kind_and_source() -> None:
    fed = planning_federation()
    try:
        assert fed.sql(SIMILAR).plan.residual is not None  # not pushed by default
        assert fed.rules.add(Rule("SIMILARITY"), kind="postgresql") == ["pg"]
        assert fed.sql(SIMILAR).plan.residual is None
        assert fed.rules.add(Rule("SIMILARITY"), source="my") == ["my"]
        assert "SIMILARITY" in fed.explain(SIMILAR.replace("pg.", "my."))
        assert fed.rules.add(Rule("SIMILARITY"), kind="redis") == []  # known kind, no source
        assert fed.rules["lite"].refusal is not None
    finally:
        fed.close()
    other = planning_federation()  # another federation is not changed
    try:
        assert other.sql(SIMILAR).plan.residual is not None
    finally:
        other.close()


def test_rules_add_mistakes() -> None:
    fed = planning_federation(["lite"])
    try:
        with pytest.raises(federator.UnknownSourceError, match="did you mean 'lite'"):
            fed.rules.add(Rule("F"), source="lit")
        with pytest.raises(federator.CatalogError, match="unknown source kind 'postgress'"):
            fed.rules.add(Rule("F"), kind="postgress")
        with pytest.raises(TypeError, match="exactly one of kind= or source="):
            fed.rules.add(Rule("F"))
    finally:
        fed.close()


# ---- plug-ins -------------------------------------------------------------------------
@pytest.fixture
def clean_registry() -> Iterator[None]:
    saved = dict(rules_module._REGISTRY)
    hooks = rules_module._ENTRY_POINT_HOOKS
    yield
    rules_module._REGISTRY.clear()
    rules_module._REGISTRY.update(saved)
    rules_module._ENTRY_POINT_HOOKS = hooks


def test_catalog_rules_key_loads_a_module_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_registry: None
) -> None:
    (tmp_path / "my_rules_by_import.py").write_text(
        textwrap.dedent("""
        from federator.rules import Rule, add_rules
        add_rules("sqlite", Rule("ZZ_ONLY_IN_THIS_TEST"))
        """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    catalog: dict[str, Any] = {
        "sources": {"lite": {"kind": "sqlite", "path": ":memory:"}},
        "rules": ["my_rules_by_import"],
    }
    with federator.connect(catalog) as fed:
        assert fed.rules["lite"].rules[0].label == "ZZ_ONLY_IN_THIS_TEST"
    assert rule_set_for("sqlite").rules[0].label == "ZZ_ONLY_IN_THIS_TEST"


def test_catalog_rules_key_from_toml_runs_the_hook(tmp_path: Path) -> None:
    path = tmp_path / "catalog.toml"
    path.write_text(
        f'rules = ["{TRGM}"]\n[sources.pg]\nkind = "postgres"\n'
        'dsn = "postgresql://u:pw@pg.invalid:5432/db"\n'
    )
    with federator.connect(path) as fed:
        assert [r.name for r in fed.rules["pg"].rules[:3]] == [
            "pg_trgm.similarity",
            "pg_trgm.word_similarity",
            "pg_trgm.match",
        ]
    assert rule_set_for("postgres").rules[0].name != "pg_trgm.similarity"  # hook: scoped


def test_catalog_rules_module_missing() -> None:
    catalog = {
        "sources": {"lite": {"kind": "sqlite", "path": ":memory:"}},
        "rules": ["no_such_rules_module_xyz"],
    }
    with pytest.raises(federator.CatalogError, match="'no_such_rules_module_xyz' could not"):
        federator.connect(catalog)


def test_entry_point_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_registry: None
) -> None:
    (tmp_path / "ep_rules_pkg.py").write_text(
        "from federator.rules import Rule\n"
        "def setup(fed):\n"
        "    fed.rules.add(Rule('ZZ_FROM_ENTRY_POINT'), kind='sqlite')\n"
    )
    dist = tmp_path / "ep_rules_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-rules-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[federator.rules]\ntoy = ep_rules_pkg:setup\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    rules_module._ENTRY_POINT_HOOKS = None
    with federator.connect({"sources": {"lite": {"kind": "sqlite", "path": ":memory:"}}}) as fed:
        assert fed.rules["lite"].rules[0].label == "ZZ_FROM_ENTRY_POINT"


def test_add_rules_is_global_for_later_sources(clean_registry: None) -> None:
    add_rules("files", Rule("ZZ_GLOBAL"))
    fed = planning_federation(["lake"])
    try:
        assert fed.rules["lake"].rules[0].label == "ZZ_GLOBAL"
    finally:
        fed.close()


# ---- EXPLAIN names the rules ----------------------------------------------------------
def test_explain_rules_pushed_and_refused(trgm_fed: federator.Federation) -> None:
    plan = trgm_fed.sql(SIMILAR.replace("pg.", "my.") + " AND id > 3").plan
    text = "\n".join(explain_rules(trgm_fed, plan))
    assert "pushed customers.id > 3 by rule 'GT'" in text
    assert "kept SIMILARITY(customers.name, 'ada') > 0.3: my: no rule of 'mysql' pushes" in text
    plan = trgm_fed.sql("SELECT name FROM pg.customers WHERE trgm_match(name, 'a')").plan
    text = "\n".join(explain_rules(trgm_fed, plan))
    assert "by rule 'pg_trgm.match', written natively" in text


def test_cli_explain_verbose(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(catalog_toml({"sources": {"m": {"kind": "sqlite", "path": ":memory:"}}}))
    code, out, err = run(capsys, "explain", "-c", str(path), "-v", "SELECT 1 AS x")
    assert (code, err) == (0, ""), err
    assert "Rules:" in out


# ---- federator rules test -------------------------------------------------------------
def test_cli_rules_test_passes(capsys: pytest.CaptureFixture[str]) -> None:
    folder = str(EXAMPLE / "fixtures")
    code, out, _ = run(capsys, "rules", "test", "--rules", TRGM, "--rules", MONGO, folder)
    assert code == 0, out
    assert out.splitlines()[-1] == "8 passed"
    code, out, _ = run(capsys, "rules", "test", "-r", TRGM, f"{folder}/pg_trgm.sql")
    assert (code, out.splitlines()[-1]) == (0, "6 passed")


def test_cli_rules_test_wrong_fixture_shows_a_diff(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "wrong.sql"
    path.write_text(
        "-- case: wrong expectation\n"
        f"{SIMILAR}\n"
        "-- fragment pg\n"
        'SELECT "customers"."name" AS "name" FROM "public"."customers" AS "customers"\n'
        "-- residual\nnone\n"
    )
    code, out, _ = run(capsys, "rules", "test", "-r", TRGM, str(path))
    assert code == 1
    assert f"FAIL {path}:1: wrong expectation" in out
    assert "native request:" in out
    assert 'expected: SELECT "customers"."name" AS "name" FROM' in out
    assert 'WHERE SIMILARITY("customers"."name", \'ada\') > 0.3' in out
    assert out.splitlines()[-1] == "1 failed"
    code, out, _ = run(capsys, "rules", "test", "-r", TRGM, "--update", str(path))
    assert code == 0
    code, out, _ = run(capsys, "rules", "test", "-r", TRGM, str(path))
    assert (code, out.splitlines()[-1]) == (0, "1 passed")


def federator_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``federator ARGS`` as a user runs it: a fresh process in ``cwd``."""
    return subprocess.run(
        [sys.executable, "-m", "federator.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cli_rules_test_runs_a_self_contained_folder(tmp_path: Path) -> None:
    """`federator rules test DIR` on a copy of examples/rules: the fixture files name the rule
    plug-ins they test (relative to themselves), so no --rules is needed."""
    shutil.copytree(EXAMPLE, tmp_path / "rules")
    run = federator_cli(tmp_path, "rules", "test", "rules")
    assert (run.returncode, run.stderr) == (0, ""), run.stdout + run.stderr
    assert run.stdout.splitlines()[-1] == "8 passed"


def _bad_guard_folder(root: Path) -> Path:
    folder = root / "mine"
    (folder / "cases").mkdir(parents=True)
    (folder / "my_rules.py").write_text(
        textwrap.dedent("""
        from federator.rules import Rule


        def _typo(node):
            return len(node.expressions) + "2"


        RULES = [Rule("SIMILARITY", guard=_typo, name="mine.similarity")]


        def federator_rules(fed):
            fed.rules.add(*RULES, kind="postgres")
        """)
    )
    (folder / "cases" / "sim.sql").write_text(
        "-- rules: ../my_rules.py\n\n"
        f"-- case: similarity is pushed\n{SIMILAR}\n-- fragment pg\n"
        'SELECT "customers"."name" AS "name" FROM "public"."customers" AS "customers" '
        'WHERE SIMILARITY("customers"."name", \'ada\') > 0.3\n-- residual\nnone\n'
    )
    return folder


def test_cli_rules_test_names_the_rule_and_fixture_of_a_raising_guard(tmp_path: Path) -> None:
    folder = _bad_guard_folder(tmp_path)
    run = federator_cli(tmp_path, "rules", "test", "mine")
    assert run.returncode == 1, run.stdout + run.stderr
    assert "internal error" not in run.stdout + run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == f"FAIL {Path('mine', 'cases', 'sim.sql')}:3: similarity is pushed"
    assert lines[1].strip() == (
        "planning failed: RuleError: rule 'mine.similarity' (defined at "
        f"{Path('mine', 'my_rules.py')}:9): guard _typo raised TypeError: unsupported operand "
        "type(s) for +: 'int' and 'str' (on SIMILARITY(customers.name, 'ada'))"
    )
    assert lines[-1] == "1 failed"
    before = (folder / "cases" / "sim.sql").read_text()
    run = federator_cli(tmp_path, "rules", "test", "--update", "mine")
    assert run.returncode == 1
    assert run.stderr.startswith("error: rule 'mine.similarity' (defined at ")
    assert f"(planning {Path('mine', 'cases', 'sim.sql')}:3: similarity is pushed)" in run.stderr
    assert (folder / "cases" / "sim.sql").read_text() == before  # the bug is not baked in


def test_fixture_rules_lines_mistakes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    case = "-- case: c\nSELECT 1 AS x\n-- residual\nnone\n"
    missing = tmp_path / "missing.sql"
    missing.write_text("-- rules: ../nowhere.py\n" + case)
    code, _, err = run(capsys, "rules", "test", str(missing))
    assert code == 2
    assert f"{missing}:1: rules file '../nowhere.py' not found" in err
    assert "paths are relative to the fixture file" in err
    late = tmp_path / "late.sql"
    late.write_text(case + f"-- rules: {TRGM}\n")
    code, _, err = run(capsys, "rules", "test", str(late))
    assert code == 2 and f"{late}:5: '-- rules:' belongs before the first case" in err


def test_a_plugin_that_fails_to_load_fails_only_its_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "broken.py").write_text("import no_such_module_for_rules_q\n")
    (tmp_path / "a_broken.sql").write_text(
        "-- rules: broken.py\n-- case: needs broken\nSELECT 1 AS x\n-- residual\nnone\n"
    )
    shutil.copy(EXAMPLE / "fixtures" / "pg_trgm.sql", tmp_path / "b_trgm.sql")
    (tmp_path / "pg_trgm.py").write_text((EXAMPLE / "pg_trgm.py").read_text())
    text = (tmp_path / "b_trgm.sql").read_text().replace("../pg_trgm.py", "pg_trgm.py")
    (tmp_path / "b_trgm.sql").write_text(text)
    code, out, _ = run(capsys, "rules", "test", str(tmp_path))
    assert code == 1
    assert "rule plug-ins could not be loaded: CatalogError: rules module" in out
    assert "ModuleNotFoundError" in out
    assert out.splitlines()[-1] == "6 passed, 1 failed"


def test_cli_rules_test_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "rules", "test", str(tmp_path / "missing.sql"))
    assert code == 2 and "no fixture file or folder" in err
    code, _, err = run(capsys, "rules", "test", str(tmp_path))
    assert code == 2 and "no *.sql fixture files" in err
    bad = tmp_path / "bad.sql"
    bad.write_text("SELECT 1\n")
    code, _, err = run(capsys, "rules", "test", str(bad))
    assert code == 2 and "text outside a case" in err
    code, _, _ = run(capsys, "rules")
    assert code == 2
    code, _, err = run(capsys, "rules", "test", "-r", "no_such_mod_q", str(bad))
    assert code == 1 and "could not be loaded" in err


def test_cli_rules_test_with_a_catalog(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "t.db"
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE t (id INTEGER, name TEXT)")
    catalog = tmp_path / "c.toml"
    catalog.write_text(catalog_toml({"sources": {"s": {"kind": "sqlite", "path": str(db)}}}))
    cases = tmp_path / "c.sql"
    cases.write_text(
        "-- case: filter\nSELECT name FROM s.t WHERE id = 2\n-- fragment s\n"
        'SELECT "t"."name" AS "name" FROM "t" AS "t" WHERE "t"."id" = 2\n-- residual\nnone\n'
    )
    code, out, _ = run(capsys, "rules", "test", "-c", str(catalog), str(cases))
    assert (code, out.splitlines()[-1]) == (0, "1 passed"), out


def test_module_name_is_not_left_in_sys_modules_on_failure(tmp_path: Path) -> None:
    broken = tmp_path / "broken_rules.py"
    broken.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(federator.CatalogError, match="RuntimeError: boom"):
        rules_module.load_rule_modules([str(broken)], entry_points=False)
    assert not [m for m in sys.modules if m.endswith("_broken_rules")]
