"""How the graph adapters reach their servers: Cypher text and parameters in, column names
and rows out.

``FalkorTransport`` speaks FalkorDB's own protocol through the ``falkordb`` client (and starts
an embedded FalkorDB on first use when given one); ``BoltTransport`` speaks Bolt through the
official ``neo4j`` driver (Neo4j, Memgraph, FalkorDB's Bolt endpoint) and tells the server
the query's time left as a transaction timeout where the server honours it.
"""

from __future__ import annotations

import abc
import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

if TYPE_CHECKING:
    from federator.embedded import EmbeddedServer


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its ``user:password@`` part, and that user and password percent-decoded
    (a password with ``@``, ``/`` or ``#`` is written encoded in a URL, as ``${VAR}`` writes it);
    None where the URL has none.

    >>> split_userinfo("bolt://neo:p%40ss%2Fw@db:7687")
    ('bolt://db:7687', 'neo', 'p@ss/w')
    >>> split_userinfo("redis://:s%23cret@db:6379")
    ('redis://db:6379', None, 's#cret')
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    host = parts.netloc.rpartition("@")[2]
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    user = unquote(parts.username) if parts.username else None
    password = None if parts.password is None else unquote(parts.password)
    return bare, user, password


class Transport(abc.ABC):
    """Runs Cypher text with parameters; returns column names and rows."""

    @abc.abstractmethod
    async def run(
        self, cypher: str, params: dict[str, Any], timeout: float
    ) -> tuple[list[str], list[list[Any]]]: ...

    async def close(self) -> None:  # noqa: B027
        pass


class FalkorTransport(Transport):
    """FalkorDB's protocol; with ``server`` (an embedded FalkorDB) it starts the server on
    first use and stops it on close."""

    def __init__(self, url: str, graph: str, server: EmbeddedServer | None = None):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 6379
        _, self.username, self.password = split_userinfo(url)
        self.graph_name = graph
        self.server = server
        self._db: Any = None
        self._graph: Any = None
        self._starting = asyncio.Lock()

    async def _get(self) -> Any:
        if self._graph is None and self.server is not None:
            async with self._starting:
                if not self.server.running:
                    self.port = urlsplit(await self.server.start_async()).port or self.port
        if self._graph is None:
            from falkordb.asyncio import FalkorDB
            from redis.asyncio import BlockingConnectionPool

            pool = BlockingConnectionPool(
                host=self.host,
                port=self.port,
                username=self.username,
                password=self.password,
                max_connections=16,
                timeout=None,
                decode_responses=True,
            )
            self._db = FalkorDB(connection_pool=pool)
            self._graph = self._db.select_graph(self.graph_name)
        return self._graph

    async def run(
        self, cypher: str, params: dict[str, Any], timeout: float
    ) -> tuple[list[str], list[list[Any]]]:
        graph = await self._get()
        result = await graph.ro_query(cypher, params or None, timeout=int(timeout * 1000))
        names = [h[1] if isinstance(h, (list, tuple)) else str(h) for h in result.header]
        return names, result.result_set

    async def close(self) -> None:
        db, self._db, self._graph = self._db, None, None
        try:
            if db is not None:
                await db.connection.aclose()
        finally:
            if self.server is not None:
                self.server.stop()


class BoltTransport(Transport):
    def __init__(
        self,
        url: str,
        user: str | None,
        password: str | None,
        database: str | None,
        connect_timeout: float = 60.0,
    ):
        # The driver refuses a URL's user:password@ (bolt://): they are taken from it, decoded;
        # the catalog's user and password options win over them.
        self.url, url_user, url_password = split_userinfo(url)
        user = user if user is not None else url_user
        password = password if password is not None else url_password
        self.database = database
        self.connect_timeout = connect_timeout
        self.auth = (user, password or "") if user else None
        self._driver: Any = None
        self._timeouts: bool | None = None  # whether the server honours transaction timeouts

    async def run(
        self, cypher: str, params: dict[str, Any], timeout: float
    ) -> tuple[list[str], list[list[Any]]]:
        import neo4j

        if self._driver is None:
            self._driver = neo4j.AsyncGraphDatabase.driver(
                self.url, auth=self.auth, connection_timeout=self.connect_timeout
            )
        try:
            return await self._run(cypher, params, timeout)
        except (neo4j.exceptions.ServiceUnavailable, neo4j.exceptions.SessionExpired) as e:
            # the driver's own "cannot reach the server" errors are not OSErrors: as one, the
            # adapter reports the source unreachable (a bare driver exception before)
            raise ConnectionError(str(e).split("\n")[0]) from e

    async def _run(
        self, cypher: str, params: dict[str, Any], timeout: float
    ) -> tuple[list[str], list[list[Any]]]:
        import neo4j

        async with self._driver.session(database=self.database) as session:
            if self._timeouts is None:
                self._timeouts = await _takes_transaction_timeouts(session)
            # the transaction timeout: the server ends the query at the query's deadline
            query = neo4j.Query(cypher, timeout=timeout if self._timeouts else None)
            result = await session.run(query, params)
            names = list(result.keys())
            rows = [list(r) for r in await result.values()]
        return names, rows

    async def close(self) -> None:
        driver, self._driver = self._driver, None
        if driver is not None:
            await driver.close()


async def _takes_transaction_timeouts(session: Any) -> bool:
    """Whether a Bolt server answers a query sent with a transaction timeout as it answers it
    without: FalkorDB's Bolt endpoint (which calls itself Neo4j) reads an empty graph then."""
    import neo4j

    count = "MATCH (n) RETURN count(n) AS n"
    plain = await (await session.run(count)).values()
    timed = await (await session.run(neo4j.Query(count, timeout=60))).values()
    return plain == timed
