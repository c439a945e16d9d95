"""bench.round4's pure parts, offline: the report rebuilt from jsonl rows, the per-method
summary (geomean, queries above 3x, worst) and what --resume skips."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # bench/ is not installed, only run from the checkout
    sys.path.insert(0, str(ROOT))

from bench import round4  # noqa: E402


def _q(qid: str, method: str, seconds: float | None, **kw: Any) -> dict[str, Any]:
    row = {
        "kind": "query",
        "sf": 0.1,
        "split": "split",
        "query": qid,
        "method": method,
        "seconds": seconds,
        "correct": None if method == "pg" else True,
        "result_rows": 1,
        "moved": {},
        "fragments": [],
        "residual_ms": 0.0,
        "error": "",
        "timed_out": False,
    }
    return {**row, **kw}


def _rows() -> list[dict[str, Any]]:
    """q01: federator 2x; q02: 8x, wrong; q03: federator timed out. Single PG 1 s each."""
    frag = {
        "id": "f0",
        "source": "pg",
        "estimated_rows": 40,
        "rows": 1000,
        "bytes": 2_000_000,
        "ms": 1500.0,
        "bound_keys": 7,
        "bind": True,
        "note": "bound at run time",
    }
    return [
        {
            "kind": "run",
            "commit": "abc1234 (dirty)",
            "command": "python -m bench.round4",
            "date": "2026-12-02 18:00 UTC",
            "loadavg": 1.5,
        },
        _q("q01", "pg", 1.0),
        _q("q01", "federator", 2.0, moved={"pg": [10, 100], "my": [5, 50]}),
        _q("q02", "pg", 1.0),
        _q(
            "q02",
            "federator",
            8.0,
            correct=False,
            moved={"pg": [1000, 2_000_000]},
            fragments=[frag],
            residual_ms=250.0,
        ),
        _q("q03", "pg", 1.0),
        _q(
            "q03",
            "federator",
            None,
            correct=None,
            error="timed out (QueryTimeoutError)",
            timed_out=True,
        ),
        {
            "kind": "planning",
            "sf": 0.1,
            "split": "split",
            "query": "q01",
            "cold_ms": [10.0, 30.0, 20.0],
            "warm_ms": [0.5] * 99 + [2.0],
            "param_ms": [],
        },
    ]


def test_summary_counts_geomean_above_three_and_worst_over_the_answered_queries() -> None:
    table = round4._tables(_rows())[(0.1, "split")]
    s = round4.summarize(table, "federator")
    assert s.geomean == pytest.approx(4.0)  # sqrt(2 * 8)
    assert s.above == ["q02"]
    assert s.worst == ("q02", 8.0)
    assert (s.correct, s.failed) == (1, 1)


def test_report_holds_the_table_the_worst_fragments_the_curve_and_planning() -> None:
    text = round4.build_report(_rows())
    expected = [
        "commit **abc1234 (dirty)**",
        "| q01 | 1.000 | 2.000 | 2.00 | yes | 10 / 5 | 100 / 50 |",
        "| q02 | 1.000 | 8.000 | 8.00 | NO |",
        "| q03 | 1.000 | timeout | - | - |",
        "geomean **4.00** x single PG over 2 queries; 1 above 3x (q02); worst q02 8.00x",
        "- q03 federator: timed out (QueryTimeoutError)",
        "f0 on pg: 1,000 rows (estimated 40), 2.0 MB, 1.50 s, 7 bound keys",
        "residual 0.25 s",
        # scale curve: rows and bytes over the answered queries, single PG over all three
        "| 0.1 | split | 4.00 | 2 | 1,015 | 2,000,150 | 3.00 | 10.00 |",
        "| cold | 20.00 | 30.00 | 3 |",
        "| warm | 0.50 | 0.50 | 100 |",
        "| q01 | 20.00 | 0.50 | - |",
    ]
    for line in expected:
        assert line in text, line


def test_resume_skips_what_the_jsonl_holds_and_a_torn_last_line(tmp_path: Path) -> None:
    log = tmp_path / "r.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in _rows()) + '\n{"kind": "que')
    done = round4.done_keys(round4.read_rows(log))
    assert (0.1, "split", "q03", "federator") in done  # a timeout is a result: not rerun
    assert (0.1, "split", "q01", "planning") in done
    assert round4._wanted(done, 0.1, "split", "q01", ["federator", "glue"]) == ["glue"]
    assert round4._wanted(done, 0.1, "reverse", "q01", ["federator"]) == ["pg", "federator"]
    qids = ["q01", "q02", "q03"]
    assert not round4._todo(done, 0.1, ["split"], qids, ["federator"], plan_overhead=False)
    assert round4._todo(done, 0.1, ["split"], qids, ["federator"], plan_overhead=True)
    round4._append(log, {"kind": "note", "text": "resumed"})  # after the torn line, not in it
    assert round4.read_rows(log)[-1] == {"kind": "note", "text": "resumed"}


def test_a_query_gets_a_parameter_from_its_first_compared_integer() -> None:
    assert round4.parametrized("SELECT 1 FROM t WHERE q < 24 AND d > 0.05") == (
        "SELECT 1 FROM t WHERE q < :p AND d > 0.05",
        24,
    )
    assert round4.parametrized("SELECT 1 FROM t WHERE d = date '1994-01-01'") is None
