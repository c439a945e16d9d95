"""Passwords with URL-special characters, against real PostgreSQL and MariaDB users that need
them: a ``${VAR}`` password with ``#``, ``/``, ``@``, ``?``, ``:`` and ``%`` connects, a wrong
one is refused, and neither the password nor its percent-encoded form shows anywhere a person
can see: reprs, errors, EXPLAIN, logs, CLI output."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import pytest

import federator
from federator import cli
from federator.config import parse_dsn

PASSWORD = "p#ss/w@rd?:%x&y=1"
WRONG = "wr#ng/p@ss?:%"
USER = "hard3_secret"
FORMS = (PASSWORD, quote(PASSWORD, safe=""), WRONG, quote(WRONG, safe=""))


def assert_hidden(*texts: str) -> None:
    for text in texts:
        for form in FORMS:
            assert form not in text, f"{form!r} shown in: {text[:300]}"


async def _pg_setup(dsn: str) -> None:
    """A role that must give its password: PostgreSQL here trusts everyone else, so a
    scram-sha-256 line for this role goes first in pg_hba.conf."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS secret_t; DROP ROLE IF EXISTS {USER}")
        await conn.execute(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")
        await conn.execute("CREATE TABLE secret_t (id int, name text)")
        await conn.execute("INSERT INTO secret_t VALUES (1, 'ada'), (2, 'bob')")
        await conn.execute(f"GRANT SELECT ON secret_t TO {USER}")
        hba = Path(await conn.fetchval("SHOW hba_file"))
        line = f"host all {USER} 127.0.0.1/32 scram-sha-256\n"
        if line not in hba.read_text():
            hba.write_text(line + hba.read_text())
        await conn.execute("SELECT pg_reload_conf()")
    finally:
        await conn.close()


async def _my_setup(dsn: str) -> None:
    import aiomysql

    d = parse_dsn(dsn)
    conn = await aiomysql.connect(host=d.host, port=d.port, user=d.user, db=d.database)
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP USER IF EXISTS '{USER}'@'%'")
            await cur.execute(f"CREATE USER '{USER}'@'%%' IDENTIFIED BY %s", (PASSWORD,))
            await cur.execute("DROP TABLE IF EXISTS secret_t")
            await cur.execute("CREATE TABLE secret_t (id INT, name VARCHAR(10))")
            await cur.execute("INSERT INTO secret_t VALUES (1, 'ada'), (2, 'bob')")
            await cur.execute(f"GRANT SELECT ON {d.database}.* TO '{USER}'@'%'")
        await conn.commit()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def users(pg_dsn: str, mysql_dsn: str) -> tuple[str, str]:
    """DSN templates (with ``${FED_SECRET_PW}``) for the password-only users."""
    asyncio.run(_pg_setup(pg_dsn))
    asyncio.run(_my_setup(mysql_dsn))
    pg, my = parse_dsn(pg_dsn), parse_dsn(mysql_dsn)
    return (
        f"postgresql://{USER}:${{FED_SECRET_PW}}@{pg.host}:{pg.port}/{pg.database}",
        f"mysql://{USER}:${{FED_SECRET_PW}}@{my.host}:{my.port}/{my.database}",
    )


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.DEBUG):
        yield caplog


def catalog(users: tuple[str, str], **my_options: Any) -> dict[str, Any]:
    pg, my = users
    return {
        "sources": {
            "pg": {"kind": "postgres", "dsn": pg},
            "my": {"kind": "mysql", "dsn": my, **my_options},
        },
        "cache": {"redis": "redis://:${FED_SECRET_PW}@127.0.0.1:1/0"},  # never contacted
    }


JOIN = (
    "SELECT p.id, p.name, m.name AS my_name FROM pg.secret_t AS p "
    "JOIN my.secret_t AS m ON m.id = p.id ORDER BY p.id"
)
ANSWER = [
    {"id": 1, "name": "ada", "my_name": "ada"},
    {"id": 2, "name": "bob", "my_name": "bob"},
]


@pytest.mark.parametrize("bulk", [False, True], ids=["rows", "connectorx"])
def test_special_password_connects_and_never_shows(
    users: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    logs: pytest.LogCaptureFixture,
    bulk: bool,
) -> None:
    if bulk:
        pytest.importorskip("connectorx")
    monkeypatch.setenv("FED_SECRET_PW", PASSWORD)
    with federator.connect(catalog(users, bulk_rows=0 if bulk else -1)) as fed:
        result = fed.sql(JOIN)
        assert result.to_arrow().to_pylist() == ANSWER
        assert fed.catalog.adapters["pg"].dsn.password == PASSWORD
        shown = [
            repr(fed.config),
            str(fed.config),
            *map(repr, fed.config.sources.values()),
            *map(repr, fed.catalog.adapters.values()),
            repr(fed.catalog.adapters["pg"].dsn),
            repr(fed.cache.settings),
            repr(fed.cache),
            repr(fed),
            str(fed.sources()),
            result.explain(),
            result.explain(analyze=True),
        ]
        with pytest.raises(federator.UnknownColumnError) as unknown:
            fed.sql("SELECT nme FROM pg.secret_t")
        shown.append(str(unknown.value))
    assert_hidden(*shown, logs.text)


@pytest.mark.parametrize(("source", "bulk"), [("pg", False), ("my", False), ("my", True)])
def test_wrong_password_is_refused_without_showing_it(
    users: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    logs: pytest.LogCaptureFixture,
    source: str,
    bulk: bool,
) -> None:
    if bulk:
        pytest.importorskip("connectorx")
    monkeypatch.setenv("FED_SECRET_PW", WRONG)
    with federator.connect(catalog(users, bulk_rows=0 if bulk else -1)) as fed:
        with pytest.raises(federator.SourceError) as info:
            fed.sql(f"SELECT id FROM {source}.secret_t").to_arrow()
        text = f"{info.value}\n{info.value!r}\n{info.value.__cause__!r}"
        assert f"'{source}'" in text
        assert_hidden(text, logs.text)


def test_cli_output_never_shows_the_password(
    users: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("FED_SECRET_PW", PASSWORD)
    pg, my = users
    path = tmp_path / "catalog.toml"
    path.write_text(
        f'[sources.pg]\nkind = "postgres"\ndsn = "{pg}"\n'
        f'[sources.my]\nkind = "mysql"\ndsn = "{my}"\n'
    )
    outputs = []
    for argv in (
        ["sources", "-c", str(path)],
        ["query", "-c", str(path), JOIN],
        ["explain", "-c", str(path), "--analyze", JOIN],
        ["query", "-c", str(path), "SELECT nme FROM pg.secret_t"],
    ):
        code = cli.main(argv)
        out, err = capsys.readouterr()
        outputs += [out, err]
        assert code == (1 if "nme" in argv[-1] else 0), err
    assert "ada" in outputs[2] and "bob" in outputs[2]
    assert_hidden(*outputs)
    monkeypatch.setenv("FED_SECRET_PW", WRONG)
    assert cli.main(["query", "-c", str(path), "SELECT id FROM pg.secret_t"]) == 1
    out, err = capsys.readouterr()
    assert "error:" in err
    assert_hidden(out, err)
