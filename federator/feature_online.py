"""Feature views' online copies: Redis hashes under versioned key namespaces and a pointer.

For view ``user_stats`` with key template ``user_stats:{user_id}``, refresh 3 of version 1
writes ``federator:fv:user_stats:v1.r3:user_stats:42`` (a hash: one field per column, a null
is an absent field), then in one MULTI/EXEC sets the pointer ``federator:fv:user_stats:current``
to ``v1.r3`` and the manifest hash ``federator:fv:user_stats:manifest`` (version, query hash,
time range, rows, written at, Arrow schema, history). Readers read the pointer and the schema
in one MULTI/EXEC, then the keys of that namespace with pipelined HMGET: they see one refresh
or the next, never half. An incremental refresh starts its namespace as a server-side COPY of
the current one; the previous namespace expires ``grace`` seconds after the flip, so a reader
that read the pointer just before finishes on it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from federator.adapters.feature_files import schema_from_text, schema_to_text
from federator.adapters.redis import from_text, key_text
from federator.config import FeatureViewConfig
from federator.errors import FederatorError, QueryTimeoutError
from federator.lookup import MissingKeysError

PREFIX = "federator:fv:"
BATCH = 1000  # keys per pipelined round trip
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def pointer_key(view: str) -> str:
    return f"{PREFIX}{view}:current"


def manifest_key(view: str) -> str:
    return f"{PREFIX}{view}:manifest"


def namespace_prefix(view: str, namespace: str) -> str:
    return f"{PREFIX}{view}:{namespace}:"


@dataclass(frozen=True)
class OnlineState:
    """What the manifest hash says of the current online copy."""

    version: int
    query_hash: str
    namespace: str
    refreshes: int
    last: str | None  # the last materialized timestamp, as text
    schema: pa.Schema
    history: list[dict[str, Any]]


async def read_state(client: Any, view: str) -> OnlineState | None:
    """The online copy's manifest, or None where none was written."""
    fields = await client.hgetall(manifest_key(view))
    if not fields:
        return None
    return OnlineState(
        version=int(fields["version"]),
        query_hash=fields["query_hash"],
        namespace=fields["namespace"],
        refreshes=int(fields["refreshes"]),
        last=fields.get("last") or None,
        schema=schema_from_text(fields["schema"]),
        history=json.loads(fields.get("history", "[]")),
    )


# ---- writing ------------------------------------------------------------------------------------
async def write_refresh(
    client: Any,
    view: FeatureViewConfig,
    rows: pa.Table,
    *,
    version: int,
    query_hash: str,
    record: dict[str, Any],
) -> str:
    """Write ``rows`` (new rows of ``version``; the latest per entity wins) as a new namespace
    and flip the pointer to it. ``record`` (since, until, rows, last) goes into the manifest.
    Returns the namespace."""
    assert view.online is not None
    state = await read_state(client, view.name)
    same = state is not None and state.version == version
    number = state.refreshes + 1 if same and state is not None else 1
    namespace = f"v{version}.r{number}"
    prefix = namespace_prefix(view.name, namespace)
    await _delete_namespace(client, prefix)  # what a failed attempt may have left
    if same and state is not None:
        await _copy_namespace(client, namespace_prefix(view.name, state.namespace), prefix)
    await _write_rows(client, view, prefix, latest_per_entity(rows, view))
    history = [*(state.history if state else []), {"version": version, **record}]
    await _flip(client, view.name, namespace, version, query_hash, number, rows, record, history)
    if state is not None:
        old = namespace_prefix(view.name, state.namespace)
        await _expire_namespace(client, old, int(view.online["grace"]))
    return namespace


def latest_per_entity(rows: pa.Table, view: FeatureViewConfig) -> pa.Table:
    """One row per entity: the one with the latest timestamp (the last of equal ones)."""
    if rows.num_rows == 0:
        return rows
    ordered = rows.sort_by([(view.timestamp, "ascending")])
    last: dict[tuple[Any, ...], int] = {}
    keys = zip(*(ordered.column(e).to_pylist() for e in view.entity), strict=True)
    for i, key in enumerate(keys):
        last[key] = i
    return ordered.take(pa.array(sorted(last.values()), pa.int64()))


async def _write_rows(client: Any, view: FeatureViewConfig, prefix: str, rows: pa.Table) -> None:
    assert view.online is not None
    types = {f.name: f.type for f in rows.schema}
    for f in rows.schema:
        if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type):
            raise FederatorError(
                f"feature view {view.name!r}: column {f.name!r} is binary, which the online "
                "copy cannot hold; cast it in the view's query or drop 'online'"
            )
    pylist = rows.to_pylist()
    for start in range(0, len(pylist), BATCH):
        pipe = client.pipeline(transaction=False)
        for row in pylist[start : start + BATCH]:
            key = prefix + render_key(view, row, types)
            pipe.delete(key)
            mapping = {k: to_text(v) for k, v in row.items() if v is not None}
            if mapping:
                pipe.hset(key, mapping=mapping)
        await pipe.execute()


async def _flip(
    client: Any,
    view: str,
    namespace: str,
    version: int,
    query_hash: str,
    refreshes: int,
    rows: pa.Table,
    record: dict[str, Any],
    history: list[dict[str, Any]],
) -> None:
    """The pointer and the manifest, together (MULTI/EXEC)."""
    fields = {
        "version": str(version),
        "query_hash": query_hash,
        "namespace": namespace,
        "refreshes": str(refreshes),
        "last": record.get("last") or "",
        "since": record.get("since") or "",
        "until": record.get("until") or "",
        "rows": str(record["rows"]),
        "written_at": record["written_at"],
        "schema": schema_to_text(rows.schema),
        "history": json.dumps(history),
    }
    pipe = client.pipeline(transaction=True)
    pipe.set(pointer_key(view), namespace)
    pipe.hset(manifest_key(view), mapping=fields)
    await pipe.execute()


async def _keys(client: Any, prefix: str) -> list[str]:
    pattern = re.sub(r"([*?\[\]\\])", r"\\\1", prefix) + "*"
    return [k async for k in client.scan_iter(match=pattern, count=BATCH)]


async def _copy_namespace(client: Any, old: str, new: str) -> None:
    keys = await _keys(client, old)
    for start in range(0, len(keys), BATCH):
        pipe = client.pipeline(transaction=False)
        for k in keys[start : start + BATCH]:
            pipe.copy(k, new + k[len(old) :], replace=True)
        await pipe.execute()


async def _expire_namespace(client: Any, prefix: str, seconds: int) -> None:
    keys = await _keys(client, prefix)
    for start in range(0, len(keys), BATCH):
        pipe = client.pipeline(transaction=False)
        for k in keys[start : start + BATCH]:
            pipe.expire(k, max(seconds, 1))
        await pipe.execute()


async def _delete_namespace(client: Any, prefix: str) -> None:
    keys = await _keys(client, prefix)
    for start in range(0, len(keys), BATCH):
        await client.delete(*keys[start : start + BATCH])


# ---- reading ----------------------------------------------------------------------------------
async def read(
    client: Any,
    view: FeatureViewConfig,
    keys: Sequence[Any],
    *,
    budget: float | None = None,
    missing: str = "null",
) -> pa.Table:
    """The online copy's rows for ``keys``: one row per key, in order; a key the copy lacks (or
    whose row is older than the view's ``ttl``) has null features, or raises
    :class:`~federator.lookup.MissingKeysError` with ``missing="error"``. Past ``budget``
    seconds: :class:`~federator.QueryTimeoutError`."""
    try:
        async with asyncio.timeout(budget):
            return await _read(client, view, keys, missing)
    except TimeoutError:
        raise QueryTimeoutError(
            budget or 0, f"the online lookup of {len(keys)} key(s) in feature view {view.name!r}"
        ) from None


async def _read(
    client: Any, view: FeatureViewConfig, keys: Sequence[Any], missing: str
) -> pa.Table:
    pipe = client.pipeline(transaction=True)
    pipe.get(pointer_key(view.name))
    pipe.hget(manifest_key(view.name), "schema")
    namespace, schema_text = await pipe.execute()
    if namespace is None or schema_text is None:
        raise FederatorError(
            f"feature view {view.name!r} has no online copy yet; run "
            f"`federator features materialize {view.name}`"
        )
    schema = schema_from_text(schema_text)
    entity_rows = [_entity_values(view, k) for k in keys]
    types = {f.name: f.type for f in schema}
    prefix = namespace_prefix(view.name, namespace)
    names = schema.names
    values: list[list[Any]] = []
    for start in range(0, len(entity_rows), BATCH):
        pipe = client.pipeline(transaction=False)
        for row in entity_rows[start : start + BATCH]:
            pipe.hmget(prefix + render_key(view, row, types), names)
        values += await pipe.execute()
    return _assemble(view, schema, entity_rows, values, missing)


def _assemble(
    view: FeatureViewConfig,
    schema: pa.Schema,
    entity_rows: list[dict[str, Any]],
    values: list[list[Any]],
    missing: str,
) -> pa.Table:
    """Typed columns: the entity columns as asked, then every other column of the view."""
    oldest = _oldest_allowed(view, schema)
    ts_at = schema.names.index(view.timestamp)
    ts_type = schema.field(view.timestamp).type
    found = []
    for row in values:
        hit = any(v is not None for v in row)
        if hit and oldest is not None:
            stamp = from_text(row[ts_at], ts_type)
            hit = stamp is not None and _comparable(stamp) >= oldest
        found.append(hit)
    if missing == "error" and not all(found):
        lacking = [r for r, ok in zip(entity_rows, found, strict=True) if not ok]
        raise MissingKeysError(
            f"feature view {view.name!r} has no online row for {len(lacking)} key(s): "
            f"{lacking[:10]}"
        )
    arrays, fields = [], []
    for i, f in enumerate(schema):
        if f.name in view.entity:
            column = [r[f.name] for r in entity_rows]
        else:
            column = [
                _decode(view, f, row[i]) if ok else None
                for row, ok in zip(values, found, strict=True)
            ]
        arrays.append(pa.array(column, f.type))
        fields.append(pa.field(f.name, f.type))
    order = [*view.entity, *(n for n in schema.names if n not in view.entity)]
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields)).select(order)


def _decode(view: FeatureViewConfig, field: pa.Field, text: Any) -> Any:
    try:
        return from_text(text, field.type)
    except ValueError as e:
        raise FederatorError(
            f"feature view {view.name!r}: online value of {field.name!r} does not read as "
            f"{field.type}: {e}; materialize the view again"
        ) from None


def _oldest_allowed(view: FeatureViewConfig, schema: pa.Schema) -> float | None:
    """With a ``ttl``: the oldest timestamp (epoch seconds) a row may have to be served."""
    if view.ttl is None:
        return None
    t = schema.field(view.timestamp).type
    if not (pa.types.is_timestamp(t) or pa.types.is_date(t)):
        raise FederatorError(
            f"feature view {view.name!r}: ttl needs a timestamp or date column, and "
            f"{view.timestamp!r} is {t}"
        )
    return time.time() - view.ttl


def _comparable(stamp: Any) -> float:
    if isinstance(stamp, dt.datetime):
        aware = stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)
        return aware.timestamp()
    return dt.datetime.combine(stamp, dt.time(), dt.UTC).timestamp()


# ---- keys and values --------------------------------------------------------------------------
def _entity_values(view: FeatureViewConfig, key: Any) -> dict[str, Any]:
    """A requested key as ``{entity column: value}``: a scalar for one entity column, a tuple
    (in the entity's order) or a dict for several."""
    if isinstance(key, dict):
        if set(key) != set(view.entity):
            raise FederatorError(
                f"feature view {view.name!r}: a key needs exactly {list(view.entity)}, got "
                f"{sorted(key)}"
            )
        return dict(key)
    if len(view.entity) == 1:
        return {view.entity[0]: key}
    if not isinstance(key, tuple | list) or len(key) != len(view.entity):
        raise FederatorError(
            f"feature view {view.name!r}: a key is a tuple of {list(view.entity)}, got {key!r}"
        )
    return dict(zip(view.entity, key, strict=True))


def render_key(view: FeatureViewConfig, row: dict[str, Any], types: dict[str, Any]) -> str:
    """The Redis key of an entity under the view's template, values written as the Redis
    adapter writes key values (``key_text``)."""
    assert view.online is not None

    def value(m: re.Match[str]) -> str:
        text = key_text(row[m.group(1)], types[m.group(1)])
        return "" if text is None else text

    return _FIELD.sub(value, view.online["key"])


def to_text(value: Any) -> str:
    """A value as a hash field's text, read back by the Redis adapter's ``from_text``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, decimal.Decimal | int | str):
        return str(value)
    return json.dumps(value, default=str)
