"""The shared Redis tier: compressed entries and generation counters behind a circuit
breaker, so a slow or failed Redis costs one ``redis_wait`` and then is skipped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from federator.errors import CatalogError

if TYPE_CHECKING:
    from federator.cache.settings import CacheSettings

log = logging.getLogger("federator.cache")  # the logger name from before the split


# The generations hash's field holding a random number set when the hash is first written. Every
# entry carries the epoch it was read under: after a restart or FLUSHALL the counters are gone
# (they would all read 0, as if nothing had been invalidated) and a new epoch is set, so every
# entry from before is refetched, in every process.
EPOCH = "@epoch"


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
            self._redis()  # importing and setting up the client is not the server's answer time
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
        """Current generations of ``fields``, then the epoch (see :data:`EPOCH`), and, when
        ``key`` is given, the stored blob — one round trip (which also publishes invalidations
        that could not be sent before)."""
        pending = sorted(self.pending_bumps)

        async def op() -> list[Any]:
            pipe = self._redis().pipeline(transaction=False)
            for f in pending:
                pipe.hincrby(self.gens_key, f, 1)
            pipe.hmget(self.gens_key, [*fields, EPOCH])
            if key is not None:
                pipe.get(self.entry_key(key))
            return list(await pipe.execute())

        replies = (await self._guarded(op))[len(pending) :]
        self.pending_bumps.difference_update(pending)
        *values, epoch = replies[0]
        gens = [int(v) if v is not None else 0 for v in values]
        if epoch is None:  # a new or emptied Redis (restart, FLUSHALL): nothing older is known
            epoch = await self._guarded(self._start_epoch)
        return [*gens, int(epoch)], (replies[1] if key is not None else None)

    async def _start_epoch(self) -> Any:
        """Set a new random epoch unless another process just did; the one in force."""
        pipe = self._redis().pipeline(transaction=True)
        pipe.hsetnx(self.gens_key, EPOCH, int.from_bytes(os.urandom(7), "big"))
        pipe.hget(self.gens_key, EPOCH)
        return (await pipe.execute())[1]

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


def _masked(text: str, url: str) -> str:
    """A client's error text with the tier URL's password (and any URL's credentials) hidden."""
    from federator.config import parse_dsn, redact_text

    with contextlib.suppress(Exception):
        password = parse_dsn(url).password
        if password:
            text = text.replace(password, "***")
    return redact_text(text)
