"""Small timing helpers: best-of-N wall time, percentiles, geometric means."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass
class Measure:
    name: str
    seconds: float | None  # best of the repeats; None when the method is unavailable
    rows: int = 0
    note: str = ""

    @property
    def rows_per_s(self) -> float | None:
        return self.rows / self.seconds if self.seconds else None


def best_of(name: str, fn: Callable[[], Any], repeats: int, rows: Callable[[Any], int]) -> Measure:
    """Run ``fn`` ``repeats`` times; the best wall time counts. Failures become a note."""
    best = math.inf
    count = 0
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            out = fn()
            best = min(best, time.perf_counter() - t0)
            count = rows(out)
            del out
    except Exception as e:  # a missing optional driver must not stop the whole run
        return Measure(name, None, 0, f"unavailable: {type(e).__name__}: {str(e)[:120]}")
    return Measure(name, best, count)


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    k = min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def geomean(values: list[float]) -> float:
    values = [v for v in values if v and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan
