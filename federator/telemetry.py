"""Traces, metrics and logs of queries, through OpenTelemetry and ``logging``.

Each query is a ``federator.query`` span (a child of the caller's current span) with children:
``federator.plan`` for planning, ``federator.fragment`` per fragment run (source name and
kind, the native request text, which holds placeholders and never parameter values, rows,
bytes, the bind decision, cache hit or miss) and ``federator.residual``. An error is recorded
on the span where it happened. Metrics go to the global OpenTelemetry meter provider; logs to
``federator.query`` (one INFO line per query) and ``federator.request`` (native requests at
DEBUG). Without the OpenTelemetry SDK every span and instrument is the API's no-op.

>>> import federator  # doctest: +SKIP
>>> server = federator.telemetry.serve_metrics(port=9464)  # doctest: +SKIP
>>> # Prometheus now scrapes http://127.0.0.1:9464/metrics
>>> server.close()  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.trace import Span, Status, StatusCode

from federator.config import redact_text
from federator.errors import FederatorError, QueryTimeoutError

if TYPE_CHECKING:
    from federator.plan.model import Fragment, FragmentStats, NativeRequest

query_log = logging.getLogger("federator.query")
request_log = logging.getLogger("federator.request")

_tracer = trace.get_tracer("federator")
_meter = metrics.get_meter("federator")  # a proxy until the application sets a provider
QUERY_DURATION = _meter.create_histogram(
    "federator.query.duration", unit="s", description="Query run time, by outcome"
)
FRAGMENT_DURATION = _meter.create_histogram(
    "federator.fragment.duration", unit="s", description="Fragment run time, by source"
)
SOURCE_ROWS = _meter.create_counter(
    "federator.source.rows", unit="{row}", description="Rows fetched from each source"
)
SOURCE_BYTES = _meter.create_counter(
    "federator.source.bytes", unit="By", description="Arrow bytes fetched from each source"
)
CACHE_HITS = _meter.create_counter(
    "federator.cache.hits", description="Fragments answered by the cache"
)
CACHE_MISSES = _meter.create_counter(
    "federator.cache.misses", description="Cacheable fragments fetched from their source"
)
BIND_KEYS = _meter.create_counter(
    "federator.bind.keys", description="Join keys sent to sources by bind joins"
)


def tracing() -> bool:
    """Whether the application has set a tracer provider (the SDK's, say): without one, no
    span is started at all, not even the API's no-op ones, so tracing off costs nothing."""
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


def _start(on: bool, name: str, context: Any = None, attributes: Any = None) -> Span:
    if not on:
        return trace.INVALID_SPAN
    return _tracer.start_span(name, context=context, attributes=attributes)


class QueryTrace:
    """One query's id and span: planning runs under it, and its first run ends it (a Result
    run again gets a fresh ``federator.query`` span with the same id)."""

    def __init__(self, sql: str | Any = None):
        """``sql``: the query's text or sqlglot tree (``fed.sql`` takes both)."""
        self.query_id = f"{random.getrandbits(64):016x}"
        self.on = tracing()
        self._attributes = {"federator.query_id": self.query_id, "db.system.name": "federator"}
        if sql is not None and self.on:
            text = sql if isinstance(sql, str) else sql.sql()
            self._attributes["db.query.text"] = redact_text(text)
        self._span: Span | None = _start(self.on, "federator.query", None, self._attributes)

    @contextlib.contextmanager
    def planning(self) -> Iterator[None]:
        """Planning as a child span, current inside (call it in the coroutine that plans).
        A planning error ends the query span too: there will be no run."""
        started = time.perf_counter()
        try:
            if self.on and self._span is not None:
                parent = trace.set_span_in_context(self._span)
                with _tracer.start_as_current_span("federator.plan", context=parent):
                    yield
            else:
                yield
        except BaseException as e:
            if self._span is not None:
                _fail(self._span, e)
                self._span.end()
                self._span = None
            seconds = time.perf_counter() - started
            QUERY_DURATION.record(seconds, {"outcome": outcome_of(e)})
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
                BIND_KEYS.add(stats.bound_keys, source)
        if error is not None:
            _fail(run.span, error)
        run.span.end()
        FRAGMENT_DURATION.record(stats.ms / 1000, source)
        if not stats.cached:
            SOURCE_ROWS.add(stats.rows, source)
            SOURCE_BYTES.add(stats.bytes, source)
        if run.cached:
            (CACHE_HITS if stats.cached else CACHE_MISSES).add(1, source)
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
        QUERY_DURATION.record(seconds, {"outcome": outcome})
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

    def __init__(self, server: Any, thread: Any):
        self._server = server
        self._thread = thread
        self.port: int = server.server_port
        self.url = f"http://{server.server_address[0]}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving (safe to call twice)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<federator.MetricsServer {self.url}>"


def serve_metrics(port: int = 9464, addr: str = "127.0.0.1") -> MetricsServer:
    """Serve federator's metrics for Prometheus at ``http://addr:port/metrics`` (port 0: a
    free one, read ``.port``). Sets an SDK meter provider with a Prometheus reader as the
    global one, unless the application has set a provider already (it then needs its own
    ``PrometheusMetricReader``). Needs ``pip install 'federator[otel]'``.

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
    if not isinstance(metrics.get_meter_provider(), MeterProvider):
        metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    server, thread = prometheus_client.start_http_server(port, addr)
    return MetricsServer(server, thread)
