"""A short differential fuzz run in the suite (the long one: ``python -m bench.fuzz``)."""

from __future__ import annotations

from typing import Any

from fuzz_gen import Federations, known, run

QUERIES = 150
SEED = 20261202


def test_fuzz_short_run_has_no_wrong_answer_or_crash(
    fuzz_federations: Federations, fuzz_truth: Any
) -> None:
    report = run(fuzz_federations, fuzz_truth, QUERIES, SEED, metamorphic_every=3)
    new = [f for f in report.failures if not known(f)]
    assert report.counts["truth:equal"] > QUERIES // 2, report.text()
    assert not new, report.text()
