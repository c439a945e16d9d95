"""The engine switch, offline: the in-process engine stays the default and loads nothing of Ray;
an unknown engine is a CatalogError naming the choices. (The Ray engine itself runs on a real
cluster in tests/integration/test_ray.py.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

import federator
from federator.execute.residual import checked_memory_limit

CATALOG = {"sources": {"demo": {"kind": "sqlite", "path": ":memory:"}}}


def test_the_default_engine_imports_nothing_of_ray() -> None:
    script = (
        "import sys, federator\n"
        f"with federator.connect({CATALOG!r}) as fed:\n"
        "    assert fed.engine is None\n"
        "assert not [m for m in sys.modules if m == 'ray' or m.startswith('ray.')], 'ray loaded'\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_an_unknown_engine_names_the_choices() -> None:
    with pytest.raises(
        federator.CatalogError, match="unknown engine 'spark': choose one of local, ray"
    ):
        federator.connect(CATALOG, engine="spark")
    catalog = {**CATALOG, "execution": {"engine": "dask"}}
    with pytest.raises(federator.CatalogError, match="unknown engine 'dask'"):
        federator.connect(catalog)


def test_the_catalog_can_name_the_local_engine() -> None:
    with federator.connect({**CATALOG, "execution": {"engine": "local"}}) as fed:
        assert fed.engine is None


def test_a_memory_limit_must_be_a_size() -> None:
    assert checked_memory_limit("256MB") == "256MB" and checked_memory_limit(None) is None
    bad = {**CATALOG, "execution": {"memory_limit": "1GB'; SET threads = 64"}}
    with pytest.raises(federator.CatalogError, match="must be a size such as '256MB'"):
        federator.connect(bad)  # the in-process engine checks it too: its residual uses it
