"""The federated dialect reads pgvector's operators and functions; vectors bind as parameters
and fall back to DuckDB's list distances in the residual (checked against numpy)."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from sqlglot import exp

import federator
from federator.errors import ParameterError
from federator.sql.dialect import (
    CosineDistance,
    InnerProduct,
    L2Distance,
    NegInnerProduct,
    parse,
    vector_params,
    vector_text,
    vector_value,
)


@pytest.mark.parametrize(
    ("sql", "cls"),
    [
        ("SELECT a <-> b FROM t", L2Distance),
        ("SELECT a <=> b FROM t", CosineDistance),
        ("SELECT a <#> b FROM t", NegInnerProduct),
        ("SELECT l2_distance(a, b) FROM t", L2Distance),
        ("SELECT cosine_distance(a, b) FROM t", CosineDistance),
        ("SELECT inner_product(a, b) FROM t", InnerProduct),
    ],
)
def test_reads_vector_operators(sql: str, cls: type) -> None:
    node = parse(sql).selects[0]
    assert type(node) is cls
    assert not isinstance(node, exp.NullSafeEQ)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT id FROM m.items ORDER BY emb <-> :q LIMIT 5",
        "SELECT id FROM m.items ORDER BY emb <=> :q LIMIT 5",
        "SELECT id FROM m.items ORDER BY emb <#> '[1,2,3]' LIMIT 5",
        "SELECT id, INNER_PRODUCT(emb, :q) AS s FROM m.items ORDER BY s DESC LIMIT 5",
        "SELECT id FROM m.items WHERE emb <=> :q < 0.25",
    ],
)
def test_round_trip(sql: str) -> None:
    assert parse(sql).sql(dialect="federated") == sql


def test_postgres_output_keeps_precedence() -> None:
    tree = parse("SELECT (a <=> b) + 1, a <-> (b * 2) FROM t")
    assert tree.sql(dialect="postgres") == "SELECT (a <=> b) + 1, a <-> (b * 2) FROM t"


def test_wrong_arity_is_a_syntax_error() -> None:
    with pytest.raises(federator.FederatorError):
        parse("SELECT l2_distance(a) FROM t")


def test_vector_values() -> None:
    torch = pytest.importorskip("torch")
    assert vector_value([1, 2]) == [1.0, 2.0]
    assert vector_value(np.array([1, 2], dtype=np.float32)) == [1.0, 2.0]
    assert vector_value(torch.tensor([1.0, 2.0])) == [1.0, 2.0]
    assert vector_value("[1, 2]") == [1.0, 2.0]
    assert vector_value("abc") is None
    assert vector_value(["a"]) is None
    assert vector_text(np.array([0.5, 1.0])) == "[0.5,1.0]"
    out = vector_params({"q": np.array([1.0, 2.0]), "k": 3, "t": torch.tensor([3.0])})
    assert out == {"q": [1.0, 2.0], "k": 3, "t": [3.0]}
    with pytest.raises(ParameterError):
        vector_text("not a vector")


@pytest.fixture()
def vector_fed(tmp_path):
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(60, 8)).astype(np.float32)
    path = tmp_path / "v.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE items (id INTEGER, cat TEXT, emb TEXT)")
    con.executemany(
        "INSERT INTO items VALUES (?, ?, ?)",
        [(i, "a" if i % 3 else "b", vector_text(v)) for i, v in enumerate(vectors)],
    )
    con.commit()
    con.close()
    fed = federator.connect({"sources": {"s": {"kind": "sqlite", "path": str(path)}}})
    yield fed, vectors, rng.normal(size=8).astype(np.float32)
    fed.close()


def _brute(vectors: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    if metric == "l2":
        return np.linalg.norm(vectors - q, axis=1)
    if metric == "cosine":
        return 1 - vectors @ q / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(q))
    return -(vectors @ q)


@pytest.mark.parametrize(("op", "metric"), [("<->", "l2"), ("<=>", "cosine"), ("<#>", "neg_ip")])
def test_residual_top_k_equals_numpy(vector_fed, op: str, metric: str) -> None:
    fed, vectors, q = vector_fed
    sql = f"SELECT id, emb {op} :q AS d FROM s.items WHERE cat = 'a' ORDER BY d LIMIT 5"
    got = fed.sql(sql, {"q": q}).to_arrow().to_pylist()
    ids = np.array([i for i in range(len(vectors)) if i % 3])
    dist = _brute(vectors[ids].astype(np.float64), q.astype(np.float64), metric)
    order = np.argsort(dist)[:5]
    assert [r["id"] for r in got] == ids[order].tolist()
    np.testing.assert_allclose([r["d"] for r in got], dist[order], rtol=1e-5)
    assert "LIST_" in fed.explain(sql, {"q": q})


def test_literal_vector_and_torch_parameter(vector_fed) -> None:
    torch = pytest.importorskip("torch")
    fed, vectors, q = vector_fed
    lit = vector_text(q)
    a = fed.sql(f"SELECT id FROM s.items ORDER BY emb <=> '{lit}' LIMIT 4").to_arrow()
    b = fed.sql(
        "SELECT id FROM s.items ORDER BY cosine_distance(emb, :q) LIMIT 4", {"q": torch.tensor(q)}
    ).to_arrow()
    assert a.column("id").to_pylist() == b.column("id").to_pylist()
    ip = fed.sql(
        "SELECT id, inner_product(emb, :q) AS s FROM s.items ORDER BY s DESC LIMIT 1", {"q": q}
    ).to_arrow()
    assert ip.column("id")[0].as_py() == int(np.argmax(vectors.astype(np.float64) @ q))
