"""MLflow lineage over real PostgreSQL and SQLite, logged to a real local MLflow tracking store
(the file store in a temporary folder) and read back through MLflow's own client."""

from __future__ import annotations

import datetime as dt
import json
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow as pa
import pytest

import federator
from federator.errors import FederatorError

from .conftest import run_async

mlflow = pytest.importorskip("mlflow")  # the [mlflow] extra ([all] installs it in CI)
fed_mlflow = pytest.importorskip("federator.mlflow")

PASSWORD = "Mlflow-pw-0815"  # PostgreSQL here trusts loopback: any password connects
PEOPLE = [(1, "ada", dt.date(2020, 1, 5)), (2, "bob", dt.date(2021, 3, 1)), (3, "cy", None)]
PEOPLE += [(4, "dee", dt.date(2024, 7, 9)), (5, "eve", dt.date(2025, 2, 2))]
SCORES = [(1, 10), (2, 20), (3, 30), (4, 40), (5, 50), (5, 55)]
QUERY = (
    "SELECT p.name, s.score FROM pg.ml_people p JOIN lite.scores s ON s.person = p.id "
    "WHERE p.id >= :lo"
)
LO = 2
SCHEMA = pa.schema([("name", pa.string()), ("score", pa.int64())])


def expected_rows(lo: int = LO, scores: list[tuple[int, int]] = SCORES) -> list[tuple[str, int]]:
    """The join by hand."""
    names = {i: n for i, n, _ in PEOPLE}
    return sorted((names[p], s) for p, s in scores if p >= lo)


def digest_of(rows: list[tuple[str, int]]) -> str:
    """The digest of hand-made rows, shuffled: the order must not matter."""
    rows = rows[:]
    random.Random(7).shuffle(rows)
    table = pa.table({"name": [r[0] for r in rows], "score": [r[1] for r in rows]}, SCHEMA)
    return fed_mlflow.content_digest([table], SCHEMA)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A local MLflow file store, the tracking URI for this module only."""
    root = tmp_path_factory.mktemp("mlflow") / "mlruns"  # MLflow makes it, and experiment 0
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for a database otherwise
    before = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(root.as_uri())
    yield root
    mlflow.set_tracking_uri(before)
    patch.undo()


@pytest.fixture(scope="module")
def fed(pg_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[federator.Federation]:
    async def setup() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("DROP TABLE IF EXISTS ml_people")
            await conn.execute("CREATE TABLE ml_people (id int PRIMARY KEY, name text, d date)")
            await conn.executemany("INSERT INTO ml_people VALUES ($1, $2, $3)", PEOPLE)
        finally:
            await conn.close()

    run_async(setup())
    path = tmp_path_factory.mktemp("lite") / "scores.db"
    with sqlite3.connect(path) as lite:
        lite.execute("CREATE TABLE scores (person integer, score integer)")
        lite.executemany("INSERT INTO scores VALUES (?, ?)", SCORES)
    lite.close()
    pg = pg_dsn.replace("postgres@", f"postgres:{PASSWORD}@", 1)
    assert PASSWORD in pg
    catalog = {
        "sources": {"pg": {"kind": "postgres", "dsn": pg}, "lite": {"kind": "sqlite", "path": path}}
    }
    with federator.connect(catalog) as fed:
        yield fed


def _inputs(run_id: str) -> list[Any]:
    client = mlflow.tracking.MlflowClient()
    return list(client.get_run(run_id).inputs.dataset_inputs)


def test_log_input_records_the_query_sources_schema_rows_and_digest(
    store: Path, fed: federator.Federation
) -> None:
    with mlflow.start_run() as run:
        logged = fed_mlflow.log_input(fed.sql(QUERY, {"lo": LO}))
    (one,) = _inputs(run.info.run_id)
    assert {t.key: t.value for t in one.tags} == {"mlflow.data.context": "training"}
    ds = one.dataset
    assert ds.source_type == "federator"
    assert ds.digest == logged.digest == digest_of(expected_rows())
    assert json.loads(ds.profile)["num_rows"] == len(expected_rows())
    schema = json.loads(ds.schema)["arrow"]
    assert [(f["name"], f["type"]) for f in schema] == [("name", "string"), ("score", "int64")]
    source = json.loads(ds.source)
    assert source["query"] == QUERY
    assert source["params"] == {"lo": LO}
    kinds = {s["name"]: s["kind"] for s in source["sources"]}
    assert kinds == {"pg": "postgres", "lite": "sqlite"}
    tokens = {s["name"]: s["freshness"] for s in source["sources"]}
    assert tokens["pg"].startswith("snapshot:")  # PostgreSQL's snapshot when it was read
    assert tokens["lite"]  # the SQLite file's modification stamp
    # the source reads back as ours through MLflow's registry
    assert isinstance(mlflow.data.get_source(ds), fed_mlflow.FederatorDatasetSource)


def test_no_secret_reaches_the_tracking_store(store: Path, fed: federator.Federation) -> None:
    with mlflow.start_run():
        fed_mlflow.log_input(fed.sql(QUERY, {"lo": LO}), context="eval")
    files = [p for p in store.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert PASSWORD not in p.read_text(errors="replace"), p
        assert "127.0.0.1" not in p.read_text(errors="replace"), p  # no DSN at all


def test_from_run_rebuilds_the_answer_and_reports_a_change(
    store: Path, fed: federator.Federation, pg_dsn: str
) -> None:
    with mlflow.start_run() as run:
        fed_mlflow.log_input(QUERY, params={"lo": 4}, fed=fed)
    table = fed_mlflow.from_run(run.info.run_id, fed)
    rows = sorted(zip(*(table.column(c).to_pylist() for c in ("name", "score")), strict=True))
    assert rows == expected_rows(lo=4)

    async def change() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("UPDATE ml_people SET name = 'DEE' WHERE id = 4")
        finally:
            await conn.close()

    run_async(change())
    try:
        with pytest.warns(fed_mlflow.DatasetChangedWarning, match=r"changed on pg"):
            changed = fed_mlflow.from_run(run.info.run_id, fed)
        assert "DEE" in changed.column("name").to_pylist()
        with pytest.raises(fed_mlflow.DatasetChangedError, match=run.info.run_id):
            fed_mlflow.from_run(run.info.run_id, fed, strict=True)
    finally:
        run_async(_restore(pg_dsn))


async def _restore(pg_dsn: str) -> None:
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("UPDATE ml_people SET name = 'dee' WHERE id = 4")
    finally:
        await conn.close()


def test_parameter_values_round_trip_with_their_types(
    store: Path, fed: federator.Federation
) -> None:
    query = "SELECT p.name FROM pg.ml_people p WHERE p.d >= :since"
    since = dt.date(2021, 3, 1)
    with mlflow.start_run() as run:
        fed_mlflow.log_input(fed.sql(query, {"since": since}))
    table = fed_mlflow.from_run(run.info.run_id, fed)
    assert sorted(table.column("name").to_pylist()) == sorted(
        n for _, n, d in PEOPLE if d is not None and d >= since
    )


def test_bad_calls_name_what_to_fix(store: Path, fed: federator.Federation) -> None:
    with pytest.raises(FederatorError, match=r"fed=fed"):
        fed_mlflow.log_input(QUERY, params={"lo": 1})
    with pytest.raises(FederatorError, match=r"not params="):
        fed_mlflow.log_input(fed.sql(QUERY, {"lo": 1}), params={"lo": 2})
    with mlflow.start_run() as run:
        mlflow.log_param("nothing", "logged")
    with pytest.raises(FederatorError, match=rf"run {run.info.run_id} logged no federator"):
        fed_mlflow.from_run(run.info.run_id, fed)


def test_federated_dataset_logs_its_query_when_training_starts(
    store: Path, fed: federator.Federation
) -> None:
    from federator.torch import FederatedDataset

    ds = FederatedDataset(fed, QUERY, {"lo": LO}, batch_size=2, columns=["score"], mlflow=True)
    with mlflow.start_run() as run:
        assert _inputs(run.info.run_id) == []  # nothing until iteration starts
        batches = list(ds)
        (one,) = _inputs(run.info.run_id)
    assert sum(len(b["score"]) for b in batches) == len(expected_rows())
    assert one.dataset.digest == digest_of(expected_rows())
    source = json.loads(one.dataset.source)
    assert (source["query"], source["params"]) == (QUERY, {"lo": LO})
