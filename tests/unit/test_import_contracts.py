"""Imports flow one way: the import-linter contracts in pyproject.toml hold (``lint-imports``).

The contracts are checked on the package as it installs (adapters/ and rules/ copied under
federator/, as pyproject's package-dir maps them), so an editable checkout is checked too.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())"


def installed_layout(into: Path) -> Path:
    """The federator package as pip installs it, under ``into``; returns ``into``."""
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "federator", into / "federator", ignore=skip)
    shutil.copytree(ROOT / "adapters", into / "federator" / "adapters", ignore=skip)
    shutil.copytree(ROOT / "rules", into / "federator" / "rules", ignore=skip)
    return into


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """``lint-imports`` with the repository's contracts over the package at ``tree``."""
    try:
        import importlinter  # noqa: F401
    except ImportError:
        pytest.fail("import-linter is missing: pip install -e '.[dev]'")
    return subprocess.run(
        [sys.executable, "-c", LINT, str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_imports_flow_one_way(tmp_path: Path) -> None:
    done = lint_imports(installed_layout(tmp_path))
    if done.returncode != 0:
        pytest.fail(f"import contracts broken (pyproject.toml [tool.importlinter]):\n{done.stdout}")
    assert "7 kept, 0 broken" in done.stdout


def test_an_import_against_the_layers_fails_the_check(tmp_path: Path) -> None:
    """The contracts bite: the plan model (a bottom layer) importing the facade is reported."""
    tree = installed_layout(tmp_path)
    model = tree / "federator" / "plan" / "model.py"
    model.write_text(model.read_text() + "\nfrom federator.federation import Federation\n")
    done = lint_imports(tree)
    assert done.returncode == 1
    assert "federator.plan.model -> federator.federation" in done.stdout


def test_a_rule_module_importing_its_package_fails_the_check(tmp_path: Path) -> None:
    """The circle acyclic_siblings cannot see: rules/__init__.py imports the built-in rule sets,
    so a built-in importing ``federator.rules`` (not ``federator.rules.base``) is reported."""
    tree = installed_layout(tmp_path)
    sql = tree / "federator" / "rules" / "sql.py"
    sql.write_text(
        sql.read_text().replace("from federator.rules.base import", "from federator.rules import")
    )
    done = lint_imports(tree)
    assert done.returncode == 1
    assert "federator.rules.sql -> federator.rules (l." in done.stdout


def test_the_architecture_page_names_every_layer_and_file() -> None:
    """docs/architecture.md draws the contract's layers, and the files it names exist."""
    import re
    import tomllib

    page = (ROOT / "docs" / "architecture.md").read_text()
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = next(c for c in config["contracts"] if c["type"] == "layers")["layers"]
    drawn = page.split("## Layers", 1)[1].split("```")[1]
    for layer in layers:
        for module in re.split(r"\s*[|:]\s*", layer):
            assert re.search(rf"(?<![\w.]){re.escape(module)}(?![\w.])", drawn), module
    files = {
        p.relative_to(ROOT).as_posix()
        for folder in ("federator", "adapters", "rules", "tests", "bench")
        for p in (ROOT / folder).rglob("*.py")
    }
    for path in set(re.findall(r"[\w/]+\.py", page)):
        assert any(f == path or f.endswith("/" + path) for f in files), f"no file {path}"
