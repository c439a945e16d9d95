"""Files: Parquet, CSV and Arrow IPC files in a folder, queried with an in-process DuckDB.

Every ``*.parquet``, ``*.csv``, ``*.arrow``, ``*.feather`` and ``*.ipc`` file directly in the
folder is a table named by its stem, in schema ``main``. Each request gets its own DuckDB
connection in which the tables it names are views over the files, and streams Arrow batches.

>>> import os, tempfile, pyarrow as pa, pyarrow.parquet as pq, federator
>>> folder = tempfile.mkdtemp()
>>> pq.write_table(pa.table({"id": [1, 2, 3]}), os.path.join(folder, "t.parquet"))
>>> with federator.connect({"sources": {"f": {"kind": "files", "path": folder}}}) as fed:
...     fed.sql("SELECT count(*) AS n, max(id) AS m FROM f.t").to_arrow().to_pylist()
[{'n': 3, 'm': 3}]
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
from federator.adapters.arrowconv import conform, next_batch
from federator.adapters.base import NativeRequest, Split, TableInfo, TableRef, whole_split
from federator.adapters.splits import splittable_tree
from federator.adapters.sqlbase import SQLAdapter, SQLPayload
from sqlglot import exp

from federator.config import SourceConfig
from federator.errors import CatalogError

FORMATS = {
    ".parquet": "parquet",
    ".csv": "csv",
    ".arrow": "ipc",
    ".feather": "ipc",
    ".ipc": "ipc",
}
_CSV_COUNT_LIMIT = 64 * 1024 * 1024  # count CSV lines exactly below this size, else estimate


@dataclass(frozen=True)
class DataFile:
    """One table's file: where it is and how to read it."""

    name: str
    path: Path
    format: str  # "parquet" | "csv" | "ipc"


@dataclass
class RowGroupsPayload(SQLPayload):
    """A split's request: the request's SQL over some row groups of one Parquet table."""

    table: str = ""
    row_groups: tuple[int, ...] = ()


class FilesAdapter(SQLAdapter):
    """``{"kind": "files", "path": "data/"}``"""

    kind = "files"
    dialect = "duckdb"
    param_style = "qmark"
    bind_style = "array"  # DuckDB takes a list parameter: key = ANY(?)
    keep_schema = False
    default_schema = "main"

    def __init__(self, config: SourceConfig):
        super().__init__(config)
        if "path" not in config.options:
            raise CatalogError(f"source {config.name!r} (files) needs a 'path' to a folder")
        self.path = Path(str(config.options["path"])).expanduser()
        self._files: dict[str, DataFile] | None = None

    @property
    def where(self) -> str:
        return str(self.path)

    # ---- discovery -------------------------------------------------------------------
    def scan(self) -> dict[str, DataFile]:
        """The data files of the folder by table name (re-reads the folder every call)."""
        if not self.path.is_dir():
            what = "is not a folder" if self.path.exists() else "does not exist"
            raise CatalogError(f"source {self.name!r}: files folder {str(self.path)!r} {what}")
        found: dict[str, DataFile] = {}
        for p in sorted(self.path.iterdir()):
            fmt = FORMATS.get(p.suffix.lower())
            if fmt is None or not p.is_file():
                continue
            if p.stem in found:
                raise CatalogError(
                    f"source {self.name!r}: two files make table {p.stem!r} "
                    f"({found[p.stem].path.name}, {p.name}); rename one"
                )
            found[p.stem] = DataFile(p.stem, p, fmt)
        return found

    async def tables(self) -> list[TableInfo]:
        return await asyncio.to_thread(self._tables)

    def _tables(self) -> list[TableInfo]:
        self._files = self.scan()
        return [
            TableInfo(self.name, TableRef("main", f.name), *self._describe(f))
            for f in self._files.values()
        ]

    def _describe(self, f: DataFile) -> tuple[pa.Schema, int | None]:
        try:
            if f.format == "parquet":
                import pyarrow.parquet as pq

                meta = pq.ParquetFile(f.path)
                return _plain(meta.schema_arrow), meta.metadata.num_rows
            if f.format == "ipc":
                return _describe_ipc(f.path)
            con = _duckdb().connect()
            try:
                schema = con.read_csv(str(f.path)).limit(0).to_arrow_table().schema
            finally:
                con.close()
            return _plain(schema), _count_csv_rows(f.path)
        except CatalogError:
            raise
        except Exception as e:
            raise CatalogError(
                f"source {self.name!r}: cannot read {f.format} file {f.path.name!r}: {e}"
            ) from None

    # ---- splits (a distributed engine's scan) ----------------------------------------
    @contextlib.asynccontextmanager
    async def split_scan(self, request: NativeRequest, n: int) -> AsyncIterator[list[Split]]:
        """A plain scan of a Parquet table as at most ``n`` runs of consecutive row groups;
        other files (CSV, Arrow IPC), one-row-group files and other requests are one split."""
        tree = splittable_tree(request)
        groups = await asyncio.to_thread(self._row_groups, tree) if tree is not None else None
        if n < 2 or groups is None or groups[1] < 2:
            yield [whole_split(self.name, request)]
            return
        f, count = groups
        parts = min(n, count)
        bounds = [count * i // parts for i in range(parts + 1)]
        splits = []
        for i in range(parts):
            groups_read = tuple(range(bounds[i], bounds[i + 1]))
            payload = RowGroupsPayload(
                **{**vars(request.payload), "table": f.name, "row_groups": groups_read}
            )
            shown = f"file {f.path.name} row groups {bounds[i]}-{bounds[i + 1] - 1}"
            splits.append(
                Split(self.name, i, parts, replace(request, payload=payload), None, shown)
            )
        yield splits

    def _row_groups(self, tree: exp.Query) -> tuple[DataFile, int] | None:
        """The Parquet file a plain scan reads and its number of row groups (None: no Parquet)."""
        import pyarrow.parquet as pq

        if self._files is None:
            self._files = self.scan()
        f = self._files.get(next(tree.find_all(exp.Table)).name)
        if f is None or f.format != "parquet":
            return None
        return f, pq.ParquetFile(f.path).num_row_groups

    def execute_split(self, split: Split) -> AsyncIterator[pa.RecordBatch]:
        """A split of row groups: the request's SQL with its table read from those groups."""
        payload = split.request.payload
        if not isinstance(payload, RowGroupsPayload) or not payload.row_groups:
            return self.execute(split.request)
        values = dict(zip(split.request.param_names, split.request.params, strict=True))
        params = [values[n] for n in payload.unbound_names]
        only = (payload.table, payload.row_groups)
        return self.run(payload.unbound_text, params, split.request.schema, only)

    # ---- execute ---------------------------------------------------------------------
    async def run(
        self,
        text: str,
        params: list[Any],
        schema: pa.Schema | None,
        row_groups: tuple[str, tuple[int, ...]] | None = None,
    ) -> AsyncIterator[pa.RecordBatch]:
        """Run ``text`` over views of the files it names; ``row_groups``: (table, groups) to
        read of that table's Parquet file instead of all of it (a split)."""
        con = await asyncio.to_thread(self._connect, text, row_groups)
        calls = _Calls()
        try:
            reader = await calls.run(self._start, con, text, params)
            empty = True
            while (batch := await calls.run(next_batch, reader)) is not None:
                empty = False
                yield conform(batch, schema, strict=False)
            if empty:
                nothing = pa.RecordBatch.from_pylist([], schema=reader.schema)
                yield conform(nothing, schema, strict=False)
        finally:
            calls.close(con)

    def _connect(self, text: str, row_groups: tuple[str, tuple[int, ...]] | None = None) -> Any:
        """A fresh in-memory DuckDB with a view for every table the request names."""
        if self._files is None:
            self._files = self.scan()
        duckdb = _duckdb()
        con = duckdb.connect()
        try:
            con.execute("SET enable_progress_bar = false")
            for f in self._files.values():
                if f'"{f.name}"' not in text:
                    continue
                if row_groups is not None and row_groups[0] == f.name:
                    con.register(f.name, _read_row_groups(f.path, row_groups[1]))
                else:
                    self._create_view(con, f)
        except BaseException:
            con.close()
            raise
        return con

    def _create_view(self, con: Any, f: DataFile) -> None:
        """Table ``f.name`` in ``con``: a view over its file."""
        if not f.path.exists():
            raise CatalogError(
                f"source {self.name!r}: file {f.path.name!r} disappeared from {str(self.path)!r}"
            )
        if f.format == "parquet":
            con.read_parquet(str(f.path)).create_view(f.name)
        elif f.format == "csv":
            con.read_csv(str(f.path)).create_view(f.name)
        else:
            con.register(f.name, _ipc_dataset(f.path))

    def _start(self, con: Any, text: str, params: list[Any]) -> pa.RecordBatchReader:
        relation = con.sql(text, params=params or None)
        if hasattr(relation, "to_arrow_reader"):  # DuckDB >= 2.0
            return relation.to_arrow_reader(self.batch_rows)
        return relation.fetch_arrow_reader(self.batch_rows)


class _Calls:
    """Blocking DuckDB calls on worker threads, remembering the one in flight so that a
    cancelled request interrupts it and closes the connection once the call has returned
    (DuckDB refuses to close a connection that another thread is using)."""

    def __init__(self) -> None:
        self.pending: concurrent.futures.Future[Any] | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        self.pending = _executor().submit(fn, *args)
        return await asyncio.wrap_future(self.pending)

    def close(self, con: Any) -> None:
        if self.pending is not None and not self.pending.done():
            with contextlib.suppress(Exception):
                con.interrupt()
            self.pending.add_done_callback(lambda _: _close_quietly(con))
        else:
            _close_quietly(con)


_EXECUTOR: concurrent.futures.ThreadPoolExecutor | None = None
_EXECUTOR_LOCK = threading.Lock()


def _executor() -> concurrent.futures.ThreadPoolExecutor:
    global _EXECUTOR
    with _EXECUTOR_LOCK:
        if _EXECUTOR is None:
            _EXECUTOR = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="federator-files")
        return _EXECUTOR


def _close_quietly(con: Any) -> None:
    with contextlib.suppress(Exception):
        con.close()


def _duckdb() -> Any:
    import duckdb

    return duckdb


def _plain(schema: pa.Schema) -> pa.Schema:
    """Dictionary columns as their value type; no writer metadata."""
    fields = [
        pa.field(
            f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type, f.nullable
        )
        for f in schema
    ]
    return pa.schema(fields)


def _read_row_groups(path: Path, groups: tuple[int, ...]) -> pa.Table:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read_row_groups(list(groups))


def _ipc_dataset(path: Path) -> Any:
    import pyarrow.dataset as ds

    try:
        return ds.dataset(str(path), format="ipc")
    except (pa.ArrowInvalid, OSError):  # an IPC stream rather than a file: read it whole
        with pa.OSFile(str(path)) as source:
            return pa.ipc.open_stream(source).read_all()


def _describe_ipc(path: Path) -> tuple[pa.Schema, int | None]:
    with pa.memory_map(str(path)) as source:
        try:
            reader = pa.ipc.open_file(source)
        except pa.ArrowInvalid:
            source.seek(0)
            table = pa.ipc.open_stream(source).read_all()
            return _plain(table.schema), table.num_rows
        rows = sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        return _plain(reader.schema), rows


def _count_csv_rows(path: Path) -> int:
    """Data rows of a CSV: exact for small files, else extrapolated from the first MiB."""
    size = path.stat().st_size
    with path.open("rb") as fh:
        if size <= _CSV_COUNT_LIMIT:
            lines = 0
            last = b"\n"
            while chunk := fh.read(1 << 20):
                lines += chunk.count(b"\n")
                last = chunk[-1:]
            if last != b"\n":
                lines += 1
            return max(0, lines - 1)
        head = fh.read(1 << 20)
    per_line = len(head) / max(1, head.count(b"\n"))
    return max(0, int(size / per_line) - 1)
