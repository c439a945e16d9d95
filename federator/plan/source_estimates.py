"""Row estimates from the sources themselves, asked before the bind decisions.

Each fragment is translated as it will be sent (without a bind) and its source asked for its
own estimate (``Adapter.estimate_rows``: PostgreSQL's ``EXPLAIN (FORMAT JSON)``, MariaDB's
``EXPLAIN FORMAT=JSON``), all at once and within a small time budget: a source that errs or
is late leaves the catalog's estimate in place (:mod:`federator.plan.estimate`). Answers are
kept per request text and parameter values, so a repeated fragment is not asked twice.

>>> SourceEstimates(size=2).size
2
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from federator.catalog import Catalog
from federator.deadline import bound
from federator.plan.estimate import estimate_key
from federator.plan.model import Fragment

log = logging.getLogger(__name__)

_Key = tuple[str, str, tuple[str, ...]]


class SourceEstimates:
    """The sources' estimates of fragments, asked in parallel and kept (LRU of ``size``)."""

    def __init__(self, size: int = 1024):
        self.size = size
        self._kept: OrderedDict[_Key, int | None] = OrderedDict()

    async def ask(
        self,
        catalog: Catalog,
        fragments: Sequence[Fragment],
        params: Mapping[str, Any],
        seconds: float,
    ) -> dict[tuple[str, str], int]:
        """Each fragment's estimate from its source, by :func:`estimate_key`; fragments whose
        source gave none, erred or did not answer within ``seconds`` are left out."""
        found: dict[tuple[str, str], int] = {}
        asks: dict[_Key, asyncio.Task[int | None]] = {}
        wanted: list[tuple[tuple[str, str], _Key]] = []
        for frag in fragments:
            unbound = dataclasses.replace(frag, bind=None, notes=[])
            adapter = catalog.adapter(frag.source)
            request = adapter.translate(unbound).with_params(params)
            key = (frag.source, request.text, tuple(map(repr, request.params)))
            wanted.append((estimate_key(frag), key))
            if key in self._kept:
                self._kept.move_to_end(key)
            elif key not in asks:
                asks[key] = asyncio.ensure_future(adapter.estimate_rows(unbound, request))
        if asks:
            await self._settle(asks, bound(seconds))
        for shape, key in wanted:
            rows = self._kept.get(key)
            if rows is not None:
                found[shape] = rows
        return found

    async def _settle(
        self, asks: dict[_Key, asyncio.Task[int | None]], seconds: float | None
    ) -> None:
        """Wait up to ``seconds`` for the asks; keep the answers, cancel the late ones (all of
        them when planning itself is cancelled)."""
        try:
            done, late = await asyncio.wait(asks.values(), timeout=seconds)
        except BaseException:
            done, late = set(), set(asks.values())
            raise
        finally:
            for task in asks.values():
                if not task.done():
                    task.cancel()
            if late:
                await asyncio.gather(*late, return_exceptions=True)
        for key, task in asks.items():
            if task not in done or task.cancelled():
                log.debug("no estimate from %s within %.3g s", key[0], seconds or 0)
                continue
            error = task.exception()
            if error is not None:
                log.debug("no estimate from %s: %s", key[0], type(error).__name__)
                continue
            self._kept[key] = task.result()
            if len(self._kept) > self.size:
                self._kept.popitem(last=False)
