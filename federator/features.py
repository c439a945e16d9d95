"""Feature views: a federated query declared in the catalog, materialized and served.

``fed.features.materialize(name)`` runs the view's query (from the last materialized
timestamp on, where there is one), writes the offline copy (Parquet by date, see
:mod:`federator.adapters.feature_files`) and the online copy (Redis hashes, see
:mod:`federator.feature_online`), and records the refresh in each copy's manifest. A query
that changed since the last run (another hash) starts a new version, computed in full.
``fed.features.lookup(name, keys)`` reads the online copy; ``SELECT ... FROM features.NAME``
reads the offline copy.

>>> import sqlite3, tempfile, os, federator
>>> folder = tempfile.mkdtemp()
>>> with sqlite3.connect(os.path.join(folder, "e.db")) as db:
...     _ = db.execute("CREATE TABLE ev (id INTEGER, ts TEXT, n INTEGER)")
...     _ = db.execute("INSERT INTO ev VALUES (1, '2026-12-01', 3), (2, '2026-12-02', 5)")
>>> fed = federator.connect({"sources": {"db": {"kind": "sqlite",
...     "path": os.path.join(folder, "e.db")}}, "features": {"ev": {
...     "query": "SELECT id, ts, n FROM db.ev", "entity": "id", "timestamp": "ts",
...     "offline": {"path": os.path.join(folder, "ev"), "partition": "none"}}}})
>>> fed.features.materialize("ev").rows
2
>>> fed.sql("SELECT id, n FROM features.ev ORDER BY id").to_arrow().to_pylist()
[{'id': 1, 'n': 3}, {'id': 2, 'n': 5}]
>>> fed.close()
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from federator import feature_online as online
from federator.adapters.feature_files import (
    current,
    manifest_schema,
    read_manifest,
    write_refresh,
    writer_lock,
)
from federator.config import FEATURES_SOURCE, FeatureViewConfig, redact_text
from federator.errors import CatalogError, SourceError, SourceUnreachableError
from federator.lookup import _key_list
from federator.sql.dialect import Federated, parse

__all__ = ["FeatureViews", "Materialization"]

T = TypeVar("T")
_LAST = "federator_last"
_SINCE = "federator_since"


@dataclass(frozen=True)
class Materialization:
    """What one ``materialize`` did: the version written, the new rows and their time range
    (``since`` exclusive where the run was incremental, ``until`` the latest timestamp)."""

    view: str
    version: int
    new_version: bool
    rows: int
    since: Any
    until: Any
    offline_files: int = 0
    online_namespace: str | None = None


@dataclass(frozen=True)
class _CopyState:
    """Where one copy (offline or online) stands: its version, query hash, last timestamp."""

    version: int
    query_hash: str | None  # None: this run starts the version
    last: Any  # typed like the timestamp column; None: nothing materialized in this version


class FeatureViews:
    """``fed.features``: the catalog's feature views."""

    def __init__(self, fed: Any):
        self.fed = fed
        self.views: dict[str, FeatureViewConfig] = fed.config.features

    def __repr__(self) -> str:
        return f"<federator.FeatureViews {sorted(self.views)}>"

    def view(self, name: str) -> FeatureViewConfig:
        try:
            return self.views[name]
        except KeyError:
            known = ", ".join(sorted(self.views)) or "none; declare [features.NAME]"
            raise CatalogError(f"unknown feature view {name!r} (views: {known})") from None

    # ---- materialize ---------------------------------------------------------------------
    def materialize(self, name: str, since: Any = None) -> Materialization:
        """Compute view ``name`` and write its offline and online copies: the rows after the
        last materialized timestamp (all rows on a first run or for a changed query, which
        starts a new version), and only those at or after ``since`` where it is given.

        >>> fed.features.materialize("user_stats")  # doctest: +SKIP
        Materialization(view='user_stats', version=1, new_version=True, rows=1200, ...)
        """
        view = self.view(name)
        query_hash = hashlib.sha256(" ".join(view.query.split()).encode()).hexdigest()[:16]
        root = Path(view.offline["path"]).expanduser() if view.offline else None
        if root is None:
            return self._materialize(view, query_hash, None, since)
        with writer_lock(root):
            return self._materialize(view, query_hash, root, since)

    def _materialize(
        self, view: FeatureViewConfig, query_hash: str, root: Path | None, since: Any
    ) -> Materialization:
        offline_state = self._offline_state(view, root, query_hash) if root else None
        online_state = self._online_state(view, query_hash) if view.online else None
        states = [s for s in (offline_state, online_state) if s is not None]
        lasts = [s.last for s in states]
        start = None if any(last is None for last in lasts) else min(lasts)
        rows = self._compute(view, start, since)
        until = _max(rows.column(view.timestamp))
        version = max(s.version for s in states)
        result = {"files": 0, "namespace": None}
        if offline_state is not None and root is not None:
            part = _after(rows, view.timestamp, offline_state.last)
            if part.num_rows or offline_state.last is None:
                refresh = write_refresh(
                    root,
                    part,
                    version=offline_state.version,
                    query_hash=query_hash,
                    day_column=_day_column(view, rows.schema),
                    time_range=(_text(offline_state.last or since), _text(until)),
                )
                result["files"] = len(refresh["files"])
                self._forget_offline(view)
        if online_state is not None:
            part = _after(rows, view.timestamp, online_state.last)
            if part.num_rows or online_state.last is None:
                result["namespace"] = self._write_online(
                    view, part, online_state, query_hash, since, until
                )
        return Materialization(
            view=view.name,
            version=version,
            new_version=any(s.query_hash is None for s in states),
            rows=rows.num_rows,
            since=start if start is not None else since,
            until=until,
            offline_files=int(result["files"] or 0),
            online_namespace=result["namespace"],
        )

    def _forget_offline(self, view: FeatureViewConfig) -> None:
        """After a refresh: the view's table is read again (its schema may have changed) and
        cached answers over it are dropped, here and in every process sharing the cache."""
        self.fed.catalog.refresh(FEATURES_SOURCE)
        if self.fed.cache.enabled:
            self.fed.cache.invalidate(FEATURES_SOURCE, view.name)

    def _compute(self, view: FeatureViewConfig, after: Any, since: Any) -> pa.Table:
        """The view's rows with timestamp > ``after`` and >= ``since`` (each where given)."""
        query = parse(view.query)
        ts = exp.column(view.timestamp, table="federator_view", quoted=True)
        conditions: list[exp.Expression] = []
        params: dict[str, Any] = {}
        if after is not None:
            conditions.append(exp.GT(this=ts.copy(), expression=exp.Placeholder(this=_LAST)))
            params[_LAST] = after
        if since is not None:
            conditions.append(exp.GTE(this=ts.copy(), expression=exp.Placeholder(this=_SINCE)))
            params[_SINCE] = since
        wrapped = exp.select("*").from_(query.subquery("federator_view"))
        if conditions:
            wrapped = wrapped.where(exp.and_(*conditions))
        rows = self.fed.sql(wrapped.sql(dialect=Federated), params).to_arrow()
        lacking = [c for c in (*view.entity, view.timestamp) if c not in rows.column_names]
        if lacking:
            raise CatalogError(
                f"feature view {view.name!r}: its query returns no column {lacking[0]!r} "
                f"(it returns {', '.join(rows.column_names)}); fix 'entity', 'timestamp' or "
                "the query"
            )
        return rows

    # ---- the copies' states ------------------------------------------------------------------
    def _offline_state(self, view: FeatureViewConfig, root: Path, query_hash: str) -> _CopyState:
        manifest = read_manifest(root)
        if manifest is None:
            return _CopyState(1, None, None)
        record = current(manifest)
        if record["query_hash"] != query_hash:
            return _CopyState(record["version"] + 1, None, None)
        ts_type = manifest_schema(manifest).field(view.timestamp).type
        stamps = [r["until"] for r in record["refreshes"] if r["until"] is not None]
        return _CopyState(record["version"], query_hash, _typed(max(stamps, default=None), ts_type))

    def _online_state(self, view: FeatureViewConfig, query_hash: str) -> _CopyState:
        state = self.fed._loop.run(self._read_online_state(view))
        if state is None:
            return _CopyState(1, None, None)
        if state.query_hash != query_hash:
            return _CopyState(state.version + 1, None, None)
        ts_type = state.schema.field(view.timestamp).type
        return _CopyState(state.version, query_hash, _typed(state.last, ts_type))

    async def _on_redis(
        self, view: FeatureViewConfig, what: str, work: Callable[[Any], Awaitable[T]]
    ) -> T:
        """``work(client)`` on the view's Redis source; its failures as federator's errors,
        naming the source, its host:port and the view."""
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        assert view.online is not None
        adapter = self.fed.catalog.adapter(view.online["source"])
        try:
            return await work(await adapter.client())
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            raise SourceUnreachableError(adapter.name, adapter.where, redact_text(str(e))) from None
        except RedisError as e:
            raise SourceError(
                f"source {adapter.name!r} (redis): {what} of feature view {view.name!r} "
                f"failed: {redact_text(str(e))}"
            ) from None

    async def _read_online_state(self, view: FeatureViewConfig) -> online.OnlineState | None:
        return await self._on_redis(
            view, "reading the manifest", lambda c: online.read_state(c, view.name)
        )

    def _write_online(
        self,
        view: FeatureViewConfig,
        rows: pa.Table,
        state: _CopyState,
        query_hash: str,
        since: Any,
        until: Any,
    ) -> str:
        record = {
            "since": _text(state.last or since),
            "until": _text(until),
            "last": _text(until if until is not None else state.last),
            "rows": rows.num_rows,
            "written_at": dt.datetime.now(dt.UTC).isoformat(),
        }

        def write(client: Any) -> Awaitable[str]:
            return online.write_refresh(
                client, view, rows, version=state.version, query_hash=query_hash, record=record
            )

        return self.fed._loop.run(self._on_redis(view, "writing the online copy", write))

    # ---- serve -------------------------------------------------------------------------------
    def lookup(
        self, name: str, keys: Any, *, budget_ms: float | None = None, missing: str = "null"
    ) -> pa.Table:
        """Features of ``keys`` from view ``name``'s online copy: one row per key, in the order
        asked, typed as the view's columns; nulls for a key the copy lacks (``missing="error"``
        raises :class:`~federator.lookup.MissingKeysError`). Past ``budget_ms`` milliseconds it
        raises :class:`~federator.QueryTimeoutError`.

        >>> fed.features.lookup("user_stats", [1, 2, 99], budget_ms=20)  # doctest: +SKIP
        """
        return self.fed._loop.run(self._lookup(name, keys, budget_ms, missing))

    async def lookup_async(
        self, name: str, keys: Any, *, budget_ms: float | None = None, missing: str = "null"
    ) -> pa.Table:
        """:meth:`lookup` for async code."""
        return await self.fed._loop.run_async(self._lookup(name, keys, budget_ms, missing))

    async def _lookup(
        self, name: str, keys: Any, budget_ms: float | None, missing: str
    ) -> pa.Table:
        if missing not in ("null", "error"):
            raise ValueError("missing must be 'null' or 'error'")
        view = self.view(name)
        if view.online is None:
            raise CatalogError(
                f"feature view {name!r} has no online copy; add online = {{ source = ..., "
                "key = ... }} to it, or query features." + name
            )
        budget = budget_ms / 1000 if budget_ms is not None else None
        wanted = _key_list(keys)

        def read(client: Any) -> Awaitable[pa.Table]:
            return online.read(client, view, wanted, budget=budget, missing=missing)

        return await self._on_redis(view, "the lookup", read)


def _after(rows: pa.Table, column: str, last: Any) -> pa.Table:
    if last is None:
        return rows
    return rows.filter(
        pc.greater(rows.column(column), pa.scalar(last, rows.schema.field(column).type))
    )


def _max(values: pa.ChunkedArray) -> Any:
    return pc.max(values).as_py() if len(values) else None


def _day_column(view: FeatureViewConfig, schema: pa.Schema) -> str | None:
    assert view.offline is not None
    if view.offline["partition"] == "none":
        return None
    online.time_column_type(view, schema, "partition = 'date'", "set offline.partition = 'none'")
    return view.timestamp


def _text(value: Any) -> Any:
    """A timestamp bound as manifests keep it (JSON)."""
    if isinstance(value, dt.date | dt.datetime):
        return value.isoformat()
    return value


def _typed(value: Any, type_: pa.DataType) -> Any:
    """A bound from a manifest back as the timestamp column's Python value."""
    if value is None or value == "":
        return None
    if pa.types.is_timestamp(type_):
        return dt.datetime.fromisoformat(value)
    if pa.types.is_date(type_):
        return dt.date.fromisoformat(value)
    if pa.types.is_integer(type_):
        return int(value)
    if pa.types.is_floating(type_):
        return float(value)
    return value
