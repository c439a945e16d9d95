"""Traces, metrics and logs of queries, through OpenTelemetry and ``logging``.

Each query is a ``federator.query`` span (a child of the caller's current span) with children:
``federator.plan`` for planning, ``federator.fragment`` per fragment run (source name and
kind, the native request text, which holds placeholders and never parameter values, rows,
bytes, the bind decision, cache hit or miss) and ``federator.residual``. An error is recorded
on the span where it happened; each request of a bind join's keys is a ``federator.bind_batch``
child of its fragment (keys, rows). Metrics: query and fragment durations, rows and bytes per
source, cache hits, misses, evictions and bytes held, pool connections in use per source, bind
keys sent. Spans and metrics go to the global OpenTelemetry providers, or to federator's own
(:func:`set_providers`: a process sets the global ones once, a test or an embedding service
can give federator providers and take them back); logs to ``federator.query`` (one INFO line
per query) and ``federator.request`` (native requests at DEBUG). Without the OpenTelemetry
SDK every span and instrument is the API's no-op.

>>> import federator  # doctest: +SKIP
>>> server = federator.telemetry.serve_metrics(port=9464)  # doctest: +SKIP
>>> # Prometheus now scrapes http://127.0.0.1:9464/metrics
>>> server.close()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import random
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.metrics import Observation
from opentelemetry.trace import Span, Status, StatusCode

from federator.config import redact_text
from federator.errors import FederatorError, QueryTimeoutError

if TYPE_CHECKING:
    from federator.plan.model import Fragment, FragmentStats, NativeRequest

query_log = logging.getLogger("federator.query")
request_log = logging.getLogger("federator.request")


class _Instruments:
    """Federator's metric instruments on one meter (the global proxy's, or an injected
    provider's: :func:`set_providers`)."""

    def __init__(self, meter: metrics.Meter):
        self.query_duration = meter.create_histogram(
            "federator.query.duration", unit="s", description="Query run time, by outcome"
        )
        self.fragment_duration = meter.create_histogram(
            "federator.fragment.duration", unit="s", description="Fragment run time, by source"
        )
        self.source_rows = meter.create_counter(
            "federator.source.rows", unit="{row}", description="Rows fetched from each source"
        )
        self.source_bytes = meter.create_counter(
            "federator.source.bytes", unit="By", description="Arrow bytes fetched from each source"
        )
        self.cache_hits = meter.create_counter(
            "federator.cache.hits", description="Fragments answered by the cache"
        )
        self.cache_misses = meter.create_counter(
            "federator.cache.misses", description="Cacheable fragments fetched from their source"
        )
        self.cache_evictions = meter.create_counter(
            "federator.cache.evictions", description="Entries the in-process cache evicted"
        )
        self.bind_keys = meter.create_counter(
            "federator.bind.keys", description="Join keys sent to sources by bind joins"
        )
        meter.create_observable_gauge(
            "federator.cache.bytes",
            callbacks=[_observe_cache_bytes],
            unit="By",
            description="Bytes the in-process caches hold",
        )
        meter.create_observable_gauge(
            "federator.pool.connections.in_use",
            callbacks=[_observe_pools],
            unit="{connection}",
            description="Connections checked out of each source's pool",
        )


@dataclass
class _Providers:
    tracer_provider: Any  # None: the global one
    meter_provider: Any
    tracer: trace.Tracer
    instruments: _Instruments


_pool_owners: weakref.WeakSet[Any] = weakref.WeakSet()  # catalogs (``.adapters``)
_caches: weakref.WeakSet[Any] = weakref.WeakSet()  # caches (``.bytes_held()``)


def set_providers(tracer_provider: Any = None, meter_provider: Any = None) -> Callable[[], None]:
    """Give federator its own tracer and meter providers instead of OpenTelemetry's global
    ones (which can be set once per process); both None: the global ones again. Returns a
    function that restores the providers in use before.

    >>> from opentelemetry.sdk.trace import TracerProvider  # doctest: +SKIP
    >>> restore = set_providers(tracer_provider=TracerProvider())  # doctest: +SKIP
    >>> restore()  # doctest: +SKIP
    """
    global _active
    before = _active
    if tracer_provider is None and meter_provider is None:
        _active = _global
    else:
        tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("federator")
        meter = (meter_provider or metrics.get_meter_provider()).get_meter("federator")
        _active = _Providers(tracer_provider, meter_provider, tracer, _Instruments(meter))

    def restore() -> None:
        global _active
        _active = before

    return restore


def meter_provider() -> Any:
    """The meter provider federator records to: its own (:func:`set_providers`) or the global."""
    return _active.meter_provider or metrics.get_meter_provider()


def watch(catalog: Any = None, cache: Any = None) -> None:
    """Observe a catalog's pools and a cache's bytes in the gauges while they live."""
    if catalog is not None:
        _pool_owners.add(catalog)
    if cache is not None:
        _caches.add(cache)


def unwatch(catalog: Any = None, cache: Any = None) -> None:
    """Stop observing a catalog and a cache (their federation closed)."""
    _pool_owners.discard(catalog)
    _caches.discard(cache)


def count_eviction() -> None:
    """One entry evicted from an in-process cache."""
    _active.instruments.cache_evictions.add(1)


def _observe_cache_bytes(options: Any) -> Iterator[Observation]:
    total = sum(cache.bytes_held() for cache in list(_caches))
    yield Observation(total)


def _observe_pools(options: Any) -> Iterator[Observation]:
    """Connections in use per source, summed over the live federations' catalogs."""
    in_use: dict[tuple[str, str], int] = {}
    for catalog in list(_pool_owners):
        for name, adapter in list(catalog.adapters.items()):
            n = adapter.connections_in_use()
            if n is not None:
                key = (name, adapter.kind)
                in_use[key] = in_use.get(key, 0) + n
    for (source, kind), n in in_use.items():
        yield Observation(n, {"source": source, "kind": kind})


# The application's global providers unless set_providers() gave federator its own.
_global = _Providers(
    None, None, trace.get_tracer("federator"), _Instruments(metrics.get_meter("federator"))
)
_active = _global


def tracing() -> bool:
    """Whether a tracer provider is set (federator's own, or the application's global one, the
    SDK's say): without one, no span is started at all, not even the API's no-op ones, so
    tracing off costs nothing."""
    provider = _active.tracer_provider or trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _start(on: bool, name: str, context: Any = None, attributes: Any = None) -> Span:
    if not on:
        return trace.INVALID_SPAN
    return _active.tracer.start_span(name, context=context, attributes=attributes)


class QueryTrace:
    """One query's id and span: planning runs under it, and its first run ends it (a Result
    run again gets a fresh ``federator.query`` span with the same id). A query never run (a
    plain ``explain()``, a Result dropped unrun) ends its span at :meth:`close` or when it is
    garbage-collected, with outcome ``not run`` and the time planning ended."""

    def __init__(self, sql: str | Any = None):
        """``sql``: the query's text or sqlglot tree (``fed.sql`` takes both)."""
        self.query_id = f"{random.getrandbits(64):016x}"
        self.on = tracing()
        self._attributes = {"federator.query_id": self.query_id, "db.system.name": "federator"}
        if sql is not None and self.on:
            text = sql if isinstance(sql, str) else sql.sql()
            self._attributes["db.query.text"] = redact_text(text)
        self._span: Span | None = _start(self.on, "federator.query", None, self._attributes)
        self._planned_at: int | None = None  # ns since the epoch, when planning ended

    @contextlib.contextmanager
    def planning(self) -> Iterator[None]:
        """Planning as a child span, current inside (call it in the coroutine that plans).
        A planning error ends the query span too: there will be no run."""
        started = time.perf_counter()
        try:
            if self.on and self._span is not None:
                parent = trace.set_span_in_context(self._span)
                with _active.tracer.start_as_current_span("federator.plan", context=parent):
                    yield
            else:
                yield
            self._planned_at = time.time_ns()
        except BaseException as e:
            if self._span is not None:
                _fail(self._span, e)
                self._span.end()
                self._span = None
            seconds = time.perf_counter() - started
            _active.instruments.query_duration.record(seconds, {"outcome": outcome_of(e)})
            query_log.info(
                "query %s %s in planning: %s: %s, %.1f ms",
                self.query_id, outcome_of(e), type(e).__name__, redact_text(str(e)),
                seconds * 1000,
            )  # fmt: skip
            raise

    def run(self) -> RunTrace:
        """The span of one run of the plan: the planned one first, then a fresh one."""
        span, self._span = self._span, None
        if span is None:
            span = _start(self.on, "federator.query", None, self._attributes)
        return RunTrace(self.query_id, span, self.on)

    def close(self, outcome: str = "not run") -> None:
        """End the planned span if no run took it (safe to call twice)."""
        span, self._span = self._span, None
        if span is None or not span.is_recording():
            return
        span.set_attribute("federator.outcome", outcome)
        span.end(end_time=self._planned_at)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


# The span of the fragment whose source is being read, set by the executor around each step
# of the source's stream (never across a yield): bind batches started in that step are its
# children.
_fragment_context: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "federator_fragment_context", default=None
)


@contextlib.contextmanager
def reading_fragment(context: Any) -> Iterator[None]:
    """Make ``context`` (:meth:`RunTrace.fragment_context`) the parent of bind batches for
    one step of a source's stream. Set and reset within one await, so it never leaks into the
    caller's next step, whichever task takes it."""
    if context is None:
        yield
        return
    token = _fragment_context.set(context)
    try:
        yield
    finally:
        _fragment_context.reset(token)


class BindBatch:
    """One bind batch's span (:func:`bind_batch`): ``rows`` counts what the batch returned."""

    def __init__(self, span: Span):
        self.span = span
        self.rows = 0


@contextlib.contextmanager
def bind_batch(keys: int | None) -> Iterator[BindBatch]:
    """A ``federator.bind_batch`` span, a child of the fragment being read, around one request
    of a bind join's ``keys`` (adapters wrap each batch's request in it; None: the request is
    not bound, no span). The span is never made current, so holding it across the adapter's
    yields is safe.

    >>> with bind_batch(500) as batch:  # doctest: +SKIP
    ...     batch.rows += 10
    """
    parent = _fragment_context.get()
    if parent is None or keys is None:
        yield BindBatch(trace.INVALID_SPAN)
        return
    span = _start(True, "federator.bind_batch", parent, {"federator.bind.keys": keys})
    batch = BindBatch(span)
    try:
        yield batch
    except BaseException as e:
        _fail(span, e)
        raise
    finally:
        span.set_attribute("federator.rows", batch.rows)
        span.end()


@dataclass
class _FragmentRun:
    span: Span
    frag: Fragment
    kind: str
    cached: bool  # looked up in the cache first


class RunTrace:
    """One execution's span, its fragments' and residual's child spans, and its log line."""

    def __init__(self, query_id: str, span: Span, on: bool = True):
        self.query_id = query_id
        self.span = span
        self.on = on
        self.context = trace.set_span_in_context(span) if on else None
        self.started = time.perf_counter()
        self.rows = 0
        self._fragments: list[str] = []
        self._fragment_contexts: dict[str, Any] = {}

    def fragment_context(self, fragment_id: str) -> Any:
        """The context whose span is fragment ``fragment_id``'s while it runs (None: untraced)."""
        return self._fragment_contexts.get(fragment_id)

    def fragment(
        self, frag: Fragment, kind: str, request: NativeRequest, cached: bool
    ) -> _FragmentRun:
        """Start a fragment's span (parent: this run, whichever task runs the fragment)."""
        logged = request_log.isEnabledFor(logging.DEBUG)
        if not (self.on or logged):
            return _FragmentRun(trace.INVALID_SPAN, frag, kind, cached)
        text = redact_text(request.text)
        attributes = {
            "federator.fragment": frag.id,
            "federator.source": frag.source,
            "federator.source.kind": kind,
            "db.query.text": text,
            "federator.params": len(request.params),
        }
        span = _start(self.on, "federator.fragment", self.context, attributes)
        if self.on:
            self._fragment_contexts[frag.id] = trace.set_span_in_context(span)
        if logged:
            request_log.debug(
                "query %s fragment %s on %s (%s): %s [%d parameter(s)]",
                self.query_id, frag.id, frag.source, kind, text, len(request.params),
            )  # fmt: skip
        return _FragmentRun(span, frag, kind, cached)

    def end_fragment(
        self, run: _FragmentRun, stats: FragmentStats, error: BaseException | None
    ) -> None:
        """Close a fragment's span with what it did, and count it in the metrics."""
        source = {"source": run.frag.source, "kind": run.kind}
        cache = ("hit" if stats.cached else "miss") if run.cached else "off"
        run.span.set_attributes(
            {"federator.rows": stats.rows, "federator.bytes": stats.bytes, "federator.cache": cache}
        )
        if run.frag.bind is not None:
            run.span.set_attribute("federator.bind", stats.note or "not decided")
            if stats.bound_keys is not None:
                run.span.set_attribute("federator.bind.keys", stats.bound_keys)
                _active.instruments.bind_keys.add(stats.bound_keys, source)
        if error is not None:
            _fail(run.span, error)
        run.span.end()
        self._fragment_contexts.pop(run.frag.id, None)
        _active.instruments.fragment_duration.record(stats.ms / 1000, source)
        if not stats.cached:
            _active.instruments.source_rows.add(stats.rows, source)
            _active.instruments.source_bytes.add(stats.bytes, source)
        if run.cached:
            counted = _active.instruments
            (counted.cache_hits if stats.cached else counted.cache_misses).add(1, source)
        if query_log.isEnabledFor(logging.INFO):
            self._fragments.append(f"{run.frag.id} {run.frag.source} {stats.rows} rows {cache}")

    @contextlib.contextmanager
    def fragment_span(
        self,
        frag: Fragment,
        kind: str,
        request: NativeRequest,
        cached: bool,
        stats: FragmentStats,
    ) -> Iterator[None]:
        """A fragment's span around its fetch (:meth:`fragment`, then :meth:`end_fragment`
        with ``stats`` and the error that ended it, if one did)."""
        run = self.fragment(frag, kind, request, cached)
        error: BaseException | None = None
        try:
            yield
        except BaseException as e:
            error = e
            raise
        finally:
            self.end_fragment(run, stats, error)

    @contextlib.contextmanager
    def residual_span(self, stats: FragmentStats) -> Iterator[None]:
        """The residual's span around its run, with its rows and bytes from ``stats``."""
        span = _start(self.on, "federator.residual", self.context)
        try:
            yield
        except BaseException as e:
            _fail(span, e)
            raise
        finally:
            span.set_attributes({"federator.rows": stats.rows, "federator.bytes": stats.bytes})
            span.end()

    def finish(self, error: BaseException | None) -> None:
        """End the run: its span, the duration metric and the INFO line."""
        seconds = time.perf_counter() - self.started
        outcome = "ok" if error is None else outcome_of(error)
        self.span.set_attributes({"federator.rows": self.rows, "federator.outcome": outcome})
        if error is not None:
            _fail(self.span, error)
        self.span.end()
        _active.instruments.query_duration.record(seconds, {"outcome": outcome})
        if not query_log.isEnabledFor(logging.INFO):
            return
        query_log.info(
            "query %s %s: %d fragment(s) [%s], %d rows, %.1f ms",
            self.query_id, outcome, len(self._fragments), "; ".join(self._fragments),
            self.rows, seconds * 1000,
        )  # fmt: skip


def outcome_of(error: BaseException) -> str:
    """``timeout``, ``cancelled`` (also a stream closed early) or ``error``."""
    if isinstance(error, QueryTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(error, asyncio.CancelledError | GeneratorExit | KeyboardInterrupt):
        return "cancelled"
    return "error"


def _fail(span: Span, error: BaseException) -> None:
    """Record ``error`` on ``span``; a cancel is an outcome, not an error."""
    if not span.is_recording():
        return
    outcome = outcome_of(error)
    span.set_attribute("federator.outcome", outcome)
    if outcome == "cancelled":
        return
    message = redact_text(str(error))
    span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {message}"))
    span.add_event(
        "exception",
        {"exception.type": type(error).__name__, "exception.message": message},
    )


class MetricsServer:
    """A Prometheus ``/metrics`` endpoint on a thread (:func:`serve_metrics`)."""

    def __init__(self, server: Any, thread: Any, release: Callable[[], None] | None = None):
        self._server = server
        self._thread = thread
        self._release = release  # gives back the meter provider serve_metrics set up
        self.port: int = server.server_port
        self.url = f"http://{server.server_address[0]}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving (safe to call twice)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        release, self._release = self._release, None
        if release is not None:
            release()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<federator.MetricsServer {self.url}>"


def serve_metrics(port: int = 9464, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve federator's metrics for Prometheus at ``http://addr:port/metrics`` (port 0: a
    free one, read ``.port``). Unless federator already records to an SDK meter provider
    (the application's global one, or one given to :func:`set_providers`; it then needs its
    own ``PrometheusMetricReader``), federator gets a provider of its own with a Prometheus
    reader while the server runs; the global provider is left alone. Needs
    ``pip install 'federator[otel]'``.

    >>> with serve_metrics(port=0) as server:  # doctest: +SKIP
    ...     print(server.url)
    http://127.0.0.1:41234/metrics
    """
    try:
        import prometheus_client
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from opentelemetry.sdk.metrics import MeterProvider
    except ImportError as e:
        raise FederatorError(
            f"serve_metrics needs the OpenTelemetry SDK and Prometheus exporter ({e.name} is "
            "missing): pip install 'federator[otel]'"
        ) from None
    release = None
    if not isinstance(meter_provider(), MeterProvider):
        provider = MeterProvider(metric_readers=[PrometheusMetricReader()])
        restore = set_providers(_active.tracer_provider, provider)

        def release() -> None:
            restore()
            provider.shutdown()  # its reader leaves prometheus_client's registry

    server, thread = prometheus_client.start_http_server(port, addr)
    return MetricsServer(server, thread, release)
