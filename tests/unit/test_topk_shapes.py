"""Vector top-k helpers without servers: the distance computed for a fetch made without the
top-k (numpy truth), and the tie boundary that decides whether enough candidates were fetched."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sqlglot import exp

from federator.execute.topk import TopKState, _boundary, with_distance
from federator.plan.model import TopK


def top_k(**kw: object) -> TopK:
    base = {"k": 3, "mode": "post", "factor": 4, "threshold": 0.2, "base_rows": 10, "reason": ""}
    return TopK(**(base | kw))  # type: ignore[arg-type]


@pytest.mark.parametrize("metric", ["l2", "cosine", "neg_ip", "ip"])
def test_with_distance_equals_numpy(metric: str) -> None:
    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(6, 4)).astype(np.float32)
    q = rng.normal(size=4)
    tk = top_k(distance="_distance", metric=metric, vector="emb")
    tk.query_vector = exp.Placeholder(this="q")
    table = pa.table({"id": list(range(6)), "emb": [v.tolist() for v in vectors]})
    got = with_distance(tk, table, ["id", "_distance"], {"q": q.tolist()})
    assert got.column_names == ["id", "_distance"]
    v = vectors.astype(np.float64)
    want = {
        "l2": np.linalg.norm(v - q, axis=1),
        "cosine": 1 - v @ q / (np.linalg.norm(v, axis=1) * np.linalg.norm(q)),
        "neg_ip": -(v @ q),
        "ip": v @ q,
    }[metric]
    np.testing.assert_allclose(got.column("_distance").to_numpy(), want, rtol=1e-12)


def test_with_distance_literal_vector() -> None:
    tk = top_k(distance="d", metric="l2", vector="emb")
    tk.query_vector = exp.Literal.string("[3, 4]")
    table = pa.table({"emb": [[0.0, 0.0], [3.0, 4.0]]})
    got = with_distance(tk, table, ["d", "emb"], {})
    assert got.column("d").to_pylist() == [5.0, 0.0]


def test_boundary_keeps_only_candidates_nearer_than_the_farthest() -> None:
    """With ties broken by another key, a candidate at the farthest fetched distance may tie
    with one not fetched: only the strictly nearer ones are known to be complete."""
    table = pa.table({"id": [4, 1, 9, 2], "_distance": [0.1, 0.2, 0.3, 0.3]})
    tk = top_k(distance="_distance", metric="l2", ties=True)
    state = TopKState("post", 4, None)
    assert _boundary(tk, state, table).column("id").to_pylist() == [4, 1]
    state.exhausted = True  # every row fetched: nothing unfetched can tie
    assert _boundary(tk, state, table).num_rows == 4
    assert _boundary(top_k(distance="_distance"), TopKState("post", 4, None), table).num_rows == 4
    scores = pa.table({"id": [1, 2, 3], "_distance": [0.9, 0.5, 0.5]})  # inner product: DESC
    ip = top_k(distance="_distance", metric="ip", ties=True)
    assert _boundary(ip, TopKState("post", 3, None), scores).column("id").to_pylist() == [1]
