"""PostgreSQL connections for the adapter: the pool, read-only transactions, teardown.

Every statement runs on a pooled connection inside its own read-only transaction
(:meth:`PostgresConnections._begin`). A connection the server closed while idle is replaced
before anything of the query is sent; a connection left mid-query by a timeout, a cancel or a
lost network is closed at once and its backend terminated from another connection
(:meth:`PostgresConnections._release`), all within :data:`federator.deadline.CLEANUP_SECONDS`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
from federator.adapters.sqlbase import ServerSQLAdapter

from federator.deadline import CLEANUP_SECONDS, cleanup

_BEGIN = "BEGIN READ ONLY"
# What a pooled connection the server closed while it sat idle fails with on its first command
# (asyncpg notices the close a moment later: "cannot switch to state 15" is that race).
_DEAD_CONNECTION = (
    asyncpg.PostgresConnectionError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    ConnectionError,
)


class PostgresConnections(ServerSQLAdapter):
    """The connection half of :class:`~federator.adapters.postgres.PostgresAdapter`: its pool,
    transactions and the teardown of interrupted connections."""

    # ---- pool ------------------------------------------------------------------------
    async def _connect_pool(self) -> asyncpg.Pool:
        d = self.dsn
        pool = await asyncpg.create_pool(
            host=d.host,
            port=d.port,
            user=d.user,
            password=d.password,
            database=d.database,
            min_size=0,
            max_size=self.max_concurrency,
            timeout=self.connect_timeout,
            statement_cache_size=256,
            # Read-only sessions: even a statement that slipped past the planner cannot write.
            server_settings={
                "application_name": "federator",
                "default_transaction_read_only": "on",
            },
        )
        async with pool.acquire() as conn:  # fail here, not in the middle of a query
            await conn.execute("SELECT 1")
        return pool

    def _pool_in_use(self, pool: asyncpg.Pool) -> int:
        return pool.get_size() - pool.get_idle_size()

    async def _close_pool(self, pool: asyncpg.Pool) -> None:
        try:
            await asyncio.wait_for(pool.close(), timeout=5)
        except TimeoutError:
            pool.terminate()

    # ---- connections: dead ones replaced, interrupted ones torn down with their backend --------
    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        """Every row of one statement, in its own transaction (see :meth:`_begin`)."""
        pool = await self._get_pool()
        conn = await self._begin(pool)
        outcome: BaseException | None = None
        try:
            rows = await conn.fetch(sql, *args)
            await conn.execute("COMMIT")
            return rows
        except BaseException as e:
            outcome = e
            raise
        finally:
            await self._release(pool, conn, outcome)

    async def _begin(self, pool: asyncpg.Pool, begin: str = _BEGIN) -> Any:
        """A pooled connection inside a new read-only transaction. A connection the server
        closed while idle in the pool fails on this first command: it is dropped and the
        transaction begun once more on another (nothing of the query was sent yet)."""
        for attempt in (1, 2):
            conn = await pool.acquire()
            try:
                await conn.execute(begin)
                return conn
            except _DEAD_CONNECTION:
                _close_now(conn)
                await pool.release(conn)
                if attempt == 2:
                    raise
            except BaseException as e:
                await self._release(pool, conn, e)
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _release(self, pool: asyncpg.Pool, conn: Any, outcome: BaseException | None) -> None:
        """Give ``conn`` back. After a clean end, an error the server reported, or a consumer
        that stopped between two cursor fetches (GeneratorExit; the COPY path never passes it
        here), the connection is healthy: rolled back and pooled. After anything else (a
        timeout, a cancel, a lost or frozen connection, a half-read COPY) the server may still
        be working on it: the connection is closed at once and its backend terminated from
        another connection, all within :data:`CLEANUP_SECONDS`."""
        if (
            outcome is None
            or isinstance(outcome, GeneratorExit)  # row path: the server waits between fetches
            or (
                isinstance(outcome, asyncpg.PostgresError)
                and not isinstance(outcome, _DEAD_CONNECTION)
            )
        ):
            try:
                if outcome is not None:
                    await asyncio.wait_for(conn.execute("ROLLBACK"), CLEANUP_SECONDS)
                await asyncio.wait_for(pool.release(conn), CLEANUP_SECONDS)
                return
            except (Exception, asyncio.CancelledError):
                pass  # fall through: tear it down
        pid = _close_now(conn)
        await pool.release(conn)
        if pid is not None:
            await cleanup(self._terminate_backend(pid))

    async def _terminate_backend(self, pid: int) -> None:
        """End the server process of an abandoned connection (its query with it): a cancel
        request would not stop a backend blocked writing to a frozen socket; this does."""
        d = self.dsn
        conn = await asyncpg.connect(
            host=d.host,
            port=d.port,
            user=d.user,
            password=d.password,
            database=d.database,
            timeout=CLEANUP_SECONDS,
            server_settings={"application_name": "federator-cancel"},
        )
        try:
            await conn.fetchval("SELECT pg_catalog.pg_terminate_backend($1)", pid)
        finally:
            conn.terminate()


def _close_now(conn: Any) -> int | None:
    """Close a pooled connection without a word to the server; its backend's pid, or None
    when asyncpg had already closed it (and handed it back to the pool)."""
    try:
        pid = conn.get_server_pid()
        conn.terminate()
    except asyncpg.InterfaceError:
        return None
    return pid
