"""The Ray engine: the same :class:`~federator.plan.model.Plan` run on a Ray cluster.

Chosen with ``federator.connect(catalog, engine="ray", ray_address=...)`` or the catalog's
``[execution] engine = "ray"``; nothing here is imported otherwise (Ray is an optional extra).
It is a second executor of the plan the planner made, not a second planner:

- one async **source actor** per source holds the adapter and its pool; the adapter's
  ``max_concurrency`` is the actor's, so a cap on a database's connections holds cluster-wide.
  The actor gets its source's settings (passwords included) once, by object reference, in its
  constructor: never as a task argument, which task specs, logs and the dashboard show.
  ``ray_resources = {"near_pg" = 0.01}`` in a source's settings places it on nodes that have
  that custom resource;
- fragments stream from the actors as Arrow batches; bind-join keys travel by reference;
- the residual runs as one DuckDB task on a worker (retried by Ray if its node is lost);
- a fragment whose actor dies with its node is fetched again from the restarted actor;
  what cannot be re-run ends in :class:`~federator.errors.ClusterError`, never a partial result.

>>> fed = federator.connect("catalog.toml", engine="ray", ray_address="auto")  # doctest: +SKIP
>>> fed.sql("SELECT ...").explain(analyze=True)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import duckdb
import pyarrow as pa
import ray
from ray.exceptions import (
    ActorDiedError,
    ActorUnavailableError,
    NodeDiedError,
    ObjectLostError,
    OwnerDiedError,
    RayError,
    RayTaskError,
    TaskCancelledError,
    WorkerCrashedError,
)

from federator.adapters import adapter_class
from federator.adapters.base import Split
from federator.catalog import Catalog
from federator.config import CatalogConfig, SourceConfig, redact_text
from federator.errors import ClusterError, FederatorError, SourceError
from federator.execute.executor import Execution
from federator.execute.residual import (
    checked_memory_limit,
    register_tables,
    residual_joins_several,
)
from federator.plan.distribute import (
    BUCKETS_TABLE,
    DistributedResidual,
    distribute_residual,
    hash_partition,
)
from federator.plan.model import Fragment, NativeRequest, Plan

TraceCarrier = dict[str, str]  # a W3C trace context (``traceparent``...), as propagate injects

# Failures of the cluster, not of the query: the work they interrupted may be run again.
NODE_LOST = (
    ActorDiedError,
    ActorUnavailableError,
    NodeDiedError,
    ObjectLostError,
    OwnerDiedError,
    WorkerCrashedError,
)
FRAGMENT_ATTEMPTS = 3  # a fragment's fetch, when its source actor died with its node
SPLIT_ATTEMPTS = 3  # a split that failed transiently before its first batch
# Failures a source's request may not meet again: the connection lost, reset or closed by the
# server (SQLSTATE class 08, admin/crash shutdown), a serialization failure or deadlock.
TRANSIENT_SQLSTATES = ("08", "57P01", "57P02", "57P03", "40001", "40P01")
TRANSIENT_MYSQL_CODES = {2006, 2013, 1205, 1213}  # server gone/lost, lock wait, deadlock
ACTOR_RESTARTS = 4
RESIDUAL_RETRIES = 3  # Ray re-runs the residual task when its node is lost
STREAM_BACKPRESSURE = 16  # batches a source actor may run ahead of the consumer
# Residuals over fewer input rows than this run as one DuckDB task (``[execution]
# distribute_rows``): below it, the stages' overhead costs more than they save.
DISTRIBUTE_ROWS = 1_000_000


class RayEngine:
    """A federation's hold on a Ray cluster: the connection and one actor per source.

    ``address``: ``"auto"`` (the cluster this machine belongs to), ``"ray://host:10001"``
    (a Ray client), ``"127.0.0.1:6379"`` (a head's GCS), or None: the cluster this process is
    already connected to, else a new local one bound to loopback."""

    def __init__(self, config: CatalogConfig, address: str | None = None):
        self.config = config
        self.address = address
        if not ray.is_initialized():
            try:
                ray.init(
                    address=address,
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level="WARNING",
                    _node_ip_address="127.0.0.1" if address is None else None,
                )
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise ClusterError(
                    f"cannot connect to the Ray cluster at {address!r}: {redact_text(str(e))}; "
                    "start one with `ray start --head --node-ip-address 127.0.0.1`"
                ) from None
        self._actors: dict[str, Any] = {}
        self._settings: dict[str, Any] = {}  # refs to each actor's settings: a restart reads them
        execution = config.settings.get("execution", {})
        workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.splits = int(execution.get("splits", workers))  # per plain scan, at most
        self.buckets = int(execution.get("buckets", workers))  # of a distributed residual
        self.distribute_rows = int(execution.get("distribute_rows", DISTRIBUTE_ROWS))
        self.memory_limit = checked_memory_limit(execution.get("memory_limit"))  # per DuckDB task

    def __repr__(self) -> str:
        return f"<federator RayEngine address={self.address!r} actors={sorted(self._actors)}>"

    def actor(self, source: str) -> Any:
        """The source's actor, started on first use."""
        if source not in self._actors:
            self._actors[source] = self._start_actor(self.config.sources[source])
        return self._actors[source]

    def _start_actor(self, src: SourceConfig) -> Any:
        concurrency = int(src.options.get("max_concurrency", 4))
        resources = dict(src.options.get("ray_resources", {}))
        settings = self._settings[src.name] = ray.put(src)  # never shown in a task spec
        return SourceActor.options(
            max_concurrency=concurrency,
            num_cpus=0,
            resources=resources,
            max_restarts=ACTOR_RESTARTS,
            max_task_retries=0,  # a fetch is re-run by the driver, from its first batch
        ).remote(settings)

    async def node_of(self, source: str) -> str:
        """The short id of the node the source's actor runs on."""
        return await self.actor(source).node.remote()

    def forget(self, source: str) -> None:
        """Drop a source's actor for good (it could not be restarted)."""
        actor = self._actors.pop(source, None)
        if actor is not None:
            with contextlib.suppress(Exception):
                ray.kill(actor)

    async def aclose(self) -> None:
        """Close every actor's pool, then end the actors."""
        actors, self._actors = self._actors, {}
        self._settings.clear()
        closing = [a.close.remote() for a in actors.values()]
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.gather(*closing, return_exceptions=True), 10)
        for actor in actors.values():
            with contextlib.suppress(Exception):
                ray.kill(actor)


def short_node_id() -> str:
    """This process's node, as EXPLAIN names it."""
    return ray.get_runtime_context().get_node_id()[:8]


@ray.remote
class SourceActor:
    """One source's adapter and pool, in one process of the cluster."""

    def __init__(self, config: SourceConfig):
        self.adapter = adapter_class(config.kind)(config)
        self._scans: dict[int, contextlib.AsyncExitStack] = {}
        self._scan_ids = itertools.count()

    def __repr__(self) -> str:
        return f"SourceActor({self.adapter.name!r})"  # never the settings

    async def node(self) -> str:
        return short_node_id()

    async def execute(
        self, request: NativeRequest, keys: list[Any] | None, trace: TraceCarrier | None = None
    ) -> AsyncIterator[pa.RecordBatch]:
        with attached(trace):
            async with contextlib.aclosing(self.adapter.execute(request, keys)) as batches:
                async for batch in batches:
                    yield batch

    async def open_scan(self, request: NativeRequest, n: int) -> tuple[int, list[Split]]:
        """Split a request into at most ``n`` splits, held valid (a snapshot kept open) until
        :meth:`close_scan` of the returned id."""
        scan = contextlib.AsyncExitStack()
        splits = await scan.enter_async_context(self.adapter.split_scan(request, n))
        scan_id = next(self._scan_ids)
        self._scans[scan_id] = scan
        return scan_id, splits

    async def execute_split(
        self, split: Split, trace: TraceCarrier | None = None
    ) -> AsyncIterator[pa.RecordBatch]:
        """The split's batches; a transient failure becomes a retryable :class:`SourceError`."""
        try:
            with attached(trace):
                async with contextlib.aclosing(self.adapter.execute_split(split)) as batches:
                    async for batch in batches:
                        yield batch
        except FederatorError:
            raise
        except Exception as e:
            if not is_transient(e):
                raise
            raise SourceError(
                f"split {split.describe} of source {self.adapter.name!r} failed transiently: "
                f"{type(e).__name__}: {redact_text(str(e))}",
                retryable=True,
            ) from None

    async def close_scan(self, scan_id: int) -> None:
        scan = self._scans.pop(scan_id, None)
        if scan is not None:
            await scan.aclose()

    async def close(self) -> None:
        await self.adapter.close()


def trace_carrier(context: Any) -> TraceCarrier | None:
    """``context`` (an OpenTelemetry context; None: tracing off) as a W3C trace context to pass
    with a task or actor call: it holds ids only, never the query's data or settings."""
    if context is None:
        return None
    from opentelemetry import propagate

    carrier: TraceCarrier = {}
    propagate.inject(carrier, context=context)
    return carrier or None


@contextlib.contextmanager
def attached(carrier: TraceCarrier | None) -> Any:
    """Make the driver's trace context (:func:`trace_carrier`) current in this worker, so that
    spans started here parent to the driver's span when the worker has a tracer provider.

    >>> with attached(None):  # tracing off: nothing to attach
    ...     pass
    """
    if not carrier:
        yield
        return
    from opentelemetry import context, propagate

    token = context.attach(propagate.extract(carrier))
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):  # reset from another context (a moved generator)
            context.detach(token)


def is_transient(error: BaseException) -> bool:
    """Whether a driver's error is one that running the request again may not meet."""
    if isinstance(error, (ConnectionError, asyncio.IncompleteReadError)):
        return True
    state = getattr(error, "sqlstate", None)
    if isinstance(state, str) and state.startswith(TRANSIENT_SQLSTATES):
        return True
    code = error.args[0] if error.args else None
    return type(error).__name__ == "OperationalError" and code in TRANSIENT_MYSQL_CODES


@ray.remote(max_retries=RESIDUAL_RETRIES)
def run_residual(
    sql: str,
    params: dict[str, Any],
    memory: str | None,
    names: list[str],
    *tables: pa.Table,
    trace: TraceCarrier | None = None,
    statistics: bool = False,
) -> tuple[pa.Table, str]:
    """The residual SQL on DuckDB over the fragments' tables: the answer and the node it ran on.
    ``memory``: DuckDB's ``memory_limit`` for it (it spills past that), None: DuckDB's default.
    ``statistics``: the tables go in as DuckDB tables (:func:`register_tables`)."""
    with attached(trace):
        return _run_sql(sql, params, memory, names, tables, statistics)


@ray.remote(max_retries=RESIDUAL_RETRIES)
def partition(table: pa.Table, keys: list[str], buckets: int) -> tuple[Any, ...]:
    """One input's rows in ``buckets`` parts by a hash of its join keys (one object each), then
    the parts' sizes in bytes (the Arrow buffers each references) as one more object."""
    parts = hash_partition(table, keys, buckets)
    return (*parts, [part.nbytes for part in parts])


@ray.remote(max_retries=RESIDUAL_RETRIES)
def run_final(
    sql: str,
    params: dict[str, Any],
    memory: str | None,
    *outputs: tuple[pa.Table, str],
    trace: TraceCarrier | None = None,
) -> tuple:
    """The final SQL over every bucket's output; the answer, its node, the buckets' nodes."""
    together = pa.concat_tables([table for table, _ in outputs])
    with attached(trace):
        answer, node = _run_sql(sql, params, memory, [BUCKETS_TABLE], (together,))
    return answer, node, [n for _, n in outputs]


def _run_sql(
    sql: str,
    params: dict[str, Any],
    memory: str | None,
    names: list[str],
    tables: tuple[pa.Table, ...],
    statistics: bool = False,
) -> tuple[pa.Table, str]:
    con = duckdb.connect()
    try:
        con.execute("SET enable_progress_bar = false")
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
        con.execute(f"SET threads = {max(1, int(cpus))}")
        if memory is not None:  # checked by checked_memory_limit when the catalog was read
            con.execute(f"SET memory_limit = '{memory}'")
        register_tables(con, dict(zip(names, tables, strict=True)), with_statistics=statistics)
        relation = con.sql(sql, params=params or None)
        if hasattr(relation, "to_arrow_table"):
            answer = relation.to_arrow_table()
        else:
            answer = relation.arrow()
        return answer, short_node_id()
    except duckdb.Error as e:
        raise SourceError(f"residual query failed on DuckDB: {e}") from None
    finally:
        con.close()


class RayExecution(Execution):
    """One run of a plan on the cluster: fragments from the source actors, the residual as a
    task. Bind joins, vector top-k, shared requests, the cache and deadlines work as in the
    in-process :class:`~federator.execute.Execution`, whose steps this reuses."""

    def __init__(
        self, plan: Plan, catalog: Catalog, params: Mapping[str, Any], *, engine: RayEngine, **kw
    ):
        super().__init__(plan, catalog, params, **kw)
        self.engine = engine
        self.residual_how = "one DuckDB task (the distributed residual is not built yet)"
        self.split_retries = 0  # splits run again after a transient source error
        self.trace_carriers: dict[str, TraceCarrier | None] = {}  # what each task was given
        self.driver_bytes = 0  # the fragments' tables the driver put into the object store
        self.shuffled_bytes = 0  # the hash-partitioned bucket inputs the partition tasks made
        self.broadcast_bytes = 0  # inputs every bucket reads whole, once per bucket
        self._part_sizes: list[Any] = []  # each partition task's refs to its parts' sizes

    def _span_context(self, fragment_id: str | None) -> Any:
        """The span a task's spans parent to: the fragment's, or the run's (None: off)."""
        if self._run is None:
            return None
        if fragment_id is not None:
            return self._run.fragment_context(fragment_id)
        return self._run.context

    def engine_lines(self) -> list[str]:
        where = self.engine.address or "the local cluster"
        lines = [f"Engine: ray ({where})"]
        fragments = ", ".join(
            f"{f.id} ({self.stats[f.id].note or 'not run'})" for f in self.plan.fragments
        )
        lines.append(f"  stage 1: fragments from source actors: {fragments}")
        if self.plan.residual is not None:
            limit = self.engine.memory_limit
            memory = f" (DuckDB memory_limit {limit} per task)" if limit else ""
            lines.append(f"  stage 2: residual as {self.residual_how}{memory}")
            if self.driver_bytes:
                lines.append(f"  data: {self.data_moved()}")
        return lines

    def data_moved(self) -> str:
        """The bytes the residual moved, as EXPLAIN ANALYZE's ``data:`` line shows them: e.g.
        ``72,000 bytes of fragments through the driver; shuffled 48,000 bytes into 2 buckets``."""
        moved = f"{self.driver_bytes:,} bytes of fragments through the driver"
        if self._part_sizes:
            moved += f"; shuffled {self.shuffled_bytes:,} bytes into {self.engine.buckets} buckets"
        if self.broadcast_bytes:
            moved += f"; broadcast {self.broadcast_bytes:,} bytes (whole inputs, once per bucket)"
        return moved

    async def _collect(self, frag: Fragment, keys: list[Any] | None) -> pa.Table:
        """The fragment whole, fetched again from the restarted actor if its node was lost."""
        for attempt in range(1, FRAGMENT_ATTEMPTS + 1):
            try:
                return await super()._collect(frag, keys)
            except (ClusterError, SourceError) as e:
                if not getattr(e, "retryable", False) or attempt == FRAGMENT_ATTEMPTS:
                    raise
                stats = self.stats[frag.id]
                stats.rows = stats.bytes = 0
        raise AssertionError("unreachable")

    async def _request_batches(
        self, frag: Fragment, keys: list[Any] | None
    ) -> AsyncIterator[pa.RecordBatch]:
        """The fragment's batches from its source's actor; a failure on the cluster becomes
        the source's own error or a :class:`ClusterError`, never a driver traceback."""
        label = f"fragment {frag.id} on source {frag.source!r}"
        try:
            async with contextlib.aclosing(self._split_batches(frag, keys)) as batches:
                async for batch in batches:
                    yield batch
        except RayError as e:
            raise _query_error(e, label) from None

    async def _split_batches(
        self, frag: Fragment, keys: list[Any] | None
    ) -> AsyncIterator[pa.RecordBatch]:
        """The fragment's batches from its source actor: a bound request whole, with its keys
        by reference; a plain scan as the adapter's splits, all running at once in the actor
        (its ``max_concurrency`` bounds them) and read in order."""
        actor = self.engine.actor(frag.source)
        request = self.plan.requests[frag.id]
        streaming = {"_generator_backpressure_num_objects": STREAM_BACKPRESSURE}
        trace = self.trace_carriers[frag.id] = trace_carrier(self._span_context(frag.id))
        if keys is not None or self.engine.splits < 2:
            bound = ray.put(keys) if keys is not None else None
            streams = [actor.execute.options(**streaming).remote(request, bound, trace)]
            splits: list[Split] = []  # a whole request is retried with its fragment
            scan_id, described = None, ["whole request" + (" (bound)" if keys else "")]
        else:
            scan_id, splits = await actor.open_scan.remote(request, self.engine.splits)
            streams = [actor.execute_split.options(**streaming).remote(s, trace) for s in splits]
            described = [s.describe for s in splits]
        done = False
        try:
            for i in range(len(streams)):
                for attempt in range(1, SPLIT_ATTEMPTS + 1):
                    sent = False
                    try:
                        async for ref in streams[i]:
                            batch = await ref
                            sent = True
                            yield batch
                        break
                    except RayTaskError as e:
                        error = e.cause
                        last = attempt == SPLIT_ATTEMPTS
                        if sent or last or not splits or not _retryable(error):
                            raise  # after a batch, only the whole fragment may run again
                        self.split_retries += 1
                        retry = actor.execute_split.options(**streaming)
                        streams[i] = retry.remote(splits[i], trace)
            done = True
        finally:
            if not done:  # the actor's tasks, and through them the server-side queries
                for stream in streams:
                    ray.cancel(stream, recursive=True)
            if scan_id is not None:
                closing = actor.close_scan.remote(scan_id)
                if done:
                    await closing
        node = await self.engine.node_of(frag.source)
        shown = ", ".join(described) if len(described) <= 4 else f"{described[0]}, …"
        note = f"{len(described)} split(s) on node {node}: {shown}"
        if self.split_retries:
            note += f" ({self.split_retries} split(s) run again after a transient error)"
        self.stats[frag.id].note = _joined(self.stats[frag.id].note, note)

    # ---- residual ----------------------------------------------------------------------
    async def _residual(self, tables: dict[str, pa.Table]) -> AsyncIterator[pa.RecordBatch]:
        from federator.execute.topk import grow_top_k

        assert self.plan.residual_sql is not None
        tables = await grow_top_k(self, tables)
        started = time.perf_counter()
        self._running.add("the residual")
        try:
            async with contextlib.aclosing(self._residual_tables(tables)) as answers:
                schema, sent = None, False
                async for answer in answers:
                    schema = answer.schema
                    for batch in answer.to_batches(max_chunksize=65_536):
                        self.residual_stats.rows += batch.num_rows
                        self.residual_stats.bytes += batch.nbytes
                        sent = True
                        yield batch
                if not sent and schema is not None:
                    yield pa.RecordBatch.from_pylist([], schema=schema)
        except RayError as e:
            raise _query_error(e, "the residual") from None
        finally:
            self.residual_stats.ms += (time.perf_counter() - started) * 1000
        self._running.discard("the residual")

    async def _residual_tables(self, tables: dict[str, pa.Table]) -> AsyncIterator[pa.Table]:
        """The residual's answer in parts: each bucket's as it finishes when the final SQL
        only maps rows, else the one task's or the final task's answer."""
        params = {k: v for k, v in self.params.items() if f"${k}" in self.plan.residual_sql}
        refs = {name: ray.put(table) for name, table in tables.items()}
        self.driver_bytes = sum(table.nbytes for table in tables.values())
        trace = self.trace_carriers["residual"] = trace_carrier(self._span_context(None))
        distributed = self._distribution(tables)
        if distributed is not None:
            whole = sum(tables[name].nbytes for name in distributed.broadcast)
            self.broadcast_bytes = whole * self.engine.buckets
        if distributed is None:
            sql = self.plan.residual_sql
            assert sql is not None
            answer, node = await _cancelling(
                run_residual.remote(
                    sql,
                    params,
                    self.engine.memory_limit,
                    list(refs),
                    *refs.values(),
                    trace=trace,
                    statistics=residual_joins_several(self.plan),
                )
            )
            self.residual_stats.note = f"one DuckDB task on node {node}"
            yield answer
        elif distributed.row_wise:
            async with contextlib.aclosing(self._streamed_buckets(distributed, refs, params)) as a:
                async for answer in a:
                    yield answer
        else:
            yield await self._buckets(distributed, refs, params)

    def _distribution(self, tables: dict[str, pa.Table]) -> DistributedResidual | None:
        """How the residual runs (``residual_how`` says why): None for one task."""
        rows = {name: table.num_rows for name, table in tables.items()}
        total = sum(rows.values())
        buckets = self.engine.buckets
        if total < self.engine.distribute_rows or buckets < 2:
            self.residual_how = (
                f"one DuckDB task: {total:,} input rows, under distribute_rows "
                f"{self.engine.distribute_rows:,}"
                if buckets >= 2
                else "one DuckDB task: buckets = 1"
            )
            return None
        assert self.plan.residual is not None
        schemas = {name: table.schema for name, table in tables.items()}
        split = distribute_residual(self.plan.residual, schemas, dict(rows), buckets)
        if not isinstance(split, DistributedResidual):
            self.residual_how = f"one DuckDB task: {split.reason}"
            return None
        parts = ", ".join(f"{n} on ({', '.join(k)})" for n, k in split.partition_keys.items())
        shown = f"; broadcast {', '.join(split.broadcast)}" if split.broadcast else ""
        self.residual_how = (
            f"{buckets} buckets ({total:,} input rows): hash partitioned {parts}{shown}; "
            + (
                "per-bucket SQL, its rows mapped and sent as each bucket finishes"
                if split.row_wise
                else "per-bucket SQL then a final SQL over the buckets' outputs"
            )
        )
        return split

    def _bucket_tasks(
        self, split: DistributedResidual, refs: dict[str, Any], params: dict[str, Any]
    ) -> list[Any]:
        """Partition tasks, then a DuckDB task per bucket: each bucket's output ref."""
        buckets = self.engine.buckets
        parts: dict[str, list[Any]] = {}
        for name, keys in split.partition_keys.items():
            *parts[name], sizes = partition.options(num_returns=buckets + 1).remote(
                refs[name], keys, buckets
            )
            self._part_sizes.append(sizes)
        names = list(refs)
        return [
            run_residual.remote(
                split.bucket_sql,
                params,
                self.engine.memory_limit,
                names,
                *(parts[n][b] if n in parts else refs[n] for n in names),
                trace=self.trace_carriers.get("residual"),
                statistics=residual_joins_several(self.plan),
            )
            for b in range(buckets)
        ]

    async def _streamed_buckets(
        self, split: DistributedResidual, refs: dict[str, Any], params: dict[str, Any]
    ) -> AsyncIterator[pa.Table]:
        """A row-wise final SQL on each bucket's output, each answer sent as its task ends
        (first done, first sent): the driver holds one bucket's answer at a time."""
        memory = self.engine.memory_limit
        finals = [
            run_final.remote(
                split.final_sql, params, memory, output, trace=self.trace_carriers["residual"]
            )
            for output in self._bucket_tasks(split, refs, params)
        ]
        waiting = {asyncio.wrap_future(ref.future()): ref for ref in finals}
        futures, nodes, first_after = list(waiting), [], None
        try:
            while waiting:
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                for future in done:
                    del waiting[future]
                    answer, _, bucket_nodes = future.result()
                    nodes += bucket_nodes
                    if first_after is None:  # how many buckets were done when the first was sent
                        first_after = sum(f.done() for f in futures)
                    yield answer
        finally:
            for future, ref in waiting.items():  # a stream closed early, a timeout: stop the rest
                future.cancel()
                ray.cancel(ref, force=True, recursive=True)
        counts = {n: nodes.count(n) for n in dict.fromkeys(nodes)}
        spread = ", ".join(f"{c} on node {n}" for n, c in counts.items())
        self.residual_stats.note = (
            f"buckets: {spread}; streamed as each bucket finished "
            f"(first answer sent when {first_after} of {len(finals)} were done); "
            + await self._shuffled()
        )

    async def _buckets(
        self, split: DistributedResidual, refs: dict[str, Any], params: dict[str, Any]
    ) -> pa.Table:
        """Partition tasks, a DuckDB task per bucket, then the final task."""
        outputs = self._bucket_tasks(split, refs, params)
        answer, node, nodes = await _cancelling(
            run_final.remote(
                split.final_sql,
                params,
                self.engine.memory_limit,
                *outputs,
                trace=self.trace_carriers["residual"],
            )
        )
        counts = {n: nodes.count(n) for n in dict.fromkeys(nodes)}
        spread = ", ".join(f"{c} on node {n}" for n, c in counts.items())
        self.residual_stats.note = f"buckets: {spread}; final task on node {node}; "
        self.residual_stats.note += await self._shuffled()
        return answer

    async def _shuffled(self) -> str:
        """Count the bytes the partition tasks made (their sizes, a small object each)."""
        sizes = await asyncio.gather(*self._part_sizes)
        self.shuffled_bytes = sum(sum(each) for each in sizes)
        return f"shuffled {self.shuffled_bytes:,} bytes into {self.engine.buckets} buckets"


async def _cancelling(ref: Any) -> Any:
    """The value of a task's result; if the wait is cancelled (a timeout, a closed result),
    the task and every task it depends on are cancelled too."""
    try:
        return await ref
    except (asyncio.CancelledError, TimeoutError):
        ray.cancel(ref, force=True, recursive=True)  # DuckDB does not stop for an interrupt
        raise


def _retryable(error: BaseException) -> bool:
    return isinstance(error, SourceError) and error.retryable


def _joined(note: str, more: str) -> str:
    return f"{note}; {more}" if note else more


def _query_error(error: RayError, what: str) -> FederatorError:
    """The typed error a failure on the cluster becomes: the source's own error as raised in
    the actor or task, else a :class:`ClusterError` naming what was running."""
    if isinstance(error, RayTaskError):
        cause = error.cause
        if isinstance(cause, FederatorError):
            return cause
        if not isinstance(cause, RayError):
            return SourceError(f"{what} failed: {type(cause).__name__}: {redact_text(str(cause))}")
        error = cause
    if isinstance(error, TaskCancelledError):
        return ClusterError(f"{what} was cancelled on the cluster", retryable=False)
    lost = isinstance(error, NODE_LOST)
    reason = "its node or worker was lost" if lost else type(error).__name__
    return ClusterError(f"{what} failed on the Ray cluster: {reason}", retryable=lost)
