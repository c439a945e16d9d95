"""The adapter interface: one class per backend kind, a small surface.

An adapter opens a pool lazily, describes its tables, translates a :class:`Fragment` into a
:class:`NativeRequest` (a pure function: what EXPLAIN prints) and executes a request as a
stream of Arrow record batches.
"""

from __future__ import annotations

import abc
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pyarrow as pa
from federator.rules import RuleSet, rule_set_for

from federator.config import SourceConfig

# The request types an adapter makes (Adapter.translate) live with the plan they join.
from federator.plan.model import BindSpec as BindSpec
from federator.plan.model import NativeRequest as NativeRequest

if TYPE_CHECKING:
    from federator.plan.model import Fragment

DEFAULT_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class TableRef:
    """A table in one source; ``schema`` is its namespace (PostgreSQL schema, MySQL database)."""

    schema: str
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass
class TableInfo:
    """What the catalog knows of one table."""

    source: str
    ref: TableRef
    schema: pa.Schema
    rows: int | None = None
    # Column sets each unique on their own (primary key, unique indexes); None: not known.
    unique_keys: tuple[tuple[str, ...], ...] | None = None


@dataclass(frozen=True)
class Split:
    """One part of a request's rows, runnable on its own (in another process too, by an adapter
    of the same source opened there): :meth:`Adapter.execute_split` runs it.

    ``index`` of ``count`` splits of one :meth:`Adapter.split_scan`; ``request`` has its
    parameters bound; ``snapshot`` is the source's snapshot every split reads (PostgreSQL's
    exported snapshot id) or None; ``describe`` is what EXPLAIN shows ("ctid [1200,2400)",
    "id < 5000", "file t.parquet row groups 0-3", "whole request"). A split pickles and holds
    no DSN or password, only the request (its native text and parameter values).

    >>> whole_split("pg", NativeRequest("pg", "SELECT 1")).describe
    'whole request'
    """

    source: str
    index: int
    count: int
    request: NativeRequest
    snapshot: str | None
    describe: str


def whole_split(source: str, request: NativeRequest) -> Split:
    """The one split of a request that does not split: all of it."""
    return Split(source, 0, 1, request, None, "whole request")


def failure_reason(error: BaseException, password: str | None) -> str:
    """A driver's error as one line for a message, with the password masked if it shows."""
    text = f"{type(error).__name__}: {error}".strip()
    return text.replace(password, "***") if password else text


class Adapter(abc.ABC):
    """Base of every backend adapter.

    Subclasses set ``kind`` and implement the abstract methods. ``rules`` is a per-source copy
    of the kind's rule set, so rules added for one source stay with it.
    """

    kind: ClassVar[str]
    dialect: ClassVar[str | None] = None
    # Whether the server matches column names in any case (MySQL, SQLite, DuckDB do;
    # PostgreSQL matches quoted names exactly).
    case_insensitive_columns: ClassVar[bool] = True
    # Whether a dict parameter binds (as a document); elsewhere it is a ParameterError.
    document_params: ClassVar[bool] = False

    def __init__(self, config: SourceConfig):
        self.config = config
        self.name = config.name
        self.rules: RuleSet = rule_set_for(self.kind)
        self.max_concurrency: int = int(config.options.get("max_concurrency", 4))
        self.batch_rows: int = int(config.options.get("batch_rows", DEFAULT_BATCH_ROWS))

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} at {self.where}>"

    @property
    def where(self) -> str:
        """Where the source lives, for messages: host:port or a path, never a password."""
        return "(embedded)"

    async def open(self) -> None:  # noqa: B027  (optional hook)
        """Open the connection pool; called lazily before the first request."""

    async def close(self) -> None:  # noqa: B027  (optional hook)
        """Close the pool; safe to call twice."""

    @abc.abstractmethod
    async def tables(self) -> list[TableInfo]:
        """Every table with its Arrow schema and row estimate."""

    async def schema(self, table: TableRef) -> pa.Schema:
        for info in await self.tables():
            if info.ref == table:
                return info.schema
        raise KeyError(str(table))

    async def estimate(self, table: TableRef) -> int | None:
        for info in await self.tables():
            if info.ref == table:
                return info.rows
        return None

    async def estimate_rows(self, fragment: Fragment, request: NativeRequest) -> int | None:
        """The source's own estimate of the rows ``request`` (``fragment`` translated, not
        bound, parameters set) returns; None where the source has none to give."""
        return None

    def takes_document(self, request: NativeRequest, name: str) -> bool:
        """Whether parameter ``name`` of ``request`` binds a dict (a document, a map): the
        source's ``document_params`` unless an adapter knows better per request."""
        return self.document_params

    @abc.abstractmethod
    def translate(self, fragment: Fragment) -> NativeRequest:
        """The native request for a fragment (pure; no I/O)."""

    @abc.abstractmethod
    def execute(
        self, request: NativeRequest, bind_values: Sequence[Any] | None = None
    ) -> AsyncIterator[pa.RecordBatch]:
        """Stream the request's result. Stops cleanly when the consumer is cancelled."""

    @contextlib.asynccontextmanager
    async def split_scan(self, request: NativeRequest, n: int) -> AsyncIterator[list[Split]]:
        """At most ``n`` disjoint splits whose rows together are ``request``'s (its parameters
        bound: ``NativeRequest.with_params``), valid until the context exits (a source with
        snapshots holds its snapshot open until then).

        The default is one split of the whole request; adapters that can read a plain scan in
        parts (key or ctid ranges, files) override it. A request with a bind, a LIMIT, an
        ORDER BY or an aggregate always gives one split.

        >>> async def parts(adapter, request):
        ...     async with adapter.split_scan(request, 4) as splits:
        ...         return [s.describe for s in splits]
        """
        yield [whole_split(self.name, request)]

    def execute_split(self, split: Split) -> AsyncIterator[pa.RecordBatch]:
        """Stream one split's rows; the adapter may be another process's, opened on the same
        source. The default runs the split's request."""
        return self.execute(split.request)
