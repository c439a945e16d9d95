"""Feature views' online copies: Redis hashes under versioned key namespaces and a pointer.

For view ``user_stats`` with key template ``user_stats:{user_id}``, refresh 3 of version 1
writes ``federator:fv:user_stats:v1.r3-<id>:user_stats:42`` (a hash: one field per column, a
null is an absent field) and the namespace's Arrow schema, then in one MULTI/EXEC sets the
pointer ``federator:fv:user_stats:current`` to the namespace and the manifest hash
``federator:fv:user_stats:manifest`` (version, query hash, time range, rows, written at,
history). A read is one script call per 1,000 keys that reads the pointer and every key's
fields (HMGET) atomically: a reader sees one refresh or the next, never half. An incremental
refresh starts its namespace as a server-side COPY of the current one; the previous namespace
expires ``grace`` seconds after the flip, so a read that began on it finishes on it.
Standalone Redis: the script derives key names, which Redis Cluster does not allow."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from federator.adapters.feature_files import schema_from_text, schema_to_text
from federator.adapters.redis import from_text, key_text
from federator.config import FeatureViewConfig
from federator.errors import FederatorError, QueryTimeoutError
from federator.lookup import MissingKeysError

PREFIX = "federator:fv:"
BATCH = 1000  # keys per pipelined round trip
HISTORY = 1000  # refreshes the manifest hash remembers
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def pointer_key(view: str) -> str:
    return f"{PREFIX}{view}:current"


def manifest_key(view: str) -> str:
    return f"{PREFIX}{view}:manifest"


def schema_key(view: str, namespace: str) -> str:
    """The Arrow schema (base64 IPC) of one namespace's rows."""
    return f"{PREFIX}{view}:schema:{namespace}"


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
    namespace = f"v{version}.r{number}-{uuid.uuid4().hex[:8]}"  # unique: schemas cache by it
    prefix = namespace_prefix(view.name, namespace)
    await _delete_namespace(client, prefix)  # what a failed attempt may have left
    if same and state is not None:
        await _copy_namespace(client, namespace_prefix(view.name, state.namespace), prefix)
    await _write_rows(client, view, prefix, latest_per_entity(rows, view))
    await client.set(schema_key(view.name, namespace), schema_to_text(rows.schema))
    history = [*(state.history if state else []), {"version": version, **record}][-HISTORY:]
    await _flip(client, view.name, namespace, version, query_hash, number, rows, record, history)
    if state is not None:
        old = namespace_prefix(view.name, state.namespace)
        grace = max(int(view.online["grace"]), 1)
        await _expire_namespace(client, old, grace)
        await client.expire(schema_key(view.name, state.namespace), grace)
    return namespace


def latest_per_entity(rows: pa.Table, view: FeatureViewConfig) -> pa.Table:
    """One row per entity: the one with the latest timestamp (the last of equal ones)."""
    for column in view.entity:  # a row without its key has no online place
        rows = rows.filter(pc.is_valid(rows.column(column)))
    if rows.num_rows == 0:
        return rows
    stamps = rows.column(view.timestamp)
    undated = rows.filter(pc.is_null(stamps))  # before every dated row: never the latest
    ordered = pa.concat_tables(
        [undated, rows.filter(pc.is_valid(stamps)).sort_by([(view.timestamp, "ascending")])]
    )
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
            pipe.expire(k, seconds)
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


# One round trip per batch of keys: the pointer (or the namespace an earlier batch of the
# same call read) and every key's fields, atomically. Standalone Redis (the keys are derived
# in the script, as Redis Cluster does not allow).
_READ_SCRIPT = """
local ns = ARGV[2]
if ns == '' then
  ns = redis.call('GET', KEYS[1])
  if not ns then return false end
end
local prefix = ARGV[1] .. ns .. ':'
local nf = tonumber(ARGV[3])
local fields = {}
for i = 1, nf do fields[i] = ARGV[3 + i] end
local out = {ns}
for i = 4 + nf, #ARGV do
  out[#out + 1] = redis.call('HMGET', prefix .. ARGV[i], unpack(fields))
end
return out
"""
_LAST_SEEN: dict[tuple[int, str], tuple[str, pa.Schema]] = {}  # (client, view) -> namespace


async def _read(
    client: Any, view: FeatureViewConfig, keys: Sequence[Any], missing: str
) -> pa.Table:
    """One round trip per batch of keys, rendered with the schema of the namespace seen last;
    when the pointer has moved since, the new namespace's schema is read and the batch is read
    again. Later batches read the namespace the first one saw."""
    entity_rows = [_entity_values(view, k) for k in keys]
    script = client.register_script(_READ_SCRIPT)
    seen = _LAST_SEEN.get((id(client), view.name))
    if seen is None:
        namespace = await _pointer(script, view)
        seen = (namespace, await _schema(client, view.name, namespace))
    namespace, schema = seen
    pinned = ""  # the first batch follows the pointer
    values: list[Any] = []
    batches = [entity_rows[i : i + BATCH] for i in range(0, len(entity_rows), BATCH)]
    done = 0
    while done < len(batches):
        types = {f.name: f.type for f in schema}
        rendered = [render_key(view, row, types) for row in batches[done]]
        reply = await script(
            keys=[pointer_key(view.name)],
            args=[f"{PREFIX}{view.name}:", pinned, len(schema), *schema.names, *rendered],
        )
        if not reply:
            raise _no_online_copy(view)
        if reply[0] != namespace:  # refreshed since: that namespace's schema, then again
            namespace = reply[0]
            schema = await _schema(client, view.name, namespace)
        else:
            values += reply[1:]
            done += 1
        pinned = namespace
    _LAST_SEEN[(id(client), view.name)] = (namespace, schema)
    return _assemble(view, schema, entity_rows, values, missing)


async def _pointer(script: Any, view: FeatureViewConfig) -> str:
    reply = await script(keys=[pointer_key(view.name)], args=[f"{PREFIX}{view.name}:", "", 0])
    if not reply:
        raise _no_online_copy(view)
    return reply[0]


async def _schema(client: Any, view: str, namespace: str) -> pa.Schema:
    text = await client.get(schema_key(view, namespace))
    if text is None:
        raise FederatorError(
            f"feature view {view!r}: the online copy {namespace!r} expired while being read; "
            "read again"
        )
    return schema_from_text(text)


def _no_online_copy(view: FeatureViewConfig) -> FederatorError:
    return FederatorError(
        f"feature view {view.name!r} has no online copy yet; run "
        f"`federator features materialize {view.name}`"
    )


def _assemble(
    view: FeatureViewConfig,
    schema: pa.Schema,
    entity_rows: list[dict[str, Any]],
    values: list[list[Any]],
    missing: str,
) -> pa.Table:
    """Typed columns: the entity columns as asked, then every other column of the view."""
    found = pa.array([any(v is not None for v in row) for row in values], pa.bool_())
    columns = {}
    for i, f in enumerate(schema):
        if f.name in view.entity:
            columns[f.name] = pa.array([r[f.name] for r in entity_rows], f.type)
        else:
            columns[f.name] = _decode(view, f, [row[i] for row in values])
    oldest = _oldest_allowed(view, schema)
    if oldest is not None:
        fresh = pc.greater_equal(
            columns[view.timestamp], oldest.cast(schema.field(view.timestamp).type)
        )
        found = pc.and_(found, pc.fill_null(fresh, False))
    if missing == "error" and not pc.all(found).as_py():
        lacking = [r for r, ok in zip(entity_rows, found.to_pylist(), strict=True) if not ok]
        raise MissingKeysError(
            f"feature view {view.name!r} has no online row for {len(lacking)} key(s): "
            f"{lacking[:10]}"
        )
    for f in schema:
        if f.name not in view.entity:
            columns[f.name] = pc.if_else(found, columns[f.name], pa.nulls(1, f.type)[0])
    order = [*view.entity, *(n for n in schema.names if n not in view.entity)]
    return pa.table({n: columns[n] for n in order})


def _decode(view: FeatureViewConfig, field: pa.Field, texts: list[Any]) -> pa.Array:
    """Stored texts as an array of the column's type: Arrow's own parsing where it has one."""
    t = field.type
    try:
        if pa.types.is_string(t) or pa.types.is_large_string(t):
            return pa.array(texts, t)
        if _arrow_parses(t):
            return pa.array(texts, pa.string()).cast(t)
        return pa.array([from_text(x, t) for x in texts], t)
    except (ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise FederatorError(
            f"feature view {view.name!r}: online values of {field.name!r} do not read as "
            f"{t}: {e}; materialize the view again"
        ) from None


def _arrow_parses(t: pa.DataType) -> bool:
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_boolean(t)
        or pa.types.is_decimal(t)
        or pa.types.is_date(t)
        or pa.types.is_timestamp(t)
    )


def time_column_type(view: FeatureViewConfig, schema: pa.Schema, needs: str, fix: str) -> Any:
    """The type of the view's timestamp column, which ``needs`` (a setting) requires to be a
    timestamp or a date; else an error saying so and how to ``fix`` it."""
    t = schema.field(view.timestamp).type
    if not (pa.types.is_timestamp(t) or pa.types.is_date(t)):
        raise FederatorError(
            f"feature view {view.name!r}: {needs} needs a timestamp or date column, and "
            f"{view.timestamp!r} is {t}; {fix}"
        )
    return t


def _oldest_allowed(view: FeatureViewConfig, schema: pa.Schema) -> pa.Scalar | None:
    """With a ``ttl``: the oldest timestamp a row may have to be served."""
    if view.ttl is None:
        return None
    t = time_column_type(view, schema, "ttl", "drop the ttl")
    oldest = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=view.ttl)
    if pa.types.is_date(t):
        return pa.scalar(oldest.date(), pa.date32())
    if t.tz is None:
        oldest = oldest.replace(tzinfo=None)  # naive timestamps are taken as UTC
    return pa.scalar(oldest, pa.timestamp("us", tz=t.tz))


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
