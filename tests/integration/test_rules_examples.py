"""The rule examples on real servers (pg_trgm on PostgreSQL), and the CLI's output formats
read back from a real PostgreSQL source."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from pathlib import Path

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import federator
from federator import cli
from federator.demo import catalog_toml

ROOT = Path(__file__).resolve().parents[2]
TRGM = str(ROOT / "examples" / "rules" / "pg_trgm.py")
PEOPLE = ["ada lovelace", "alan turing", "grace hopper", "ada byron"]


async def _setup(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE EXTENSION IF NOT EXISTS pg_trgm;"
            "DROP TABLE IF EXISTS trgm_people;"
            "CREATE TABLE trgm_people (id int PRIMARY KEY, name text, score numeric(5,2));"
        )
        await conn.executemany(
            "INSERT INTO trgm_people VALUES ($1, $2, $3)",
            [(i, n, None if i == 2 else i * 1.5) for i, n in enumerate(PEOPLE, 1)],
        )
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def pg_people(pg_dsn: str) -> str:
    asyncio.run(_setup(pg_dsn))
    return pg_dsn


def test_pg_trgm_rules_run_on_postgres(pg_people: str) -> None:
    catalog = {"sources": {"pg": {"kind": "postgres", "dsn": pg_people}}, "rules": [TRGM]}
    with federator.connect(catalog) as fed:
        query = (
            "SELECT name, similarity(name, :q) AS s FROM pg.trgm_people "
            "WHERE trgm_match(name, :q) ORDER BY s DESC"
        )
        result = fed.sql(query, {"q": "ada lovelac"})
        assert result.plan.residual is None  # all of it ran on PostgreSQL
        assert "% $1" in result.plan.explain()
        rows = result.to_arrow().to_pylist()
        assert rows[0]["name"] == "ada lovelace"
        assert all(r["s"] > 0.3 for r in rows)  # pg_trgm.similarity_threshold


def test_cli_formats_parse_back_from_postgres(
    pg_people: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = tmp_path / "c.toml"
    catalog.write_text(catalog_toml({"sources": {"pg": {"kind": "postgres", "dsn": pg_people}}}))
    sql = "SELECT id, name, score FROM pg.trgm_people ORDER BY id"
    expected = [
        {"id": i, "name": n, "score": None if i == 2 else f"{i * 1.5:.2f}"}
        for i, n in enumerate(PEOPLE, 1)
    ]

    def run(*args: str) -> str:
        code = cli.main(["query", "-c", str(catalog), *args, sql])
        out, err = capsys.readouterr()
        assert (code, err) == (0, ""), err
        return out

    rows = list(csv.DictReader(io.StringIO(run("--format", "csv"))))
    assert [{**r, "id": int(r["id"]), "score": r["score"] or None} for r in rows] == expected
    data = json.loads(run("--format", "json"))
    assert [{**r, "score": None if r["score"] is None else f"{r['score']:.2f}"} for r in data] == [
        {**e} for e in expected
    ]
    for fmt in ("parquet", "arrow"):
        target = tmp_path / f"out.{fmt}"
        run("-o", str(target))
        table = pq.read_table(target) if fmt == "parquet" else pa.ipc.open_file(target).read_all()
        assert table.column("name").to_pylist() == PEOPLE
        assert table.schema.field("score").type == pa.decimal128(5, 2)
