"""Feature views' offline copies: Parquet files under a manifest, and the source that reads them.

A view's folder holds one refresh per sub-folder and a ``manifest.json`` that names the
current version's files::

    user_stats/
      manifest.json                     the versions, their refreshes and files (swapped whole)
      v1/r00001/date=2026-12-01/part.parquet
      v1/r00002/date=2026-12-02/part.parquet

A refresh is written under a temporary folder, renamed into place whole, and only then does a
new manifest replace the old one (``os.replace``): a reader that reads the manifest sees the
files of one refresh or the next, never half of one. Files are never changed once renamed.

The catalog's ``features`` source (kind ``features``) has one table per materialized view,
``features.NAME``: a DuckDB view over the files the manifest names when the request runs.

>>> import tempfile, pyarrow as pa
>>> root = Path(tempfile.mkdtemp())
>>> rows = pa.table({"id": [1, 2], "day": pa.array([0, 1], pa.int32()).cast(pa.date32())})
>>> write_refresh(root, rows, version=1, query_hash="h", day_column="day",
...     time_range=("2026-12-01", "2026-12-02"))["rows"]
2
>>> [p.parent.name for p in current_files(read_manifest(root), root)]
['date=1970-01-01', 'date=1970-01-02']
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from federator.adapters.base import TableRef
from federator.adapters.files import DataFile, FilesAdapter
from federator.adapters.sqlbase import SQLAdapter

from federator.config import SourceConfig
from federator.errors import CatalogError

MANIFEST = "manifest.json"


# ---- the manifest -----------------------------------------------------------------------------
def read_manifest(root: Path) -> dict[str, Any] | None:
    """The view's manifest, or None where nothing was materialized yet."""
    try:
        return json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        where = str(root / MANIFEST)
        raise CatalogError(f"feature view manifest {where!r} is unreadable: {e}") from None


def current(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest's current (last) version."""
    return manifest["versions"][-1]


def current_files(manifest: dict[str, Any] | None, root: Path) -> list[Path]:
    """The files of the current version, every refresh of it."""
    if manifest is None:
        return []
    return [root / f for r in current(manifest)["refreshes"] for f in r["files"]]


def manifest_schema(manifest: dict[str, Any]) -> pa.Schema:
    return schema_from_text(current(manifest)["schema"])


def schema_to_text(schema: pa.Schema) -> str:
    return base64.b64encode(schema.serialize().to_pybytes()).decode()


def schema_from_text(text: str) -> pa.Schema:
    return pa.ipc.read_schema(pa.py_buffer(base64.b64decode(text)))


@contextlib.contextmanager
def writer_lock(root: Path) -> Iterator[None]:
    """One writer at a time per view folder (an advisory lock on ``.lock``)."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ---- writing a refresh ---------------------------------------------------------------------
def write_refresh(
    root: Path,
    rows: pa.Table,
    *,
    version: int,
    query_hash: str,
    day_column: str | None,
    time_range: tuple[Any, Any],
) -> dict[str, Any]:
    """Add ``rows`` as one refresh of ``version`` (a new version when the manifest's current
    one differs): files under a temporary folder, renamed into place, then the manifest
    swapped. Returns the refresh's record (rows, time range, files, written_at)."""
    manifest = read_manifest(root) or {"versions": []}
    if not manifest["versions"] or current(manifest)["version"] != version:
        manifest["versions"].append(
            {
                "version": version,
                "query_hash": query_hash,
                "schema": schema_to_text(rows.schema),
                "refreshes": [],
            }
        )
    record = current(manifest)
    number = len(record["refreshes"]) + 1
    final = Path(f"v{version}") / f"r{number:05d}"
    files = _write_files(root, final, rows, day_column) if rows.num_rows else []
    refresh = {
        "since": time_range[0],
        "until": time_range[1],
        "rows": rows.num_rows,
        "written_at": dt.datetime.now(dt.UTC).isoformat(),
        "files": [str(f) for f in files],
    }
    record["refreshes"].append(refresh)
    _swap_manifest(root, manifest)
    return refresh


def _write_files(root: Path, final: Path, rows: pa.Table, day_column: str | None) -> list[Path]:
    """Parquet files of ``rows`` (one per day when ``day_column`` is given) written under a
    temporary folder that is then renamed to ``root / final`` whole."""
    tmp = root / f".tmp-{uuid.uuid4().hex}"
    tmp.mkdir(parents=True)
    try:
        names = []
        for part, label in _partitions(rows, day_column):
            folder = tmp / label if label else tmp
            folder.mkdir(exist_ok=True)
            pq.write_table(part, folder / "part.parquet")
            names.append(final / label / "part.parquet" if label else final / "part.parquet")
        (root / final).parent.mkdir(parents=True, exist_ok=True)
        if (root / final).exists():  # left by a run that died before its manifest swap
            shutil.rmtree(root / final)
        os.rename(tmp, root / final)
        return names
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _partitions(rows: pa.Table, day_column: str | None) -> Iterator[tuple[pa.Table, str]]:
    """``rows`` cut by the date (UTC) of ``day_column``, each with its ``date=YYYY-MM-DD``."""
    if day_column is None:
        yield rows, ""
        return
    days = day_of(rows.column(day_column))
    for day in pc.unique(days).to_pylist():
        mask = pc.is_null(days) if day is None else pc.equal(days, pa.scalar(day, days.type))
        label = "date=none" if day is None else f"date={day.isoformat()}"
        yield rows.filter(pc.fill_null(mask, False)), label


def day_of(values: pa.ChunkedArray) -> pa.ChunkedArray:
    """The UTC date of timestamp or date values."""
    t = values.type
    if pa.types.is_timestamp(t) and t.tz is not None:
        values = values.cast(pa.timestamp(t.unit))  # the UTC wall clock
    return values.cast(pa.date32())


def _swap_manifest(root: Path, manifest: dict[str, Any]) -> None:
    tmp = root / f".{MANIFEST}.{uuid.uuid4().hex}"
    tmp.write_text(json.dumps(manifest, indent=1))
    os.replace(tmp, root / MANIFEST)


# ---- the source --------------------------------------------------------------------------------
class FeatureViewsAdapter(FilesAdapter):
    """The catalog's ``features`` source: ``features.NAME`` reads view NAME's offline copy, the
    files its manifest names when the request starts. Made by the catalog, not declared."""

    kind = "features"

    def __init__(self, config: SourceConfig):
        SQLAdapter.__init__(self, config)
        self.views = {name: Path(p).expanduser() for name, p in config.options["views"].items()}
        self.path = Path(".")
        self._files: dict[str, DataFile] | None = None

    @property
    def where(self) -> str:
        return "feature views " + ", ".join(sorted(self.views))

    def scan(self) -> dict[str, DataFile]:
        """Every view materialized so far (one that never was has no table yet)."""
        return {
            name: DataFile(name, root, "view")
            for name, root in self.views.items()
            if (root / MANIFEST).exists()
        }

    async def freshness_token(self, tables: Sequence[TableRef]) -> str | None:
        """The views' manifests as files (inode, size, time): each refresh replaces the
        manifest, so a cached answer over a view lasts until its next refresh."""
        parts = []
        for ref in tables:
            root = self.views.get(ref.name)
            try:
                st = (root / MANIFEST).stat() if root is not None else None
            except FileNotFoundError:
                st = None
            if st is None:
                return None
            parts.append(f"{ref.name}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}")
        return ";".join(parts)

    def _describe(self, f: DataFile) -> tuple[pa.Schema, int | None]:
        manifest = read_manifest(f.path)
        if manifest is None:
            raise CatalogError(f"feature view {f.name!r} is not materialized yet")
        rows = sum(r["rows"] for r in current(manifest)["refreshes"])
        return manifest_schema(manifest), rows

    def _create_view(self, con: Any, f: DataFile) -> None:
        """The view's current files as of now, or an empty table of its schema."""
        manifest = read_manifest(f.path)
        if manifest is None:
            raise CatalogError(f"feature view {f.name!r} is not materialized yet")
        files = current_files(manifest, f.path)
        if files:
            con.read_parquet([str(p) for p in files]).create_view(f.name)
        else:
            con.register(f.name, manifest_schema(manifest).empty_table())
