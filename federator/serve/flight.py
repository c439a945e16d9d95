"""``federator serve``: the federation over Arrow Flight SQL, for ADBC, the Flight SQL JDBC
driver and the tools built on them.

A statement is planned and started when the client asks for its ``FlightInfo`` (errors come
back there, with the answer's real schema); its batches stream from
:meth:`federator.Result.to_batches` when the client's ``DoGet`` pulls them, never whole on the
server. A client that stops reading or cancels closes the stream, which cancels the
fragments on every source. Catalogs are sources, schemas their schemas, tables their tables.

>>> fed = federator.connect("catalog.toml")  # doctest: +SKIP
>>> server = FlightSQLServer(fed, "grpc://127.0.0.1:0", authenticator=None)  # doctest: +SKIP
>>> server.port  # doctest: +SKIP
41234
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import secrets
import threading
import time
import weakref
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.flight as flight
import sqlglot
from sqlglot import exp

from federator import __version__
from federator.errors import (
    CatalogError,
    FederatorError,
    QueryTimeoutError,
)
from federator.serve import protocol
from federator.serve.auth import Authenticator
from federator.serve.sqlinfo import (
    CATALOGS_SCHEMA,
    DB_SCHEMAS_SCHEMA,
    TABLE_TYPES_SCHEMA,
    TABLES_SCHEMA,
    TABLES_WITH_SCHEMA,
    sql_info_schema,
    sql_info_table,
)

if TYPE_CHECKING:
    from federator.federation import Federation
    from federator.result import Result

log = logging.getLogger("federator.serve")

TABLE_TYPE = "TABLE"
PREPARED_IDLE_SECONDS = 3600.0
DEFAULT_TIMEOUT_SECONDS = 300.0  # a served query always has a bound
CANCEL_POLL_SECONDS = 0.05  # how often a wait for a batch checks the client is still there


@dataclass
class ServeSettings:
    """The catalog's ``[serve]`` limits.

    ``timeout``: seconds a query may take, planning to last batch (None: the catalog's
    ``timeout``, else :data:`DEFAULT_TIMEOUT_SECONDS`); ``max_queries_per_client``: statements
    one client (user or token; peer address when unauthenticated) runs at once;
    ``queue_seconds``: how long one more waits for a slot before it is refused;
    ``ticket_seconds``: how long a started statement waits for its DoGet.
    """

    timeout: float | None = None
    max_queries_per_client: int = 8
    queue_seconds: float = 10.0
    ticket_seconds: float = 60.0

    @classmethod
    def from_catalog(cls, serve: Mapping[str, Any]) -> ServeSettings:
        known = ("timeout", "max_queries_per_client", "queue_seconds", "ticket_seconds")
        unknown = sorted(set(serve) - set(known) - {"users", "tokens"})
        if unknown:
            raise CatalogError(
                f"[serve] has no setting {', '.join(map(repr, unknown))} "
                f"(settings: {', '.join(known)}; tables: users, tokens)"
            )
        return cls(**{k: serve[k] for k in known if k in serve})


class _Statement:
    """A started statement: its batches pulled one at a time, each pull abandoned (and the
    query's fragments cancelled) as soon as the client cancels its call.

    The pulls run on a small event loop of the statement's own, on whichever gRPC thread
    serves the call (one at a time), through :meth:`Result.__aiter__`, whose cancellation
    reaches the federation's loop."""

    def __init__(self, result: Result, owner: str, release: Callable[[], None]):
        self.owner = owner
        self.expires = 0.0
        self._release = release
        self._loop = asyncio.new_event_loop()
        self._batches = result.__aiter__()
        self._done = False
        self.first: pa.RecordBatch | None = None  # pulled when started: the answer's schema

    def next_batch(self, cancelled: Callable[[], bool]) -> pa.RecordBatch | None:
        """The next batch (None at the end); :class:`_ClientCancelled` once ``cancelled()``."""
        return self._loop.run_until_complete(_next_unless(self._batches, cancelled))

    def close(self) -> None:
        """Stop the query (its fragments cancelled, connections back) and free the slot."""
        if self._done:
            return
        self._done = True
        try:
            with contextlib.suppress(Exception):
                self._loop.run_until_complete(self._batches.aclose())
            self._loop.close()
        finally:
            self._release()


class _ClientCancelled(Exception):
    """The client cancelled the call while the server waited for a batch."""


async def _next_unless(
    batches: AsyncIterator[pa.RecordBatch], cancelled: Callable[[], bool]
) -> pa.RecordBatch | None:
    step = asyncio.ensure_future(anext(batches, None))
    while True:
        done, _ = await asyncio.wait({step}, timeout=CANCEL_POLL_SECONDS)
        if done:
            return step.result()
        if cancelled():
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await step
            raise _ClientCancelled


@dataclass
class _Prepared:
    query: str
    owner: str
    params: dict[str, Any] = field(default_factory=dict)
    used: float = field(default_factory=time.monotonic)  # forgotten when idle this long


class FlightSQLServer(flight.FlightServerBase):
    """A Flight SQL endpoint over one :class:`federator.Federation` (which it does not close).

    ``authenticator``: None serves anyone (the CLI allows it on loopback only);
    ``tls_certificates``: ``[(cert_pem, key_pem)]`` for ``grpc+tls://`` locations.
    """

    def __init__(
        self,
        fed: Federation,
        location: str,
        *,
        authenticator: Authenticator | None,
        settings: ServeSettings | None = None,
        tls_certificates: list[tuple[bytes, bytes]] | None = None,
    ):
        middleware = {} if authenticator is None else {"auth": _AuthFactory(authenticator)}
        super().__init__(
            location,
            auth_handler=_NoHandshake() if authenticator is not None else None,
            tls_certificates=tls_certificates or [],
            middleware=middleware,
        )
        self.fed = fed
        self.settings = settings or ServeSettings()
        self._statements: dict[bytes, _Statement] = {}
        self._prepared: dict[bytes, _Prepared] = {}
        self._running: dict[str, int] = {}  # statements each client has started, not ended
        self._slots = threading.Condition()  # guards _running; notified when one ends
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sweeper = threading.Thread(
            target=self._sweep_forever, name="federator-serve-sweep", daemon=True
        )
        self._sweeper.start()

    def __repr__(self) -> str:
        return f"<federator FlightSQLServer port={self.port}>"

    # ---- Flight RPCs -------------------------------------------------------------------
    def get_flight_info(
        self, context: flight.ServerCallContext, descriptor: flight.FlightDescriptor
    ) -> flight.FlightInfo:
        command = _command(descriptor.command)
        owner = _owner(context)
        if command.name == "CommandStatementQuery":
            query = command.get("query", "")
            return self._statement_info(context, descriptor, owner, query, {})
        if command.name == "CommandPreparedStatementQuery":
            prepared = self._prepared_for(command.get("prepared_statement_handle", b""), owner)
            return self._statement_info(context, descriptor, owner, prepared.query, prepared.params)
        schema = self._metadata_schema(command)
        ticket = flight.Ticket(descriptor.command)  # the command itself: DoGet answers it
        return flight.FlightInfo(schema, descriptor, [flight.FlightEndpoint(ticket, [])], -1, -1)

    def do_get(
        self, context: flight.ServerCallContext, ticket: flight.Ticket
    ) -> flight.FlightDataStream:
        command = _command(ticket.ticket)
        if command.name == "TicketStatementQuery":
            statement = self._take(command.get("statement_handle", b""), _owner(context))
            batches = _stream(statement, context, self._stop)
            # a stream dropped before its first pull never runs its own finally
            weakref.finalize(batches, statement.close)
            return flight.GeneratorStream(statement.first.schema, batches)
        return flight.RecordBatchStream(self._metadata_table(command))

    def do_put(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        reader: flight.MetadataRecordBatchReader,
        writer: flight.FlightMetadataWriter,
    ) -> None:
        command = _command(descriptor.command)
        if command.name != "CommandPreparedStatementQuery":
            raise flight.FlightServerError(
                f"{command.name}: federator serve is read-only (queries only)"
            )
        handle = command.get("prepared_statement_handle", b"")
        prepared = self._prepared_for(handle, _owner(context))
        prepared.params = _params(prepared.query, reader.read_all())
        writer.write(
            protocol.encode_message(
                "DoPutPreparedStatementResult", prepared_statement_handle=handle
            )
        )

    def list_actions(self, context: flight.ServerCallContext) -> list[tuple[str, str]]:
        return [
            ("CreatePreparedStatement", "prepare a query (parameters bound by DoPut)"),
            ("ClosePreparedStatement", "forget a prepared query"),
        ]

    def do_action(
        self, context: flight.ServerCallContext, action: flight.Action
    ) -> Iterator[bytes]:
        owner = _owner(context)
        body = action.body.to_pybytes() if action.body is not None else b""
        if action.type == "CreatePreparedStatement":
            query = _command(body).get("query", "")
            _parse(query)  # a syntax error surfaces at prepare
            handle = secrets.token_bytes(16)
            with self._lock:
                self._prepared[handle] = _Prepared(query, owner)
            return iter(
                [
                    protocol.encode(
                        "ActionCreatePreparedStatementResult", prepared_statement_handle=handle
                    )
                ]
            )
        if action.type == "ClosePreparedStatement":
            handle = _command(body).get("prepared_statement_handle", b"")
            with self._lock:
                prepared = self._prepared.get(handle)
                if prepared is not None and prepared.owner == owner:
                    del self._prepared[handle]
            return iter([])
        raise flight.FlightServerError(f"action {action.type!r} is not supported")

    def shutdown(self) -> None:
        """Stop serving: queries in flight stop (their clients get an error), statements not
        yet fetched are closed, their slots freed."""
        self._stop.set()
        super().shutdown()
        with self._lock:
            pending = list(self._statements.values())
            self._statements.clear()
        for statement in pending:
            statement.close()

    # ---- statements --------------------------------------------------------------------
    def _statement_info(
        self,
        context: flight.ServerCallContext,
        descriptor: flight.FlightDescriptor,
        owner: str,
        query: str,
        params: dict[str, Any],
    ) -> flight.FlightInfo:
        release = self._acquire(owner)
        try:
            with _as_flight_errors():
                result = self.fed.sql(query, params, timeout=self._timeout())
        except BaseException:
            release()
            raise
        statement = _Statement(result, owner, release)
        try:
            with _as_flight_errors():  # runs until the first batch: the answer's real schema
                first = statement.next_batch(lambda: context.is_cancelled() or self._stop.is_set())
            assert first is not None, "a federated answer has at least one batch"
        except _ClientCancelled:
            statement.close()
            raise flight.FlightCancelledError(
                "the query was cancelled (by the client, or the server is stopping)"
            ) from None
        except BaseException:
            statement.close()
            raise
        statement.first = first
        statement.expires = time.monotonic() + self.settings.ticket_seconds
        handle = secrets.token_bytes(16)
        with self._lock:
            self._statements[handle] = statement
        ticket = flight.Ticket(protocol.encode("TicketStatementQuery", statement_handle=handle))
        endpoint = flight.FlightEndpoint(ticket, [])
        return flight.FlightInfo(first.schema, descriptor, [endpoint], -1, -1)

    def _timeout(self) -> float:
        """Seconds a query may take: ``[serve] timeout``, else the catalog's, else 300."""
        return self.settings.timeout or self.fed.timeout or DEFAULT_TIMEOUT_SECONDS

    def _take(self, handle: bytes, owner: str) -> _Statement:
        with self._lock:
            statement = self._statements.get(handle)
            if statement is not None and statement.owner == owner:
                del self._statements[handle]
                return statement
        raise flight.FlightServerError(
            "unknown or expired statement ticket: run the query again "
            f"(a ticket is fetched once, within {self.settings.ticket_seconds:g}s)"
        )

    def _prepared_for(self, handle: bytes, owner: str) -> _Prepared:
        with self._lock:
            prepared = self._prepared.get(handle)
        if prepared is None or prepared.owner != owner:
            raise flight.FlightServerError("unknown prepared statement: prepare it again")
        prepared.used = time.monotonic()
        return prepared

    def _acquire(self, owner: str) -> Callable[[], None]:
        """Take one of ``owner``'s statement slots (waiting up to ``queue_seconds``); returns
        the function that gives it back (once, however often it is called)."""
        limit = self.settings.max_queries_per_client
        with self._slots:
            if not self._slots.wait_for(
                lambda: self._running.get(owner, 0) < limit, self.settings.queue_seconds
            ):
                raise flight.FlightUnavailableError(
                    f"too many queries at once for client {owner!r} (limit {limit}); "
                    "wait for one to finish or raise [serve] max_queries_per_client"
                )
            self._running[owner] = self._running.get(owner, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            with self._slots:
                if released:
                    return
                released = True
                left = self._running.pop(owner) - 1
                if left:
                    self._running[owner] = left
                self._slots.notify_all()

        return release

    def _sweep_forever(self) -> None:
        while not self._stop.wait(1.0):
            self._sweep()

    def _sweep(self) -> None:
        """Close statements whose DoGet never came (their results and slots); forget prepared
        statements a client left unused (and never closed) for an hour."""
        now = time.monotonic()
        with self._lock:
            stale = [h for h, s in self._statements.items() if s.expires <= now]
            expired = [self._statements.pop(h) for h in stale]
            idle = [h for h, p in self._prepared.items() if now - p.used > PREPARED_IDLE_SECONDS]
            for handle in idle:
                del self._prepared[handle]
        for statement in expired:
            with contextlib.suppress(Exception):
                statement.close()

    # ---- metadata ----------------------------------------------------------------------
    def _metadata_schema(self, command: protocol.Command) -> pa.Schema:
        if command.name == "CommandGetCatalogs":
            return CATALOGS_SCHEMA
        if command.name == "CommandGetDbSchemas":
            return DB_SCHEMAS_SCHEMA
        if command.name == "CommandGetTables":
            return TABLES_WITH_SCHEMA if command.get("include_schema") else TABLES_SCHEMA
        if command.name == "CommandGetTableTypes":
            return TABLE_TYPES_SCHEMA
        if command.name == "CommandGetSqlInfo":
            return sql_info_schema()
        raise flight.FlightServerError(f"{command.name} is not supported by federator serve")

    def _metadata_table(self, command: protocol.Command) -> pa.Table:
        if command.name == "CommandGetCatalogs":
            return pa.table({"catalog_name": sorted(self.fed.catalog.adapters)}, CATALOGS_SCHEMA)
        if command.name == "CommandGetTableTypes":
            return pa.table({"table_type": [TABLE_TYPE]}, TABLE_TYPES_SCHEMA)
        if command.name == "CommandGetSqlInfo":
            return sql_info_table(command.get("info", []), __version__, pa.__version__)
        tables = self._tables(command.get("catalog"), command.get("db_schema_filter_pattern"))
        if command.name == "CommandGetDbSchemas":
            pairs = sorted({(source, schema) for source, schema, _, _ in tables})
            columns = ["catalog_name", "db_schema_name"]
            return pa.Table.from_pylist(
                [dict(zip(columns, p, strict=True)) for p in pairs], DB_SCHEMAS_SCHEMA
            )
        if command.name == "CommandGetTables":
            return self._tables_table(command, tables)
        raise flight.FlightServerError(f"{command.name} is not supported by federator serve")

    def _tables(
        self, catalog: str | None, schema_pattern: str | None
    ) -> list[tuple[str, str, str, pa.Schema]]:
        """(source, schema, table, Arrow schema) of every table the filters keep, sorted."""
        rows = []
        for source in sorted(self.fed.catalog.adapters):
            if catalog is not None and catalog != source:
                continue
            with _as_flight_errors():
                tables = self.fed._loop.run(self.fed.catalog.tables(source))
            for ref, info in tables.items():
                if schema_pattern is None or _like(schema_pattern, ref.schema):
                    rows.append((source, ref.schema, ref.name, info.schema))
        return sorted(rows, key=lambda r: r[:3])

    def _tables_table(
        self, command: protocol.Command, tables: list[tuple[str, str, str, pa.Schema]]
    ) -> pa.Table:
        name_pattern = command.get("table_name_filter_pattern")
        types = command.get("table_types") or [TABLE_TYPE]
        kept = (
            [t for t in tables if (name_pattern is None or _like(name_pattern, t[2]))]
            if TABLE_TYPE in types
            else []
        )
        columns: dict[str, list[Any]] = {
            "catalog_name": [t[0] for t in kept],
            "db_schema_name": [t[1] for t in kept],
            "table_name": [t[2] for t in kept],
            "table_type": [TABLE_TYPE] * len(kept),
        }
        if not command.get("include_schema"):
            return pa.table(columns, TABLES_SCHEMA)
        columns["table_schema"] = [t[3].serialize().to_pybytes() for t in kept]
        return pa.table(columns, TABLES_WITH_SCHEMA)


# ---- authentication ---------------------------------------------------------------------
class _NoHandshake(flight.ServerAuthHandler):
    """Lets every call through to the middleware, which checks the headers (Flight's own
    handshake protocol is not what Flight SQL clients speak)."""

    def authenticate(self, outgoing: Any, incoming: Any) -> None:
        return None

    def is_valid(self, token: bytes) -> str:
        return ""


class _AuthFactory(flight.ServerMiddlewareFactory):
    """Checks each call's ``authorization`` header: ``Basic`` logs in and answers with a
    session ``Bearer`` token; ``Bearer`` is checked against sessions and the catalog's tokens."""

    def __init__(self, authenticator: Authenticator):
        self.auth = authenticator

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[str]]) -> _Identity:
        value = next(iter(headers.get("authorization", [])), "")
        scheme, _, credential = value.partition(" ")
        if scheme.lower() == "basic":
            user, password = _basic(credential)
            token = self.auth.login(user, password)
            if token is None:
                log.info("federator serve: refused a login for user %r", user)
                raise flight.FlightUnauthenticatedError("wrong user name or password")
            return _Identity(user, token)
        if scheme.lower() == "bearer":
            identity = self.auth.bearer(credential.strip())
            if identity is None:
                raise flight.FlightUnauthenticatedError(
                    "the bearer token is unknown or expired: log in again"
                )
            return _Identity(identity)
        raise flight.FlightUnauthenticatedError(
            "authentication required: give a user name and password, or a bearer token"
        )


class _Identity(flight.ServerMiddleware):
    def __init__(self, name: str, token: str | None = None):
        self.name = name
        self._token = token  # a new session token, sent back once

    def sending_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._token}"} if self._token else {}

    def __repr__(self) -> str:
        return f"<federator serve identity {self.name!r}>"


def _basic(credential: str) -> tuple[str, str]:
    text = credential.strip()
    text += "=" * (-len(text) % 4)  # Go's Flight client leaves the padding off
    try:
        user, sep, password = base64.b64decode(text).decode().partition(":")
    except (ValueError, UnicodeDecodeError):
        sep = ""
    if not sep:
        raise flight.FlightUnauthenticatedError("malformed Basic authorization header")
    return user, password


def _owner(context: flight.ServerCallContext) -> str:
    """Who is calling: the authenticated identity, else the peer's address."""
    identity = context.get_middleware("auth")
    return identity.name if identity is not None else f"peer:{context.peer()}"


# ---- helpers ----------------------------------------------------------------------------
def _command(data: bytes) -> protocol.Command:
    try:
        return protocol.decode(data)
    except protocol.ProtocolError as e:
        raise flight.FlightServerError(str(e)) from None


def _stream(
    statement: _Statement, context: flight.ServerCallContext, stopping: threading.Event
) -> Iterator[pa.RecordBatch]:
    """The statement's batches for a DoGet; the client cancelling, going away or reaching the
    end closes the statement, which cancels its fragments on every source. The server
    stopping ends the stream with an error: never an answer cut short as if complete."""
    try:
        yield statement.first
        with _as_flight_errors():
            while True:
                batch = statement.next_batch(lambda: context.is_cancelled() or stopping.is_set())
                if batch is None:
                    return
                yield batch
    except _ClientCancelled:
        if not context.is_cancelled():
            raise flight.FlightUnavailableError(
                "the server is shutting down: the answer was not sent whole; run it again"
            ) from None
    finally:
        statement.close()


@contextlib.contextmanager
def _as_flight_errors() -> Iterator[None]:
    """A federator error as the Flight error a client shows (its message names what to fix).

    Flight errors, not pyarrow's others: those reach the client with the server's traceback."""
    try:
        yield
    except QueryTimeoutError as e:
        raise flight.FlightTimedOutError(str(e)) from None
    except FederatorError as e:
        raise flight.FlightServerError(str(e)) from None
    except (flight.FlightError, _ClientCancelled):
        raise
    except Exception as e:
        log.exception("federator serve: internal error")
        raise flight.FlightInternalError(f"internal error: {type(e).__name__}") from None


def _parse(query: str) -> exp.Expression:
    from federator.sql.dialect import Federated

    try:
        return sqlglot.parse_one(query, dialect=Federated)
    except sqlglot.errors.ParseError as e:
        raise flight.FlightServerError(f"SQL syntax error: {e}") from None


def _params(query: str, table: pa.Table) -> dict[str, Any]:
    """The bound parameters of a prepared query: one row, columns by ``:name`` or, when the
    names are not the query's (``0``, ``1``, ...), in the order the names first appear."""
    if table.num_rows != 1:
        raise flight.FlightServerError(
            f"bind one row of parameters per execution (got {table.num_rows})"
        )
    names: list[str] = []
    for node in _parse(query).walk(bfs=False):
        if isinstance(node, exp.Placeholder) and node.name and node.name not in names:
            names.append(node.name)
    given = table.column_names
    if set(given) <= set(names):
        return {name: table.column(name)[0].as_py() for name in given}
    if len(given) != len(names):
        raise flight.FlightServerError(
            f"the query takes {len(names)} parameter(s) ({', '.join(names) or 'none'}); "
            f"{len(given)} were bound"
        )
    return {name: table.column(i)[0].as_py() for i, name in enumerate(names)}


def _like(pattern: str, value: str) -> bool:
    """SQL LIKE (``%`` any run, ``_`` one character), as Flight SQL's filter patterns use."""
    regex = "".join(".*" if c == "%" else "." if c == "_" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None
