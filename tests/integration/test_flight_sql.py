"""``federator serve`` end to end: a Flight SQL server over SQLite, Parquet files and a real
PostgreSQL, queried with ADBC's Flight SQL driver (DB-API and ``fetch_arrow_table``).

Truths: answers computed by hand from the rows loaded, the in-process API over the same
catalog, PostgreSQL's own ``pg_stat_activity`` (a cancelled query is gone from the server),
and the catalog's table schemas as the sources report them.
"""

from __future__ import annotations

import datetime
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import adbc_driver_flightsql
import adbc_driver_flightsql.dbapi as flightsql
import asyncpg
import pyarrow as pa
import pyarrow.flight as flight
import pyarrow.parquet as pq
import pytest
from federator.rules import Rule

import federator
from federator.serve import FlightSQLServer, ServeSettings, protocol
from federator.serve.auth import Authenticator, hash_password, new_token

from .conftest import run_async

USERS = [(1, "ada"), (2, "bob"), (3, "cy"), (4, "dee")]
ORDERS = [(1, 30), (1, 5), (2, 12), (3, 40), (4, 7)]  # lake.orders: user_id, amount
SCORES = [(1, 0.5), (2, 1.5), (3, 2.5)]  # pg.flight_scores: user_id, score
# the three-source join by hand: name, total amount, score (dee has no score)
EXPECTED = [("ada", 35, 0.5), ("bob", 12, 1.5), ("cy", 40, 2.5)]
QUERY = (
    "SELECT u.name, SUM(o.amount) AS total, s.score FROM lite.users u "
    "JOIN lake.orders o ON o.user_id = u.id JOIN pg.flight_scores s ON s.user_id = u.id "
    "GROUP BY u.name, s.score ORDER BY u.name"
)
PASSWORD = "Flight-pw-4711"
MANY_ROWS = 5000  # pg.flight_many; rows past SLOW_AFTER each wait in pg_sleep
SLOW_AFTER = 4000
SLOW_QUERY = (  # CASE: the optimizer would put pg_sleep first in an OR
    f"SELECT x FROM pg.flight_many "
    f"WHERE CASE WHEN x <= {SLOW_AFTER} THEN TRUE ELSE pg_sleep(30) IS NOT NULL END"
)
ACTIVE_SLEEPS = (
    "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE '%pg_sleep(30)%' "
    "AND state = 'active' AND pid <> pg_backend_pid()"
)


@pytest.fixture(scope="module")
def catalog(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("flight")
    with sqlite3.connect(folder / "shop.db") as db:
        db.execute("CREATE TABLE users (id INTEGER, name TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?)", USERS)
    (folder / "lake").mkdir()
    user_ids, amounts = zip(*ORDERS, strict=True)
    pq.write_table(
        pa.table({"user_id": pa.array(user_ids, pa.int64()), "amount": amounts}),
        folder / "lake" / "orders.parquet",
    )

    async def setup() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("DROP TABLE IF EXISTS flight_scores, flight_many")
            await conn.execute("CREATE TABLE flight_scores (user_id int, score float8)")
            await conn.executemany("INSERT INTO flight_scores VALUES ($1, $2)", SCORES)
            await conn.execute(
                "CREATE TABLE flight_many AS SELECT g AS x FROM generate_series(1, $1::int) g",
                MANY_ROWS,
            )
        finally:
            await conn.close()

    run_async(setup())
    return {
        "sources": {
            "lite": {"kind": "sqlite", "path": str(folder / "shop.db")},
            "lake": {"kind": "files", "path": str(folder / "lake")},
            # the row path (a cursor, 1000 rows a fetch): batches come while pg_sleep holds the rest
            "pg": {"kind": "postgres", "dsn": pg_dsn, "batch_rows": 1000, "bulk_rows": -1},
        }
    }


def start(fed: federator.Federation, **options: Any) -> tuple[FlightSQLServer, threading.Thread]:
    server = FlightSQLServer(fed, options.pop("location", "grpc://127.0.0.1:0"), **options)
    thread = threading.Thread(target=server.serve, name="flight-sql-test", daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="module")
def served(catalog: dict[str, Any]) -> Iterator[SimpleNamespace]:
    """A server on a free loopback port with users ada and cy and one static token."""
    token, token_entry = new_token()
    cheap = {"n": 2**10}  # scrypt cost: the format is under test here, not the hardness
    serve = {
        "users": {"ada": hash_password(PASSWORD, **cheap), "cy": hash_password("cy-pw", **cheap)},
        "tokens": {"etl": token_entry},
    }
    fed = federator.connect({**catalog, "serve": serve}, timeout=60)
    fed.rules.add(Rule("PG_SLEEP"), kind="postgres")  # the slow query the cancel tests stop
    server, thread = start(fed, authenticator=Authenticator(serve), settings=ServeSettings())
    try:
        yield SimpleNamespace(
            uri=f"grpc://127.0.0.1:{server.port}", fed=fed, server=server, token=token
        )
    finally:
        server.shutdown()
        thread.join(timeout=10)
        fed.close()


def connect(uri: str, user: str = "ada", password: str = PASSWORD, **db_kwargs: str) -> Any:
    if user:
        db_kwargs.update(username=user, password=password)
    return flightsql.connect(uri, db_kwargs=db_kwargs, autocommit=True)


def pg_count(dsn: str, sql: str) -> int:
    async def fetch() -> int:
        conn = await asyncpg.connect(dsn)
        try:
            return int(await conn.fetchval(sql))
        finally:
            await conn.close()

    return run_async(fetch())


# ---- answers ------------------------------------------------------------------------------
def test_answers_equal_the_in_process_api_and_the_hand_computed_rows(served: Any) -> None:
    with connect(served.uri) as conn, conn.cursor() as cur:
        cur.execute(QUERY)
        table = cur.fetch_arrow_table()
    assert [tuple(r.values()) for r in table.to_pylist()] == EXPECTED
    assert table.equals(served.fed.sql(QUERY).to_arrow())


def test_dbapi_rows_description_and_errors(served: Any) -> None:
    with connect(served.uri) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, name FROM lite.users WHERE id <= 2 ORDER BY id")
        assert [d[0] for d in cur.description] == ["id", "name"]
        assert cur.fetchall() == [(1, "ada"), (2, "bob")]
        with pytest.raises(flightsql.Error, match=r"unknown table 'lite.usrs'; did you mean") as e:
            cur.execute("SELECT id FROM lite.usrs")
        assert "Traceback" not in str(e.value)
        cur.execute("SELECT count(*) AS n FROM lake.orders")  # the connection still works
        assert cur.fetchone() == (len(ORDERS),)


def test_prepared_statement_with_bound_parameters(served: Any) -> None:
    query = (
        "SELECT u.name, o.amount FROM lite.users u JOIN lake.orders o ON o.user_id = u.id "
        "WHERE u.id = :user_id AND o.amount >= :min_amount ORDER BY o.amount"
    )
    with connect(served.uri) as conn, conn.cursor() as cur:
        for user_id, min_amount in [(1, 10), (1, 0), (3, 50)]:
            cur.execute(query, (user_id, min_amount))  # one prepared statement, bound 3 times
            expected = sorted(
                (dict(USERS)[u], a) for u, a in ORDERS if u == user_id and a >= min_amount
            )
            assert sorted(cur.fetchall(), key=lambda r: r[1]) == sorted(
                expected, key=lambda r: r[1]
            )


# ---- metadata -----------------------------------------------------------------------------
def test_catalog_calls_describe_the_sources(served: Any) -> None:
    with connect(served.uri) as conn:
        info = conn.adbc_get_info()
        objects = conn.adbc_get_objects(depth="all").read_all().to_pylist()
        schema = conn.adbc_get_table_schema(
            "flight_scores", catalog_filter="pg", db_schema_filter="public"
        )
        types = conn.adbc_get_table_types()
        only_pg = conn.adbc_get_objects(depth="tables", catalog_filter="pg").read_all()
    assert info["vendor_name"] == "federator"
    assert info["vendor_version"] == federator.__version__
    assert [c["catalog_name"] for c in objects] == ["lake", "lite", "pg"]
    lite = next(c for c in objects if c["catalog_name"] == "lite")
    users = lite["catalog_db_schemas"][0]["db_schema_tables"][0]
    assert users["table_name"] == "users"
    assert [c["column_name"] for c in users["table_columns"]] == ["id", "name"]
    assert schema.names == ["user_id", "score"]
    assert schema.field("score").type == pa.float64()
    assert types == ["TABLE"]
    pg_tables = {
        t["table_name"]
        for c in only_pg.to_pylist()
        for s in c["catalog_db_schemas"]
        for t in s["db_schema_tables"]
    }
    assert {"flight_scores", "flight_many"} <= pg_tables
    assert [c["catalog_name"] for c in only_pg.to_pylist()] == ["pg"]


# ---- authentication -----------------------------------------------------------------------
def rows(uri: str, query: str, **login: Any) -> list[tuple[Any, ...]]:
    """``query``'s rows over a new connection (``login``: :func:`connect`'s options)."""
    with connect(uri, **login) as conn, conn.cursor() as cur:
        cur.execute(query)
        return cur.fetchall()


def test_a_wrong_password_is_refused(served: Any, caplog: pytest.LogCaptureFixture) -> None:
    refused = r"UNAUTHENTICATED.*wrong user name or password"
    with (
        caplog.at_level(logging.INFO, "federator.serve"),
        pytest.raises(flightsql.Error, match=refused),
    ):
        rows(served.uri, "SELECT id FROM lite.users", password="Not-it-0815")
    assert "refused a login for user 'ada'" in caplog.text
    assert "Not-it-0815" not in caplog.text and PASSWORD not in caplog.text


def test_an_unauthenticated_client_is_refused(served: Any) -> None:
    with pytest.raises(flightsql.Error, match=r"UNAUTHENTICATED.*authentication required"):
        rows(served.uri, "SELECT id FROM lite.users", user="")


def test_a_bearer_token_from_the_catalog(served: Any) -> None:
    header = adbc_driver_flightsql.DatabaseOptions.AUTHORIZATION_HEADER.value
    query = "SELECT name FROM lite.users WHERE id = 4"
    assert rows(served.uri, query, user="", **{header: f"Bearer {served.token}"}) == [("dee",)]
    with pytest.raises(flightsql.Error, match=r"UNAUTHENTICATED.*bearer token is unknown"):
        rows(served.uri, query, user="", **{header: "Bearer made-up"})


# ---- cancel, limits, many clients ---------------------------------------------------------
def wait_for(condition: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_closing_a_stream_midway_cancels_the_query_on_postgres(served: Any, pg_dsn: str) -> None:
    with connect(served.uri) as conn:
        cur = conn.cursor()
        cur.execute(SLOW_QUERY)
        reader = cur.fetch_record_batch()
        assert reader.read_next_batch().num_rows > 0  # rows flow while PostgreSQL sleeps
        wait_for(lambda: pg_count(pg_dsn, ACTIVE_SLEEPS) == 1, 10, "pg_sleep never started")
        reader.close()
        cur.close()
        wait_for(lambda: pg_count(pg_dsn, ACTIVE_SLEEPS) == 0, 5, "pg_sleep still running")
        with conn.cursor() as again:  # the pool and the server are fine
            again.execute("SELECT count(*) FROM pg.flight_many")
            assert again.fetchone() == (MANY_ROWS,)


def test_cancelling_a_running_execute_cancels_the_query_on_postgres(
    served: Any, pg_dsn: str
) -> None:
    query = "SELECT x FROM pg.flight_many WHERE x = 1 AND pg_sleep(30) IS NOT NULL"
    with connect(served.uri) as conn, conn.cursor() as cur:
        failure: list[BaseException] = []

        def execute() -> None:
            try:
                cur.execute(query)
            except BaseException as e:  # the cancelled call's error, checked below
                failure.append(e)

        worker = threading.Thread(target=execute)
        worker.start()
        wait_for(lambda: pg_count(pg_dsn, ACTIVE_SLEEPS) == 1, 10, "pg_sleep never started")
        cur.adbc_cancel()
        worker.join(timeout=10)
        assert not worker.is_alive()
        assert failure and "CANCELLED" in str(failure[0]).upper()
        wait_for(lambda: pg_count(pg_dsn, ACTIVE_SLEEPS) == 0, 5, "pg_sleep still running")


def test_the_server_wide_timeout_ends_a_slow_query(served: Any, pg_dsn: str) -> None:
    settings = served.server.settings
    settings.timeout = 1.0
    try:
        with connect(served.uri) as conn, conn.cursor() as cur:
            cur.execute(SLOW_QUERY)
            started = time.monotonic()
            with pytest.raises(flightsql.Error, match=r"timed out after 1s.*source 'pg'"):
                cur.fetchall()
            assert time.monotonic() - started < 1.0 + 2.0
    finally:
        settings.timeout = None
    wait_for(lambda: pg_count(pg_dsn, ACTIVE_SLEEPS) == 0, 5, "pg_sleep still running")


def test_stopping_the_server_mid_stream_is_an_error_not_a_short_answer(
    served: Any, pg_dsn: str
) -> None:
    server, thread = start(served.fed, authenticator=None)
    try:
        # pyarrow's own Flight client: ADBC's cursor cannot be closed once its server is gone
        client = flight.FlightClient(f"grpc://127.0.0.1:{server.port}")
        command = protocol.encode("CommandStatementQuery", query=SLOW_QUERY)
        info = client.get_flight_info(flight.FlightDescriptor.for_command(command))
        reader = client.do_get(info.endpoints[0].ticket)
        assert reader.read_chunk().data.num_rows > 0
        wait_for(lambda: pg_count(pg_dsn, ACTIVE_SLEEPS) == 1, 10, "pg_sleep never started")
        stopper = threading.Thread(target=server.shutdown)
        stopper.start()
        with pytest.raises(flight.FlightUnavailableError, match="the answer was not sent whole"):
            reader.read_all()
        stopper.join(timeout=10)
        assert not stopper.is_alive()
        client.close()
    finally:
        server.shutdown()
        thread.join(timeout=10)
    wait_for(lambda: pg_count(pg_dsn, ACTIVE_SLEEPS) == 0, 5, "pg_sleep still running")


def test_a_client_over_its_query_limit_is_refused_with_a_clear_error(served: Any) -> None:
    settings = served.server.settings
    saved = (settings.max_queries_per_client, settings.queue_seconds)
    settings.max_queries_per_client, settings.queue_seconds = 1, 0.2  # new clients' slots
    try:
        with connect(served.uri, "cy", "cy-pw") as one, connect(served.uri, "cy", "cy-pw") as two:
            first, second = one.cursor(), two.cursor()
            first.execute(SLOW_QUERY)  # streaming, then waiting on pg_sleep: cy's one slot
            with pytest.raises(flightsql.Error, match="too many queries at once for client 'cy'"):
                second.execute("SELECT id FROM lite.users")
            first.close()  # cancelled: the slot is free again
            second.execute("SELECT id FROM lite.users")
            assert len(second.fetchall()) == len(USERS)
            second.close()
    finally:
        settings.max_queries_per_client, settings.queue_seconds = saved


def test_fifty_concurrent_clients(served: Any) -> None:
    names = dict(USERS)

    def client(i: int) -> tuple[int, list[tuple[Any, ...]]]:
        user_id = i % len(USERS) + 1
        with connect(served.uri) as conn, conn.cursor() as cur:
            cur.execute("SELECT name FROM lite.users WHERE id = :id", (user_id,))
            return user_id, cur.fetchall()

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(client, range(50)))
    assert answers == [(i % 4 + 1, [(names[i % 4 + 1],)]) for i in range(50)]


# ---- TLS and the command --------------------------------------------------------------------
def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made here."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_with_a_self_signed_certificate(served: Any, tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server, thread = start(
        served.fed,
        location="grpc+tls://127.0.0.1:0",
        authenticator=None,
        tls_certificates=[(cert.read_bytes(), key.read_bytes())],
    )
    try:
        roots = adbc_driver_flightsql.DatabaseOptions.TLS_ROOT_CERTS.value
        uri = f"grpc+tls://127.0.0.1:{server.port}"
        query = "SELECT name FROM lite.users WHERE id = 2"
        assert rows(uri, query, user="", **{roots: cert.read_text()}) == [("bob",)]
        with pytest.raises(flightsql.Error):  # a client that does not trust it
            rows(uri, query, user="")
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_the_serve_command_serves_with_metrics_until_sigterm(
    catalog: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "catalog.toml"
    lines = []
    for name, source in catalog["sources"].items():
        lines.append(f"[sources.{name}]")
        lines += [f"{k} = {v!r}".replace("'", '"') for k, v in source.items()]
    path.write_text("\n".join(lines) + "\n")
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "federator.cli",
            "serve",
            str(path),
            "--port",
            "0",
            "--insecure-local",
            "--metrics-port",
            "0",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert child.stderr is not None
        metrics = child.stderr.readline().split("metrics at ")[1].strip()
        line = child.stderr.readline()
        assert "Flight SQL at grpc://127.0.0.1:" in line and "loopback only" in line, line
        port = int(line.split("grpc://127.0.0.1:")[1].split()[0])
        with connect(f"grpc://127.0.0.1:{port}", user="") as conn, conn.cursor() as cur:
            cur.execute("SELECT name FROM lite.users WHERE id = 3")
            assert cur.fetchall() == [("cy",)]
        with urllib.request.urlopen(metrics, timeout=10) as scrape:
            assert "federator_query_duration" in scrape.read().decode()
        child.send_signal(signal.SIGTERM)
        assert child.wait(timeout=15) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
