"""The catalog: sources, their tables and Arrow schemas, and name resolution."""

from __future__ import annotations

import asyncio

import pyarrow as pa

from federator.adapters import adapter_class
from federator.adapters.base import Adapter, TableInfo, TableRef
from federator.config import CatalogConfig
from federator.deadline import waiting_for
from federator.errors import SourceError, UnknownSourceError, UnknownTableError


class Catalog:
    """Adapters by source name, and table metadata fetched once per source on first use."""

    def __init__(self, config: CatalogConfig):
        self.config = config
        self.adapters: dict[str, Adapter] = {
            name: adapter_class(src.kind)(src) for name, src in config.sources.items()
        }
        self._tables: dict[str, dict[TableRef, TableInfo]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.version = 0  # bumped by refresh(): plans made before it are stale

    def adapter(self, source: str) -> Adapter:
        try:
            return self.adapters[source]
        except KeyError:
            raise UnknownSourceError(source, self.adapters) from None

    async def tables(self, source: str) -> dict[TableRef, TableInfo]:
        """Tables of one source, discovered on first use and kept until :meth:`refresh`.
        A query's deadline (:mod:`federator.deadline`) bounds the read and the wait for another
        query's read of the same source; a timeout names the source."""
        if source in self._tables:
            return self._tables[source]
        adapter = self.adapter(source)
        lock = self._locks.setdefault(source, asyncio.Lock())
        with waiting_for(f"reading the catalog of source {source!r} at {adapter.where}"):
            async with lock:
                if source not in self._tables:
                    infos = await adapter.tables()
                    self._tables[source] = {info.ref: info for info in infos}
        return self._tables[source]

    def refresh(self, source: str | None = None) -> None:
        """Forget discovered tables so the next query reads them again."""
        self.version += 1
        if source is None:
            self._tables.clear()
        else:
            self._tables.pop(source, None)

    def forget(self, source: str) -> None:
        """Read a source's tables again on next use, keeping the plans made so far: for a
        source whose new tables leave the old ones as they were (the in-memory entities)."""
        self._tables.pop(source, None)

    async def resolve(self, source: str, schema: str | None, table: str) -> TableInfo:
        """Find a table by the names a query used: exact match first, then case-insensitive."""
        adapter = self.adapter(source)
        tables = await self.tables(source)
        default_schema = getattr(adapter, "default_schema", "")
        wanted_schema = schema if schema is not None else default_schema
        candidates = [
            info
            for ref, info in tables.items()
            if ref.schema == wanted_schema and ref.name == table
        ] or [
            info
            for ref, info in tables.items()
            if ref.schema.lower() == wanted_schema.lower() and ref.name.lower() == table.lower()
        ]
        if len(candidates) == 1:
            return candidates[0]
        shown = f"{source}.{schema}.{table}" if schema else f"{source}.{table}"
        if len(candidates) > 1:
            raise SourceError(f"table name {shown!r} is ambiguous by case; quote it exactly")
        names = [
            f"{source}.{ref.name}"
            if ref.schema == default_schema
            else f"{source}.{ref.schema}.{ref.name}"
            for ref in tables
        ]
        raise UnknownTableError(shown, names)

    def info(self, source: str, ref: TableRef) -> TableInfo:
        return self._tables[source][ref]

    async def close(self) -> None:
        await asyncio.gather(*(a.close() for a in self.adapters.values()), return_exceptions=True)


def arrow_to_sql_type(t: pa.DataType) -> str:
    """The sqlglot type name for an Arrow type (used to type-annotate the plan)."""
    if pa.types.is_boolean(t):
        return "BOOLEAN"
    if pa.types.is_int8(t) or pa.types.is_int16(t):
        return "SMALLINT"
    if pa.types.is_int32(t) or pa.types.is_uint8(t) or pa.types.is_uint16(t):
        return "INT"
    if pa.types.is_integer(t):
        return "BIGINT"
    if pa.types.is_float32(t):
        return "REAL"
    if pa.types.is_floating(t):
        return "DOUBLE"
    if pa.types.is_decimal(t):
        return f"DECIMAL({t.precision}, {t.scale})"
    if pa.types.is_date(t):
        return "DATE"
    if pa.types.is_timestamp(t):
        return "TIMESTAMPTZ" if t.tz else "TIMESTAMP"
    if pa.types.is_time(t):
        return "TIME"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        return "VARBINARY"
    if pa.types.is_duration(t):
        return "INTERVAL"
    return "TEXT"
