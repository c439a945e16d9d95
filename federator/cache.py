"""Result cache: fragment results and frequent joins kept hot, shared through Redis, never stale.

Two levels, one store:

* **Fragment results** keyed by the source (its identity, not only its name), the native request
  text as the adapter rendered it, the parameter values and a digest of the bind-join keys.
* **Join results**: every plan with a residual has a *shape* — its fragments' queries and the
  residual with literals abstracted. A shape seen ``join_threshold`` times within
  ``join_window`` seconds has its final answer materialized, keyed by the exact texts and the
  parameter values.

Entries are Arrow tables in an in-process LRU with a byte budget, and optionally in Redis as
compressed Arrow IPC so several processes share them. An entry is served only when all of these
hold: it is younger than its TTL (per table, per source or global) and than the query's
``max_staleness``; no table it read was invalidated since it was read (generation counters,
kept in Redis when the tier is on, so an invalidation in one process holds in all); and the
freshness token of every source it read, where the source offers one, is unchanged.

Settings (catalog):

.. code-block:: toml

    [cache]
    enabled = true
    max_bytes = 268435456      # in-process budget (LRU)
    max_entry_bytes = 67108864 # larger results stream through uncached
    ttl = 60                   # seconds, for every entry unless a source or table says less
    max_staleness = 30         # default bound per query (fed.sql(..., max_staleness=...))
    join_threshold = 3         # materialize a join shape seen this many times ...
    join_window = 300          # ... within this many seconds (0 turns the join cache off)
    tokens = true              # ask sources for freshness tokens
    token_interval = 0         # >0: reuse a token this many seconds (a write may go unseen
                               # that long: a cheaper check, a looser bound)
    redis = "redis://127.0.0.1:6379/0"   # shared tier (optional; ${VAR} works here too)
    redis_max_entry_bytes = 33554432     # compressed size limit per entry
    redis_wait = 0.2                     # circuit breaker: a tier operation not answered in
                                         # this many seconds is abandoned, and the tier is
    redis_cooldown = 5                   # skipped this many seconds (queries go to the
                                         # sources, uncached); then one operation tries again
    redis_check_interval = 0             # >0: an in-process hit trusts the Redis generations
                                         # it read this many seconds ago (another process's
                                         # invalidation may then take that long to be seen)
    compression = "zstd"                 # or "lz4"
    table_ttl = { "pg.orders" = 5 }

    [sources.pg]
    cache_ttl = 10             # or { default = 10, orders = 2 }
    max_staleness = 5          # no answer from this source older than this
    cache_tokens = true        # false: TTL and invalidation only
    cache = true               # false: never cache this source

A writer that cannot call :meth:`Cache.invalidate` may bump the version itself:
``HINCRBY <prefix>:gens <source>.<table> 1`` (see :meth:`Cache.version_field`).

>>> import federator, tempfile, os, sqlite3
>>> path = os.path.join(tempfile.mkdtemp(), "t.db")
>>> with sqlite3.connect(path) as db:
...     _ = db.execute("CREATE TABLE t (x INTEGER)")
...     _ = db.execute("INSERT INTO t VALUES (1)")
>>> catalog = {"sources": {"s": {"kind": "sqlite", "path": path}}}
>>> fed = federator.connect({**catalog, "cache": {"enabled": True, "tokens": False}})
>>> _ = fed.sql("SELECT x FROM s.t").to_arrow(); _ = fed.sql("SELECT x FROM s.t").to_arrow()
>>> fed.cache.stats()["hits"]
1
>>> fed.close()
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime as dt
import decimal
import hashlib
import json
import logging
import math
import os
import struct
import threading
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
from sqlglot import exp

from federator.errors import CatalogError

if TYPE_CHECKING:
    from federator._loop import LoopThread
    from federator.adapters.base import Adapter, NativeRequest, TableRef
    from federator.catalog import Catalog
    from federator.config import CatalogConfig
    from federator.execute.handle import ExecutionHandle as Execution  # no circle
    from federator.plan.model import Fragment, FragmentStats, Plan

log = logging.getLogger(__name__)

__all__ = ["Cache", "CacheSettings", "FreshnessTokenSource", "freshness_token"]

MiB = 1024 * 1024
_MAGIC = b"FEDC\x01"
_UNSETTLED = "~"  # a token starting with this may change without notice: never cache on it
_VOLATILE_NODES = tuple(
    getattr(exp, n)
    for n in (
        "CurrentTimestamp",
        "CurrentDate",
        "CurrentTime",
        "CurrentDatetime",
        "CurrentUser",
        "Rand",
        "Randn",
        "Uuid",
    )
    if hasattr(exp, n)
)
_VOLATILE_NAMES = {
    "random",
    "rand",
    "now",
    "uuid",
    "gen_random_uuid",
    "uuid_generate_v4",
    "clock_timestamp",
    "statement_timestamp",
    "sysdate",
    "nextval",
    "txid_current",
}


# ---- settings ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheSettings:
    """The ``[cache]`` table of a catalog (see the module docstring)."""

    enabled: bool = False
    max_bytes: int = 256 * MiB
    max_entry_bytes: int = 64 * MiB
    ttl: float = 60.0
    max_staleness: float = math.inf  # default bound per query: the TTL decides
    join_threshold: int = 3
    join_window: float = 300.0
    tokens: bool = True
    token_timeout: float = 2.0
    token_interval: float = 0.0  # >0: reuse a source's token read this many seconds ago
    redis: str | None = None
    redis_prefix: str = "federator:cache"
    redis_max_entry_bytes: int = 32 * MiB
    redis_timeout: float = 2.0  # the client's connect and socket timeouts
    redis_wait: float = 0.2  # seconds a tier operation may take before the tier is skipped
    redis_cooldown: float = 5.0  # seconds the tier stays skipped after a slow or failed one
    redis_check_interval: float = 0.0  # >0: in-process hits re-read Redis generations this often
    compression: str = "zstd"
    table_ttl: Mapping[str, float] = field(default_factory=dict)

    def __repr__(self) -> str:
        from federator.config import redact_options

        shown = redact_options(dataclasses.asdict(self))
        return f"CacheSettings({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @classmethod
    def from_config(cls, raw: Mapping[str, Any] | None) -> CacheSettings:
        raw = dict(raw or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(raw) - names)
        if unknown:
            raise CatalogError(
                f"unknown [cache] setting(s): {', '.join(unknown)} "
                f"(known: {', '.join(sorted(names))})"
            )
        if "compression" in raw and raw["compression"] not in ("zstd", "lz4"):
            raise CatalogError("[cache] compression must be 'zstd' or 'lz4'")
        for name in ("redis_wait", "redis_cooldown"):
            if name in raw and not (isinstance(raw[name], int | float) and raw[name] > 0):
                raise CatalogError(f"[cache] {name} must be a number of seconds above 0")
        try:
            return cls(**raw)
        except TypeError as e:
            raise CatalogError(f"[cache] settings: {e}") from None


# ---- freshness tokens --------------------------------------------------------------------
class FreshnessTokenSource(Protocol):
    """The optional adapter hook: a short string that changes whenever the data of any of
    ``tables`` may have changed; None when the source cannot tell (TTL and invalidation still
    apply). A token starting with ``~`` means "changing right now": nothing is cached on it."""

    async def freshness_token(self, tables: Sequence[TableRef]) -> str | None: ...


async def freshness_token(adapter: Adapter, tables: Sequence[TableRef]) -> str | None:
    """The adapter's freshness token for ``tables``: its own hook where it has one, else a
    built-in one for embedded kinds (file modification stamps), else None."""
    hook = getattr(adapter, "freshness_token", None)
    if hook is not None:
        return await hook(tables)
    path = getattr(adapter, "path", None)
    if adapter.kind == "sqlite" and path and path != ":memory:":
        # The database file and its WAL change on every commit.
        return _file_stamps([Path(path), Path(f"{path}-wal")])
    if adapter.kind == "files" and path is not None:
        scan = getattr(adapter, "scan", None)
        files = scan() if scan is not None else {}
        wanted = [files[t.name].path for t in tables if t.name in files]
        return _file_stamps(wanted or [Path(path)])
    return None


def _file_stamps(paths: Iterable[Path]) -> str:
    parts = []
    for p in paths:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            parts.append(f"{p.name}:-")
            continue
        parts.append(f"{p.name}:{st.st_mtime_ns}:{st.st_size}:{st.st_ino}")
        if time.time_ns() - st.st_mtime_ns < 50_000_000:
            # File system clocks tick coarsely (a few ms): two writes within one tick may carry
            # the same stamp, so a file written this recently is not trusted yet.
            return f"{_UNSETTLED}{uuid.uuid4().hex}"
    return "|".join(parts)


# ---- keys --------------------------------------------------------------------------------
class _Unkeyable(Exception):
    """A value the cache cannot key exactly (the request is then not cached)."""


def _canon(value: Any) -> Any:
    """A JSON-able, type-tagged, exact form of a parameter value."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return ["i", str(value)]
    if isinstance(value, float):
        return ["f", value.hex()]
    if isinstance(value, bytes | bytearray | memoryview):
        return ["b", bytes(value).hex()]
    if isinstance(value, decimal.Decimal):
        return ["d", str(value)]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return [type(value).__name__, value.isoformat()]
    if isinstance(value, dt.timedelta):
        return ["td", value.days, value.seconds, value.microseconds]
    if isinstance(value, uuid.UUID):
        return ["u", str(value)]
    if isinstance(value, list | tuple):
        return ["l", [_canon(v) for v in value]]
    if isinstance(value, dict):
        return ["m", sorted((str(k), _canon(v)) for k, v in value.items())]
    module = type(value).__module__.split(".")[0]
    if module == "torch":
        value = value.detach().cpu().numpy()
        module = "numpy"
    if module == "numpy":
        import numpy as np

        arr = np.ascontiguousarray(value)
        if arr.dtype == object:
            return ["l", [_canon(v) for v in arr.tolist()]]
        digest = hashlib.blake2b(arr.tobytes(), digest_size=16).hexdigest()
        return ["np", str(arr.dtype), list(arr.shape), digest]
    if isinstance(value, pa.Array | pa.ChunkedArray):
        return ["l", [_canon(v) for v in value.to_pylist()]]
    raise _Unkeyable(f"a parameter of type {type(value).__name__} cannot be part of a cache key")


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


def _keys_digest(keys: Sequence[Any] | None) -> Any:
    if keys is None:
        return "all"
    try:
        ordered = sorted(keys, key=lambda v: (v is None, type(v).__name__, v))
    except TypeError:
        ordered = list(keys)
    return _digest(_canon(ordered))


def _volatile(tree: exp.Expression) -> str | None:
    for node in tree.walk():
        if isinstance(node, _VOLATILE_NODES):
            return node.sql()
        if isinstance(node, exp.Anonymous) and str(node.name).lower() in _VOLATILE_NAMES:
            return node.sql()
    return None


def _abstract_literals(tree: exp.Expression) -> str:
    def repl(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Literal):
            return exp.Placeholder(this="lit")
        return node

    return tree.transform(repl).sql(dialect="postgres")


def _table_refs(frag: Fragment) -> list[tuple[str, str]]:
    """(schema, name) of every source table the fragment reads."""
    refs = {
        (t.db, t.name)
        for t in frag.query.find_all(exp.Table)
        if t.name and (not t.catalog or t.catalog == frag.source)
    }
    return sorted(refs)


# ---- entries and their wire form ---------------------------------------------------------
@dataclass
class Entry:
    table: pa.Table
    created: float  # wall-clock time its data was read (the fetch's start)
    expires: float  # wall-clock time
    gens: dict[str, int]  # generation of each version field when the data was read
    tokens: dict[str, str]  # freshness token per source when the data was read
    nbytes: int = 0

    def __post_init__(self) -> None:
        self.nbytes = self.nbytes or self.table.nbytes


class CorruptEntry(Exception):
    pass


def encode_entry(entry: Entry, compression: str) -> bytes:
    """``FEDC\\x01``, header length, JSON header, CRC-32 of header and payload, then the
    Arrow IPC stream (compressed buffers)."""
    sink = pa.BufferOutputStream()
    options = pa.ipc.IpcWriteOptions(compression=compression)
    with pa.ipc.new_stream(sink, entry.table.schema, options=options) as writer:
        writer.write_table(entry.table)
    payload = sink.getvalue().to_pybytes()
    header = json.dumps(
        {
            "created": entry.created,
            "expires": entry.expires,
            "gens": entry.gens,
            "tokens": entry.tokens,
            "size": len(payload),
        }
    ).encode()
    crc = zlib.crc32(payload, zlib.crc32(header))
    return _MAGIC + struct.pack(">I", len(header)) + header + struct.pack(">I", crc) + payload


def decode_entry(blob: bytes) -> Entry:
    """The entry a blob holds; :class:`CorruptEntry` for anything truncated or altered."""
    try:
        if not blob.startswith(_MAGIC):
            raise CorruptEntry("bad magic")
        (hlen,) = struct.unpack_from(">I", blob, len(_MAGIC))
        start = len(_MAGIC) + 4
        raw_header = blob[start : start + hlen]
        (crc,) = struct.unpack_from(">I", blob, start + hlen)
        payload = memoryview(blob)[start + hlen + 4 :]
        if zlib.crc32(payload, zlib.crc32(raw_header)) != crc:
            raise CorruptEntry("checksum mismatch (truncated or altered)")
        header = json.loads(raw_header)
        if len(payload) != header["size"]:
            raise CorruptEntry("payload size mismatch")
        table = pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
        return Entry(
            table=table,
            created=float(header["created"]),
            expires=float(header["expires"]),
            gens={str(k): int(v) for k, v in header["gens"].items()},
            tokens={str(k): str(v) for k, v in header["tokens"].items()},
        )
    except CorruptEntry:
        raise
    except Exception as e:  # any parse failure of stored bytes is corruption
        raise CorruptEntry(f"{type(e).__name__}: {e}") from None


# ---- the Redis tier ----------------------------------------------------------------------
class TierSkipped(Exception):
    """The Redis tier's circuit is open: the operation was not attempted."""


class RedisTier:
    """Compressed Arrow IPC entries and the generation counters, in one Redis.

    A circuit breaker guards every operation: one that has no answer within ``redis_wait``
    seconds (a frozen server or network, not only a refused connection) or fails is abandoned,
    and the tier is skipped for ``redis_cooldown`` seconds; then the next operation tries again.
    Invalidations that could not be published are kept and sent with the next successful read,
    so no process serves an entry another process was told is stale.
    """

    def __init__(self, settings: CacheSettings):
        assert settings.redis is not None
        self.url = settings.redis
        self.prefix = settings.redis_prefix
        self.gens_key = f"{self.prefix}:gens"
        self.timeout = settings.redis_timeout
        self.wait = settings.redis_wait
        self.cooldown = settings.redis_cooldown
        self.open_until = 0.0  # time.monotonic() until which the tier is skipped
        self.last_failure = ""
        self.pending_bumps: set[str] = set()
        self.counters = collections.Counter[str]()
        self._client: Any = None

    def __repr__(self) -> str:
        from federator.config import redact_dsn

        return f"<RedisTier {redact_dsn(self.url)} {self.state()}>"

    def state(self) -> str:
        """``closed`` (in use) or ``open`` (skipped: it did not answer or failed lately)."""
        return "open" if time.monotonic() < self.open_until else "closed"

    def skipped(self) -> str | None:
        """Why the tier is skipped right now, or None when it is in use."""
        left = self.open_until - time.monotonic()
        if left <= 0:
            return None
        return f"Redis tier skipped: {self.last_failure}; next try in {left:.1f} s"

    async def _guarded(self, op: Any) -> Any:
        """Await ``op()`` within ``wait`` seconds; open the circuit when it is slow or fails."""
        if (why := self.skipped()) is not None:
            self.counters["skipped"] += 1
            raise TierSkipped(why)
        try:
            async with asyncio.timeout(self.wait):
                return await op()
        except TimeoutError:
            self.counters["timeouts"] += 1
            self._trip(f"no answer within {self.wait:g} s")
            raise TierSkipped(self.skipped()) from None
        except Exception as e:
            self.counters["failures"] += 1
            self._trip(f"{type(e).__name__}: {_masked(str(e), self.url)}")
            raise

    def _trip(self, why: str) -> None:
        self.last_failure = why
        self.open_until = time.monotonic() + self.cooldown
        log.warning("cache: %s; Redis tier skipped for %g s", why, self.cooldown)

    def _redis(self) -> Any:
        if self._client is None:
            try:
                import redis.asyncio as aioredis
            except ImportError:
                raise CatalogError(
                    "[cache] redis needs the redis client: pip install 'federator[redis]'"
                ) from None
            self._client = aioredis.from_url(
                self.url, socket_timeout=self.timeout, socket_connect_timeout=self.timeout
            )
        return self._client

    def entry_key(self, key: str) -> str:
        return f"{self.prefix}:e:{key}"

    async def read(self, fields: Sequence[str], key: str | None) -> tuple[list[int], bytes | None]:
        """Current generations of ``fields`` and, when ``key`` is given, the stored blob —
        one round trip (which also publishes invalidations that could not be sent before)."""
        pending = sorted(self.pending_bumps)

        async def op() -> list[Any]:
            pipe = self._redis().pipeline(transaction=False)
            for f in pending:
                pipe.hincrby(self.gens_key, f, 1)
            pipe.hmget(self.gens_key, list(fields))
            if key is not None:
                pipe.get(self.entry_key(key))
            return list(await pipe.execute())

        replies = (await self._guarded(op))[len(pending) :]
        self.pending_bumps.difference_update(pending)
        gens = [int(v) if v is not None else 0 for v in replies[0]]
        return gens, (replies[1] if key is not None else None)

    async def write(self, key: str, blob: bytes, ttl: float) -> None:
        px = max(1, int(ttl * 1000))
        await self._guarded(lambda: self._redis().set(self.entry_key(key), blob, px=px))

    async def delete(self, key: str) -> None:
        await self._guarded(lambda: self._redis().delete(self.entry_key(key)))

    async def bump(self, fields: Sequence[str]) -> None:
        """Publish invalidations; kept for the next successful read when the tier is out."""

        async def op() -> None:
            pipe = self._redis().pipeline(transaction=True)
            for f in fields:
                pipe.hincrby(self.gens_key, f, 1)
            await pipe.execute()

        try:
            await self._guarded(op)
        except Exception:
            self.pending_bumps.update(fields)
            raise

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.wait):  # a frozen server must not hold close()
                    await client.aclose()


# ---- bookkeeping -------------------------------------------------------------------------
@dataclass
class ShapeStats:
    text: str
    seen: int = 0
    hits: int = 0
    misses: int = 0
    stored: int = 0
    bytes: int = 0  # size of the last answer stored for this shape
    times: collections.deque[float] = field(default_factory=collections.deque)

    def as_dict(self) -> dict[str, Any]:
        return {
            "shape": self.text,
            "seen": self.seen,
            "hits": self.hits,
            "misses": self.misses,
            "stored": self.stored,
            "bytes": self.bytes,
        }


@dataclass
class _RunState:
    """Per-execution facts: the oldest data it used, tokens it read."""

    oldest: float = math.inf
    tokens: dict[tuple[str, tuple[tuple[str, str], ...]], str | None] = field(default_factory=dict)


@dataclass
class _Lookup:
    key: str
    fields: list[str]
    gens: dict[str, int]
    tokens: dict[str, str]
    bound: float
    ttl: float
    entry: Entry | None = None
    why_not: str = ""  # set when the result must not be stored
    source_tier: str = ""
    outcome: str = ""  # "hit", "shared" or "miss" once served
    inherit_age: bool = False  # a join answer is as old as the oldest data it was built from
    stored_bytes: int = 0


# ---- the cache ---------------------------------------------------------------------------
class Cache:
    """A federation's result cache: ``fed.cache``. Use :meth:`invalidate` and :meth:`stats`."""

    def __init__(
        self,
        config: CatalogConfig,
        catalog: Catalog,
        loop: LoopThread | None = None,
        settings: CacheSettings | None = None,
    ):
        self.settings = settings or CacheSettings.from_config(config.settings.get("cache"))
        self.catalog = catalog
        self.loop = loop  # the federation's loop: sync calls run there
        self._sources = {name: src.options for name, src in config.sources.items()}
        self._identity = {
            name: hashlib.blake2b(repr(src).encode(), digest_size=8).hexdigest()
            for name, src in config.sources.items()
        }
        self.redis = RedisTier(self.settings) if self.settings.redis else None
        self._entries: collections.OrderedDict[str, Entry] = collections.OrderedDict()
        self._bytes = 0
        self._gens: dict[str, int] = {}
        self._remote_gens: dict[tuple[str, ...], tuple[float, list[int]]] = {}
        self._recent_tokens: dict[Any, tuple[float, str | None]] = {}
        self._flights: dict[Any, _Flight] = {}
        self._shapes: dict[str, ShapeStats] = {}
        self._plan_shapes: dict[int, tuple[Any, str, str, str | None]] = {}
        self._counters = collections.Counter[str]()

    @property
    def enabled(self) -> bool:
        return self.settings.enabled

    def __repr__(self) -> str:
        tier = " + redis" if self.redis else ""
        state = "on" if self.enabled else "off"
        return f"<federator.Cache {state}{tier} entries={len(self._entries)}>"

    # ---- public API ------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """Hits, misses, bytes held, evictions, and per join shape."""
        c = self._counters
        return {
            "enabled": self.enabled,
            "hits": c["hits"],
            "misses": c["misses"],
            "redis_hits": c["redis_hits"],
            "shared_fetches": c["shared"],
            "stores": c["stores"],
            "evictions": c["evictions"],
            "invalidated": c["invalidated"],
            "corrupt": c["corrupt"],
            "errors": c["errors"],
            "redis": self._redis_stats(),
            "entries": len(self._entries),
            "bytes": self._bytes,
            "max_bytes": self.settings.max_bytes,
            "shapes": {sid: s.as_dict() for sid, s in self._shapes.items()},
        }

    def _redis_stats(self) -> dict[str, Any] | None:
        """The Redis tier's circuit: ``state`` closed (in use) or open (skipped), operations
        ``skipped`` while open, ``timeouts`` (no answer within ``redis_wait``), ``failures``."""
        if self.redis is None:
            return None
        c = self.redis.counters
        return {
            "state": self.redis.state(),
            "skipped": c["skipped"],
            "timeouts": c["timeouts"],
            "failures": c["failures"],
            "last_failure": self.redis.last_failure,
        }

    def invalidate(self, source: str | None = None, table: str | None = None) -> int:
        """Drop every entry built from ``source.table`` (every table of ``source``; everything
        when no source is named), here and — through the Redis tier — in every process.
        Returns how many in-process entries were dropped."""
        coro = self.invalidate_async(source, table)
        if self.loop is None:
            return asyncio.run(coro)
        return self.loop.run(coro)

    async def invalidate_async(self, source: str | None = None, table: str | None = None) -> int:
        if table is not None and source is None:
            raise ValueError("invalidate(table=...) needs source=...")
        if source is not None and source not in self._sources:
            from federator.errors import UnknownSourceError

            raise UnknownSourceError(source, self._sources)
        field_ = self.version_field(source, table)
        self._gens[field_] = self._gens.get(field_, 0) + 1
        self._remote_gens.clear()
        if self.redis is not None:
            try:
                await self.redis.bump([field_])
            except TierSkipped as e:
                log.warning("cache: invalidation of %s not published yet (%s)", field_, e)
            except Exception as e:
                self._counters["errors"] += 1
                log.warning(
                    "cache: could not publish invalidation of %s to Redis: %s",
                    field_,
                    _masked(str(e), self.redis.url),
                )
        dropped = [k for k, e in self._entries.items() if field_ in e.gens]
        for k in dropped:
            self._drop(k)
        self._counters["invalidated"] += len(dropped)
        return len(dropped)

    @staticmethod
    def version_field(source: str | None, table: str | None = None) -> str:
        """The generation counter's name for a table (``source.table``), a whole source
        (``source.*``) or everything (``*``); writers may bump it in Redis themselves."""
        if source is None:
            return "*"
        if table is None:
            return f"{source}.*"
        return f"{source}.{table.rsplit('.', 1)[-1].lower()}"

    def clear(self) -> None:
        """Forget the in-process entries (not Redis's, not the statistics)."""
        if self.loop is not None and threading.current_thread() is not self.loop._thread:
            self.loop.run(self._clear())  # the loop's thread owns the entries
        else:
            self._entries.clear()
            self._bytes = 0

    async def _clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    async def close(self) -> None:
        if self.redis is not None:
            await self.redis.close()

    # ---- bounds ----------------------------------------------------------------------
    def bound(self, requested: float | None, sources: Iterable[str]) -> tuple[float, str]:
        """The staleness a query accepts from these sources, and why it is 0 when it is."""
        if not self.enabled:
            return 0.0, "cache disabled"
        bound = self.settings.max_staleness if requested is None else float(requested)
        if bound <= 0:
            return 0.0, "max_staleness=0"
        for s in sources:
            opts = self._sources.get(s, {})
            if opts.get("cache", True) is False:
                return 0.0, f"source {s!r} is not cached"
            if opts.get("max_staleness") is not None:
                bound = min(bound, float(opts["max_staleness"]))
                if bound <= 0:
                    return 0.0, f"source {s!r} max_staleness=0"
        return bound, ""

    def ttl(self, source: str, tables: Iterable[tuple[str, str]]) -> float:
        ttl = float(self.settings.ttl)
        opts = self._sources.get(source, {}).get("cache_ttl")
        per_table: Mapping[str, Any] = opts if isinstance(opts, Mapping) else {}
        if opts is not None and not isinstance(opts, Mapping):
            ttl = float(opts)
        elif "default" in per_table:
            ttl = float(per_table["default"])
        for _, name in tables:
            for t in (
                per_table.get(name),
                self.settings.table_ttl.get(f"{source}.{name}"),
            ):
                if t is not None:
                    ttl = min(ttl, float(t))
        return ttl

    # ---- fragments -------------------------------------------------------------------
    async def fragment_batches(
        self, ex: Execution, frag: Fragment, keys: Sequence[Any] | None
    ) -> AsyncIterator[pa.RecordBatch]:
        """The fragment's batches from cache, or from its source (and then cached)."""
        stats = ex.stats[frag.id]
        request = ex.plan.requests[frag.id]
        started = time.perf_counter()
        bound, why = self.bound(ex.max_staleness, [frag.source])
        why = why or (f"volatile {v}" if (v := _volatile(frag.query)) else "")
        lookup = None
        if not why:
            try:
                lookup = await self._fragment_lookup(ex, frag, request, keys, bound)
            except _Unkeyable as e:
                why = str(e)
        if lookup is None:
            _note(stats, f"not cached: {why}")
            async with contextlib.aclosing(ex._fragment_batches(frag, keys, False)) as source:
                async for batch in source:
                    yield batch
            return
        async with contextlib.aclosing(
            self._serve(lookup, ex, lambda: ex._fragment_batches(frag, keys, False), stats)
        ) as served:
            async for batch in served:
                yield batch
        stats.ms = max(stats.ms, (time.perf_counter() - started) * 1000)

    async def _fragment_lookup(
        self,
        ex: Execution,
        frag: Fragment,
        request: NativeRequest,
        keys: Sequence[Any] | None,
        bound: float,
    ) -> _Lookup:
        refs = _table_refs(frag)
        key = _digest(
            "fragment",
            self._identity.get(frag.source, frag.source),
            request.text.strip(),
            _canon(list(request.params)),
            _keys_digest(keys),
        )
        fields = self._fields({frag.source: refs})
        tokens = await self._tokens(ex, {frag.source: refs})
        return _Lookup(key, fields, {}, tokens, bound, self.ttl(frag.source, refs))

    # ---- joins -----------------------------------------------------------------------
    async def join_batches(self, ex: Execution) -> AsyncIterator[pa.RecordBatch]:
        """The residual's answer: materialized when its shape is frequent, else computed."""
        plan = ex.plan
        stats = ex.residual_stats
        shape_id, shape_text, exact, volatile = self._shape(plan)
        sources = sorted({f.source for f in plan.fragments})
        bound, why = self.bound(ex.max_staleness, sources)
        lookup = None
        if not why and volatile:
            why = f"volatile {volatile}"
        if not why and self.settings.join_window > 0:
            shape = self._shapes.setdefault(shape_id, ShapeStats(shape_text))
            now = time.monotonic()
            shape.seen += 1
            shape.times.append(now)
            while shape.times and shape.times[0] < now - self.settings.join_window:
                shape.times.popleft()
            if len(shape.times) < self.settings.join_threshold:
                why = (
                    f"join shape {shape_id[:8]} seen {len(shape.times)} time(s) in "
                    f"{self.settings.join_window:g} s; materialized from "
                    f"{self.settings.join_threshold}"
                )
            else:
                try:
                    lookup = await self._join_lookup(ex, plan, exact, bound)
                except _Unkeyable as e:
                    why = str(e)
        elif not why:
            why = "join cache off (join_window = 0)"
        if lookup is None:
            _note(stats, f"join not cached: {why}")
            async for batch in _computed_join(ex):
                yield batch
            return
        started = time.perf_counter()
        async with contextlib.aclosing(
            self._serve(lookup, ex, lambda: _computed_join(ex), stats)
        ) as served:
            async for batch in served:
                yield batch
        stats.ms = max(stats.ms, (time.perf_counter() - started) * 1000)
        shape = self._shapes[shape_id]
        if lookup.outcome in ("hit", "shared"):
            shape.hits += 1
            for frag in plan.fragments:
                _note(ex.stats[frag.id], "not run: join answer from cache")
        else:
            shape.misses += 1
            if lookup.stored_bytes:
                shape.stored += 1
                shape.bytes = lookup.stored_bytes

    async def _join_lookup(self, ex: Execution, plan: Plan, exact: str, bound: float) -> _Lookup:
        by_source: dict[str, list[tuple[str, str]]] = {}
        for frag in plan.fragments:
            by_source.setdefault(frag.source, []).extend(_table_refs(frag))
        by_source = {s: sorted(set(r)) for s, r in by_source.items()}
        residual_params = {
            k: _canon(v)
            for k, v in sorted(ex.params.items())
            if f"${k}" in (plan.residual_sql or "")
        }
        key = _digest(
            "join",
            exact,
            [
                [
                    self._identity.get(f.source, f.source),
                    _canon(list(plan.requests[f.id].params)),
                ]
                for f in plan.fragments
            ],
            residual_params,
        )
        fields = self._fields(by_source)
        tokens = await self._tokens(ex, by_source)
        ttl = min(self.ttl(s, refs) for s, refs in by_source.items())
        return _Lookup(key, fields, {}, tokens, bound, ttl, inherit_age=True)

    def _shape(self, plan: Plan) -> tuple[str, str, str, str | None]:
        # Keyed by the planned trees: each query binds its parameters into a new Plan that
        # shares them, and re-deriving the shape per query costs a tree copy.
        cached = self._plan_shapes.get(id(plan.fragments))
        if cached is not None and _same_trees(cached[0], plan):
            return cached[1:]  # type: ignore[return-value]
        parts = [f"{f.source}: {_abstract_literals(f.query)}" for f in plan.fragments]
        residual = plan.residual
        parts.append("residual: " + (_abstract_literals(residual) if residual is not None else ""))
        text = "\n".join(parts)
        exact = "\n".join(
            [f"{f.source}: {plan.requests[f.id].text.strip()}" for f in plan.fragments]
            + [plan.residual_sql or ""]
        )
        volatile = None
        for tree in [*(f.query for f in plan.fragments), residual]:
            if tree is not None and (volatile := _volatile(tree)):
                break
        shape_id = hashlib.blake2b(text.encode(), digest_size=16).hexdigest()
        if len(self._plan_shapes) > 1024:
            self._plan_shapes.clear()
        self._plan_shapes[id(plan.fragments)] = (plan, shape_id, text, exact, volatile)  # type: ignore[assignment]
        return shape_id, text, exact, volatile

    # ---- the one lookup/fetch/store path ----------------------------------------------
    async def _serve(
        self, lookup: _Lookup, ex: Execution, fetch: Any, stats: FragmentStats
    ) -> AsyncIterator[pa.RecordBatch]:
        state = _state(ex)
        entry = await self._lookup(lookup)
        if entry is not None:
            lookup.outcome = "hit"
            self._counters["hits"] += 1
            state.oldest = min(state.oldest, entry.created)
            age = max(0.0, time.time() - entry.created)
            _hit(stats, entry, f"cache hit{lookup.source_tier}, age {age:.1f} s")
            for batch in _batches(entry.table):
                yield batch
            return
        if lookup.why_not:  # cannot be cached now (unsettled token, Redis down): just fetch
            self._counters["misses"] += 1
            _note(stats, f"not cached: {lookup.why_not}")
            async with contextlib.aclosing(fetch()) as source:
                async for batch in source:
                    yield batch
            return
        flight_key = (
            lookup.key,
            tuple(sorted(lookup.gens.items())),
            tuple(sorted(lookup.tokens.items())),
        )
        while (flight := self._flights.get(flight_key)) is not None:
            shared = await flight.wait()
            if shared is flight:  # the leader's consumer stopped reading: fetch on our own
                break
            if shared is not None and time.time() - shared.created <= lookup.bound:
                lookup.outcome = "shared"
                self._counters["shared"] += 1
                state.oldest = min(state.oldest, shared.created)
                _hit(stats, shared, "cache hit: shared a concurrent query's fetch")
                for batch in _batches(shared.table):
                    yield batch
                return
        lookup.outcome = "miss"
        self._counters["misses"] += 1
        leading = flight is None
        if leading:
            flight = _Flight(asyncio.get_running_loop().create_future())
            self._flights[flight_key] = flight
        created = time.time()
        result: Entry | None = None
        batches: list[pa.RecordBatch] | None = []
        size = 0
        limit = self.settings.max_entry_bytes
        try:
            async with contextlib.aclosing(fetch()) as source:
                async for batch in source:
                    if batches is not None:
                        size += batch.nbytes
                        if size > limit:
                            batches = None
                            lookup.why_not = f"result over the {limit:,}-byte entry limit"
                        else:
                            batches.append(batch)
                    if leading:
                        flight.parked_since = time.monotonic()
                    yield batch
                    if leading:
                        flight.parked_since = None
            if batches is not None:
                try:
                    table = pa.Table.from_batches(batches)
                except pa.ArrowInvalid as e:
                    lookup.why_not = f"batches of differing schemas ({e})"
                else:
                    if lookup.inherit_age:
                        created = min(created, state.oldest)
                    result = Entry(
                        table=table,
                        created=created,
                        expires=created + lookup.ttl,
                        gens=lookup.gens,
                        tokens=lookup.tokens,
                    )
                    await self._store(lookup, result)
                    lookup.stored_bytes = result.nbytes
            state.oldest = min(state.oldest, created)
            if result is None:
                _note(stats, f"cache miss; not stored: {lookup.why_not}")
            else:
                _note(stats, f"cache miss; stored{', ' + lookup.why_not if lookup.why_not else ''}")
        finally:
            if leading:
                self._flights.pop(flight_key, None)
                if not flight.future.done():
                    flight.future.set_result(result)

    async def _lookup(self, lookup: _Lookup) -> Entry | None:
        """Find a servable entry; fill ``lookup.gens`` with the current generations."""
        local = self._entries.get(lookup.key)
        blob = None
        recent = self._remote_gens.get(tuple(lookup.fields)) if local is not None else None
        interval = self.settings.redis_check_interval
        if recent is not None and time.monotonic() - recent[0] < interval:
            lookup.gens = dict(zip(lookup.fields, recent[1], strict=True))
        elif self.redis is not None:
            try:
                gens, blob = await self.redis.read(
                    lookup.fields, None if local is not None else lookup.key
                )
                if interval > 0:
                    if len(self._remote_gens) > 4096:
                        self._remote_gens.clear()
                    self._remote_gens[tuple(lookup.fields)] = (time.monotonic(), gens)
            except TierSkipped as e:
                lookup.why_not = str(e)
                return None
            except Exception as e:
                self._counters["errors"] += 1
                log.warning(
                    "cache: Redis tier unavailable, not caching: %s",
                    _masked(str(e), self.redis.url),
                )
                lookup.why_not = f"Redis tier unavailable ({type(e).__name__})"
                return None
            lookup.gens = dict(zip(lookup.fields, gens, strict=True))
        else:
            lookup.gens = {f: self._gens.get(f, 0) for f in lookup.fields}
        unsettled = [s for s, t in lookup.tokens.items() if t.startswith(_UNSETTLED)]
        if unsettled:
            lookup.why_not = f"source {unsettled[0]!r} is being written (freshness token unsettled)"
            return None
        if local is not None:
            if self._valid(local, lookup):
                self._entries.move_to_end(lookup.key)
                return local
            self._drop(lookup.key)
            return None
        if blob is not None:
            try:
                entry = decode_entry(blob)
            except CorruptEntry as e:
                self._counters["corrupt"] += 1
                log.warning("cache: corrupt Redis entry %s treated as a miss: %s", lookup.key, e)
                with contextlib.suppress(Exception):
                    await self.redis.delete(lookup.key)  # type: ignore[union-attr]
                return None
            if self._valid(entry, lookup):
                self._counters["redis_hits"] += 1
                lookup.source_tier = " from Redis"
                self._put_local(lookup.key, entry)
                return entry
        return None

    def _valid(self, entry: Entry, lookup: _Lookup) -> bool:
        now = time.time()
        return (
            now < entry.expires
            and now - entry.created <= lookup.bound
            and entry.gens == lookup.gens
            and entry.tokens == lookup.tokens
        )

    async def _store(self, lookup: _Lookup, entry: Entry) -> None:
        self._counters["stores"] += 1
        self._put_local(lookup.key, entry)
        if self.redis is None:
            return
        try:
            blob = encode_entry(entry, self.settings.compression)
            if len(blob) > self.settings.redis_max_entry_bytes:
                lookup.why_not = "over the Redis entry limit (kept in process only)"
                return
            remaining = entry.expires - time.time()
            if remaining > 0:
                await self.redis.write(lookup.key, blob, remaining)
        except TierSkipped:
            lookup.why_not = "kept in process only: Redis tier skipped"
        except Exception as e:
            self._counters["errors"] += 1
            log.warning(
                "cache: could not store entry in Redis: %s", _masked(str(e), self.redis.url)
            )

    def _put_local(self, key: str, entry: Entry) -> None:
        if entry.nbytes > min(self.settings.max_entry_bytes, self.settings.max_bytes):
            return
        self._drop(key)
        self._entries[key] = entry
        self._bytes += entry.nbytes
        while self._bytes > self.settings.max_bytes and self._entries:
            old_key = next(iter(self._entries))
            self._drop(old_key)
            self._counters["evictions"] += 1

    def _drop(self, key: str) -> None:
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes

    # ---- freshness -------------------------------------------------------------------
    def _fields(self, by_source: Mapping[str, Sequence[tuple[str, str]]]) -> list[str]:
        fields = {"*"}
        for source, refs in by_source.items():
            fields.add(self.version_field(source))
            fields.update(self.version_field(source, name) for _, name in refs)
        return sorted(fields)

    async def _tokens(
        self, ex: Execution, by_source: Mapping[str, Sequence[tuple[str, str]]]
    ) -> dict[str, str]:
        if not self.settings.tokens:
            return {}
        state = _state(ex)
        wanted = {
            s: tuple(refs)
            for s, refs in by_source.items()
            if self._sources.get(s, {}).get("cache_tokens", True) is not False
        }
        missing = [s for s, refs in wanted.items() if (s, refs) not in state.tokens]
        if missing:
            values = await asyncio.gather(*(self._token(s, wanted[s]) for s in missing))
            for s, v in zip(missing, values, strict=True):
                state.tokens[(s, wanted[s])] = v
        out = {}
        for s, refs in wanted.items():
            token = state.tokens[(s, refs)]
            if token is not None:
                out[s] = token
        return out

    async def _token(self, source: str, refs: Sequence[tuple[str, str]]) -> str | None:
        from federator.adapters.base import TableRef

        adapter = self.catalog.adapter(source)
        interval = self.settings.token_interval
        recent = self._recent_tokens.get((source, tuple(refs)))
        if recent is not None and time.monotonic() - recent[0] < interval:
            return recent[1]
        try:
            async with asyncio.timeout(self.settings.token_timeout):
                token = await freshness_token(adapter, [TableRef(s, n) for s, n in refs])
            if interval > 0 and token is not None and not token.startswith(_UNSETTLED):
                if len(self._recent_tokens) > 4096:
                    self._recent_tokens.clear()
                self._recent_tokens[(source, tuple(refs))] = (time.monotonic(), token)
            return token
        except Exception as e:
            self._counters["errors"] += 1
            log.warning("cache: freshness token of source %r failed: %s", source, e)
            return f"{_UNSETTLED}error"

    # ---- EXPLAIN ---------------------------------------------------------------------
    def describe(self, plan: Plan, max_staleness: float | None) -> list[str]:
        """Lines for a plain EXPLAIN: whether this plan may be served from cache, and why not."""
        sources = sorted({f.source for f in plan.fragments})
        bound, why = self.bound(max_staleness, sources)
        if why:
            return [f"Cache: bypassed ({why})"]
        shown = "TTL" if math.isinf(bound) else f"{bound:g} s"
        tier = ""
        if self.redis is not None:
            skipped = self.redis.skipped()
            tier = f" + Redis tier ({skipped})" if skipped else " + Redis tier"
        lines = [f"Cache: on, max staleness {shown}{tier}"]
        if plan.residual is not None:
            shape_id, _, _, volatile = self._shape(plan)
            shape = self._shapes.get(shape_id)
            seen = len(shape.times) if shape else 0
            if volatile:
                lines.append(f"  join not cached: volatile {volatile}")
            else:
                lines.append(
                    f"  join shape {shape_id[:8]}: seen {seen} time(s), materialized from "
                    f"{self.settings.join_threshold}"
                )
        return lines


# ---- helpers -----------------------------------------------------------------------------
def _masked(text: str, url: str) -> str:
    """A client's error text with the tier URL's password (and any URL's credentials) hidden."""
    from federator.config import parse_dsn, redact_text

    with contextlib.suppress(Exception):
        password = parse_dsn(url).password
        if password:
            text = text.replace(password, "***")
    return redact_text(text)


@dataclass
class _Flight:
    """One fetch in progress that identical requests wait for (single flight)."""

    future: asyncio.Future[Entry | None]
    parked_since: float | None = None  # the leader waits for its consumer to take a batch
    STALL = 0.5  # seconds a parked leader may keep followers waiting

    async def wait(self) -> Entry | _Flight | None:
        """The leader's entry (None when it failed), or this flight when the leader's
        consumer stopped reading (an abandoned stream must not hold everyone up)."""
        while not self.future.done():
            await asyncio.wait({self.future}, timeout=0.1)
            parked = self.parked_since
            if parked is not None and time.monotonic() - parked > self.STALL:
                return self
        return self.future.result()


def _same_trees(a: Plan, b: Plan) -> bool:
    return a.fragments is b.fragments and a.residual is b.residual


async def _computed_join(ex: Execution) -> AsyncIterator[pa.RecordBatch]:
    tables = await ex._fetch_all()
    async with contextlib.aclosing(ex._residual(tables)) as batches:
        async for batch in batches:
            yield batch


def _state(ex: Execution) -> _RunState:
    state = getattr(ex, "_cache_state", None)
    if state is None:
        state = _RunState()
        ex._cache_state = state  # type: ignore[attr-defined]
    return state


def _batches(table: pa.Table) -> list[pa.RecordBatch]:
    batches = table.to_batches()
    return batches or [pa.RecordBatch.from_pylist([], schema=table.schema)]


def _hit(stats: FragmentStats, entry: Entry, what: str) -> None:
    stats.cached = True
    stats.rows = entry.table.num_rows
    stats.bytes = entry.nbytes
    _note(stats, what)


def _note(stats: FragmentStats, text: str) -> None:
    stats.note = f"{stats.note}; {text}" if stats.note else text
