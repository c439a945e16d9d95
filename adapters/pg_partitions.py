"""Parallel scans of a whole PostgreSQL table: ctid ranges read in one exported snapshot.

A plain whole-table scan estimated large enough runs as several COPYs of ``[low, high)`` tid
ranges at once, one connection each, every transaction in the snapshot the first exports
(:meth:`federator.adapters.postgres.PostgresAdapter.run_partitioned`). Here: what such a scan
is (``PartitionedScan``), which trees qualify, the ranges, and the queue their batches meet in.
"""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pyarrow as pa

from federator.errors import SourceError

_LOW, _HIGH = "__ctid_low__", "__ctid_high__"  # parameters of a partition's ctid range
_MAX_BLOCK = 2**32 - 1  # a tid's block number is 32 bits: the open end of the last range
_SNAPSHOT_ID = re.compile(r"[0-9A-Fa-f-]+")


_BEGIN_SNAPSHOT = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"


# A relation's kind and current size in pages (not relpages: that is as of the last ANALYZE).
_PAGES_SQL = """
SELECT c.relkind::text AS kind,
       pg_catalog.pg_relation_size(c.oid) / current_setting('block_size')::bigint AS pages
FROM pg_catalog.pg_class c
WHERE c.oid = to_regclass($1::text)
"""


@dataclass(frozen=True)
class PartitionedScan:
    """A whole-table scan run as ctid ranges: the table, the SELECT with its range as two
    parameters, the parameter names in order, and how many partitions."""

    table: str  # quoted name for to_regclass
    text: str
    names: list[str]
    partitions: int


def ctid_ranges(pages: int, partitions: int) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    """``[low, high)`` tid ranges covering a table of ``pages`` pages in ``partitions`` even
    parts; the last is open-ended, so rows in pages added since the size was read count too.

    >>> ctid_ranges(10, 3)
    [((0, 0), (3, 0)), ((3, 0), (6, 0)), ((6, 0), (4294967295, 0))]
    """
    bounds = [pages * i // partitions for i in range(partitions)] + [_MAX_BLOCK]
    return [((lo, 0), (hi, 0)) for lo, hi in itertools.pairwise(bounds)]


def _snapshot_literal(snapshot: str) -> str:
    """A snapshot id as a SQL literal (SET TRANSACTION SNAPSHOT takes no parameters)."""
    if not _SNAPSHOT_ID.fullmatch(snapshot):
        raise SourceError(f"unexpected snapshot id from pg_export_snapshot(): {snapshot!r}")
    return f"'{snapshot}'"


async def _drain(
    queue: asyncio.Queue[pa.RecordBatch | BaseException | None], partitions: int
) -> AsyncIterator[pa.RecordBatch]:
    """Batches from the partitions' queue until each has finished; the first failure raises."""
    left = partitions
    while left:
        item = await queue.get()
        if item is None:
            left -= 1
        elif isinstance(item, BaseException):
            raise item
        else:
            yield item
