"""The DuckDB-attach peer: DuckDB 1.5.5 attaching PostgreSQL and MariaDB with its postgres and
mysql scanner extensions, run in its own virtual environment (the project's DuckDB is 2.0, for
which no scanner build exists).

The parent (bench/tpch.py) calls :func:`run_query`, which starts this file as a script under
the peer venv's Python for one query:

    bench/.peer-venv/bin/python bench/duckdb_peer.py REQUEST.json

REQUEST holds the two DSNs, the DuckDB SQL, the repeats and the path of an Arrow IPC file to
write the last answer to; the script prints ``{"seconds": [...], "attach_s": ...}`` as JSON.
This file imports only the standard library at module level, so the peer venv needs just
``duckdb``, its two extensions and ``pyarrow``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

VERSION = "1.5.5"
PACKAGES = [
    f"duckdb=={VERSION}",
    f"duckdb-extension-postgres-scanner=={VERSION}",
    f"duckdb-extension-mysql-scanner=={VERSION}",
    "pyarrow",
]
VENV = Path(__file__).resolve().parent / ".peer-venv"
EXTENSIONS = ("postgres_scanner", "mysql_scanner")


class PeerUnavailable(RuntimeError):
    """The peer's environment could not be made (no registry, no wheel for this platform)."""


def python() -> Path:
    """The peer venv's interpreter, creating the venv and installing the packages on first use.

    >>> python()  # doctest: +SKIP
    PosixPath('.../bench/.peer-venv/bin/python')
    """
    exe = VENV / "bin" / "python"
    ok = VENV / ".installed"
    if ok.exists() and ok.read_text() == " ".join(PACKAGES):
        return exe
    steps = [
        [sys.executable, "-m", "venv", str(VENV)],
        [str(exe), "-m", "pip", "install", "-q", "--disable-pip-version-check", *PACKAGES],
    ]
    for cmd in steps:
        out = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
        if out.returncode:
            raise PeerUnavailable(f"{' '.join(cmd[:4])}: {out.stderr.strip()[-300:]}")
    ok.write_text(" ".join(PACKAGES))
    return exe


def run_query(
    pg_dsn: str, mysql_dsn: str, sql: str, repeats: int, answer: Path, timeout: float,
    repeat_under_s: float = 30.0,
) -> dict[str, Any]:  # fmt: skip
    """Time ``sql`` (DuckDB dialect, tables as ``pg.x`` / ``my.x``) in a peer process: best of
    ``repeats`` after ATTACH (no repeat once the runs took ``repeat_under_s``); the last answer
    lands in ``answer`` as an Arrow IPC file.

    >>> run_query(pg, my, "SELECT count(*) FROM pg.lineitem", 2, Path("/tmp/a.arrow"), 60)
    ... # doctest: +SKIP
    {'seconds': [0.31, 0.29], 'attach_s': 0.02}
    """
    request = {
        "pg": pg_dsn,
        "mysql": mysql_dsn,
        "sql": sql,
        "repeats": repeats,
        "answer": str(answer),
        "budget_s": min(repeat_under_s, timeout / 2),
    }
    request_path = answer.with_suffix(".json")
    request_path.write_text(json.dumps(request))
    out = subprocess.run(
        [str(python()), __file__, str(request_path)],
        capture_output=True, text=True, check=False, timeout=timeout,
    )  # fmt: skip
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1][:300] if out.stderr else "failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _extension_path(name: str) -> str:
    import importlib.util

    spec = importlib.util.find_spec(f"duckdb_extension_{name}")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"duckdb-extension-{name.replace('_', '-')} is not installed")
    base = Path(next(iter(spec.submodule_search_locations)))
    return str(base / "extensions" / f"v{VERSION}" / f"{name}.duckdb_extension")


def _libpq(dsn: str) -> str:
    p = urlsplit(dsn)
    return (
        f"host={p.hostname or '127.0.0.1'} port={p.port or 5432} "
        f"user={unquote(p.username or 'postgres')} dbname={p.path.lstrip('/')}"
    )


def _mysql(dsn: str) -> str:
    p = urlsplit(dsn)
    parts = [
        f"host={p.hostname or '127.0.0.1'}",
        f"port={p.port or 3306}",
        f"user={unquote(p.username or 'root')}",
        f"database={p.path.lstrip('/')}",
    ]
    if p.password:
        parts.append(f"password={unquote(p.password)}")
    return " ".join(parts)


def _literal(text: str) -> str:
    """A SQL string literal (ATTACH takes no bound parameters)."""
    return "'" + text.replace("'", "''") + "'"


def _main(request_path: str) -> None:
    import duckdb
    import pyarrow as pa

    req = json.loads(Path(request_path).read_text())
    con = duckdb.connect()
    for name in EXTENSIONS:
        con.execute(f"LOAD '{_extension_path(name)}'")
    t0 = time.perf_counter()
    con.execute(f"ATTACH {_literal(_libpq(req['pg']))} AS pg (TYPE postgres, READ_ONLY)")
    con.execute(f"ATTACH {_literal(_mysql(req['mysql']))} AS my (TYPE mysql, READ_ONLY)")
    attach_s = time.perf_counter() - t0
    seconds: list[float] = []
    table = None
    for _ in range(req["repeats"]):
        t0 = time.perf_counter()
        table = con.sql(req["sql"]).fetch_arrow_table()
        seconds.append(time.perf_counter() - t0)
        if sum(seconds) > req["budget_s"]:  # one slow run is enough: leave time to answer
            break
    assert table is not None
    with pa.OSFile(req["answer"], "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    print(json.dumps({"seconds": seconds, "attach_s": attach_s}))


if __name__ == "__main__":
    _main(sys.argv[1])
