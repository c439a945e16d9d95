"""Redis through redis.asyncio: tables declared by key template and value type.

Catalog entry::

    [sources.kv]
    kind = "redis"
    url = "redis://127.0.0.1:6379/0"
    batch_size = 1000                      # keys per pipelined round trip

    [sources.kv.tables.user_features]
    key = "features:{user_id}"             # key columns are the {names} in the template
    type = "hash"                          # hash (HGETALL) | json (GET, a JSON object) | string
    columns = {user_id = "int64", clicks_7d = "float64", segment = "string"}
    rows = 100000                          # optional estimate (default: DBSIZE)

Tables are ``kv.user_features`` (namespace ``main``). Equality or IN on every key column becomes
exactly those keys, fetched with pipelined HGETALL (hash) or MGET (json, string) in batches; a
bind join supplies the keys at run time; without key conditions the fragment SCANs the key
pattern and EXPLAIN says so. A key that does not exist is a row that does not exist. A value
that does not convert to its declared type is an error naming the key and the field.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import decimal
import itertools
import json
import re
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from federator.adapters.arrowconv import to_array
from federator.adapters.base import Adapter, BindSpec, NativeRequest, TableInfo, TableRef
from federator.adapters.declared import parse_type
from federator.rules.redis import key_rules
from sqlglot import exp

from federator.config import SourceConfig, redact_dsn
from federator.errors import CatalogError, SourceError, SourceUnreachableError, UnsupportedError
from federator.plan.model import Fragment

NAMESPACE = "main"
VALUE_TYPES = ("hash", "json", "string")
DEFAULT_BATCH = 1000
_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


# ---- declared tables --------------------------------------------------------------------------
@dataclass
class KVTable:
    """One declared table: key template, value type and Arrow columns."""

    name: str
    template: str
    type: str
    columns: dict[str, pa.DataType]
    rows: int | None = None
    parts: list[str] = field(default_factory=list)  # literal text between key columns
    key_columns: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        pieces = _FIELD.split(self.template)
        self.parts, self.key_columns = pieces[0::2], pieces[1::2]
        if not self.key_columns:
            raise CatalogError(
                f"table {self.name!r}: key template {self.template!r} names no {{column}}"
            )
        if len(set(self.key_columns)) != len(self.key_columns):
            raise CatalogError(f"table {self.name!r}: key template repeats a column")
        for k in self.key_columns:
            self.columns.setdefault(k, pa.string())
        self._regex = re.compile(
            "^"
            + "".join(
                re.escape(p) + (f"(?P<{k}>.*?)" if k else "")
                for p, k in itertools.zip_longest(self.parts, self.key_columns, fillvalue="")
            )
            + "$",
            re.S,
        )
        if self.type == "string" and len(self.value_columns) != 1:
            raise CatalogError(
                f"table {self.name!r}: a string value is one column besides the key columns, "
                f"not {self.value_columns}"
            )

    @property
    def value_columns(self) -> list[str]:
        return [c for c in self.columns if c not in self.key_columns]

    def schema(self) -> pa.Schema:
        return pa.schema(list(self.columns.items()))

    def key(self, values: dict[str, str]) -> str:
        return "".join(
            p + values.get(k, "")
            for p, k in itertools.zip_longest(self.parts, self.key_columns, fillvalue="")
        )

    def pattern(self, fixed: dict[str, str]) -> str:
        """SCAN MATCH pattern: literal parts escaped, unknown key columns as ``*``."""
        out = []
        for p, k in itertools.zip_longest(self.parts, self.key_columns, fillvalue=""):
            out.append(_GLOB_SPECIAL.sub(r"\\\1", p))
            if k:
                out.append(_GLOB_SPECIAL.sub(r"\\\1", fixed[k]) if k in fixed else "*")
        return "".join(out)

    def parse_key(self, key: str) -> dict[str, str] | None:
        m = self._regex.match(key)
        return m.groupdict() if m else None


def declared_tables(spec: dict[str, Any], source: str) -> dict[str, KVTable]:
    tables = {}
    for name, t in (spec or {}).items():
        if not isinstance(t, dict) or "key" not in t:
            raise CatalogError(f"source {source!r}: table {name!r} needs a 'key' template")
        kind = str(t.get("type", "hash")).lower()
        if kind not in VALUE_TYPES:
            raise CatalogError(
                f"source {source!r}: table {name!r} has type {kind!r}; use one of {VALUE_TYPES}"
            )
        columns = {c: parse_type(str(ty)) for c, ty in (t.get("columns") or {}).items()}
        rows = t.get("rows")
        tables[name] = KVTable(
            name, str(t["key"]), kind, columns, int(rows) if rows is not None else None
        )
    return tables


# ---- text <-> values ----------------------------------------------------------------------------
def key_text(value: Any, type_: pa.DataType) -> str | None:
    """A SQL value as it appears in a key; None when it cannot be one of this column's keys."""
    if value is None:
        return None
    try:
        if pa.types.is_integer(type_):
            if isinstance(value, float) and not value.is_integer():
                return None
            return str(int(value))
        if pa.types.is_boolean(type_):
            return "true" if value else "false"
        if isinstance(value, (dt.date, dt.datetime)):
            return value.isoformat()
        return str(value)
    except (TypeError, ValueError):
        return None


def from_text(text: Any, type_: pa.DataType) -> Any:
    """A stored value (text, or a JSON value) as a Python value of ``type_``; raises ValueError."""
    if text is None:
        return None
    if pa.types.is_string(type_) or pa.types.is_large_string(type_):
        return text if isinstance(text, str) else json.dumps(text)
    if isinstance(text, str):
        if pa.types.is_integer(type_):
            return int(text)
        if pa.types.is_floating(type_):
            return float(text)
        if pa.types.is_boolean(type_):
            low = text.strip().lower()
            if low in ("1", "true", "t", "yes", "y"):
                return True
            if low in ("0", "false", "f", "no", "n"):
                return False
            raise ValueError(f"not a boolean: {text!r}")
        if pa.types.is_decimal(type_):
            try:
                return decimal.Decimal(text)
            except decimal.InvalidOperation:
                raise ValueError(f"not a decimal: {text!r}") from None
        if pa.types.is_timestamp(type_):
            value = dt.datetime.fromisoformat(text)
            return value.replace(tzinfo=dt.UTC) if type_.tz and value.tzinfo is None else value
        if pa.types.is_date(type_):
            return dt.date.fromisoformat(text)
        if pa.types.is_list(type_) or pa.types.is_struct(type_):
            return json.loads(text)
        if pa.types.is_binary(type_):
            return text.encode()
    if pa.types.is_integer(type_) and isinstance(text, float):
        if not text.is_integer():
            raise ValueError(f"not an integer: {text!r}")
        return int(text)
    if pa.types.is_integer(type_) and isinstance(text, bool):
        raise ValueError(f"not an integer: {text!r}")
    return text


# ---- the request -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    name: str


@dataclass
class KVRequest:
    """Adapter-private part of a request."""

    table: KVTable
    outputs: list[tuple[str, str, Any]]  # (output column, "column" | "literal", name or value)
    keys: dict[str, list[list[Any]]]  # key column -> value lists (ANDed: intersected)
    filters: dict[str, list[list[Any]]]  # other columns compared with values, checked here
    limit: int | None = None
    bind_column: str | None = None


def _value(node: exp.Expression) -> Any:
    if isinstance(node, exp.Placeholder):
        return Param(node.name)
    if isinstance(node, exp.Boolean):
        return node.this
    if isinstance(node, exp.Neg):
        return -_value(node.this)
    if isinstance(node, exp.Literal):
        if node.is_string:
            return node.this
        return int(node.this) if re.fullmatch(r"-?\d+", node.this) else float(node.this)
    raise UnsupportedError(f"Redis cannot take the value {node.sql()}")


def _conjuncts(node: exp.Expression | None) -> Iterable[exp.Expression]:
    if node is None:
        return []
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.And):
        return [c for part in node.flatten() for c in _conjuncts(part)]
    return [node]


def _show(values: list[Any]) -> str:
    return ", ".join(f":{v.name}" if isinstance(v, Param) else repr(v) for v in values)


# ---- the adapter --------------------------------------------------------------------------------
class RedisAdapter(Adapter):
    """``{"kind": "redis", "url": "redis://host:port/0", "tables": {...}}``"""

    kind = "redis"
    default_schema = NAMESPACE

    def __init__(self, config: SourceConfig):
        super().__init__(config)
        opts = config.options
        url = opts.get("url") or opts.get("dsn")
        if not url:
            raise CatalogError(f"source {config.name!r} (redis) needs a 'url' (redis://...)")
        self.url = str(url)
        self.kv_tables = declared_tables(opts.get("tables") or {}, config.name)
        if not self.kv_tables and not opts.get("serves_features"):
            raise CatalogError(
                f"source {config.name!r} (redis) declares no tables; add "
                f'[sources.{config.name}.tables.NAME] with key = "prefix:{{id}}" and columns'
            )
        self.batch_size = int(opts.get("batch_size", DEFAULT_BATCH))
        self.scan_count = int(opts.get("scan_count", 1000))
        self.timeout = float(opts.get("timeout", 10.0))
        key_columns = {k for t in self.kv_tables.values() for k in t.key_columns}
        self.rules.add(*key_rules(key_columns))
        self._client: Any = None

    @property
    def where(self) -> str:
        return redact_dsn(self.url)

    async def open(self) -> None:
        if self._client is None:
            import redis.asyncio as aioredis

            self._client = aioredis.from_url(
                self.url,
                decode_responses=True,
                # one deadline per round trip in _call, not a timer per reply of a pipeline
                socket_timeout=None,
                socket_connect_timeout=self.timeout,
                max_connections=max(self.max_concurrency * 2, 2),
            )

    async def client(self) -> Any:
        """The connection pool (a ``redis.asyncio.Redis``), opened on first use: what the
        feature views' online copies are written and read with."""
        await self.open()
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def _call(self, what: str, coro: Any) -> Any:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import RedisError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        try:
            async with asyncio.timeout(self.timeout):
                return await coro
        except TimeoutError:
            raise SourceError(
                f"source {self.name!r} (redis) at {self.where}: {what} took longer than "
                f"{self.timeout:g} s (set 'timeout' in the catalog)"
            ) from None
        except (RedisConnectionError, RedisTimeoutError, OSError) as e:
            raise SourceUnreachableError(self.name, self.where, str(e)) from None
        except RedisError as e:
            raise SourceError(f"source {self.name!r} (redis): {what} failed: {e}") from None

    # ---- metadata ---------------------------------------------------------------------------
    async def tables(self) -> list[TableInfo]:
        size = None
        if any(t.rows is None for t in self.kv_tables.values()):
            await self.open()
            size = await self._call("DBSIZE", self._client.dbsize())
        return [
            TableInfo(
                self.name,
                TableRef(NAMESPACE, t.name),
                t.schema(),
                t.rows if t.rows is not None else size,
            )
            for t in self.kv_tables.values()
        ]

    # ---- translate (pure) -------------------------------------------------------------------
    def translate(self, fragment: Fragment) -> NativeRequest:
        query = self.rules.rewrite(fragment.query)  # rules may write a node as another
        source_table = query.args.get("from_") and query.args["from_"].this
        if not isinstance(query, exp.Select) or not isinstance(source_table, exp.Table):
            raise UnsupportedError(
                f"source {self.name!r} (redis) reads one declared table per request; "
                f"it cannot run: {query.sql()}"
            )
        table = self.kv_tables.get(source_table.name)
        if table is None:
            raise UnsupportedError(f"source {self.name!r} has no table {source_table.name!r}")
        outputs: list[tuple[str, str, Any]] = []
        for s in query.selects:
            node = s.unalias()
            if isinstance(node, exp.Column):
                outputs.append((s.alias_or_name, "column", node.name))
            else:
                outputs.append((s.alias_or_name, "literal", _value(node)))
        keys: dict[str, list[list[Any]]] = {}
        filters: dict[str, list[list[Any]]] = {}
        where = query.args.get("where")
        for c in _conjuncts(where.this if where is not None else None):
            if isinstance(c, exp.EQ):
                col, val = (c.this, c.expression)
                if not isinstance(col, exp.Column):
                    col, val = val, col
                column, values = col.name, [_value(val)]
            elif isinstance(c, exp.In):
                column, values = c.this.name, [_value(v) for v in c.expressions]
            else:
                raise UnsupportedError(f"Redis cannot filter by {c.sql()}")
            target = keys if column in table.key_columns else filters
            target.setdefault(column, []).append(values)
        limit = query.args.get("limit")
        payload = KVRequest(
            table,
            outputs,
            keys,
            filters,
            int(limit.expression.this) if limit is not None else None,
        )
        request = NativeRequest(source=self.name, text="", payload=payload)
        request.param_names = sorted(
            {
                v.name
                for lists in (*keys.values(), *filters.values())
                for values in lists
                for v in values
                if isinstance(v, Param)
            }
            | {v.name for _, kind, v in outputs if kind == "literal" and isinstance(v, Param)}
        )
        if fragment.bind is not None:
            payload.bind_column = fragment.bind.key.name
            request.bind = BindSpec(
                column=payload.bind_column, style="keys", batch_size=self.batch_size
            )
        request.text = self._describe(payload)
        request.schema = pa.schema(
            [(c, table.columns[n]) for c, kind, n in outputs if kind == "column"]
        )
        return request

    def _describe(self, req: KVRequest) -> str:
        t = req.table
        fetch = "pipelined HGETALL" if t.type == "hash" else "MGET"
        lines = []
        bind_key = req.bind_column if req.bind_column in t.key_columns else None
        constrained = set(req.keys) | ({bind_key} if bind_key else set())
        if set(t.key_columns) <= constrained:
            conds = []
            for k in t.key_columns:
                if k == req.bind_column:
                    conds.append(f"{k} <- bind-join keys")
                for values in req.keys.get(k, []):
                    op = "=" if len(values) == 1 else "IN"
                    shown = _show(values) if len(values) == 1 else f"({_show(values)})"
                    conds.append(f"{k} {op} {shown}")
            lines.append(
                f"{fetch} {t.template} for {' AND '.join(conds)} "
                f"(batches of {self.batch_size:,} keys)"
            )
        else:
            fixed = {}
            for k, lists in req.keys.items():
                single = [v[0] for v in lists if len(v) == 1]
                if single:
                    text = (
                        None if isinstance(single[0], Param) else key_text(single[0], t.columns[k])
                    )
                    fixed[k] = text if text is not None else "{" + k + "}"
            missing = [k for k in t.key_columns if k not in constrained]
            lines.append(
                f"SCAN 0 MATCH {t.pattern(fixed)} COUNT {self.scan_count}, then {fetch} "
                f"(batches of {self.batch_size:,} keys)"
            )
            lines.append(
                f"WARNING: scans every key matching the pattern (no equality on "
                f"{', '.join(missing)}); add a condition on the key to look keys up"
            )
            for k, lists in req.keys.items():
                lines.append(f"keep keys with {k} IN ({'; '.join(_show(v) for v in lists)})")
        for column, lists in req.filters.items():
            lines.append(f"keep rows with {column} IN ({'; '.join(_show(v) for v in lists)})")
        if req.bind_column is not None and bind_key is None:
            lines.append(f"keep rows with {req.bind_column} <- bind-join keys")
        if req.limit is not None:
            lines.append(f"stop after {req.limit:,} rows")
        return "\n".join(lines)

    # ---- execute ----------------------------------------------------------------------------
    async def execute(
        self, request: NativeRequest, bind_values: Sequence[Any] | None = None
    ) -> AsyncIterator[pa.RecordBatch]:
        req: KVRequest = request.payload
        t = req.table
        params = dict(zip(request.param_names, request.params, strict=True))

        def bound(values: list[Any]) -> list[Any]:
            return [params[v.name] if isinstance(v, Param) else v for v in values]

        key_sets: dict[str, set[str]] = {}
        for column, lists in req.keys.items():
            for values in lists:
                texts = {key_text(v, t.columns[column]) for v in bound(values)} - {None}
                key_sets[column] = key_sets[column] & texts if column in key_sets else texts
        bind_filter: set[Any] | None = None
        if req.bind_column is not None and bind_values is not None:
            c = req.bind_column
            if c in t.key_columns:
                texts = {key_text(v, t.columns[c]) for v in bind_values} - {None}
                key_sets[c] = key_sets[c] & texts if c in key_sets else texts
            else:  # a value column: Redis cannot filter it, so the rows are kept here
                bind_filter = set(bind_values)
        filters = {
            column: [
                {from_text(v, t.columns[column]) if isinstance(v, str) else v for v in bound(vs)}
                for vs in lists
            ]
            for column, lists in req.filters.items()
        }
        if bind_filter is not None:
            filters.setdefault(req.bind_column, []).append(bind_filter)
        await self.open()
        if all(k in key_sets for k in t.key_columns):
            combos = itertools.product(*(sorted(key_sets[k]) for k in t.key_columns))
            keys: AsyncIterator[list[tuple[str, dict[str, str]]]] = _batches(
                (
                    (
                        t.key(dict(zip(t.key_columns, c, strict=True))),
                        dict(zip(t.key_columns, c, strict=True)),
                    )
                    for c in combos
                ),
                self.batch_size,
            )
        else:
            keys = self._scan(t, key_sets)
        outputs = [
            (c, kind, params[v.name] if isinstance(v, Param) else v) for c, kind, v in req.outputs
        ]
        # closed at once when the query ends early (a LIMIT, a cancel, a timeout): no SCAN or
        # fetch is sent after that
        rows = self._rows(t, keys, filters, outputs, request.schema, req.limit)
        async with contextlib.aclosing(keys), contextlib.aclosing(rows):
            async for batch in rows:
                yield batch

    async def _rows(
        self,
        t: KVTable,
        keys: AsyncIterator[list[tuple[str, dict[str, str]]]],
        filters: dict[str, list[set[Any]]],
        outputs: list[tuple[str, str, Any]],
        schema: pa.Schema | None,
        limit: int | None,
    ) -> AsyncIterator[pa.RecordBatch]:
        """The rows of the keys, ``batch_rows`` at a time, filtered, at most ``limit``."""
        rows: list[dict[str, Any]] = []
        total = 0
        yielded = False
        async for chunk in keys:
            for row in await self._fetch(t, chunk):
                if not all(row.get(c) in s for c, sets in filters.items() for s in sets):
                    continue
                rows.append(row)
                total += 1
                if limit is not None and total >= limit:
                    break
            if len(rows) >= self.batch_rows or (limit is not None and total >= limit):
                yield _batch(rows, outputs, schema)
                yielded = True
                rows = []
            if limit is not None and total >= limit:
                break
        if rows or not yielded:
            yield _batch(rows, outputs, schema)

    async def _scan(
        self, t: KVTable, key_sets: dict[str, set[str]]
    ) -> AsyncIterator[list[tuple[str, dict[str, str]]]]:
        fixed = {k: next(iter(s)) for k, s in key_sets.items() if len(s) == 1}
        if any(not s for s in key_sets.values()):
            return
        pattern = t.pattern(fixed)
        seen: set[str] = set()
        cursor: int | str = 0
        while True:
            cursor, found = await self._call(
                f"SCAN {pattern}",
                self._client.scan(cursor=cursor, match=pattern, count=self.scan_count),
            )
            chunk = []
            for key in found:
                if key in seen:
                    continue
                seen.add(key)
                parts = t.parse_key(key)
                if parts is None or any(parts[k] not in s for k, s in key_sets.items()):
                    continue
                chunk.append((key, parts))
            for i in range(0, len(chunk), self.batch_size):
                yield chunk[i : i + self.batch_size]
            if int(cursor) == 0:
                break

    async def _fetch(
        self, t: KVTable, chunk: list[tuple[str, dict[str, str]]]
    ) -> list[dict[str, Any]]:
        names = [k for k, _ in chunk]
        if t.type == "hash":
            pipe = self._client.pipeline(transaction=False)
            for k in names:
                pipe.hgetall(k)
            values = await self._call("pipelined HGETALL", pipe.execute())
        else:
            values = await self._call("MGET", self._client.mget(names))
        rows = []
        for (key, parts), raw in zip(chunk, values, strict=True):
            if not raw:  # a missing key (HGETALL gives {}, GET gives None) is a missing row
                continue
            if t.type == "hash":
                fields = raw
            elif t.type == "json":
                try:
                    fields = json.loads(raw)
                except json.JSONDecodeError as e:
                    raise SourceError(
                        f"source {self.name!r} (redis): key {key!r} is not JSON: {e}"
                    ) from None
                if not isinstance(fields, dict):
                    raise SourceError(
                        f"source {self.name!r} (redis): key {key!r} holds JSON "
                        f"{type(fields).__name__}, not an object"
                    )
            else:
                fields = {t.value_columns[0]: raw}
            row: dict[str, Any] = {}
            for column, type_ in t.columns.items():
                text = parts[column] if column in parts else fields.get(column)
                try:
                    row[column] = from_text(text, type_)
                except (ValueError, TypeError) as e:
                    raise SourceError(
                        f"source {self.name!r} (redis): key {key!r} field {column!r}: "
                        f"{text!r} is not {type_} ({e})"
                    ) from None
            rows.append(row)
        return rows


async def _batches(items: Iterable[Any], size: int) -> AsyncIterator[list[Any]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _batch(
    rows: list[dict[str, Any]], outputs: list[tuple[str, str, Any]], schema: pa.Schema | None
) -> pa.RecordBatch:
    arrays, names = [], []
    for column, kind, name in outputs:
        if kind == "literal":
            arrays.append(to_array([name] * len(rows), None))
        else:
            t = schema.field(column).type if schema is not None else None
            arrays.append(to_array([r[name] for r in rows], t))
        names.append(column)
    return pa.RecordBatch.from_arrays(arrays, names=names)
