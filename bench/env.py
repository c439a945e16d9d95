"""Servers and data for the benchmarks: started like the tests start theirs (tests/servers.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import aiomysql
import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import servers  # noqa: E402  (tests/servers.py: real servers as plain processes)

SCAN_TABLE = "bulk_scan"
# the schema: (bigint, int, timestamp, double, text, boolean, numeric(12,2))
PG_SCAN_SQL = """
CREATE TABLE {t} AS
SELECT g::bigint AS id, (g % 1000)::int AS k,
       timestamp '2020-01-01' + g * interval '1 second' AS ts,
       g * 0.5::float8 AS x, 'name_' || g AS t, g % 2 = 0 AS b,
       ((g % 1000000) / 100.0)::numeric(12, 2) AS amount
FROM generate_series(1, {n}) g
"""
MY_SCAN_SQL = """
CREATE TABLE {t} (id BIGINT PRIMARY KEY, k INT, ts DATETIME(6), x DOUBLE, t VARCHAR(40),
                  b BOOLEAN, amount DECIMAL(12, 2))
"""
MY_FILL_SQL = """
INSERT INTO {t}
SELECT seq, seq % 1000, TIMESTAMP'2020-01-01 00:00:00' + INTERVAL seq SECOND, seq * 0.5,
       CONCAT('name_', seq), seq % 2 = 0, (seq % 1000000) / 100.0
FROM seq_1_to_{n}
"""


@dataclass
class Env:
    pg_dsn: str
    mysql_dsn: str
    psql: str | None
    started: list[servers.Server]

    def stop(self) -> None:
        for s in self.started:
            s.stop()


def start(pg: str | None, mysql: str | None) -> Env:
    started = []
    pool = servers.ServerPool()
    kinds = [k for k, given in (("postgres", pg), ("mariadb", mysql)) if not given]
    pool.prestart(kinds)
    if not pg:
        s = pool.get("postgres")
        started.append(s)
        pg = s.dsn
    if not mysql:
        s = pool.get("mariadb")
        started.append(s)
        mysql = s.dsn
    bindir = servers.postgres_bin_dir()
    psql = os.path.join(bindir, "psql") if bindir else None
    return Env(pg, mysql, psql, started)


async def load_scan(env: Env, rows: int) -> None:
    """The scan table on both servers (kept when it already has ``rows`` rows)."""
    await asyncio.gather(_load_pg(env.pg_dsn, rows), _load_my(env.mysql_dsn, rows))


async def _load_pg(dsn: str, rows: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", SCAN_TABLE):
            if await conn.fetchval(f"SELECT count(*) FROM {SCAN_TABLE}") == rows:
                return
            await conn.execute(f"DROP TABLE {SCAN_TABLE}")
        await conn.execute(PG_SCAN_SQL.format(t=SCAN_TABLE, n=int(rows)))
        await conn.execute(f"ALTER TABLE {SCAN_TABLE} ADD PRIMARY KEY (id)")
        await conn.execute(f"VACUUM ANALYZE {SCAN_TABLE}")
    finally:
        await conn.close()


async def _load_my(dsn: str, rows: int) -> None:
    conn = await aiomysql.connect(**mysql_args(dsn), autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_NAME = %s"
                " AND TABLE_SCHEMA = DATABASE()",
                (SCAN_TABLE,),
            )
            if (await cur.fetchone())[0]:
                await cur.execute(f"SELECT COUNT(*) FROM {SCAN_TABLE}")
                if (await cur.fetchone())[0] == rows:
                    return
                await cur.execute(f"DROP TABLE {SCAN_TABLE}")
            await cur.execute(MY_SCAN_SQL.format(t=SCAN_TABLE))
            await cur.execute(MY_FILL_SQL.format(t=SCAN_TABLE, n=int(rows)))
            await cur.execute(f"ANALYZE TABLE {SCAN_TABLE}")
    finally:
        conn.close()


def mysql_args(dsn: str) -> dict[str, object]:
    from urllib.parse import unquote, urlsplit

    p = urlsplit(dsn)
    return {
        "host": p.hostname or "127.0.0.1",
        "port": p.port or 3306,
        "user": unquote(p.username or "root"),
        "password": unquote(p.password or ""),
        "db": p.path.lstrip("/") or None,
    }


def psql_copy_to_devnull(env: Env, query: str) -> None:
    """Binary COPY of a query to /dev/null through psql: the wire limit, nothing decoded."""
    from urllib.parse import urlsplit

    p = urlsplit(env.pg_dsn)
    assert env.psql is not None
    subprocess.run(
        [env.psql, "-h", p.hostname or "127.0.0.1", "-p", str(p.port), "-U", p.username or "postgres",  # noqa: E501
         "-d", p.path.lstrip("/") or "postgres", "-v", "ON_ERROR_STOP=1", "-q",
         "-c", f"\\copy ({query}) TO '/dev/null' WITH (FORMAT binary)"],
        check=True, capture_output=True,
    )  # fmt: skip
