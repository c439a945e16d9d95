"""The planner: bind → optimize → split into single-source fragments plus a residual.

Passes follow sqlglot's convention: the tree is copied once when planning starts, and every
pass after that mutates it in place and returns it.

Splitting works scope by scope. A query (or subquery, CTE, derived table) whose every table
is on one source, that references nothing outside itself, and that the source's rule set
accepts whole, becomes one fragment. Otherwise, within a SELECT, the tables of one source are
grouped by the conjuncts that join them (inner joins only), each group becomes a fragment with
the filters that touch only its tables, and what is left is the residual run on DuckDB.

>>> from federator.plan.planner import pass_names
>>> pass_names()[:2]
('qualify', 'pushdown_projections')
"""

from __future__ import annotations

import itertools
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.eliminate_ctes import eliminate_ctes
from sqlglot.optimizer.eliminate_joins import eliminate_joins
from sqlglot.optimizer.merge_subqueries import merge_subqueries
from sqlglot.optimizer.normalize import normalize
from sqlglot.optimizer.optimize_joins import optimize_joins
from sqlglot.optimizer.pushdown_predicates import pushdown_predicates
from sqlglot.optimizer.pushdown_projections import pushdown_projections
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.simplify import simplify
from sqlglot.optimizer.unnest_subqueries import unnest_subqueries
from sqlglot.schema import MappingSchema

from federator.adapters.base import TableInfo
from federator.catalog import arrow_to_sql_type
from federator.errors import JoinKeyTypeError, UnknownColumnError, UnsupportedError
from federator.plan.model import BindJoin, Fragment, TopK
from federator.rules import RuleSet
from federator.sql.dialect import (
    Federated,
    VectorDistance,
    mark_integer_division,
    may_return_rows,
)


def _qualify(expression: exp.Expression, **kwargs: object) -> exp.Expression:
    return qualify(
        expression,
        schema=kwargs["schema"],
        dialect=Federated,
        validate_qualify_columns=True,
        quote_identifiers=False,
        identify=False,
    )


# eliminate_subqueries is left out on purpose: it turns derived tables into CTEs, and derived
# tables are what the splitter pushes down whole.
PASSES: tuple[Callable[..., exp.Expression], ...] = (
    _qualify,
    lambda e, **k: pushdown_projections(e),
    lambda e, **k: normalize(e),
    lambda e, **k: unnest_keeping_scalars(e),
    lambda e, **k: pushdown_predicates(e, dialect=Federated),
    lambda e, **k: optimize_joins(e),
    lambda e, **k: merge_subqueries(e),
    lambda e, **k: eliminate_joins(e),
    lambda e, **k: eliminate_ctes(e),
    lambda e, **k: simplify(e, dialect=Federated),
)
PASS_NAMES = (
    "qualify",
    "pushdown_projections",
    "normalize",
    "unnest_subqueries",
    "pushdown_predicates",
    "optimize_joins",
    "merge_subqueries",
    "eliminate_joins",
    "eliminate_ctes",
    "simplify",
)


def pass_names() -> tuple[str, ...]:
    return PASS_NAMES


def unnest_keeping_scalars(expression: exp.Expression) -> exp.Expression:
    """sqlglot's ``unnest_subqueries``, except for scalar subqueries that may return more than
    one row: those stay subqueries, so the engine that runs them raises "more than one row" as
    SQL requires (unnested, they became joins that returned one row per subquery row).

    >>> from sqlglot import parse_one
    >>> q = parse_one("SELECT a FROM x WHERE a = (SELECT b FROM y)")
    >>> unnest_keeping_scalars(q).sql()
    'SELECT a FROM x WHERE a = (SELECT b FROM y)'
    """
    kept = [s for s in expression.find_all(exp.Subquery) if may_return_rows(s)]
    stand_ins = []
    for i, subquery in enumerate(kept):
        stand_in = exp.Anonymous(this=f"__fed_scalar_{i}")  # unnest leaves calls alone
        subquery.replace(stand_in)
        stand_ins.append(stand_in)
    expression = unnest_subqueries(expression)
    for stand_in, subquery in zip(stand_ins, kept, strict=True):
        stand_in.replace(subquery)
    return expression


@dataclass
class PlannerSettings:
    """Knobs of the split; the defaults suit loopback servers."""

    bind_max_keys: int = 50_000  # a producer estimated up to this many rows may be bound
    bind_ratio: float = 4.0  # the consumer must be estimated this many times larger
    bind_batch_size: int = 10_000  # keys per request (PostgreSQL array / MySQL IN list)
    # A producer keeping at least this share of its table's unique keys is not bound: the
    # keys would match about every row of the other side (a foreign key) and filter nothing.
    bind_min_share_left: float = 0.9
    # Adaptive ceiling: a larger producer is still bound when the consumer is estimated at
    # least bind_ratio x bind_large_ratio times larger (moving keys beats moving its rows),
    # up to this many keys (the executor drops a bind at run time above its own limit).
    bind_large_max_keys: int = 200_000
    bind_large_ratio: float = 10.0
    # Semi-join reduction (a keys-only fragment of the producer, bound at run time) where a
    # plain bind is refused: the producer estimated at most semi_join_selectivity of its
    # table and the consumer at least semi_join_ratio times the producer.
    semi_join_selectivity: float = 0.25
    semi_join_ratio: float = 1.0
    # A keys-only fragment is one more query and a wait: only for consumers estimated at
    # least this large (below, fetching them in full on the bulk path was faster here).
    semi_join_min_rows: int = 100_000
    # Adaptive binds: False waits for the keys, then binds or fetches in full; True starts
    # the full fetch at once and cancels it if the keys come first and pay (no waiting when
    # the bind is dropped, but wasted work when it is not: it lost on a busy 2-core machine).
    bind_race: bool = False
    # A vector top-k (ORDER BY <distance> LIMIT k) whose filter is on another source: "pre"
    # binds the other side's keys into the search, "post" over-fetches k x factor and filters
    # after; "auto" picks pre when the keys are at most prefilter_selectivity of the collection.
    vector_filter: str = "auto"
    prefilter_selectivity: float = 0.2
    post_factor: int = 4


@dataclass
class SplitResult:
    fragments: list[Fragment]
    residual: exp.Query | None
    notes: list[str] = field(default_factory=list)


def optimize(tree: exp.Query, schema: MappingSchema, tables: Iterable[TableInfo]) -> exp.Query:
    """Run the optimizer passes; unknown columns become :class:`UnknownColumnError`."""
    try:
        for run in PASSES:
            tree = run(tree, schema=schema)  # type: ignore[assignment]
        mark_integer_division(tree, schema)
    except OptimizeError as e:
        message = str(e)
        found = re.search(
            r"Column '([^']+)' could not be resolved|Unknown column: ([\w.]+)", message
        )
        if found:
            name = found.group(1) or found.group(2)
            known = sorted({f.name for info in tables for f in info.schema})
            raise UnknownColumnError(name, known) from None
        raise UnsupportedError(f"cannot plan this query: {message}") from None
    return tree


def sqlglot_schema(
    tables: Iterable[TableInfo], folded_sources: Iterable[str] = ()
) -> MappingSchema:
    """The catalog as sqlglot's schema for the qualify and annotate passes.

    Names are kept exactly as the servers spell them (``normalize=False``): the query's own
    identifiers were already folded the PostgreSQL way (unquoted → lower case). Sources whose
    column names are case-insensitive (MySQL, SQLite, DuckDB) list their columns in lower
    case, so ``userid`` finds ``UserId`` there; the server reads either spelling.
    """
    folded = set(folded_sources)
    out: dict[str, dict[str, dict[str, dict[str, str]]]] = {}
    for info in tables:
        cols = {
            (f.name.lower() if info.source in folded else f.name): arrow_to_sql_type(f.type)
            for f in info.schema
        }
        out.setdefault(info.source, {}).setdefault(info.ref.schema, {})[info.ref.name] = cols
    return MappingSchema(out, dialect=Federated, normalize=False)


def field_type(schema: pa.Schema, name: str) -> pa.DataType | None:
    """A column's type by its exact name, else by its name in any case."""
    if name in schema.names:
        return schema.field(name).type
    lowered = [f for f in schema if f.name.lower() == name.lower()]
    return lowered[0].type if len(lowered) == 1 else None


@dataclass
class _Item:
    """One thing in a FROM clause: its alias, its source (None: residual-only), its node."""

    alias: str
    source: str | None
    node: exp.Expression
    rows: int | None = None


class Splitter:
    """Cuts an optimized, qualified tree into fragments and a residual (mutates the tree)."""

    def __init__(
        self,
        rules: dict[str, RuleSet],
        tables: dict[tuple[str, str, str], TableInfo],
        settings: PlannerSettings | None = None,
    ):
        self.rules = rules
        self.tables = tables
        self.settings = settings or PlannerSettings()
        self.fragments: list[Fragment] = []
        self.notes: list[str] = []
        self._ids = itertools.count()
        self._ctes: dict[str, exp.Query] = {}

    # ---- entry -------------------------------------------------------------------------
    def split(self, tree: exp.Query) -> SplitResult:
        self._ctes = {cte.alias_or_name: cte.this for cte in tree.find_all(exp.CTE)}
        source = self.pushable_source(tree)
        if source is not None:
            self._fragment_from_query(tree, source)
            return SplitResult(self.fragments, None, self.notes)
        refusal = self._whole_refusal(tree)
        if refusal:
            self.notes.append(f"not pushed whole: {refusal}")
        residual = self.split_query(tree)
        return SplitResult(self.fragments, residual, self.notes)

    def _whole_refusal(self, tree: exp.Query) -> str | None:
        sources = self.sources_in(tree)
        if len(sources) == 1 and None not in sources:
            return self.rules[next(iter(sources))].refusal(tree)  # type: ignore[index]
        return None

    # ---- classification ----------------------------------------------------------------
    def table_source(self, table: exp.Table) -> str | None:
        return table.catalog or None if table.catalog in self.rules else None

    def sources_in(self, node: exp.Expression) -> set[str | None]:
        """Sources of every table under ``node``; None stands for anything not on a source."""
        found: set[str | None] = set()
        for table in node.find_all(exp.Table):
            if table.catalog in self.rules:
                found.add(table.catalog)
            elif table.name in self._ctes and not table.db:
                body = self._ctes[table.name]
                found |= self.sources_in(body) if body is not node else {None}
            else:
                found.add(None)
        return found

    def pushable_source(self, query: exp.Expression) -> str | None:
        """The one source that can run ``query`` whole, or None."""
        sources = self.sources_in(query)
        if len(sources) != 1 or None in sources:
            return None
        if free_aliases(query):
            return None
        source = next(iter(sources))
        assert source is not None
        if self.rules[source].refusal(self._inline_ctes(query.copy())) is not None:
            return None
        return source

    # ---- recursion ---------------------------------------------------------------------
    def split_query(self, query: exp.Query) -> exp.Query:
        """Return the residual replacement of ``query``; registers fragments on the way."""
        if isinstance(query, exp.Subquery):
            query.set("this", self.split_query(query.this))
            return query
        source = self.pushable_source(query)
        if source is not None:
            frag = self._fragment_from_query(query, source)
            return exp.select("*").from_(exp.to_table(frag.id))
        if isinstance(query, exp.SetOperation):
            query.set("this", self.split_query(query.this))
            query.set("expression", self.split_query(query.expression))
            return query
        if isinstance(query, exp.Select):
            self._split_select(query)
            return query
        raise UnsupportedError(f"cannot split a {type(query).__name__} across sources")

    def _split_select(self, select: exp.Select) -> None:
        items = self._items(select)
        joins = select.args.get("joins") or []
        k = next((i for i, j in enumerate(joins) if not _is_inner(j)), len(joins))
        left = joins[k:]
        if all(j.side.upper() == "LEFT" for j in left):
            # Inner joins, then LEFT JOINs (as decorrelated subqueries come): the inner part
            # is grouped and bound as usual, each LEFT-joined table is a fragment of its own.
            by_alias = {it.alias: it for it in items}
            outer = items[k + 1 :]
            pushed = [
                self._push_left_on(j, it, by_alias) for j, it in zip(left, outer, strict=True)
            ]
            frags, renames = self._split_inner(select, items[: k + 1], left)
            for join, it, conjuncts in zip(left, outer, pushed, strict=True):
                frag = self._own_fragment(select, it, conjuncts)
                if join.args.get("on") is None:
                    continue
                if frag is not None and self._semi_join_top_k(
                    select, join, it, frag, frags, renames
                ):
                    continue
                # The null-extended side only ever matches keys of the preserved side, so it
                # may take their keys (never the other way round), also through a subquery
                # left in the residual that passes a fragment's column on (see _passed_keys).
                on = list(_conjuncts(join.args["on"]))
                if frag is not None:
                    self._plan_bind_joins(on, {**frags, it.alias: frag}, renames, {frag.id})
                elif passed := self._passed_keys(it):
                    takers = {origin[0].id for origin in passed.values()}
                    self._plan_bind_joins(on, frags, renames, takers, passed)
        else:
            self._split_outer(select, items)
        self._split_nested_queries(select)
        self._split_ctes(select)

    def _items(self, select: exp.Select) -> list[_Item]:
        nodes = []
        if select.args.get("from_"):
            nodes.append(select.args["from_"].this)
        nodes += [j.this for j in select.args.get("joins") or []]
        items = []
        for node in nodes:
            alias = node.alias_or_name
            if isinstance(node, exp.Table) and node.catalog in self.rules:
                info = self.tables[(node.catalog, node.db, node.name)]
                items.append(_Item(alias, node.catalog, node, info.rows))
            elif isinstance(node, exp.Table) and node.name in self._ctes and not node.db:
                body = self._ctes[node.name]
                source = self.pushable_source(body)
                inlined = exp.Subquery(
                    this=body.copy(), alias=exp.TableAlias(this=exp.to_identifier(alias))
                )
                items.append(
                    _Item(alias, source, inlined if source else node, self._estimate_query(body))
                )
            elif isinstance(node, exp.Subquery):
                source = self.pushable_source(node.this)
                if source is None:
                    node.set("this", self.split_query(node.this))
                items.append(_Item(alias, source, node, self._estimate_query(node.this)))
            else:
                items.append(_Item(alias, None, node))
        return items

    # ---- inner joins: group tables of one source by the conjuncts joining them ---------
    def _split_inner(
        self, select: exp.Select, items: list[_Item], left: list[exp.Join] | None = None
    ) -> tuple[dict[str, Fragment], dict[tuple[str, str], tuple[str, str]]]:
        """``items`` inner joined (WHERE and inner ON conjuncts); ``left``: LEFT JOINs that
        follow them, kept in place after the fragments. Returns the fragment of each alias
        and the residual's column renames."""
        left = left or []
        by_alias = {it.alias: it for it in items}
        conjuncts = list(_conjuncts(select.args.get("where")))
        for join in select.args.get("joins") or []:
            if not any(join is j for j in left):
                conjuncts += _conjuncts(join.args.get("on"))
        pushed: dict[int, str] = {}  # conjunct index -> source
        parent = {it.alias: it.alias for it in items}

        def find(a: str) -> str:
            while parent[a] != a:
                a = parent[a]
            return a

        targets = {
            i: t for i, c in enumerate(conjuncts) if (t := self._conjunct_source(c, by_alias))
        }
        # Tables of one source are grouped by their join conjuncts only: key joins first, then
        # many-to-many joins unless they would multiply rows inside the source (see _join_refusal).
        # Any other conjunct over several tables is pushed only where they ended up together,
        # so an OR across two otherwise separate groups never turns them into a cross product.
        edges: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i in targets:
            pair = _join_pair(conjuncts[i])
            if pair is not None:
                edges[pair].append(i)
        ordered = sorted(edges.items(), key=lambda e: not self._key_join(e, conjuncts, by_alias))
        for (a, b), idx in ordered:
            if find(a) == find(b):
                continue
            refusal = self._join_refusal(a, b, idx, conjuncts, by_alias)
            if refusal is None:
                parent[find(a)] = find(b)
            else:
                self.notes.append(refusal)
        for i, target in targets.items():
            aliases = free_aliases(conjuncts[i]) & by_alias.keys()
            if len({find(a) for a in aliases}) == 1:
                pushed[i] = target

        groups: dict[str, list[_Item]] = defaultdict(list)
        for it in items:
            if it.source is not None:
                groups[find(it.alias)].append(it)
        if not groups:
            return {}, {}
        residual_conj = [c for i, c in enumerate(conjuncts) if i not in pushed]
        comp_conj: dict[str, list[exp.Expression]] = defaultdict(list)
        for i in pushed:
            comp_conj[find(next(iter(free_aliases(conjuncts[i]) & by_alias.keys())))].append(
                conjuncts[i]
            )

        # Detach pushed conjuncts and rebuild FROM as fragments cross joined, WHERE = the rest.
        select.set("where", None)
        select.set("joins", left or None)
        frags: dict[str, Fragment] = {}
        renames: dict[tuple[str, str], tuple[str, str]] = {}
        new_from: list[exp.Expression] = []
        for root, members in groups.items():
            frag, ren = self._fragment_from_items(
                select, members, comp_conj[root], residual_conj, hand_back=True
            )
            for it in members:
                frags[it.alias] = frag
            renames.update(ren)
            if ren:
                new_from.append(exp.to_table(frag.id).as_(frag.id))
            else:
                new_from.append(exp.to_table(frag.id).as_(members[0].alias))
        for it in items:
            if it.source is None:
                new_from.append(it.node)
        select.set("from_", exp.From(this=new_from[0]))
        cross = [exp.Join(this=n, kind="CROSS") for n in new_from[1:]]
        select.set("joins", cross + left or None)
        if residual_conj:
            select.set("where", exp.Where(this=exp.and_(*residual_conj, copy=False)))
        if renames:
            rename_columns(select, renames)
        self._plan_bind_joins(residual_conj, frags, renames)
        self._plan_top_k(select, residual_conj, frags, renames)
        return frags, renames

    # ---- join shapes: keys and many-to-many joins between two tables of one source ---
    def _join_columns(
        self, pair: tuple[str, str], idx: list[int], conjuncts: list[exp.Expression]
    ) -> tuple[set[str], set[str]]:
        """Columns of each side of ``pair`` equated by the conjuncts ``idx`` (plain columns)."""
        cols: tuple[set[str], set[str]] = (set(), set())
        equalities = []
        for i in idx:
            c = conjuncts[i]
            if isinstance(c, exp.Or):  # the same join in every branch
                for branch in c.flatten():
                    equalities += [e for e in _conjuncts(_unparen(branch)) if _join_pair(e) == pair]
            else:
                equalities.append(c)
        for c in equalities:
            if not isinstance(c, exp.EQ):
                continue
            for side in (c.this, c.expression):
                if isinstance(side, exp.Column) and side.table in pair:
                    cols[pair.index(side.table)].add(side.name)
        return cols

    def _unique_on(self, item: _Item, columns: set[str]) -> bool | None:
        """Whether ``columns`` cover a unique key of the item's table; None: not known."""
        if not isinstance(item.node, exp.Table):
            return None
        info = self.tables.get((item.node.catalog, item.node.db, item.node.name))
        if info is None or info.unique_keys is None:
            return None
        lowered = {c.lower() for c in columns}
        return any({k.lower() for k in key} <= lowered for key in info.unique_keys)

    def _key_join(
        self,
        edge: tuple[tuple[str, str], list[int]],
        conjuncts: list[exp.Expression],
        by_alias: dict[str, _Item],
    ) -> bool:
        pair, idx = edge
        cols = self._join_columns(pair, idx, conjuncts)
        return any(
            self._unique_on(by_alias[a], c) is not False for a, c in zip(pair, cols, strict=True)
        )

    def _join_refusal(
        self,
        a: str,
        b: str,
        idx: list[int],
        conjuncts: list[exp.Expression],
        by_alias: dict[str, _Item],
    ) -> str | None:
        """Why tables ``a`` and ``b`` (one source) should not be joined inside the source.

        A join on columns that are unique on neither side (known from the catalog's keys)
        is many-to-many: each key value pairs every row of one side with every row of the
        other, so the source would send more rows than the two sides hold. Those run in
        the residual instead (and may still be bound, see _plan_bind_joins).
        """
        cols = self._join_columns((a, b), idx, conjuncts)
        unique = [self._unique_on(by_alias[x], c) for x, c in zip((a, b), cols, strict=True)]
        if unique != [False, False]:
            return None
        shown = " AND ".join(conjuncts[i].sql(dialect=Federated) for i in idx)
        return (
            f"join {shown} not run inside source {by_alias[a].source}: many-to-many "
            f"(unique on neither side), it would multiply rows; joined in the residual"
        )

    def _conjunct_source(self, c: exp.Expression, by_alias: dict[str, _Item]) -> str | None:
        aliases = free_aliases(c)
        if not aliases or not aliases <= by_alias.keys():
            return None
        sources = {by_alias[a].source for a in aliases}
        nested = self.sources_in(c)
        if len(sources) != 1 or None in sources or not nested <= sources:
            return None
        source = next(iter(sources))
        assert source is not None
        # judged as a WHERE: a rule set may take a comparison yet not a bare column as a filter
        where = exp.Where(this=self._inline_ctes(c.copy()))
        if self.rules[source].refusal(where) is not None:
            return None
        return source

    # ---- vector top-k: ORDER BY <distance> LIMIT k into the fragment holding the vectors --
    def _plan_top_k(
        self,
        select: exp.Select,
        residual_conj: list[exp.Expression],
        frags: dict[str, Fragment],
        renames: dict[tuple[str, str], tuple[str, str]],
    ) -> None:
        """Push the query's ORDER BY <vector distance> LIMIT k into the fragment whose source
        can search vectors (capability ``vector_search``), as pre- or post-filter (TopK)."""
        derived = isinstance(select.parent, exp.Subquery) and isinstance(
            select.parent.parent, (exp.From, exp.Join)
        )
        if (select.parent is not None and not (derived and not free_aliases(select))) or any(
            select.args.get(a) for a in ("group", "having", "distinct", "qualify")
        ):
            return
        if any(isinstance(p.unalias(), exp.AggFunc) for p in select.selects):
            return
        order, limit = select.args.get("order"), select.args.get("limit")
        if order is None or limit is None or not order.expressions:
            return
        if not isinstance(limit.expression, exp.Literal) or not limit.expression.is_int:
            return
        offset = select.args.get("offset")
        if offset is not None and not isinstance(offset.expression, exp.Literal):
            return
        k = int(limit.expression.this) + (int(offset.expression.this) if offset else 0)
        ordered = order.expressions[0]
        key = ordered.this
        if isinstance(key, exp.Column) and not key.table:
            for proj in select.selects:
                if isinstance(proj, exp.Alias) and proj.alias == key.name:
                    key = proj.this
        if not isinstance(key, VectorDistance):
            return
        columns = [c for c in (key.this, key.expression) if isinstance(c, exp.Column)]
        if len(columns) != 1 or len(list(key.find_all(exp.Column))) != 1:
            return
        reverse = {v: k_ for k_, v in renames.items()}
        origin = self._origin(columns[0], frags, reverse)
        if origin is None:
            return
        frag, alias, source_col, _ = origin
        rules = self.rules[frag.source]
        if not rules.can("vector_search") or frag.as_written:
            return
        local = key.copy()
        for col in local.find_all(exp.Column):
            col.replace(exp.column(source_col, table=alias, quoted=True))
        pushed = frag.query.copy()
        new_ordered = ordered.copy()
        new_ordered.set("this", local)
        pushed.set("order", exp.Order(expressions=[new_ordered]))
        pushed.set("limit", exp.Limit(expression=exp.Literal.number(k)))
        refusal = rules.refusal(pushed)
        if refusal is not None:
            self.notes.append(f"vector top-k not pushed into {frag.id}: {refusal}")
            return
        for other in self.fragments:  # bound to keys that change as the top-k grows
            if other.bind is not None and other.bind.producer == frag.id:
                other.bind = None
                other.notes.append(f"not bound to {frag.id}: its vector top-k may grow")
        if self.settings.vector_filter in ("pre", "auto") and frag.bind is None:
            self._force_bind(residual_conj, frags, reverse, frag)  # auto decides at run time
        mode, why = self._filter_choice(frag)
        frag.top_k = TopK(
            k=k,
            mode=mode,
            factor=self.settings.post_factor,
            threshold=self.settings.prefilter_selectivity,
            base_rows=self._base_rows(frag),
            reason=why,
            unpushed=frag.query,
            ties=len(order.expressions) > 1,
            scope=select if derived else None,
        )
        frag.query = pushed
        self._take_distance(select, key, columns[0], frag, local)
        frag.params = _params(frag.query)
        frag.estimated_rows = k
        then = ", ".join(o.sql(dialect=Federated) for o in order.expressions[1:])
        ties = (
            f"; ties broken by {then} in the residual over every candidate nearer than the "
            "farthest fetched (grown until k such rows survive)"
            if then
            else ""
        )
        frag.notes.append(
            f"vector top-k: ORDER BY {local.sql(dialect=Federated)} LIMIT {k} pushed down; "
            f"pre-filter binds the other side's keys into the search, post-filter over-fetches "
            f"k x factor and grows x{frag.top_k.growth} until {k} rows survive; {why}{ties}"
        )

    def _filter_choice(self, frag: Fragment) -> tuple[str, str]:
        """Pre- or post-filter for a top-k fragment (``auto``: decided at run time), and why."""
        mode = self.settings.vector_filter
        if frag.bind is None:
            return "post", "no key of another source to bind into the search"
        base = self._base_rows(frag)
        threshold = self.settings.prefilter_selectivity
        producer = self.fragment(frag.bind.producer)
        sel = producer.estimated_rows / base if producer.estimated_rows and base else None
        shown = f"{sel:.1%}" if sel is not None else "unknown"
        if mode != "auto":
            return mode, f"forced by planner setting vector_filter={mode} (selectivity {shown})"
        planned = "pre" if sel is None or sel <= threshold else "post"
        return mode, (
            f"estimated selectivity {shown} of {base or 0:,} rows "
            f"({'<=' if planned == 'pre' else '>'} {threshold:.0%}): {planned}-filter "
            f"planned; decided at run time from {producer.id}'s actual key count"
        )

    def _semi_join_top_k(
        self,
        select: exp.Select,
        join: exp.Join,
        it: _Item,
        lfrag: Fragment,
        frags: dict[str, Fragment],
        renames: dict[tuple[str, str], tuple[str, str]],
    ) -> bool:
        """A top-k fragment with nothing to bind, LEFT JOINed to ``lfrag`` on an equality
        with a column the WHERE requires (``NOT x IS NULL``: an ``IN (subquery)`` after
        decorrelation) is semi-joined to it: the search takes ``lfrag``'s keys (the rows that
        drops the WHERE drops anyway), pre- or post-filter as for an inner join. True when so."""
        if self.settings.vector_filter not in ("pre", "auto"):
            return False
        required = {
            (c.this.this.table, c.this.this.name)
            for c in _conjuncts(select.args.get("where"))
            if isinstance(c, exp.Not)
            and isinstance(c.this, exp.Is)
            and isinstance(c.this.this, exp.Column)
            and isinstance(c.this.expression, exp.Null)
        }
        reverse = {v: k for k, v in renames.items()}
        for c in _column_equalities(_conjuncts(join.args.get("on"))):
            mine, theirs = (c.this, c.expression)
            if mine.table != it.alias:
                mine, theirs = theirs, mine
            origin = self._origin(theirs, frags, reverse)
            if (mine.table, mine.name) not in required or origin is None:
                continue
            consumer = origin[0]
            tk = consumer.top_k
            if tk is None or consumer.bind is not None or self._depends_on(lfrag, consumer):
                continue
            self._bind((lfrag, it.alias, mine.name, mine.name), origin, forced=True)
            mode, why = self._filter_choice(consumer)
            consumer.notes = [n.replace(tk.reason, why) for n in consumer.notes]
            tk.mode, tk.reason = mode, why
            return True
        return False

    def _take_distance(
        self,
        select: exp.Select,
        key: VectorDistance,
        vector: exp.Column,
        frag: Fragment,
        local: VectorDistance,
    ) -> None:
        """The residual takes the distance the search returns (in the operator's terms) as
        a fragment column instead of recomputing it, and the vectors are no longer shipped
        unless the residual still reads them."""
        tk = frag.top_k
        assert tk is not None
        name = "_distance"
        while name in frag.columns:
            name += "_"
        table, column = vector.table, vector.name
        for node in [n for n in select.find_all(VectorDistance) if n == key]:
            node.replace(exp.column(name, table=table))
        frag.query.select(local.copy().as_(name, quoted=True), copy=False)
        frag.columns.append(name)
        frag.types[name] = pa.float64()
        operands = [o for o in (local.this, local.expression) if not isinstance(o, exp.Column)]
        tk.distance, tk.metric, tk.vector = name, local.metric, column
        tk.query_vector = operands[0] if operands else None
        if any(c.table == table and c.name == column for c in select.find_all(exp.Column)):
            return
        frag.query.set("expressions", [p for p in frag.query.selects if p.alias_or_name != column])
        frag.columns.remove(column)
        frag.types.pop(column, None)

    def _force_bind(
        self,
        residual_conj: list[exp.Expression],
        frags: dict[str, Fragment],
        reverse: dict[tuple[str, str], tuple[str, str]],
        consumer: Fragment,
    ) -> None:
        """Bind ``consumer`` to the other side of an equi-join whatever the estimates say."""
        for c in _column_equalities(residual_conj):
            a, b = (self._origin(col, frags, reverse) for col in (c.this, c.expression))
            if a is None or b is None or a[0] is b[0]:
                continue
            producer, cons = (a, b) if b[0] is consumer else (b, a)
            if cons[0] is consumer and not self._depends_on(producer[0], consumer):
                self._bind(producer, cons, forced=True)
                return

    def _base_rows(self, frag: Fragment) -> int | None:
        sizes = [
            info.rows
            for t in frag.query.find_all(exp.Table)
            if (info := self.tables.get((t.catalog, t.db, t.name))) is not None and info.rows
        ]
        return max(sizes) if sizes else None

    # ---- outer joins: each table its own fragment; push only null-safe filters ---------
    def _split_outer(self, select: exp.Select, items: list[_Item]) -> None:
        by_alias = {it.alias: it for it in items}
        nullable: set[str] = set()
        seen: list[str] = [items[0].alias] if items else []
        for join, it in zip(select.args.get("joins") or [], items[1:], strict=False):
            side = join.side.upper()
            if side in ("LEFT", "FULL"):
                nullable.add(it.alias)
            if side in ("RIGHT", "FULL"):
                nullable.update(seen)
            seen.append(it.alias)
        pushed: dict[str, list[exp.Expression]] = defaultdict(list)

        where = list(_conjuncts(select.args.get("where")))
        kept_where = []
        for c in where:
            alias = _single_alias(c, by_alias)
            if alias and alias not in nullable and self._conjunct_source(c, by_alias):
                pushed[alias].append(c)
            else:
                kept_where.append(c)
        select.set(
            "where", exp.Where(this=exp.and_(*kept_where, copy=False)) if kept_where else None
        )
        for join, it in zip(select.args.get("joins") or [], items[1:], strict=False):
            if join.side.upper() == "LEFT":
                pushed[it.alias] += self._push_left_on(join, it, by_alias)
        for it in items:
            self._own_fragment(select, it, pushed[it.alias])

    def _push_left_on(
        self, join: exp.Join, it: _Item, by_alias: dict[str, _Item]
    ) -> list[exp.Expression]:
        """Take from a LEFT JOIN's ON the conjuncts on its own table alone that its source
        runs (filtering that side before the join is the same); they are returned."""
        if not join.args.get("on"):
            return []
        pushed, kept_on = [], []
        for c in _conjuncts(join.args["on"]):
            if _single_alias(c, by_alias) == it.alias and self._conjunct_source(c, by_alias):
                pushed.append(c)
            else:
                kept_on.append(c)
        join.set("on", exp.and_(*kept_on, copy=False) if kept_on else exp.true())
        return pushed

    def _passed_keys(self, it: _Item) -> dict[tuple[str, str], tuple[Fragment, str, str, str]]:
        """Output columns of a residual subquery ``it`` that are a fragment's column passed on
        unchanged, by (alias, output name): restricting that fragment to some key values
        then removes exactly the subquery's rows with other key values. So only a SELECT
        over one fragment, without joins, limit or window functions, grouped (if at all) by
        that column."""
        query = it.node.this if isinstance(it.node, exp.Subquery) else None
        if not isinstance(query, exp.Select) or it.source is not None:
            return {}
        if any(query.args.get(k) for k in ("joins", "limit", "offset")) or query.find(exp.Window):
            return {}
        table = query.args["from_"].this if query.args.get("from_") else None
        ids = {f.id for f in self.fragments}
        if not isinstance(table, exp.Table) or table.db or table.name not in ids:
            return {}
        frag = self.fragment(table.name)
        group = query.args.get("group")
        found = {}
        for proj in query.selects:
            col = proj.unalias()
            if not isinstance(col, exp.Column) or col.table != table.alias_or_name:
                continue
            if group is not None and not any(g == col for g in group.expressions):
                continue
            origin = _output_origin(frag, col.name)
            if origin is not None:
                found[(it.alias, proj.alias_or_name)] = origin
        return found

    def _own_fragment(
        self, select: exp.Select, it: _Item, conjuncts: list[exp.Expression]
    ) -> Fragment | None:
        """``it`` (when on a source) as a fragment of its own with ``conjuncts`` pushed."""
        if it.source is None:
            return None
        frag, _ = self._fragment_from_items(select, [it], conjuncts, [], rename=False)
        it.node.replace(exp.to_table(frag.id).as_(it.alias))
        return frag

    # ---- nested queries and CTEs left in the residual ----------------------------------
    def _split_nested_queries(self, select: exp.Select) -> None:
        nested = [
            q
            for q in _direct_queries(select)
            if not isinstance(q.parent, (exp.From, exp.Join, exp.CTE))
            and not (
                isinstance(q.parent, exp.Subquery)
                and isinstance(q.parent.parent, (exp.From, exp.Join))
            )
        ]
        for q in nested:
            replacement = self.split_query(q)
            if replacement is not q:
                q.replace(replacement)

    def _split_ctes(self, select: exp.Select) -> None:
        with_ = select.args.get("with_")
        if not with_:
            return
        referenced = {t.name for t in select.find_all(exp.Table) if not t.db}
        kept = []
        for cte in with_.expressions:
            if cte.alias_or_name not in referenced:
                continue
            cte.set("this", self.split_query(cte.this))
            kept.append(cte)
        select.set("with_", exp.With(expressions=kept) if kept else None)

    # ---- fragments ---------------------------------------------------------------------
    def _new_id(self) -> str:
        return f"f{next(self._ids)}"

    def _fragment_from_query(self, query: exp.Query, source: str) -> Fragment:
        body = self._inline_ctes(query.copy())
        columns = [s.alias_or_name for s in body.selects] if isinstance(body, exp.Query) else []
        frag = Fragment(
            id=self._new_id(),
            source=source,
            query=body,
            columns=columns,
            estimated_rows=self._estimate_query(query),
            params=_params(body),
            types=self._output_types(body),
        )
        self.fragments.append(frag)
        return frag

    def _fragment_from_items(
        self,
        select: exp.Select,
        members: list[_Item],
        conjuncts: list[exp.Expression],
        residual_conj: list[exp.Expression],
        rename: bool | None = None,
        hand_back: bool = False,
    ) -> tuple[Fragment, dict[tuple[str, str], tuple[str, str]]]:
        """One fragment for ``members`` (all on one source); columns the residual still needs.

        ``hand_back``: ``conjuncts`` the fragment cannot take may be appended to
        ``residual_conj`` (the caller applies them in the residual)."""
        source = members[0].source
        assert source is not None
        aliases = {m.alias for m in members}
        needed: dict[str, set[str]] = defaultdict(set)
        collect_columns(select, aliases, needed)
        for c in residual_conj:
            collect_columns(c, aliases, needed)
        fid = self._new_id()
        rename = len(members) > 1 if rename is None else rename
        outputs: list[tuple[str, str, str]] = []  # (alias, column, output name)
        taken: set[str] = set()
        for m in members:
            for col in sorted(needed.get(m.alias, ())):
                name = col if col not in taken else f"{m.alias}_{col}"
                while name in taken:
                    name += "_"
                taken.add(name)
                outputs.append((m.alias, col, name))
        projections: list[exp.Expression] = [
            exp.column(col, table=alias, quoted=True).as_(name, quoted=True)
            for alias, col, name in outputs
        ] or [exp.Literal.number(1).as_("_one")]
        query = exp.select(*projections).from_(members[0].node.copy())
        for m in members[1:]:
            query = query.join(m.node.copy(), join_type="CROSS")
        if conjuncts:
            query = query.where(exp.and_(*(c.copy() for c in conjuncts)))
        query = self._inline_ctes(query)
        as_written = self._derived_whole(members, query, conjuncts if not hand_back else [], rename)
        if as_written is not None:
            query, outputs = as_written
            residual_conj.extend(conjuncts)  # filters on its rows, after its LIMIT
            conjuncts = []
        frag = Fragment(
            id=fid,
            source=source,
            query=query,
            columns=[o[2] for o in outputs] or ["_one"],
            estimated_rows=self._estimate_items(members, conjuncts),
            params=_params(query),
            types=self._output_types(query),
            as_written=as_written is not None,
        )
        self.fragments.append(frag)
        renames = {(a, c): (fid, n) for a, c, n in outputs} if rename else {}
        return frag, renames

    def _derived_whole(
        self,
        members: list[_Item],
        wrapped: exp.Query,
        conjuncts: list[exp.Expression],
        rename: bool,
    ) -> tuple[exp.Query, list[tuple[str, str, str]]] | None:
        """A derived table its source runs whole but not wrapped in an outer SELECT (Milvus
        takes one collection, so ``SELECT near.id FROM (SELECT ... ORDER BY d LIMIT 10) AS
        near`` is refused while the inner vector search is not; MongoDB runs the grouped
        subquery a decorrelated IN becomes, not a SELECT around it): the fragment is the inner
        query as it is (``conjuncts`` from outside, if any, stay in the residual). Keys bound
        into it, or another ORDER BY, could change which rows a LIMIT keeps, so such a
        fragment takes neither (``Fragment.as_written``)."""
        node = members[0].node
        if len(members) != 1 or rename or conjuncts or not isinstance(node, exp.Subquery):
            return None
        rules = self.rules[members[0].source]  # type: ignore[index]
        inner = node.this
        if not isinstance(inner, exp.Select) or rules.refusal(wrapped) is None:
            return None
        inner = self._inline_ctes(node.this.copy())
        if rules.refusal(inner) is not None:
            return None
        alias = members[0].alias
        return inner, [(alias, s.alias_or_name, s.alias_or_name) for s in inner.selects]

    def _output_types(self, query: exp.Expression) -> dict[str, pa.DataType]:
        """Exact Arrow types of outputs that are plain base-table columns or simple aggregates."""
        if not isinstance(query, exp.Select):
            return {}
        tables = {}
        for t in query.find_all(exp.Table):
            info = self.tables.get((t.catalog, t.db, t.name))
            if info is not None and t.parent_select is query:
                tables[t.alias_or_name] = info
        out: dict[str, pa.DataType] = {}
        for proj in query.selects:
            node = proj.unalias()
            agg = None
            if isinstance(node, (exp.Sum, exp.Min, exp.Max)) and isinstance(node.this, exp.Column):
                agg, node = type(node), node.this
            elif isinstance(node, exp.Count):
                out[proj.alias_or_name] = pa.int64()
                continue
            elif (temporal := _temporal_coalesce(node, tables)) is not None:
                out[proj.alias_or_name] = temporal
                continue
            if not isinstance(node, exp.Column) or node.table not in tables:
                continue
            t = field_type(tables[node.table].schema, node.name)
            if t is None:
                continue
            if agg is exp.Sum:
                if pa.types.is_decimal(t):
                    t = pa.decimal128(38, t.scale)
                elif pa.types.is_integer(t):
                    continue  # PostgreSQL sums bigint as numeric; let the driver say
            out[proj.alias_or_name] = t
        return out

    def _inline_ctes(self, query: exp.Expression) -> exp.Expression:
        """Replace references to outer CTEs by their bodies, so a fragment stands on its own."""
        own = {c.alias_or_name for c in query.find_all(exp.CTE)}
        for _ in range(8):
            refs = [
                t
                for t in query.find_all(exp.Table)
                if not t.db and t.name in self._ctes and t.name not in own
            ]
            if not refs:
                break
            for t in refs:
                body = self._ctes[t.name].copy()
                t.replace(
                    exp.Subquery(
                        this=body, alias=exp.TableAlias(this=exp.to_identifier(t.alias_or_name))
                    )
                )
        return query

    # ---- estimates ---------------------------------------------------------------------
    def _estimate_items(self, members: list[_Item], conjuncts: list[exp.Expression]) -> int | None:
        sizes = [m.rows for m in members if m.rows is not None]
        if not sizes:
            return None
        rows = float(max(sizes))
        for c in conjuncts:
            if len(free_aliases(c)) == 1:
                rows *= _selectivity(c)
        return max(1, int(rows))

    def _estimate_query(self, query: exp.Expression) -> int | None:
        sizes = []
        for t in query.find_all(exp.Table):
            info = self.tables.get((t.catalog, t.db, t.name))
            if info is not None and info.rows is not None:
                sizes.append(info.rows)
        if not sizes:
            return None
        rows = float(max(sizes))
        if isinstance(query, exp.Select):
            where = query.args.get("where")
            for c in _conjuncts(where):
                rows *= _selectivity(c)
            if query.args.get("group"):
                rows = max(1.0, rows / 10)
            elif any(isinstance(s.unalias(), exp.AggFunc) for s in query.selects):
                rows = 1
            limit = query.args.get("limit")
            if limit is not None and isinstance(limit.expression, exp.Literal):
                rows = min(rows, float(limit.expression.this))
        return max(1, int(rows))

    # ---- bind joins --------------------------------------------------------------------
    def _plan_bind_joins(
        self,
        residual_conj: list[exp.Expression],
        frags: dict[str, Fragment],
        renames: dict[tuple[str, str], tuple[str, str]],
        consumers: set[str] | None = None,
        passed: dict[tuple[str, str], tuple[Fragment, str, str, str]] | None = None,
    ) -> None:
        """Bind joins for the equi-joins among ``residual_conj`` (``consumers``: the only
        fragment ids that may take keys, None: any; ``passed``: origins of subquery columns,
        see :meth:`_passed_keys`)."""
        reverse = {v: k for k, v in renames.items()}
        passed = passed or {}
        candidates = []
        for c in _column_equalities(residual_conj):
            left, right = (
                passed.get((col.table, col.name)) or self._origin(col, frags, reverse)
                for col in (c.this, c.expression)
            )
            if left is None or right is None or left[0] is right[0]:
                continue
            self._check_key_types(left, right)
            candidates.append((left, right))
        unbound = []
        for left, right in candidates:
            refusals = []
            for producer, consumer in ((left, right), (right, left)):
                if consumers is not None and consumer[0].id not in consumers:
                    continue  # the preserved side of a LEFT JOIN keeps all its rows
                reason = self._bind_refusal(producer[0], consumer[0]) or self._filters_nothing(
                    producer
                )
                if reason is None:
                    self._bind(producer, consumer)
                    break
                refusals.append(f"{producer[0].id} -> {consumer[0].id}: {reason}")
            else:
                unbound.append((left, right, refusals))
        for left, right, refusals in unbound:  # after every plain bind has taken its consumer
            pairs = sorted(
                ((left, right), (right, left)), key=lambda pc: pc[0][0].estimated_rows or 0
            )
            for producer, consumer in pairs:
                if consumers is not None and consumer[0].id not in consumers:
                    continue
                reason = self._plan_semi_join(producer, consumer)
                if reason is None:
                    break
                refusals.append(f"semi-join {producer[0].id} -> {consumer[0].id}: {reason}")
            else:
                self.notes.append(
                    f"join {left[0].id}.{left[3]} = {right[0].id}.{right[3]} not bound ("
                    + "; ".join(refusals)
                    + ")"
                )

    def _origin(
        self,
        col: exp.Column,
        frags: dict[str, Fragment],
        reverse: dict[tuple[str, str], tuple[str, str]],
    ) -> tuple[Fragment, str, str, str] | None:
        """(fragment, table alias, source column, fragment output name) for a residual column."""
        table, name = col.table, col.name
        if (table, name) in reverse:
            alias, source_col = reverse[(table, name)]
            return frags[alias], alias, source_col, name
        if table in frags:
            return frags[table], table, name, name
        return None

    def _bind_refusal(self, producer: Fragment, consumer: Fragment) -> str | None:
        """Why ``consumer`` should not take ``producer``'s keys (None: bind it).

        Bound when the producer is small (<= bind_max_keys) and the consumer at least
        bind_ratio times larger, or, adaptively, when the producer is larger (up to
        bind_large_max_keys) but the consumer so much larger that shipping the keys is cheaper
        than shipping its rows. The executor re-checks the actual key count at run time.
        """
        s = self.settings
        if consumer.bind is not None:
            return f"{consumer.id} already bound to {consumer.bind.producer}"
        if not self.rules[consumer.source].can("bind_join"):
            return f"source {consumer.source} takes no bind joins"
        if consumer.as_written:
            return f"{consumer.id} is a derived table's LIMIT query as written"
        if producer.top_k is not None:
            return f"{producer.id}'s keys change as its vector top-k grows"
        p, c = producer.estimated_rows, consumer.estimated_rows
        if p is None or c is None:
            return "no row estimate"
        limit = self._bind_key_limit(c)
        if p > limit:
            return f"{producer.id} estimated {p:,} rows > {limit:,} keys allowed"
        if c < s.bind_ratio * p:
            return f"{consumer.id} estimated {c:,} rows, not {s.bind_ratio:g}x {p:,}"
        if self._depends_on(producer, consumer):
            return "would make a cycle"
        return None

    def _filters_nothing(self, producer: tuple[Fragment, str, str, str]) -> str | None:
        """Why binding ``producer``'s keys would filter nothing: it keeps about every value of
        its table's unique key, so a foreign key on the other side matches them all (TPC-H
        Q9's unfiltered supplier). None: it may filter."""
        frag, alias, _, _ = producer
        rows = self._table_rows(frag, alias)
        p = frag.estimated_rows
        if rows is None or p is None or self._key_unique(producer) is not True:
            return None
        if p >= self.settings.bind_min_share_left * rows:
            return f"{frag.id} keeps about all {rows:,} keys of its table: nothing to filter"
        return None

    def _table_rows(self, frag: Fragment, alias: str) -> int | None:
        """The catalog's row count of the table ``alias`` names in ``frag``'s query."""
        for t in frag.query.find_all(exp.Table):
            if t.alias_or_name == alias and t.parent_select is frag.query:
                info = self.tables.get((t.catalog, t.db, t.name))
                return info.rows if info is not None and info.rows else None
        return None

    def _bind_key_limit(self, consumer_rows: int) -> int:
        """Most keys worth binding into a consumer of this estimated size."""
        s = self.settings
        adaptive = int(consumer_rows / (s.bind_ratio * s.bind_large_ratio))
        return max(s.bind_max_keys, min(s.bind_large_max_keys, adaptive))

    def _depends_on(self, frag: Fragment, other: Fragment) -> bool:
        while frag.bind is not None:
            if frag.bind.producer == other.id:
                return True
            frag = self.fragment(frag.bind.producer)
        return False

    def _bind(
        self,
        producer: tuple[Fragment, str, str, str],
        consumer: tuple[Fragment, str, str, str],
        forced: bool = False,
    ) -> None:
        pfrag, _, _, pname = producer
        cfrag, calias, ccol, cname = consumer
        p, c = pfrag.estimated_rows, cfrag.estimated_rows
        limit = self._bind_key_limit(c) if c is not None else None
        if forced or p is None or c is None or limit is None:
            reason = "bound: the vector search needs the other side's keys"
        else:
            reason = (
                f"bound: {pfrag.id} estimated {p:,} rows <= {limit:,} keys allowed"
                + (" (adaptive: large consumer)" if limit > self.settings.bind_max_keys else "")
                + f", {cfrag.id} estimated {c:,} rows >= {self.settings.bind_ratio:g}x"
                + "; re-checked at run time against the observed distinct keys"
            )
        cfrag.bind = BindJoin(
            producer=pfrag.id,
            producer_column=pname,
            key=exp.column(ccol, table=calias, quoted=True),
            key_output=cname,
            reason=reason,
            max_keys=None if forced else limit,
            consumer_rows=None if forced else c,
            estimated_keys=p,
        )
        self._narrow_estimate(producer, cfrag)

    def _narrow_estimate(self, producer: tuple[Fragment, str, str, str], cfrag: Fragment) -> None:
        """A bound consumer's estimate, when the producer's key is its table's unique key:
        the consumer keeps the share of rows whose key the producer kept (a foreign key)."""
        p, c = producer[0].estimated_rows, cfrag.estimated_rows
        base = self._base_rows(producer[0])
        if p is None or c is None or not base or self._key_unique(producer) is not True:
            return
        narrowed = max(1, int(c * min(1.0, p / base)))
        if narrowed < c:
            cfrag.estimated_rows = narrowed
            cfrag.notes.append(
                f"estimated {narrowed:,} rows once bound ({c:,} x {p:,}/{base:,} keys of "
                f"{producer[0].id}'s table)"
            )

    def _key_unique(self, origin: tuple[Fragment, str, str, str]) -> bool | None:
        """Whether a fragment's join key column is unique in its table; None: not known."""
        frag, alias, col, _ = origin
        for t in frag.query.find_all(exp.Table):
            if t.alias_or_name == alias and t.parent_select is frag.query:
                info = self.tables.get((t.catalog, t.db, t.name))
                if info is not None and info.unique_keys is not None:
                    return any(
                        tuple(k.lower() for k in key) == (col.lower(),) for key in info.unique_keys
                    )
        return None

    def _bind_at_run_time(
        self,
        producer: str,
        producer_column: str,
        consumer: tuple[Fragment, str, str, str],
        limit: int,
        reason: str,
        semi_join_of: str | None = None,
    ) -> None:
        """Bind ``consumer`` to ``producer``'s keys, bound only if the observed count pays."""
        cfrag, calias, ccol, cname = consumer
        cfrag.bind = BindJoin(
            producer=producer,
            producer_column=producer_column,
            key=exp.column(ccol, table=calias, quoted=True),
            key_output=cname,
            reason=reason,
            max_keys=limit,
            consumer_rows=cfrag.estimated_rows,
            estimated_keys=self.fragment(semi_join_of or producer).estimated_rows,
            min_ratio=self.settings.bind_ratio,
            semi_join_of=semi_join_of,
            race=self.settings.bind_race,
        )

    def _waits(self, producer: str) -> str:
        if self.settings.bind_race:
            return f"starts in full at once, races {producer}'s keys"
        return f"waits for {producer}'s keys"

    def fragment(self, fid: str) -> Fragment:
        return next(f for f in self.fragments if f.id == fid)

    def _plan_semi_join(
        self, producer: tuple[Fragment, str, str, str], consumer: tuple[Fragment, str, str, str]
    ) -> str | None:
        """Semi-join reduction for joins a plain bind refuses (the estimates are too close
        to be sure it pays) where the producer is selective: the consumer waits for the
        producer's keys and the executor binds them when the observed count pays
        (:meth:`BindJoin.decide`). When the key repeats in the producer's table, a second,
        cheap fragment fetches ``SELECT DISTINCT key`` of the producer's query and the
        consumer waits for that only (the full producer runs meanwhile); when it is unique,
        the consumer waits for the producer itself (:meth:`_bind_adaptive`).
        Returns why not, or None when planned.
        """
        s = self.settings
        pfrag, _, _, pname = producer
        cfrag = consumer[0]
        p, c = pfrag.estimated_rows, cfrag.estimated_rows
        if cfrag.bind is not None or pfrag.top_k is not None:
            return f"{cfrag.id} already bound"
        if not self.rules[cfrag.source].can("bind_join") or cfrag.as_written:
            return f"source {cfrag.source} takes no bind joins into {cfrag.id}"
        if p is None or c is None:
            return "no row estimate"
        base = self._base_rows(pfrag)
        limit = self._bind_key_limit(c)
        if p > limit:
            return f"{pfrag.id} estimated {p:,} keys > {limit:,} allowed"
        if c < s.semi_join_ratio * p:
            return f"{cfrag.id} estimated {c:,} rows, not {s.semi_join_ratio:g}x {p:,}"
        if not base or p > s.semi_join_selectivity * base:
            return f"{pfrag.id} not selective (estimated {p:,} of {base or 0:,} rows)"
        if self._depends_on(pfrag, cfrag):
            return "would make a cycle"
        sizes = (
            f"{pfrag.id} estimated {p:,} rows ({p / base:.1%} of {base:,}), {cfrag.id} "
            f"estimated {c:,}, not {s.bind_ratio:g}x"
        )
        if self._key_unique(producer) is not False:
            why = (
                f"adaptive: {sizes}; {cfrag.id} {self._waits(pfrag.id)} and binds them if "
                f"they number <= {min(limit, int(c / s.bind_ratio)):,}, else fetches in full"
            )
            self._bind_at_run_time(pfrag.id, pname, consumer, limit, why)
            return None
        if pfrag.bind is not None:
            return f"{pfrag.id} is bound itself (a keys-only copy would run unbound)"
        if c < s.semi_join_min_rows:
            return f"{cfrag.id} estimated {c:,} rows < semi_join_min_rows {s.semi_join_min_rows:,}"
        inner = exp.Subquery(this=pfrag.query.copy(), alias=exp.TableAlias(this=_ident("_k")))
        query = (
            exp.select(exp.column(pname, table="_k", quoted=True).as_(pname, quoted=True))
            .distinct()
            .from_(inner)
        )
        refusal = self.rules[pfrag.source].refusal(query)
        if refusal is not None:
            return f"keys-only query refused by {pfrag.source}: {refusal}"
        keys = Fragment(
            id=self._new_id(),
            source=pfrag.source,
            query=query,
            columns=[pname],
            estimated_rows=p,
            params=_params(query),
            types={pname: t} if (t := pfrag.types.get(pname)) is not None else {},
            notes=[f"semi-join reduction: distinct {pname} of {pfrag.id}, for {cfrag.id}"],
        )
        self.fragments.append(keys)
        why = (
            f"semi-join reduction: {sizes}; {pname} repeats in {pfrag.id}, so {keys.id} "
            f"fetches its distinct keys; {cfrag.id} {self._waits(keys.id)} and binds them if "
            f"they number <= {min(limit, int(c / s.bind_ratio)):,}, else fetches in full"
        )
        self._bind_at_run_time(keys.id, pname, consumer, limit, why, semi_join_of=pfrag.id)
        return None

    def _check_key_types(
        self, left: tuple[Fragment, str, str, str], right: tuple[Fragment, str, str, str]
    ) -> None:
        lt, rt = self._column_type(left), self._column_type(right)
        if lt is None or rt is None:
            return
        if _type_family(lt) != _type_family(rt):
            raise JoinKeyTypeError(
                f"join key types differ: {left[0].source}.{left[1]}.{left[2]} is {lt} but "
                f"{right[0].source}.{right[1]}.{right[2]} is {rt}; cast one side"
            )

    def _column_type(self, origin: tuple[Fragment, str, str, str]) -> pa.DataType | None:
        frag, alias, col, _ = origin
        for t in frag.query.find_all(exp.Table):
            if t.alias_or_name == alias:
                info = self.tables.get((t.catalog, t.db, t.name))
                if info is not None:
                    return field_type(info.schema, col)
        return None


# ---- tree helpers -------------------------------------------------------------------------
def _temporal_coalesce(node: exp.Expression, tables: dict) -> pa.DataType | None:
    """The date/timestamp type of ``COALESCE(column, …)`` over such a column: SQLite answers
    it as text (found by the fuzzer: COALESCE(born, DATE '2000-01-01') came back a string)."""
    if not isinstance(node, exp.Coalesce) or not isinstance(node.this, exp.Column):
        return None
    info = tables.get(node.this.table)
    t = field_type(info.schema, node.this.name) if info is not None else None
    return t if t is not None and (pa.types.is_date(t) or pa.types.is_timestamp(t)) else None


def _is_inner(join: exp.Join) -> bool:
    return not join.side and join.kind.upper() in ("", "INNER", "CROSS")


def _conjuncts(node: exp.Expression | None) -> list[exp.Expression]:
    if node is None:
        return []
    if isinstance(node, exp.Where):
        node = node.this
    return list(node.flatten()) if isinstance(node, exp.And) else [node]


def _output_origin(frag: Fragment, output: str) -> tuple[Fragment, str, str, str] | None:
    """(fragment, table alias, column, output) for a fragment output that is a plain column."""
    if not isinstance(frag.query, exp.Select):
        return None
    for proj in frag.query.selects:
        col = proj.unalias()
        if proj.alias_or_name == output and isinstance(col, exp.Column) and col.table:
            return frag, col.table, col.name, output
    return None


def _join_pair(c: exp.Expression) -> tuple[str, str] | None:
    """The two tables an equi-join conjunct joins (``a.x = b.y``, sorted), else None.

    An OR whose every branch holds the same equi-join (TPC-H Q19's shape) joins them too.
    """
    if isinstance(c, exp.Or):
        pairs = set()
        for branch in c.flatten():
            found = {p for p in map(_join_pair, _conjuncts(_unparen(branch))) if p}
            if not found:
                return None
            pairs.add(frozenset(found))
        common = frozenset.intersection(*pairs) if pairs else frozenset()
        return min(common) if common else None
    if not isinstance(c, exp.EQ):
        return None
    left, right = free_aliases(c.this), free_aliases(c.expression)
    if len(left) != 1 or len(right) != 1 or left == right:
        return None
    return tuple(sorted((*left, *right)))  # type: ignore[return-value]


def _ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name, quoted=True)


def _unparen(node: exp.Expression) -> exp.Expression:
    while isinstance(node, exp.Paren):
        node = node.this
    return node


def _single_alias(c: exp.Expression, by_alias: dict[str, _Item]) -> str | None:
    aliases = free_aliases(c)
    return next(iter(aliases)) if len(aliases) == 1 and aliases <= by_alias.keys() else None


def _params(node: exp.Expression) -> list[str]:
    return sorted({p.name for p in node.find_all(exp.Placeholder) if p.name})


def defined_aliases(query: exp.Expression) -> set[str]:
    """Aliases a query defines for its own scope: FROM/JOIN items and CTE names."""
    out: set[str] = set()
    if isinstance(query, exp.Select):
        if query.args.get("from_"):
            out.add(query.args["from_"].this.alias_or_name)
        out.update(j.this.alias_or_name for j in query.args.get("joins") or [])
    with_ = query.args.get("with_")
    if with_:
        out.update(c.alias_or_name for c in with_.expressions)
    return out


def free_aliases(node: exp.Expression) -> set[str]:
    """Table aliases that columns under ``node`` reference but ``node`` does not define."""
    out: set[str] = set()
    _free(node, set(), out)
    return out


def _free(node: exp.Expression, bound: set[str], out: set[str]) -> None:
    if isinstance(node, exp.Column):
        if node.table and node.table not in bound:
            out.add(node.table)
        return
    if isinstance(node, exp.Query):
        bound = bound | defined_aliases(node)
    for child in node.iter_expressions():
        _free(child, bound, out)


def collect_columns(
    node: exp.Expression, aliases: set[str], out: dict[str, set[str]], top: bool = True
) -> None:
    """Columns of ``aliases`` referenced under ``node``, respecting shadowing by nested scopes."""
    if isinstance(node, exp.Column):
        if node.table in aliases:
            out[node.table].add(node.name)
        return
    if isinstance(node, exp.Query) and not top:
        aliases = aliases - defined_aliases(node)
        if not aliases:
            return
    for child in node.iter_expressions():
        collect_columns(child, aliases, out, top=False)


def rename_columns(node: exp.Expression, renames: dict[tuple[str, str], tuple[str, str]]) -> None:
    """Point residual columns at fragment outputs, respecting shadowing by nested scopes."""
    aliases = {a for a, _ in renames}
    _rename(node, aliases, renames, top=True)


def _rename(node: exp.Expression, aliases: set[str], renames: dict, top: bool) -> None:
    if isinstance(node, exp.Column):
        key = (node.table, node.name)
        if node.table in aliases and key in renames:
            table, name = renames[key]
            node.set("table", exp.to_identifier(table, quoted=True))
            node.set("this", exp.to_identifier(name, quoted=True))
        return
    if isinstance(node, exp.Query) and not top:
        aliases = aliases - defined_aliases(node)
        if not aliases:
            return
    for child in list(node.iter_expressions()):
        _rename(child, aliases, renames, top=False)


def _direct_queries(select: exp.Select) -> list[exp.Query]:
    """Queries nested in ``select``'s expressions, not inside another nested query."""
    found: list[exp.Query] = []

    def walk(node: exp.Expression) -> None:
        for child in node.iter_expressions():
            if isinstance(child, exp.Query):
                found.append(child)
            elif not isinstance(child, exp.With):
                walk(child)

    walk(select)
    return found


def _selectivity(c: exp.Expression) -> float:
    if isinstance(c, exp.EQ):
        return 0.1
    if isinstance(c, exp.In):
        return min(0.5, 0.05 * max(1, len(c.expressions)))
    if isinstance(c, (exp.Like, exp.ILike)):
        return 0.25
    if isinstance(c, (exp.GT, exp.GTE, exp.LT, exp.LTE)):
        return 0.4
    if isinstance(c, exp.Between):
        return 0.25
    if isinstance(c, exp.Or):
        return 0.6
    return 0.5


def _type_family(t: pa.DataType) -> str:
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return "number"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_temporal(t):
        return "time"
    if pa.types.is_boolean(t):
        return "bool"
    return str(t)


def _column_equalities(conjuncts: Iterable[exp.Expression]) -> Iterator[exp.EQ]:
    """The ``column = column`` conjuncts: the equi-joins a bind can use."""
    for c in conjuncts:
        if (
            isinstance(c, exp.EQ)
            and isinstance(c.this, exp.Column)
            and isinstance(c.expression, exp.Column)
        ):
            yield c
