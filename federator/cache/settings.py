"""The ``[cache]`` settings of a catalog (see :mod:`federator.cache` for the table)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from federator.errors import CatalogError

MiB = 1024 * 1024


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
    token_interval: float = 1.0  # reuse a source's token read this many seconds ago (0: never)
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
