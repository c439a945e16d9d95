"""What the parts around one execution see of it, so none imports the executor.

The executor (:mod:`federator.execute.executor`) runs a plan and calls two helpers that hold
it as a handle: the vector top-k rounds (:mod:`federator.execute.topk`) and the result cache
(:mod:`federator.cache`), which the executor in turn reaches through :class:`ResultCache`.
Both protocols live here, below all three, so imports flow one way.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

    from federator.catalog import Catalog
    from federator.plan.model import Fragment, FragmentStats, Plan


class ExecutionHandle(Protocol):
    """One run of a plan (:class:`federator.execute.Execution`) as its helpers use it."""

    plan: Plan
    catalog: Catalog
    params: Mapping[str, Any]
    max_staleness: float | None
    stats: dict[str, FragmentStats]
    residual_stats: FragmentStats
    _running: set[str]
    _semaphores: dict[str, asyncio.Semaphore]

    def _fragment_batches(
        self, frag: Fragment, keys: list[Any] | None, use_cache: bool = True
    ) -> AsyncIterator[pa.RecordBatch]: ...

    async def _fetch_all(self) -> dict[str, pa.Table]: ...

    def _residual(self, tables: dict[str, pa.Table]) -> AsyncIterator[pa.RecordBatch]: ...


class ResultCache(Protocol):
    """Fragment and join results kept across executions (:class:`federator.cache.Cache`)."""

    def fragment_batches(
        self, ex: ExecutionHandle, frag: Fragment, keys: Sequence[Any] | None
    ) -> AsyncIterator[pa.RecordBatch]: ...

    def join_batches(self, ex: ExecutionHandle) -> AsyncIterator[pa.RecordBatch]: ...
