"""What every SQL backend shares: translating a fragment into dialect SQL with bound parameters,
and running bind joins in batches. Each engine adds only driver glue (ibis's layout)."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import re
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyarrow as pa
from federator.adapters.base import Adapter, BindSpec, NativeRequest, failure_reason
from federator.adapters.splits import range_condition, range_values
from sqlglot import exp

from federator.config import SourceConfig, parse_dsn
from federator.deadline import bound
from federator.errors import CatalogError, SourceUnreachableError
from federator.plan.model import Fragment, bind_batches, grouped_bind_site
from federator.telemetry import bind_batch

BIND_PARAM = "__bind__"
_MARK = "\x00P\x00"  # brackets a positional parameter's number while rendering
_MARKS = re.compile(f"{_MARK}(\\d+){_MARK}")


@dataclass
class SQLPayload:
    """Adapter-private part of a request: the SQL without the bind predicate, and for IN-list
    binding the tree to re-render per batch."""

    unbound_text: str
    unbound_names: list[str]
    bound_tree: exp.Query | None = None
    tree: exp.Query | None = None  # the request's tree, unbound: what split_scan cuts
    in_list_cache: dict[int, tuple[str, list[str]]] = field(default_factory=dict)


class SQLAdapter(Adapter):
    """Base of the relational adapters.

    Subclasses set ``dialect`` (sqlglot's name), ``param_style`` ("dollar" → ``$1``, "format"
    → ``%s``, "qmark" → ``?``) and ``bind_style`` ("array" → ``= ANY($n)``, "in_list" →
    batched ``IN (…)``), and implement :meth:`run`.
    """

    dialect: ClassVar[str] = "postgres"
    param_style: ClassVar[str] = "dollar"
    bind_style: ClassVar[str] = "in_list"
    keep_schema: ClassVar[bool] = True  # False where the namespace is implicit (SQLite "main")
    # True where a CTE read twice is computed once (PostgreSQL materializes it): a grouped
    # derived table a fragment reads twice is then sent once, as a CTE (shared_derived_tables)
    computes_shared_ctes_once: ClassVar[bool] = False
    default_schema: str = ""

    @property
    def bind_batch_size(self) -> int:
        """Most keys per bound request: an array is one parameter whatever its length, so it
        takes as many keys as a bind may have (bind_large_max_keys: one round trip, measured
        faster than several here); an IN list has a placeholder per key and stays at 1,000."""
        return int(
            self.config.options.get(
                "bind_batch_size", 200_000 if self.bind_style == "array" else 1_000
            )
        )

    # ---- translate (pure) ------------------------------------------------------------
    def translate(self, fragment: Fragment) -> NativeRequest:
        tree = self.rules.rewrite(fragment.query, self.dialect)
        tree = self.localize(tree)
        text, names = self.render(tree)
        request = NativeRequest(source=self.name, text=text, param_names=names)
        request.payload = SQLPayload(unbound_text=text, unbound_names=names, tree=tree)
        if fragment.bind is not None:
            key = fragment.bind.key.copy()
            spec = BindSpec(
                column=key.sql(dialect=self.dialect),
                style=self.bind_style,
                batch_size=self.bind_batch_size,
            )
            request.bind = spec
            if self.bind_style == "array":
                bound = _bound(
                    tree,
                    key,
                    lambda k: exp.EQ(
                        this=k,
                        expression=exp.Any(this=exp.Paren(this=exp.Placeholder(this=BIND_PARAM))),
                    ),
                )
                request.text, request.param_names = self.render(bound)
            else:
                request.payload.bound_tree = tree
                shown = _bound(
                    tree,
                    key,
                    lambda k: exp.In(this=k, expressions=[exp.Placeholder(this=f"{BIND_PARAM}0")]),
                )
                text, _ = self.render(shown)
                request.text = _annotate_in_list(text, spec.batch_size)
        if fragment.types:
            request.schema = pa.schema(
                [(c, fragment.types[c]) for c in fragment.columns if c in fragment.types]
            )
        return request

    def localize(self, tree: exp.Expression) -> exp.Expression:
        """Drop the source name from table references (and the schema where implicit)."""

        def strip(node: exp.Expression) -> exp.Expression:
            if isinstance(node, exp.Table) and node.catalog == self.name:
                node = node.copy()
                node.set("catalog", None)
                if not self.keep_schema:
                    node.set("db", None)
            return node

        tree = tree.transform(strip)
        return shared_derived_tables(tree) if self.computes_shared_ctes_once else tree

    def render(
        self, tree: exp.Expression, expand: dict[str, int] | None = None
    ) -> tuple[str, list[str]]:
        """Dialect SQL with every identifier quoted and parameters in the driver's style.

        Positional styles take values in the order the placeholders appear in the text, which
        is not always the order of the tree, so the order is read back from the rendered text.
        ``expand`` (positional styles): placeholders written ``n`` times, named ``name0`` …
        ``name{n-1}`` (an IN list rendered once, not as ``n`` nodes: sqlglot is slow on those).
        """
        tree = tree.copy()
        if self.param_style == "dollar":
            names: list[str] = []
            for ph in list(tree.find_all(exp.Placeholder)):
                if ph.name not in names:
                    names.append(ph.name)
                ph.replace(exp.Parameter(this=exp.Literal.number(names.index(ph.name) + 1)))
            return tree.sql(dialect=self.dialect, identify=True), names
        by_mark = {}
        for i, ph in enumerate(list(tree.find_all(exp.Placeholder))):
            mark = f"{_MARK}{i}{_MARK}"
            by_mark[mark] = ph.name
            ph.replace(exp.var(mark))
        text = tree.sql(dialect=self.dialect, identify=True)
        if self.param_style == "format":
            text = text.replace("%", "%%")
        marker = "%s" if self.param_style == "format" else "?"
        ordered: list[str] = []

        def place(found: re.Match[str]) -> str:
            name = by_mark[found.group(0)]
            count = (expand or {}).get(name)
            if count is None:
                ordered.append(name)
                return marker
            ordered.extend(f"{name}{i}" for i in range(count))
            return ", ".join([marker] * count)

        return _MARKS.sub(place, text), ordered

    def _in_list(self, payload: SQLPayload, key_sql: exp.Column, n: int) -> tuple[str, list[str]]:
        if n not in payload.in_list_cache:
            assert payload.bound_tree is not None
            item = exp.Placeholder(this=BIND_PARAM)
            bound = _bound(
                payload.bound_tree, key_sql, lambda k: exp.In(this=k, expressions=[item])
            )
            payload.in_list_cache[n] = self.render(bound, {BIND_PARAM: n})
        return payload.in_list_cache[n]

    def range_requests(
        self, request: NativeRequest, tree: exp.Query, column: exp.Column, cuts: list[Any]
    ) -> list[NativeRequest]:
        """``request`` (a plain scan, parameters bound, its tree ``tree``) as one request per
        range of ``column`` that ``cuts`` make (see :func:`.splits.range_condition`)."""
        if len(request.params) != len(request.param_names):
            raise ValueError(
                "split a request with its parameters bound (NativeRequest.with_params)"
            )
        values = dict(zip(request.param_names, request.params, strict=True))
        requests = []
        for index in range(len(cuts) + 1):
            condition = range_condition(column, cuts, index)
            ranged = tree.copy() if condition is None else tree.copy().where(condition)
            text, names = self.render(ranged)
            given = {**values, **range_values(cuts, index)}
            requests.append(
                NativeRequest(
                    source=self.name,
                    text=text,
                    param_names=names,
                    params=[given[n] for n in names],
                    schema=request.schema,
                    payload=SQLPayload(unbound_text=text, unbound_names=names, tree=ranged),
                )
            )
        return requests

    # ---- execute ---------------------------------------------------------------------
    async def execute(
        self, request: NativeRequest, bind_values: Sequence[Any] | None = None
    ) -> AsyncIterator[pa.RecordBatch]:
        payload: SQLPayload = request.payload
        values = dict(zip(request.param_names, request.params, strict=True))
        if request.bind is None or bind_values is None:
            params = [values[n] for n in payload.unbound_names]
            async with contextlib.aclosing(
                self.run(payload.unbound_text, params, request.schema)
            ) as rows:
                async for batch in rows:
                    yield batch
            return
        keys = list(bind_values) or [None]
        key_col = exp.to_column(request.bind.column, dialect=self.dialect)
        start = 0
        for size in bind_batches(len(keys), request.bind.batch_size):
            chunk = keys[start : start + size]
            start += size
            if request.bind.style == "array":
                params = [chunk if n == BIND_PARAM else values[n] for n in request.param_names]
                text = request.text
            else:
                text, names = self._in_list(payload, key_col, len(chunk))
                by_name = {f"{BIND_PARAM}{i}": k for i, k in enumerate(chunk)}
                params = [by_name[n] if n in by_name else values[n] for n in names]
            with bind_batch(len(chunk)) as traced:
                async with contextlib.aclosing(self.run(text, params, request.schema)) as rows:
                    async for batch in rows:
                        traced.rows += batch.num_rows
                        yield batch

    @abc.abstractmethod
    def run(
        self, text: str, params: list[Any], schema: pa.Schema | None
    ) -> AsyncIterator[pa.RecordBatch]:
        """Run SQL with positional parameters; stream batches. ``schema`` holds the exact Arrow
        types known for some output columns (by name); yield at least one (maybe empty) batch."""


def shared_derived_tables(tree: exp.Expression) -> exp.Expression:
    """``tree`` with each grouped derived table it reads more than once written once, as a
    CTE that every copy reads.

    Planning inlines a query's CTE at each place it is read: TPC-H Q15's ``revenue0``, a
    quarter's revenue per supplier, is read for its rows and again for their maximum. A
    source that computes a CTE read twice once (PostgreSQL materializes it) then aggregates
    the quarter once, not twice (1.8 s -> 0.6 s at SF 1). Only derived tables with an
    aggregate are shared: a materialized CTE takes no filter from the query around it, which
    costs a plain scan more than it saves.

    >>> import sqlglot
    >>> q = sqlglot.parse_one(
    ...     "SELECT r.k FROM (SELECT k, SUM(v) AS s FROM t GROUP BY k) AS r CROSS JOIN "
    ...     "(SELECT MAX(r.s) AS m FROM (SELECT k, SUM(v) AS s FROM t GROUP BY k) AS r) AS u "
    ...     "WHERE u.m = r.s")
    >>> print(shared_derived_tables(q).sql())
    WITH _shared_0 AS (SELECT k, SUM(v) AS s FROM t GROUP BY k) SELECT r.k FROM _shared_0 AS r \
CROSS JOIN (SELECT MAX(r.s) AS m FROM _shared_0 AS r) AS u WHERE u.m = r.s
    """
    if not isinstance(tree, exp.Query) or tree.args.get("with_") is not None:
        return tree
    tree = tree.copy()
    groups: dict[str, list[exp.Subquery]] = {}
    for sub in tree.find_all(exp.Subquery):  # breadth first: an outer copy before its insides
        if isinstance(sub.parent, (exp.From, exp.Join)) and sub.this.find(exp.AggFunc):
            groups.setdefault(sub.this.sql(), []).append(sub)
    ctes: list[exp.CTE] = []
    for copies in groups.values():
        copies = [c for c in copies if c.root() is tree]  # not inside a copy shared already
        if len(copies) < 2:
            continue
        name = exp.to_identifier(f"_shared_{len(ctes)}")
        ctes.append(exp.CTE(this=copies[0].this.copy(), alias=exp.TableAlias(this=name)))
        for sub in copies:
            sub.replace(exp.Table(this=name.copy(), alias=sub.args.get("alias")))
    if ctes:
        tree.set("with_", exp.With(expressions=ctes))
    return tree


def _bound(
    tree: exp.Query, key: exp.Column, condition: Callable[[exp.Expression], exp.Expression]
) -> exp.Query:
    """A copy of ``tree`` with the bind ``condition`` on ``key``, under the GROUP BY of the
    derived table ``key`` comes from where it is a group key (``grouped_bind_site``), so the
    source filters the rows before grouping them (TPC-H Q17's AVG per part)."""
    copy = tree.copy()
    site, where = grouped_bind_site(copy, key)
    site.where(condition(where), copy=False)
    return copy


def _annotate_in_list(text: str, batch_size: int) -> str:
    """Show the batched IN list in EXPLAIN once, not ten thousand placeholders."""
    for mark in ("IN (%s)", "IN (?)", "IN ($1)"):
        if mark in text:
            return text.replace(mark, f"IN ({mark[4:-1]}, ... up to {batch_size:,} keys per batch)")
    return text


DEFAULT_BULK_ROWS = 50_000  # fragments estimated at this many rows or more take the bulk path


class ServerSQLAdapter(SQLAdapter):
    """A SQL server reached through a DSN with a connection pool opened on first use.

    Subclasses set ``default_port`` and ``connect_errors`` and implement
    :meth:`_connect_pool` (create the pool and prove a connection) and :meth:`_close_pool`.
    """

    default_port: ClassVar[int]
    connect_errors: ClassVar[tuple[type[BaseException], ...]] = (OSError, TimeoutError)

    def __init__(self, config: SourceConfig):
        super().__init__(config)
        if "dsn" not in config.options:
            raise CatalogError(f"source {config.name!r} ({self.kind}) needs a 'dsn'")
        self.dsn = parse_dsn(str(config.options["dsn"]), default_port=self.default_port)
        self.connect_timeout = float(config.options.get("connect_timeout", 10))
        self.bulk_rows = int(
            config.options.get(
                "bulk_rows", os.environ.get("FEDERATOR_BULK_ROWS", DEFAULT_BULK_ROWS)
            )
        )
        self._pool: Any = None
        self._pool_lock = asyncio.Lock()

    @property
    def where(self) -> str:
        return self.dsn.where

    async def open(self) -> None:
        await self._get_pool()

    async def _get_pool(self) -> Any:
        if self._pool is not None:
            return self._pool
        async with self._pool_lock:
            if self._pool is None:
                limit = bound(self.connect_timeout)  # the handshake too, not only TCP
                try:
                    async with asyncio.timeout(limit):
                        self._pool = await self._connect_pool()
                except TimeoutError:
                    reason = f"no answer within {limit:.3g} s"
                    raise SourceUnreachableError(self.name, self.where, reason) from None
                except self.connect_errors as e:
                    reason = failure_reason(e, self.dsn.password)
                    raise SourceUnreachableError(self.name, self.where, reason) from None
        return self._pool

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await self._close_pool(pool)

    def connections_in_use(self) -> int | None:
        pool = self._pool
        return None if pool is None else self._pool_in_use(pool)

    def _pool_in_use(self, pool: Any) -> int | None:
        """What the driver's pool says it has checked out (None: it does not say)."""
        return None

    @abc.abstractmethod
    async def _connect_pool(self) -> Any:
        """A new pool, with one connection made to prove the server is there."""

    @abc.abstractmethod
    async def _close_pool(self, pool: Any) -> None:
        """Close ``pool``, giving up on connections still busy after a few seconds."""
