"""Traces, metrics and logs of queries over real PostgreSQL and MariaDB: the span tree and its
attributes through the OpenTelemetry SDK's in-memory exporter, a Prometheus scrape over HTTP,
and the log lines (no password, no parameter value)."""

from __future__ import annotations

import gc
import logging
import re
import urllib.request
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import redis
import sqlglot
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

import federator
from federator import telemetry
from federator.errors import SourceError

from .conftest import run_async

USERS = [(1, "ada"), (2, "bob"), (3, "cy"), (4, "dee")]
ORDERS = [(1, 987_654), (1, 10), (2, 987_700), (3, 5), (4, 999_999)]
MIN_AMOUNT = 987_654  # the parameter: its value never shows in a span or a log line
# the join by hand: orders of at least MIN_AMOUNT with their user's name
EXPECTED = sorted((dict(USERS)[u], a) for u, a in ORDERS if a >= MIN_AMOUNT)
QUERY = (
    "SELECT u.name, o.amount FROM pg.otel_users u JOIN my.otel_orders o ON o.user_id = u.id "
    "WHERE o.amount >= :min_amount"
)
MANY = 3_000  # rows of pg.otel_many: enough that the planner binds it to MariaDB's few keys
BIND_QUERY = (
    "SELECT o.amount, m.v FROM my.otel_orders o JOIN pg.otel_many m ON m.id = o.user_id "
    "WHERE o.amount >= :min_amount"
)
PASSWORD = "Otel-pw-4711"  # PostgreSQL here trusts loopback: any password connects


@pytest.fixture(scope="module")
def provider() -> Iterator[TracerProvider]:
    """An SDK tracer provider given to federator alone (telemetry.set_providers): the global
    providers stay unset, so no later test in this process records spans or metrics."""
    provider = TracerProvider()
    restore = telemetry.set_providers(tracer_provider=provider)
    yield provider
    restore()
    provider.shutdown()
    assert not telemetry.tracing()


@pytest.fixture(scope="module")
def spans(provider: TracerProvider) -> InMemorySpanExporter:
    """The spans federator ends, in memory."""
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return exporter


@pytest.fixture(scope="module")
def catalog(pg_dsn: str, mysql_dsn: str) -> dict[str, Any]:
    async def setup() -> None:
        import aiomysql

        from federator.config import parse_dsn

        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("DROP TABLE IF EXISTS otel_users, otel_gone")
            await conn.execute("CREATE TABLE otel_users (id int PRIMARY KEY, name text)")
            await conn.executemany("INSERT INTO otel_users VALUES ($1, $2)", USERS)
            await conn.execute("CREATE TABLE otel_gone (id int)")
            await conn.execute("DROP TABLE IF EXISTS otel_many")
            await conn.execute(
                f"CREATE TABLE otel_many AS SELECT g AS id, g * 10 AS v "
                f"FROM generate_series(1, {MANY}) g"
            )
            await conn.execute("ALTER TABLE otel_many ADD PRIMARY KEY (id)")
            await conn.execute("ANALYZE otel_many")
        finally:
            await conn.close()
        d = parse_dsn(mysql_dsn)
        my = await aiomysql.connect(host=d.host, port=d.port, user=d.user, db=d.database)
        try:
            async with my.cursor() as cur:
                await cur.execute("DROP TABLE IF EXISTS otel_orders")
                await cur.execute("CREATE TABLE otel_orders (user_id int, amount int)")
                await cur.executemany("INSERT INTO otel_orders VALUES (%s, %s)", ORDERS)
            await my.commit()
        finally:
            my.close()

    run_async(setup())
    pg_with_password = pg_dsn.replace("postgres@", f"postgres:{PASSWORD}@", 1)
    assert PASSWORD in pg_with_password
    return {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg_with_password},
            "my": {"kind": "mysql", "dsn": mysql_dsn},
        }
    }


@pytest.fixture
def fed(catalog: dict[str, Any], spans: InMemorySpanExporter) -> Iterator[federator.Federation]:
    with federator.connect(catalog) as fed:
        fed.sql("SELECT id FROM pg.otel_users").to_arrow()  # pools open: catalog reads done
        spans.clear()
        yield fed


def _named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def _rows(table: Any) -> list[tuple[str, int]]:
    return sorted(
        zip(table.column("name").to_pylist(), table.column("amount").to_pylist(), strict=True)
    )


def test_span_tree_of_a_federated_join(
    fed: federator.Federation, spans: InMemorySpanExporter, provider: TracerProvider
):
    with provider.get_tracer("app").start_as_current_span("app.request") as app:
        table = fed.sql(QUERY, {"min_amount": MIN_AMOUNT}).to_arrow()
    assert _rows(table) == EXPECTED
    finished = spans.get_finished_spans()
    (query,) = _named(finished, "federator.query")
    (plan,) = _named(finished, "federator.plan")
    (residual,) = _named(finished, "federator.residual")
    fragments = {
        s.attributes["federator.source"]: s for s in _named(finished, "federator.fragment")
    }
    # the tree: app.request → query → plan, fragments (run on the loop thread), residual
    assert query.parent is not None and query.parent.span_id == app.get_span_context().span_id
    for child in (plan, residual, *fragments.values()):
        assert child.parent is not None and child.parent.span_id == query.context.span_id
        assert child.context.trace_id == app.get_span_context().trace_id
    assert set(fragments) == {"pg", "my"}
    assert fragments["pg"].attributes["federator.source.kind"] == "postgres"
    assert fragments["my"].attributes["federator.source.kind"] == "mysql"
    # rows per fragment: all users from PostgreSQL; the orders the filter keeps from MariaDB
    assert fragments["pg"].attributes["federator.rows"] in (len(USERS), len(EXPECTED))
    assert fragments["my"].attributes["federator.rows"] == len(EXPECTED)
    assert "otel_orders" in fragments["my"].attributes["db.query.text"]
    assert fragments["my"].attributes["federator.params"] >= 1
    assert query.attributes["federator.rows"] == len(EXPECTED)
    assert query.attributes["federator.outcome"] == "ok"
    assert query.attributes["db.query.text"] == QUERY
    assert residual.attributes["federator.rows"] == len(EXPECTED)
    for span in finished:
        shown = " ".join(str(v) for v in span.attributes.values())
        assert str(MIN_AMOUNT) not in shown, span.name
        assert PASSWORD not in shown, span.name
        assert span.status.status_code is StatusCode.UNSET


def test_async_query_is_a_child_of_the_callers_span(
    fed: federator.Federation, spans: InMemorySpanExporter, provider: TracerProvider
):
    async def run() -> Any:
        with provider.get_tracer("app").start_as_current_span("app.async") as app:
            result = await fed.sql_async(QUERY, {"min_amount": MIN_AMOUNT})
            return app, await result.to_arrow_async()

    app, table = run_async(run())
    assert _rows(table) == EXPECTED
    finished = spans.get_finished_spans()
    (query,) = _named(finished, "federator.query")
    assert query.parent is not None and query.parent.span_id == app.get_span_context().span_id
    assert len(_named(finished, "federator.fragment")) == 2


def test_a_query_given_as_a_sqlglot_tree(fed: federator.Federation, spans: InMemorySpanExporter):
    tree = sqlglot.parse_one("SELECT id FROM pg.otel_users WHERE id <= 2")
    assert sorted(fed.sql(tree).to_arrow().column("id").to_pylist()) == [1, 2]
    (query,) = _named(spans.get_finished_spans(), "federator.query")
    assert query.attributes["db.query.text"] == tree.sql()


def test_error_is_recorded_on_the_failing_fragment(
    fed: federator.Federation, spans: InMemorySpanExporter, pg_dsn: str
):
    result = fed.sql(
        "SELECT g.id, o.amount FROM pg.otel_gone g JOIN my.otel_orders o ON o.user_id = g.id"
    )

    async def drop() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("DROP TABLE otel_gone")
        finally:
            await conn.close()

    run_async(drop())  # planned, then gone: the PostgreSQL fragment fails at run time
    with pytest.raises(SourceError, match="otel_gone"):
        result.to_arrow()
    finished = spans.get_finished_spans()
    failed = [
        s
        for s in _named(finished, "federator.fragment")
        if s.status.status_code is StatusCode.ERROR
    ]
    assert [s.attributes["federator.source"] for s in failed] == ["pg"]
    assert "otel_gone" in failed[0].status.description
    (query,) = _named(finished, "federator.query")
    assert query.status.status_code is StatusCode.ERROR
    assert query.attributes["federator.outcome"] == "error"


def test_cache_hit_and_miss_on_the_fragment_span(
    catalog: dict[str, Any], spans: InMemorySpanExporter
):
    spans.clear()
    with federator.connect({**catalog, "cache": {"enabled": True}}) as fed:
        first = fed.sql("SELECT id, name FROM pg.otel_users").to_arrow()
        second = fed.sql("SELECT id, name FROM pg.otel_users").to_arrow()
    assert first.equals(second) and first.num_rows == len(USERS)
    caches = [
        s.attributes["federator.cache"]
        for s in _named(spans.get_finished_spans(), "federator.fragment")
    ]
    assert caches == ["miss", "hit"]


def _scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode()


def _sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


def test_prometheus_scrape_over_http(fed: federator.Federation):
    with telemetry.serve_metrics(port=0) as server:
        assert isinstance(telemetry.meter_provider(), MeterProvider)  # federator's own
        before = _scrape(server.url)
        table = fed.sql(QUERY, {"min_amount": MIN_AMOUNT}).to_arrow()
        after = _scrape(server.url)
    assert _rows(table) == EXPECTED
    # the global provider was never set; federator's own went with the server
    assert not isinstance(metrics.get_meter_provider(), MeterProvider)
    assert not isinstance(telemetry.meter_provider(), MeterProvider)

    def grew(name: str, **labels: str) -> float:
        return _sample(after, name, **labels) - _sample(before, name, **labels)

    assert grew("federator_query_duration_seconds_count", outcome="ok") == 1
    assert grew("federator_source_rows_total", source="my", kind="mysql") == len(EXPECTED)
    assert grew("federator_fragment_duration_seconds_count", source="pg", kind="postgres") == 1
    assert grew("federator_source_bytes_total", source="my", kind="mysql") > 0


def test_log_lines_name_the_query_and_hide_secrets(
    fed: federator.Federation, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.DEBUG, logger="federator"):
        fed.sql(QUERY, {"min_amount": MIN_AMOUNT}).to_arrow()
        with pytest.raises(federator.FederatorError):
            fed.sql("SELECT nope FROM pg.otel_users").to_arrow()
    info, failed = [
        r for r in caplog.records if r.name == "federator.query" and r.levelno == logging.INFO
    ]
    assert re.search(
        r"query [0-9a-f]{16} error in planning: UnknownColumnError: ", failed.getMessage()
    )
    assert re.search(
        rf"query [0-9a-f]{{16}} ok: 2 fragment\(s\) .*, {len(EXPECTED)} rows, ", info.getMessage()
    )
    requests = [r.getMessage() for r in caplog.records if r.name == "federator.request"]
    assert len(requests) == 2 and any("otel_orders" in r for r in requests)
    assert all(r.levelno == logging.DEBUG for r in caplog.records if r.name == "federator.request")
    assert PASSWORD not in caplog.text
    assert str(MIN_AMOUNT) not in caplog.text


def _with_pg_options(catalog: dict[str, Any], **options: Any) -> dict[str, Any]:
    pg = {**catalog["sources"]["pg"], **options}
    return {**catalog, "sources": {**catalog["sources"], "pg": pg}}


def test_a_span_per_bind_batch(catalog: dict[str, Any], spans: InMemorySpanExporter):
    keys = sorted({u for u, a in ORDERS if a >= MIN_AMOUNT})  # 3 keys, in batches of 2 and 1
    spans.clear()
    with federator.connect(_with_pg_options(catalog, bind_batch_size=2)) as fed:
        table = fed.sql(BIND_QUERY, {"min_amount": MIN_AMOUNT}).to_arrow()
    got = sorted(
        zip(table.column("amount").to_pylist(), table.column("v").to_pylist(), strict=True)
    )
    assert got == sorted((a, u * 10) for u, a in ORDERS if a >= MIN_AMOUNT)
    finished = spans.get_finished_spans()
    (pg,) = (f for f in _named(finished, "federator.fragment") if _source(f) == "pg")
    assert pg.attributes["federator.bind.keys"] == len(keys)
    batches = _named(finished, "federator.bind_batch")
    assert [b.parent.span_id for b in batches if b.parent] == [pg.context.span_id] * 2
    assert sorted(b.attributes["federator.bind.keys"] for b in batches) == [1, 2]
    assert sum(b.attributes["federator.rows"] for b in batches) == len(keys)
    assert pg.attributes["federator.rows"] == len(keys)


def _source(span: ReadableSpan) -> Any:
    return span.attributes["federator.source"]


def test_a_query_planned_but_never_run_ends_its_span(
    fed: federator.Federation, spans: InMemorySpanExporter
):
    result = fed.sql("SELECT id FROM pg.otel_users WHERE id = :id", {"id": 1})
    assert not _named(spans.get_finished_spans(), "federator.query")  # still open: it may run
    del result
    gc.collect()
    (unrun,) = _named(spans.get_finished_spans(), "federator.query")
    (plan,) = _named(spans.get_finished_spans(), "federator.plan")
    assert unrun.attributes["federator.outcome"] == "not run"
    assert plan.parent is not None and plan.parent.span_id == unrun.context.span_id
    assert plan.end_time <= unrun.end_time  # it ends when planning did
    spans.clear()
    assert "Federated plan" in fed.explain("SELECT id FROM pg.otel_users")
    (explained,) = _named(spans.get_finished_spans(), "federator.query")
    assert explained.attributes["federator.outcome"] == "explained"


def _points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, Any], float]]:
    """(attributes, value) of every data point of metric ``name`` collected now."""
    data = reader.get_metrics_data()
    return [
        (dict(point.attributes or {}), point.value)
        for rm in (data.resource_metrics if data else [])
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def _value(reader: InMemoryMetricReader, name: str, **labels: str) -> float:
    points = _points(reader, name)
    return sum(v for a, v in points if all(a.get(k) == w for k, w in labels.items()))


@pytest.fixture
def meters() -> Iterator[InMemoryMetricReader]:
    """A meter provider given to federator alone for one test, read in memory."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    restore = telemetry.set_providers(meter_provider=provider)
    yield reader
    restore()
    provider.shutdown()


def test_pool_connections_in_use_per_source(catalog: dict[str, Any], meters: InMemoryMetricReader):
    in_use = "federator.pool.connections.in_use"
    with federator.connect(_with_pg_options(catalog, batch_rows=1)) as fed:
        fed.sql("SELECT user_id FROM my.otel_orders").to_arrow()
        with fed.sql("SELECT id, name FROM pg.otel_users").to_batches() as reader:
            first = reader.read_next_batch()
            assert first.num_rows == 1  # the rest waits on the checked-out connection
            assert _value(meters, in_use, source="pg", kind="postgres") == 1
            assert first.num_rows + reader.read_all().num_rows == len(USERS)
        assert _value(meters, in_use, source="pg", kind="postgres") == 0
        assert _value(meters, in_use, source="my", kind="mysql") == 0
        assert any(a.get("source") == "my" for a, _ in _points(meters, in_use))


def test_cache_evictions_and_bytes_held(catalog: dict[str, Any], meters: InMemoryMetricReader):
    every = "SELECT id, name FROM pg.otel_users"
    same_rows = "SELECT id, name FROM pg.otel_users WHERE id > 0"
    with federator.connect({**catalog, "cache": {"enabled": True}}) as fed:
        fed.sql(every).to_arrow()
        entry = fed.cache.stats()["bytes"]
    assert entry > 0
    before = _value(meters, "federator.cache.bytes")
    room = entry + entry // 2  # one entry fits, two do not
    with federator.connect({**catalog, "cache": {"enabled": True, "max_bytes": room}}) as fed:
        fed.sql(every).to_arrow()
        fed.sql(same_rows).to_arrow()  # as large: the first entry goes
        assert fed.cache.stats()["evictions"] == 1
        assert _value(meters, "federator.cache.evictions") == 1
        assert _value(meters, "federator.cache.bytes") - before == fed.cache.stats()["bytes"]


def test_redis_bind_batches_are_spans_too(
    catalog: dict[str, Any], spans: InMemorySpanExporter, redis_dsn: str
):
    r = redis.Redis.from_url(redis_dsn, decode_responses=True)
    try:
        for uid, name in USERS:
            r.hset(f"otel_user:{uid}", mapping={"name": name})
    finally:
        r.close()
    table = {
        "key": "otel_user:{id}",
        "type": "hash",
        "columns": {"id": "int64", "name": "string"},
        "rows": 10_000,  # as the planner sees it: worth binding MariaDB's 3 keys into
    }
    kv = {"kind": "redis", "url": redis_dsn, "batch_size": 2, "tables": {"users": table}}
    spans.clear()
    with federator.connect({"sources": {"my": catalog["sources"]["my"], "kv": kv}}) as fed:
        query = QUERY.replace("pg.otel_users", "kv.users")
        assert _rows(fed.sql(query, {"min_amount": MIN_AMOUNT}).to_arrow()) == EXPECTED
    finished = spans.get_finished_spans()
    (fragment,) = (f for f in _named(finished, "federator.fragment") if _source(f) == "kv")
    batches = _named(finished, "federator.bind_batch")
    assert [b.parent.span_id for b in batches if b.parent] == [fragment.context.span_id] * 2
    assert sorted(b.attributes["federator.bind.keys"] for b in batches) == [1, 2]
    assert sum(b.attributes["federator.rows"] for b in batches) == len(EXPECTED)
