"""The conformance matrix: every shape of conform_shapes on every source kind alone and on
pairs of kinds, each answer compared with DuckDB over the same data (see conform_matrix).

A cell passes when it equals the truth, is a typed refusal naming the construct, or is the
error SQL requires. The known differences below are declared strict xfails with their reason,
so a cell that starts to agree (or a new difference) shows up at once.
"""

from __future__ import annotations

from typing import Any

import pytest
from conform_matrix import KNOWN, cells, run_cell

import federator


def _params() -> list[Any]:
    out = []
    for shape, config in cells():
        reason = KNOWN.get((shape.name, config))
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        out.append(pytest.param(shape, config, id=f"{shape.name}-{config}", marks=marks))
    return out


@pytest.mark.parametrize(("shape", "config"), _params())
def test_cell(conform_fed: federator.Federation, conform_truth: Any, shape, config: str) -> None:
    cell = run_cell(conform_fed, conform_truth, shape, config)
    assert cell.ok, f"{cell.outcome}: {cell.shape} on {cell.config}: {cell.detail}"
