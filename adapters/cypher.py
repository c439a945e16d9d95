"""SQL over graph tables written as Cypher: the pure half of the graph adapters.

A fragment over a graph's label and relationship tables — joined on ``rel._src = node._id`` /
``rel._dst = node._id`` — becomes one ``MATCH`` pattern with its WHERE, RETURN, ORDER BY, SKIP
and LIMIT:

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
rendered as Cypher literals. The adapters (:mod:`federator.adapters.graph`) run the text
through a transport (:mod:`federator.adapters.graph_transport`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pyarrow as pa
from federator.rules.graph import AGGREGATES
from sqlglot import exp

from federator.errors import UnsupportedError
from federator.sql.trees import conjuncts as _conjuncts

KEYS_PARAM = "__keys"


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
