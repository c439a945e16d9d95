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
from federator.rules import Rule

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


PROBE_KEY = 715_015  # an advisory-lock key no other test takes
HELD = f"SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = {PROBE_KEY}"


async def _probe_control(dsn: str) -> tuple[int, int]:
    """Advisory locks held on the probe key before and after ``rule_probe()`` runs in a
    read-only transaction (as federator's requests do) on one connection."""
    conn = await asyncpg.connect(dsn)
    try:
        before = await conn.fetchval(HELD)
        async with conn.transaction(readonly=True):
            await conn.fetch("SELECT name FROM trgm_people WHERE rule_probe()")
        return int(before), int(await conn.fetchval(HELD))
    finally:
        await conn.close()


async def _held(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(HELD))
    finally:
        await conn.close()


@pytest.fixture
def probe(pg_people: str) -> str:
    """``rule_probe()``: a PostgreSQL function that takes a session advisory lock (allowed in a
    read-only transaction, held until its connection closes), so a test can see from another
    connection whether some text ever ran on the server."""
    asyncio.run(
        _setup_sql(
            pg_people,
            "CREATE OR REPLACE FUNCTION rule_probe() RETURNS boolean LANGUAGE sql VOLATILE AS "
            f"$$ SELECT pg_try_advisory_lock({PROBE_KEY}) $$;",
        )
    )
    return pg_people


async def _setup_sql(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def test_a_write_returning_text_never_reaches_postgres(probe: str) -> None:
    """A write that returns SQL text (issue 15: it was spliced verbatim into the request) is a
    RuleError at planning, naming the rule; the server never runs it and the federation
    keeps working."""
    assert asyncio.run(_probe_control(probe)) == (0, 1)  # the probe shows a run
    catalog = {"sources": {"pg": {"kind": "postgres", "dsn": probe}}}
    with federator.connect(catalog) as fed:
        fed.rules.add(
            Rule("PROBE_ME", write=lambda node: "rule_probe()", name="probe.text"),
            kind="postgres",
        )
        with pytest.raises(federator.RuleError) as info:
            fed.sql("SELECT name FROM pg.trgm_people WHERE probe_me(name)").to_arrow()
        message = str(info.value)
        assert message.startswith("rule 'probe.text' (defined at ")
        assert "test_rules_examples.py:" in message
        assert "write returned the string 'rule_probe()', not a sqlglot expression" in message
        rows = fed.sql("SELECT count(*) AS n FROM pg.trgm_people").to_arrow().to_pylist()
        assert rows == [{"n": len(PEOPLE)}]
        assert asyncio.run(_held(probe)) == 0  # its pooled connections never ran the text


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
