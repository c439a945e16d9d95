"""The Ray engine on a real multi-node cluster (a head with no CPUs, two workers of one CPU,
started once for this module with ``ray.cluster_utils.Cluster`` on loopback).

Every answer is checked against an independent truth: TPC-H against the answers of one
PostgreSQL holding all tables, the cross-source query against the in-process engine.
"""

from __future__ import annotations

import asyncio
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from federator.rules import Rule
from servers import dsn_with_database

import federator

from .conftest import QUERY_TIMEOUT, run_async
from .tpch import SPLITS, TRUTH_DB, arrow_answer, compare, federated_names

pytestmark = pytest.mark.timeout(300)

OBJECT_STORE = 100 * 2**20


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """A head with no CPUs and two one-CPU workers, bound to loopback; shut down after."""
    # Ray swaps a loopback address for the machine's own unless clusters are "disabled", which
    # only makes it keep 127.0.0.1 (the cluster itself is multi-node either way).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray._private.ray_constants.ENABLE_RAY_CLUSTER = False
    from ray.cluster_utils import Cluster

    local = {"node_ip_address": "127.0.0.1", "object_store_memory": OBJECT_STORE}
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, **local},
    )
    for _ in range(2):
        c.add_node(num_cpus=1, **local)
    c.wait_for_nodes()
    ray.init(address=c.address, log_to_driver=False, logging_level="WARNING")
    try:
        yield c
    finally:
        ray.shutdown()
        c.shutdown()


def _ray_fed(catalog: dict[str, Any], **kw: Any) -> federator.Federation:
    return federator.connect(catalog, engine="ray", timeout=QUERY_TIMEOUT, **kw)


# ---- TPC-H: the 22 queries, both splits, answer like one PostgreSQL --------------------------
# "split" runs each residual as one DuckDB task (TPC-H here is under distribute_rows);
# "reverse" distributes every residual that splits into buckets (distribute_rows = 0).
DISTRIBUTE_ROWS = {"split": None, "reverse": 0}


@pytest.mark.parametrize("split", SPLITS)
def test_tpch_on_ray_answers_like_one_database(cluster, tpch, split: str) -> None:
    catalog = tpch.catalog(split)
    if DISTRIBUTE_ROWS[split] is not None:
        catalog["execution"] = {"distribute_rows": DISTRIBUTE_ROWS[split], "memory_limit": "1GB"}
    with _ray_fed(catalog) as fed:
        diffs, how = [], {}
        for qid, query in sorted(tpch.queries.items()):
            result = fed.sql(query.sql(federated_names(split)))
            diff = compare(query, tpch.truth[qid], arrow_answer(result.to_arrow()))
            if diff:
                diffs.append(f"{qid}: {diff}")
            assert result.last_execution is not None
            how[qid] = "\n".join(result.last_execution.engine_lines())
        assert not diffs, "\n".join(diffs)
    assert all("stage 1: fragments from source actors" in h for h in how.values())
    assert any("split(s) on node" in h and "ctid" in h for h in how.values()), how  # PG splits
    bucketed = [qid for qid, h in how.items() if "buckets (" in h]
    if DISTRIBUTE_ROWS[split] is None:
        assert not bucketed and "one DuckDB task: " in how["q03"], how["q03"]
    else:
        assert len(bucketed) >= 5, how  # the joins + aggregates that split into buckets
        assert "DuckDB memory_limit 1GB per task" in how["q03"]


# ---- a source of every kind the fixtures give, in one query --------------------------------
CROSS = """
    SELECT c.name AS country, f.segment, count(*) AS orders, sum(o.amount) AS amount,
           count(e.kind) AS events, min(l.label) AS label
    FROM pg.ray_users AS u
    JOIN my.ray_orders AS o ON o.user_id = u.id
    JOIN lite.countries AS c ON c.code = u.country
    JOIN kv.features AS f ON f.user_id = u.id
    LEFT JOIN mongo.ray_events AS e ON e.user_id = u.id AND e.kind = 'click'
    JOIN lake.labels AS l ON l.user_id = u.id
    WHERE o.amount > 10
    GROUP BY c.name, f.segment
    ORDER BY c.name, f.segment
"""


async def _load_sql(pg_dsn: str, mysql_dsn: str) -> None:
    import aiomysql
    import asyncpg

    from federator.config import parse_dsn

    pg = await asyncpg.connect(pg_dsn)
    try:
        await pg.execute(
            "DROP TABLE IF EXISTS ray_users; CREATE TABLE ray_users (id int, country text);"
            "INSERT INTO ray_users SELECT i, (ARRAY['DE','FR','IT'])[i % 3 + 1]"
            " FROM generate_series(1, 60) AS i;"
            "DROP TABLE IF EXISTS ray_sleep; CREATE TABLE ray_sleep AS SELECT 1 AS x"
        )
    finally:
        await pg.close()
    d = parse_dsn(mysql_dsn)
    my = await aiomysql.connect(host=d.host, port=d.port, user=d.user, db=d.database)
    try:
        async with my.cursor() as cur:
            await cur.execute("DROP TABLE IF EXISTS ray_orders")
            await cur.execute("CREATE TABLE ray_orders (user_id INT, amount DECIMAL(10,2))")
            rows = [(i % 70, f"{(i * 7) % 50}.25") for i in range(300)]
            await cur.executemany("INSERT INTO ray_orders VALUES (%s, %s)", rows)
        await my.commit()
    finally:
        my.close()


def _load_others(mongo_dsn: str, redis_url: str, folder: Path) -> None:
    import redis
    from pymongo import MongoClient

    with sqlite3.connect(folder / "lite.db") as db:
        db.execute("CREATE TABLE countries (code TEXT, name TEXT)")
        db.executemany(
            "INSERT INTO countries VALUES (?, ?)",
            [("DE", "Germany"), ("FR", "France"), ("IT", "Italy")],
        )
    lake = folder / "lake"
    lake.mkdir()
    pq.write_table(
        pa.table({"user_id": list(range(1, 61)), "label": [f"L{i % 4}" for i in range(60)]}),
        lake / "labels.parquet",
    )
    client = MongoClient(mongo_dsn, serverSelectionTimeoutMS=10_000)
    try:
        client.ray_test.ray_events.drop()
        client.ray_test.ray_events.insert_many(
            [{"user_id": i % 40, "kind": "click" if i % 3 else "view"} for i in range(90)]
        )
    finally:
        client.close()
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        for i in range(1, 61, 2):
            r.hset(f"ray:features:{i}", mapping={"segment": "ab"[i % 4 // 2]})
    finally:
        r.close()


@pytest.fixture(scope="module")
def every_kind(
    pg_dsn: str, mysql_dsn: str, mongo_dsn: str, redis_dsn: str, tmp_path_factory
) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("ray_every_kind")
    redis_url = redis_dsn.rsplit("/", 1)[0] + "/2"  # its own database: other tests flush 0
    run_async(_load_sql(pg_dsn, mysql_dsn))
    _load_others(mongo_dsn, redis_url, folder)
    features = {
        "key": "ray:features:{user_id}",
        "type": "hash",
        "columns": {"user_id": "int64", "segment": "string"},
    }
    return {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg_dsn},
            "my": {"kind": "mysql", "dsn": mysql_dsn},
            "mongo": {"kind": "mongo", "url": mongo_dsn, "database": "ray_test"},
            "kv": {"kind": "redis", "url": redis_url, "tables": {"features": features}},
            "lite": {"kind": "sqlite", "path": str(folder / "lite.db")},
            "lake": {"kind": "files", "path": str(folder / "lake")},
        }
    }


def test_cross_source_query_over_every_kind_answers_like_in_process(
    cluster, every_kind: dict[str, Any]
) -> None:
    with federator.connect(every_kind, timeout=QUERY_TIMEOUT) as local:
        truth = local.sql(CROSS).to_arrow()
    assert truth.num_rows > 0
    with _ray_fed(every_kind) as fed:
        result = fed.sql(CROSS)
        assert result.to_arrow().equals(truth)
        with result.to_batches() as reader:
            assert reader.read_all().equals(truth)
        assert pa.table(result).equals(truth)  # __arrow_c_stream__
        refs = result.to_ray_dataset().to_arrow_refs()
        assert pa.concat_tables(ray.get(refs)).equals(truth)


def test_a_password_never_reaches_a_task_argument_or_the_explain(
    cluster, every_kind: dict[str, Any]
) -> None:
    dsn = every_kind["sources"]["pg"]["dsn"]  # the test server trusts loopback: any password
    user, host = dsn.split("://", 1)[1].split("@", 1)
    catalog = {
        "sources": {"pg": {"kind": "postgres", "dsn": f"postgresql://{user}:s3cr3t-pw@{host}"}}
    }
    with _ray_fed(catalog) as fed:
        result = fed.sql("SELECT count(*) AS n FROM pg.ray_users")
        assert result.to_arrow().column("n").to_pylist() == [60]
        shown = result.explain(analyze=True) + repr(fed.engine) + repr(fed.config)
    assert "s3cr3t-pw" not in shown


# ---- timeout: typed error, and the server-side query is cancelled ---------------------------
def _pg_sleeping(pg_dsn: str) -> int:
    async def count() -> int:
        import asyncpg

        conn = await asyncpg.connect(pg_dsn)
        try:
            return await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%PG_SLEEP(30)%'"
                " AND state = 'active' AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()

    return run_async(count())


def test_timeout_cancels_the_tasks_and_the_server_query(cluster, pg_dsn: str, every_kind) -> None:
    with federator.connect(
        {"sources": {"pg": {"kind": "postgres", "dsn": pg_dsn}}}, engine="ray"
    ) as fed:
        fed.rules.add(Rule("PG_SLEEP"), kind="postgres")
        started = time.monotonic()
        with pytest.raises(federator.QueryTimeoutError, match="fragment f0 on source 'pg'"):
            fed.sql(
                "SELECT x FROM pg.ray_sleep WHERE pg_sleep(30) IS NOT NULL", timeout=3
            ).to_arrow()
        assert time.monotonic() - started < 3 + 5
        deadline = time.monotonic() + 10
        while _pg_sleeping(pg_dsn):
            assert time.monotonic() < deadline, "pg_sleep still running on the server"
            time.sleep(0.2)
        assert fed.sql("SELECT x FROM pg.ray_sleep").to_arrow().column("x").to_pylist() == [1]


# ---- a row-wise distributed residual streams each bucket's rows as it finishes ----------------
ROWS = """
    SELECT u.id, u.country, o.amount FROM pg.ray_users AS u
    JOIN my.ray_orders AS o ON o.user_id = u.id WHERE o.amount > 10
"""


def test_row_wise_buckets_stream_as_they_finish(cluster, every_kind: dict[str, Any]) -> None:
    with federator.connect(every_kind, timeout=QUERY_TIMEOUT) as local:
        truth = local.sql(ROWS).to_arrow()
    catalog = {**every_kind, "execution": {"distribute_rows": 0, "buckets": 4}}
    with _ray_fed(catalog) as fed:
        result = fed.sql(ROWS)
        got = result.to_arrow()
        ex = result.last_execution
        assert ex is not None
        shown = "\n".join([ex.residual_stats.note, *ex.engine_lines()])
    assert got.schema == truth.schema
    assert sorted(got.to_pylist(), key=str) == sorted(truth.to_pylist(), key=str)
    assert "rows mapped and sent as each bucket finishes" in shown, shown
    # 4 bucket tasks on 2 one-CPU workers: at most 2 can be done when the first is sent
    sent_after = re.search(r"first answer sent when (\d+) of 4 were done", shown)
    assert sent_after and int(sent_after[1]) < 4, shown


BOTH_SIDES = (
    "SELECT s.g AS g, count(*) AS n, sum(b.v * s.w) AS total FROM a.big AS b "
    "JOIN c.small AS s ON b.k = s.k GROUP BY s.g ORDER BY g"
)


def test_buckets_count_the_bytes_shuffled_and_through_the_driver(cluster, tmp_path: Path) -> None:
    """3,000 x 1,000 rows of int64 columns without nulls: the driver puts 3,000 x 2 x 8 +
    1,000 x 3 x 8 bytes, the big side is shuffled whole (48,000 bytes) and the small one,
    under the broadcast threshold, is sent whole to each of 2 buckets."""
    for name in ("a", "c"):
        (tmp_path / name).mkdir()
    big = pa.table({"k": [i % 1000 for i in range(3000)], "v": list(range(3000))})
    small = pa.table({"k": list(range(1000)), "g": [i % 7 for i in range(1000)], "w": [2] * 1000})
    pq.write_table(big, tmp_path / "a" / "big.parquet")
    pq.write_table(small, tmp_path / "c" / "small.parquet")
    sources = {n: {"kind": "files", "path": str(tmp_path / n)} for n in ("a", "c")}
    catalog = {"sources": sources, "execution": {"distribute_rows": 0, "buckets": 2}}
    with _ray_fed(catalog) as fed:
        result = fed.sql(BOTH_SIDES)
        got = result.to_arrow()
        ex = result.last_execution
    truth = duckdb.sql(BOTH_SIDES.replace("a.big", "big").replace("c.small", "small")).fetchall()
    assert [tuple(r.values()) for r in got.to_pylist()] == truth
    assert (ex.driver_bytes, ex.shuffled_bytes, ex.broadcast_bytes) == (72_000, 48_000, 48_000)
    shown = "\n".join([ex.residual_stats.note, *ex.engine_lines()])
    assert "shuffled 48,000 bytes into 2 buckets" in shown, shown
    assert "72,000 bytes of fragments through the driver" in shown, shown


# ---- FederatedDataset on Ray: streaming_split, one stream per trainer -----------------------
def _epochs(shard: Any, epochs: int) -> list[list[int]]:
    return [[i for batch in shard for i in batch["id"].tolist()] for _ in range(epochs)]


def test_ray_shards_give_every_row_to_exactly_one_trainer_each_epoch(
    cluster, every_kind: dict[str, Any]
) -> None:
    from federator.torch import FederatedDataset

    with _ray_fed(every_kind) as fed:
        ds = FederatedDataset(fed, "SELECT id, id * 2 AS y FROM pg.ray_users", batch_size=7)
        shards = ds.ray_shards(2, equal=True)
        with ThreadPoolExecutor(2) as pool:  # streaming_split: the trainers run an epoch together
            seen = list(pool.map(lambda s: _epochs(s, 2), shards))
    for epoch in range(2):
        rows = [i for trainer in seen for i in trainer[epoch]]
        assert sorted(rows) == list(range(1, 61))  # ray_users holds ids 1..60, each once
        assert [len(trainer[epoch]) for trainer in seen] == [30, 30]  # equal=True


def test_ray_shards_need_the_ray_engine(every_kind: dict[str, Any]) -> None:
    from federator.torch import FederatedDataset

    with federator.connect(every_kind, timeout=QUERY_TIMEOUT) as fed:
        ds = FederatedDataset(fed, "SELECT id FROM pg.ray_users")
        with pytest.raises(federator.FederatorError, match="needs the Ray engine"):
            ds.ray_shards(2)


# ---- a transient source error: the split runs again, the answer is whole --------------------
async def _terminate_split_once(pg_dsn: str, deadline: float) -> int:
    """Terminate the backend of the first split found sleeping (its binary COPY); its pid."""
    import asyncpg

    conn = await asyncpg.connect(pg_dsn)
    try:
        while time.monotonic() < deadline:
            pid = await conn.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE query LIKE 'COPY %PG_SLEEP(1)%'"
                " AND state = 'active' AND pid <> pg_backend_pid()"
            )
            if pid is not None:
                assert await conn.fetchval("SELECT pg_terminate_backend($1)", pid)
                return pid
            await asyncio.sleep(0.05)
        raise AssertionError("the split never started")
    finally:
        await conn.close()


def test_a_split_whose_backend_is_terminated_runs_again(cluster, pg_dsn: str, every_kind) -> None:
    sql = "SELECT x FROM pg.ray_sleep WHERE pg_sleep(1) IS NOT NULL"
    with _ray_fed({"sources": {"pg": {"kind": "postgres", "dsn": pg_dsn}}}) as fed:
        fed.rules.add(Rule("PG_SLEEP"), kind="postgres")
        with ThreadPoolExecutor(1) as pool:
            killer = pool.submit(run_async, _terminate_split_once(pg_dsn, time.monotonic() + 30))
            result = fed.sql(sql)
            got = result.to_arrow()
            assert killer.result(timeout=30)
        ex = result.last_execution
        assert ex is not None and ex.split_retries == 1
        assert "1 split(s) run again after a transient error" in ex.stats["f0"].note
    assert got.column("x").to_pylist() == [1]  # ray_sleep holds one row: x = 1


# ---- trace context: tasks and actor calls get the driver's span as their parent -------------
@ray.remote(num_cpus=0)
def _span_seen(carrier: dict[str, str] | None) -> tuple[int, int]:
    """The (trace id, span id) a worker sees as current once the carrier is attached."""
    from opentelemetry import trace

    from federator.execute.ray_engine import attached

    with attached(carrier):
        seen = trace.get_current_span().get_span_context()
        return seen.trace_id, seen.span_id


def test_tasks_carry_the_drivers_trace_context(cluster, every_kind: dict[str, Any]) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from federator import telemetry

    provider, exporter = TracerProvider(), InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    restore = telemetry.set_providers(tracer_provider=provider)
    try:
        with _ray_fed(every_kind) as fed:
            result = fed.sql(ROWS)
            assert result.to_arrow().num_rows > 0
            ex = result.last_execution
            assert ex is not None
            carriers = dict(ex.trace_carriers)
    finally:
        restore()
        provider.shutdown()
    spans = {s.attributes.get("federator.fragment"): s for s in exporter.get_finished_spans()}
    fragments = [f for f in carriers if f != "residual"]
    assert len(fragments) == 2 and "residual" in carriers
    for fragment in fragments:
        want = spans[fragment].get_span_context()
        assert "traceparent" in carriers[fragment]  # ids only: W3C trace context
        assert ray.get(_span_seen.remote(carriers[fragment])) == (want.trace_id, want.span_id)
    trace_id, _ = ray.get(_span_seen.remote(carriers["residual"]))
    assert trace_id == spans[fragments[0]].get_span_context().trace_id


# ---- a worker node removed mid-query: the residual re-runs, the answer is exact -------------
SLOW = """
    SELECT count(*) AS n, sum(o.o_custkey % 7) AS s
    FROM {partsupp} AS ps JOIN {orders} AS o ON (ps.ps_partkey + o.o_orderkey) % 97 = 3
"""


async def _slow_truth(dsn: str) -> tuple[int, int]:
    """SLOW's answer counted by residues mod 97 on one PostgreSQL: pairs of residues that sum
    to 3 (mod 97) match, so the count is a sum of products of per-residue counts."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT sum(p.n * o.n)::bigint AS n, sum(p.n * o.s)::bigint AS s"
            " FROM (SELECT ps_partkey % 97 AS r, count(*) AS n FROM partsupp GROUP BY 1) AS p"
            " JOIN (SELECT o_orderkey % 97 AS r, count(*) AS n, sum(o_custkey % 7) AS s"
            "       FROM orders GROUP BY 1) AS o ON (p.r + o.r) % 97 = 3"
        )
        return row["n"], row["s"]
    finally:
        await conn.close()


def _busy_worker(cluster: Any) -> Any | None:
    """The worker node whose CPU a task holds (the residual: source actors take no CPU)."""
    free = ray._private.state.state.available_resources_per_node()
    for node in cluster.worker_nodes:
        resources = free.get(node.node_id)  # a resource all taken is left out, not 0
        if resources is not None and resources.get("CPU", 0) < 1:
            return node
    return None


def test_a_node_removed_mid_query_still_gives_the_exact_answer(cluster, tpch) -> None:
    """Ray runs the residual task again on the other worker; the answer is exact."""
    sql = SLOW.format(**federated_names("split"))
    want = run_async(_slow_truth(dsn_with_database(tpch.pg_dsn, TRUTH_DB)))
    with _ray_fed(tpch.catalog("split")) as fed, ThreadPoolExecutor(1) as pool:
        running = pool.submit(lambda: fed.sql(sql).to_arrow())
        deadline = time.monotonic() + 60
        while (node := _busy_worker(cluster)) is None:
            assert not running.done(), running.result()
            assert time.monotonic() < deadline, "the residual never started"
            time.sleep(0.05)
        assert not running.done(), "the residual finished before its node could be removed"
        # The cluster keeps one worker after this: the module's last test (starting a node
        # again here forks a process from a driver full of threads, which can crash).
        cluster.remove_node(node, allow_graceful=False)
        got = running.result(timeout=120)
    assert [tuple(r.values()) for r in got.to_pylist()] == [want]
