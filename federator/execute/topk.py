"""Running a vector top-k fragment (:class:`federator.plan.model.TopK`): pre- or post-filter,
and growing the fetch until the residual yields k rows.

The planner pushed ``ORDER BY <distance> LIMIT k`` into the fragment; the residual still joins,
filters and sorts. At run time the producer's actual key count decides (``auto``):

- pre-filter: the keys are bound into the search (``id in [...]`` for Milvus, ``= ANY($n)``
  for PostgreSQL), limit k;
- post-filter: no keys, limit ``k x factor`` with factor = 1.5 / selectivity.

Either way, when the residual yields fewer than k rows and the fragment returned as many rows
as it asked for (there may be more), the limit grows x4 and the fragment runs again; past
``TopK.max_limit`` it runs without its ORDER BY/LIMIT (the distance then computed here). So a
query never returns fewer than k rows when k exist. A derived table's top-k counts the rows of
its own SELECT (``TopK.scope``). With tie-breakers after the distance (``ORDER BY d, id``)
only candidates strictly nearer than the farthest fetched count: an unfetched row at that
distance could win its tie, so the answer is the exact one, ties included.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
from sqlglot import exp

from federator.errors import FederatorError, SourceError
from federator.execute.residual import default_engine
from federator.plan.model import Fragment, TopK
from federator.sql.dialect import exact_distances, residual_duckdb_sql, vector_value

if TYPE_CHECKING:
    from federator.execute.handle import ExecutionHandle


@dataclass
class TopKState:
    mode: str
    limit: int
    keys: list[Any] | None
    exhausted: bool = False
    rounds: int = 0


def _batch_size(ex: ExecutionHandle, frag: Fragment) -> int:
    """Most keys one request of ``frag`` takes (its bind batches)."""
    request = ex.catalog.adapter(frag.source).translate(frag)
    return request.bind.batch_size if request.bind is not None else 0


def _states(ex: ExecutionHandle) -> dict[str, TopKState]:
    return ex.__dict__.setdefault("_top_k_states", {})


async def fetch_top_k(ex: ExecutionHandle, frag: Fragment, keys: list[Any] | None) -> pa.Table:
    """The first fetch of a top-k fragment, pre- or post-filtered."""
    tk = frag.top_k
    assert tk is not None
    nkeys = len(keys) if keys is not None else None
    mode = tk.choose(nkeys)
    stats = ex.stats[frag.id]
    if mode == "pre" and tk.ties and nkeys and nkeys > _batch_size(ex, frag):
        # Each request of keys returns its own nearest: the farthest of the union is no
        # boundary for ties (see _boundary); one post-filtered search is.
        mode = "post"
    if mode == "pre":  # with tie-breakers one more, to see whether the k-th ties
        limit, bound = tk.k + (1 if tk.ties else 0), keys
        share = f" ({nkeys / tk.base_rows:.1%} of {tk.base_rows:,})" if tk.base_rows else ""
        stats.note = f"pre-filter: {nkeys:,} keys{share} bound into the search, limit {limit:,}"
    else:
        factor = tk.post_factor(nkeys)
        limit, bound = tk.k * factor, None
        why = f"{nkeys:,} keys" if nkeys is not None else "no keys"
        stats.note = f"post-filter ({why}): limit {tk.k} x {factor} = {limit:,}"
        stats.bound_keys = None
    state = TopKState(mode, limit, bound)
    _states(ex)[frag.id] = state
    return await _run(ex, frag, state)


async def _run(ex: ExecutionHandle, frag: Fragment, state: TopKState) -> pa.Table:
    tk = frag.top_k
    assert tk is not None
    adapter = ex.catalog.adapter(frag.source)
    unpushed = state.limit > tk.max_limit and tk.unpushed is not None
    if unpushed:
        query, state.exhausted = tk.unpushed, True
        ex.stats[frag.id].note += "; fetched without the top-k"
    else:
        query = frag.query.copy()
        query.set("limit", exp.Limit(expression=exp.Literal.number(state.limit)))
    request = adapter.translate(dataclasses.replace(frag, query=query)).with_params(ex.params)
    sem = ex._semaphores.setdefault(frag.source, asyncio.Semaphore(adapter.max_concurrency))
    stats = ex.stats[frag.id]
    label = f"fragment {frag.id} on source {frag.source!r}"
    batches = []
    async with sem:
        ex._running.add(label)
        started = time.perf_counter()
        try:
            bind = state.keys if request.bind is not None else None
            async with contextlib.aclosing(adapter.execute(request, bind)) as stream:
                async for batch in stream:
                    stats.rows += batch.num_rows
                    stats.bytes += batch.nbytes
                    batches.append(batch)
        except FederatorError:
            raise
        except Exception as e:
            raise SourceError(f"{label} failed: {type(e).__name__}: {e}") from e
        finally:
            stats.ms += (time.perf_counter() - started) * 1000
        ex._running.discard(label)
    table = pa.Table.from_batches(batches) if batches else pa.table({})
    if unpushed and tk.distance is not None:
        table = with_distance(tk, table, frag.columns, ex.params)
    if table.num_rows < state.limit:
        state.exhausted = True
    state.rounds += 1
    return table


async def grow_top_k(ex: ExecutionHandle, tables: dict[str, pa.Table]) -> dict[str, pa.Table]:
    """Re-fetch top-k fragments with larger limits until their scope of the residual yields
    k rows (or the source has no more)."""
    states = _states(ex)
    frags = [f for f in ex.plan.fragments if f.top_k is not None and f.id in states]
    while True:
        grow = []
        for f in frags:
            tk = f.top_k
            assert tk is not None
            if states[f.id].exhausted:
                continue
            rows = await asyncio.to_thread(_residual_rows, ex, tables, tk)
            if rows < tk.k:
                grow.append((f, rows))
        if not grow:
            return tables
        for f, rows in grow:
            st = states[f.id]
            st.limit *= f.top_k.growth  # type: ignore[union-attr]
            tables[f.id] = await _run(ex, f, st)
            k = f.top_k.k  # type: ignore[union-attr]
            ex.stats[f.id].note += f"; grown to limit {st.limit:,} ({rows} of {k} rows survived)"


def with_distance(
    tk: TopK, table: pa.Table, columns: list[str], params: dict[str, Any]
) -> pa.Table:
    """``table`` (fetched without the top-k, with the vector column) with the distance
    column computed here in the operator's terms, reduced to the fragment's ``columns``."""
    import numpy as np

    assert tk.distance is not None and tk.query_vector is not None
    q = tk.query_vector
    raw = params[q.name] if isinstance(q, exp.Placeholder) else q.this
    vector = vector_value(raw)
    if vector is None:
        raise FederatorError(f"the query vector {q.sql()} is not a list of numbers")
    rows = table.column(tk.vector).to_pylist()
    matrix = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(vector))
    distances = exact_distances(tk.metric, matrix, np.asarray(vector, dtype=np.float64))
    table = table.append_column(tk.distance, pa.array(distances, pa.float64()))
    return table.select(columns)


def _boundary(tk: TopK, state: TopKState, table: pa.Table) -> pa.Table:
    """The candidates strictly nearer than the farthest one fetched (all, once exhausted):
    no unfetched row can sort before them, whatever the tie-breakers say."""
    if not tk.ties or state.exhausted or tk.distance is None or table.num_rows == 0:
        return table
    dist = table.column(tk.distance)
    if tk.metric == "ip":  # inner product: larger is nearer
        return table.filter(pc.greater(dist, pc.min(dist)))
    return table.filter(pc.less(dist, pc.max(dist)))


def _residual_rows(ex: ExecutionHandle, tables: dict[str, pa.Table], tk: TopK) -> int:
    """Rows the residual (``tk.scope`` of it, for a derived table's top-k) yields."""
    sql = ex.plan.residual_sql if tk.scope is None else residual_duckdb_sql(tk.scope)
    assert sql is not None
    states = _states(ex)
    engine = default_engine()
    con = engine.cursor()
    try:
        for fid, table in tables.items():
            frag = ex.plan.fragment(fid)
            if frag.top_k is not None and fid in states:
                table = _boundary(frag.top_k, states[fid], table)
            con.register(fid, table)
        params = {k: v for k, v in ex.params.items() if f"${k}" in sql}
        row = con.sql(f"SELECT count(*) FROM ({sql}) AS _top_k", params=params or None).fetchall()
        return int(row[0][0]) if row else 0
    finally:
        engine.release(con)
