"""In-memory Arrow tables as a source, queried with an in-process DuckDB like files.

The federation keeps one such source for the inputs it is handed rather than finds in a
catalog (``fed.training_set``'s entity rows): each table is registered under a fresh name,
planned like any other table (its fragment takes filters, projections, bind keys) and dropped
when the result that needed it is gone.

>>> import pyarrow as pa
>>> from federator.config import SourceConfig
>>> memory = MemoryAdapter(SourceConfig("_memory", "memory"))
>>> name = memory.add(pa.table({"id": [1, 2]}))
>>> [info.rows for info in memory._tables()]
[2]
>>> memory.drop(name)
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import pyarrow as pa
from federator.adapters.base import TableInfo, TableRef
from federator.adapters.files import FilesAdapter, _duckdb, _plain
from federator.rules import rule_set_for

from federator.config import SourceConfig

_NAMES = itertools.count()


class MemoryAdapter(FilesAdapter):
    """Arrow tables held in this process, under names :meth:`add` makes."""

    kind = "memory"

    def __init__(self, config: SourceConfig):  # no folder: skip FilesAdapter's check
        super(FilesAdapter, self).__init__(config)
        self.rules = rule_set_for("files")  # DuckDB runs it, as it runs files
        self._held: dict[str, pa.Table] = {}
        self._lock = threading.Lock()

    @property
    def where(self) -> str:
        return "(in memory)"

    def add(self, table: pa.Table, stem: str = "t") -> str:
        """Hold ``table`` under a new name (``stem`` plus a number) and return the name."""
        with self._lock:
            name = f"{stem}_{next(_NAMES)}"
            self._held[name] = table
        return name

    def drop(self, name: str) -> None:
        """Forget the table ``name`` (safe to call twice)."""
        with self._lock:
            self._held.pop(name, None)

    def _tables(self) -> list[TableInfo]:
        with self._lock:
            held = dict(self._held)
        return [
            TableInfo(self.name, TableRef("main", name), _plain(t.schema), t.num_rows)
            for name, t in held.items()
        ]

    def _row_groups(self, tree: Any) -> None:
        """No Parquet behind held tables: a scan of one is a single split."""
        return None

    def _connect(self, text: str, row_groups: tuple[str, tuple[int, ...]] | None = None) -> Any:
        """A fresh in-memory DuckDB with each held table the request names registered (held
        tables have no row groups: a memory table is always one split)."""
        with self._lock:
            held = {n: t for n, t in self._held.items() if f'"{n}"' in text}
        con = _duckdb().connect()
        try:
            con.execute("SET enable_progress_bar = false")
            for name, table in held.items():
                con.register(name, table)
        except BaseException:
            con.close()
            raise
        return con
