"""The command line: output formats parse back, exit codes, errors as one line, stdin, catalogs."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from _data import PRODUCTS, USERS

from federator import cli, formats
from federator.demo import catalog_toml


@pytest.fixture
def catalog_file(tmp_path: Path, catalog: dict[str, Any]) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(catalog_toml(catalog))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_query_table(capsys: pytest.CaptureFixture[str], catalog_file: Path) -> None:
    code, out, err = run(
        capsys, "query", "--catalog", str(catalog_file),
        "SELECT id, name, score FROM shop.users ORDER BY id",
    )  # fmt: skip
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split(" | ") == ["id", "name", "score"] or lines[0].startswith("id | name")
    assert set(lines[1]) <= {"-", "+"}
    assert lines[3].split("|")[2].strip() == "NULL"  # alan has no score
    assert lines[-1] == f"({len(USERS)} rows)"


def test_query_table_max_rows(capsys: pytest.CaptureFixture[str], catalog_file: Path) -> None:
    code, out, _ = run(
        capsys, "query", "-c", str(catalog_file), "--max-rows", "2", "SELECT id FROM shop.orders"
    )
    assert code == 0
    assert out.splitlines()[-1] == "(60 rows; first 2 shown, --max-rows 0 shows all)"
    assert len(out.splitlines()) == 2 + 2 + 1


def test_query_csv_parses_back(capsys: pytest.CaptureFixture[str], catalog_file: Path) -> None:
    code, out, _ = run(
        capsys, "query", "-c", str(catalog_file), "--format", "csv",
        "SELECT id, name, score, signup FROM shop.users ORDER BY id",
    )  # fmt: skip
    assert code == 0
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["id", "name", "score", "signup"]
    assert rows[1:] == [
        [str(u[0]), u[1], "" if u[4] is None else repr(u[4]), u[3] or ""] for u in USERS
    ]


def test_query_json_parses_back(capsys: pytest.CaptureFixture[str], catalog_file: Path) -> None:
    code, out, _ = run(
        capsys, "query", "-c", str(catalog_file), "-f", "json",
        "SELECT id, name, price FROM lake.products ORDER BY id",
    )  # fmt: skip
    assert code == 0
    data = json.loads(out, parse_float=str)
    assert data == [{"id": p[0], "name": p[1], "price": str(p[3])} for p in PRODUCTS]


def test_query_json_empty(capsys: pytest.CaptureFixture[str], catalog_file: Path) -> None:
    code, out, _ = run(capsys, "query", "-c", str(catalog_file), "-f", "json",
                       "SELECT id FROM shop.users WHERE id < 0")  # fmt: skip
    assert code == 0 and json.loads(out) == []


@pytest.mark.parametrize(("name", "reader"), [
    ("out.parquet", lambda p: pq.read_table(p)),
    ("out.arrow", lambda p: pa.ipc.open_file(p).read_all()),
])  # fmt: skip
def test_query_binary_output_by_extension(
    capsys: pytest.CaptureFixture[str], catalog_file: Path, tmp_path: Path, name: str, reader: Any
) -> None:
    target = tmp_path / name
    code, out, _ = run(
        capsys, "query", "-c", str(catalog_file), "-o", str(target),
        "SELECT id, price FROM lake.products ORDER BY id",
    )  # fmt: skip
    assert (code, out) == (0, "")
    table = reader(target)
    assert table.schema.field("price").type == pa.decimal128(8, 2)
    assert table.column("id").to_pylist() == [p[0] for p in PRODUCTS]


def test_query_csv_to_file(
    capsys: pytest.CaptureFixture[str], catalog_file: Path, tmp_path: Path
) -> None:
    target = tmp_path / "out.csv"
    code, _, _ = run(capsys, "query", "-c", str(catalog_file), "-o", str(target),
                     "SELECT id FROM shop.users ORDER BY id LIMIT 2")  # fmt: skip
    assert code == 0
    assert target.read_text() == "id\n1\n2\n"


def test_params(capsys: pytest.CaptureFixture[str], catalog_file: Path) -> None:
    code, out, _ = run(
        capsys, "query", "-c", str(catalog_file), "-f", "json",
        "--param", "c=GB", "-p", "lo=1",
        "SELECT id FROM shop.users WHERE country = :c AND id > :lo",
    )  # fmt: skip
    assert code == 0 and json.loads(out) == [{"id": 2}]


def test_parse_params() -> None:
    params = ["a=1", "b=-2.5", "c=hello world", "d='42'", ":e=x=y", "f=1e3"]
    assert formats.parse_params(params) == {
        "a": 1, "b": -2.5, "c": "hello world", "d": "42", "e": "x=y", "f": 1000.0,
    }  # fmt: skip
    assert formats.parse_params(["n=nan"]) == {"n": "nan"}
    for bad in ("novalue", "=3", "a b=1"):
        with pytest.raises(formats.UsageError):
            formats.parse_params([bad])


def test_bad_param_is_usage_error(capsys: pytest.CaptureFixture[str], catalog_file: Path) -> None:
    code, _, err = run(capsys, "query", "-c", str(catalog_file), "-p", "oops", "SELECT 1")
    assert code == 2 and "NAME=VALUE" in err


def test_sql_from_stdin(
    capsys: pytest.CaptureFixture[str], catalog_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("SELECT count(*) AS n\nFROM shop.users\n"))
    code, out, _ = run(capsys, "query", "-c", str(catalog_file), "-f", "csv", "-")
    assert code == 0 and out == f"n\n{len(USERS)}\n"


def test_explain(capsys: pytest.CaptureFixture[str], catalog_file: Path) -> None:
    q = (
        "SELECT u.name, p.name AS product FROM shop.orders AS o JOIN shop.users AS u "
        "ON u.id = o.user_id JOIN lake.products AS p ON p.id = o.product_id WHERE p.price > :p"
    )
    code, out, _ = run(capsys, "explain", "-c", str(catalog_file), "-p", "p=50", q)
    assert code == 0
    assert "Fragment f0: source" in out and "Residual (DuckDB over fragment results):" in out
    assert "$1 = 50" in out and "analyze:" not in out
    code, out, _ = run(capsys, "explain", "-c", str(catalog_file), "--analyze", "-p", "p=50", q)
    assert code == 0 and "analyze: actual rows" in out


def test_sources(
    capsys: pytest.CaptureFixture[str], catalog_file: Path, catalog: dict[str, Any]
) -> None:
    code, out, _ = run(capsys, "sources", "-c", str(catalog_file))
    assert code == 0
    assert "lake   | files" in out and "shop   | sqlite" in out
    assert catalog["sources"]["shop"]["path"] in out
    code, out, _ = run(capsys, "sources", "--tables", "-c", str(catalog_file))
    assert code == 0
    for table in ("shop.users", "shop.orders", "lake.products", "lake.events", "lake.ratings"):
        assert table in out
    assert "price decimal128(8, 2)" in out


def test_sources_never_show_a_password(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[sources.pg]\nkind = "postgres"\ndsn = "postgresql://u:hunter2@db.invalid:5432/d"\n'
    )
    code, out, err = run(capsys, "sources", "-c", str(path))
    assert code == 0 and "db.invalid:5432" in out
    assert "hunter2" not in out + err


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("SELECT nme FROM shop.users", "error: unknown column 'nme'; did you mean 'name'?"),
        (
            "SELECT * FROM shop.userz",
            "error: unknown table 'shop.userz'; did you mean 'shop.users'?",
        ),
        ("SELEC 1", "error: SQL syntax error (line 1"),
        ("SELECT id FROM shop.users WHERE id = :x", "error: missing value for parameter(s): :x"),
    ],
)
def test_query_errors_are_one_line(
    capsys: pytest.CaptureFixture[str], catalog_file: Path, sql: str, message: str
) -> None:
    code, out, err = run(capsys, "query", "-c", str(catalog_file), sql)
    assert code == 1 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith(message)
    assert "Traceback" not in err


def test_debug_shows_traceback(capsys: pytest.CaptureFixture[str], catalog_file: Path) -> None:
    code, _, err = run(
        capsys, "query", "--debug", "-c", str(catalog_file), "SELECT nme FROM shop.users"
    )
    assert code == 1 and "Traceback" in err and err.rstrip().endswith("did you mean 'name'?")


def test_catalog_errors_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, "sources", "-c", str(tmp_path / "missing.toml"))
    assert code == 1 and err.startswith("error: catalog file") and "does not exist" in err


def test_catalog_from_env_and_default_file(
    capsys: pytest.CaptureFixture[str],
    catalog_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEDERATOR_CATALOG", str(catalog_file))
    code, out, _ = run(capsys, "sources")
    assert code == 0 and "shop" in out
    monkeypatch.delenv("FEDERATOR_CATALOG")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, _, err = run(capsys, "sources")
    assert code == 2 and "no catalog" in err
    (elsewhere / "federator.toml").write_text(catalog_file.read_text())
    code, out, _ = run(capsys, "sources")
    assert code == 0 and "lake" in out


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["query"],
        ["query", "SELECT 1", "--format", "xml"],
        ["explain", "--bogus", "SELECT 1"],
        ["query", "-c", "x.toml", "   "],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, _, err = run(capsys, *argv)
    assert code == 2 and err


@pytest.mark.parametrize("argv", [["--help"], ["query", "--help"], ["explain", "--help"],
                                  ["sources", "--help"], ["demo", "--help"]])  # fmt: skip
def test_help_everywhere(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, _ = run(capsys, *argv)
    assert code == 0 and out.startswith("usage: federator")


def test_binary_to_terminal_is_refused(
    capsys: pytest.CaptureFixture[str], catalog_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
    code, _, err = run(capsys, "query", "-c", str(catalog_file), "-f", "parquet", "SELECT 1")
    assert code == 2 and "binary" in err


def test_plain_table_layout() -> None:
    lines = list(formats.plain_table(["n", "word"], [["1", "a"], ["100", None], ["-2.5", "ccc"]]))
    assert lines == [
        "n    | word",
        "-----+-----",
        "   1 | a",
        " 100 | NULL",
        "-2.5 | ccc",
    ]


def test_json_value_edge_cases() -> None:
    import datetime as dt
    import decimal

    assert formats.json_value(None) == "null"
    assert formats.json_value(True) == "true"
    assert formats.json_value(decimal.Decimal("12.340")) == "12.340"
    assert formats.json_value(float("inf")) == "null"
    assert formats.json_value(b"\x00\xff") == '"AP8="'
    assert formats.json_value(dt.datetime(2024, 1, 2, 3, 4, 5)) == '"2024-01-02T03:04:05"'
    assert formats.json_value('quote " and \\') == '"quote \\" and \\\\"'


def test_module_entry_point(catalog_file: Path) -> None:
    """``python -m federator.cli`` as a script: exit code and output through a real process."""
    proc = subprocess.run(
        [sys.executable, "-m", "federator.cli", "query", "-c", str(catalog_file), "-f", "csv",
         "SELECT name FROM shop.users WHERE id = 1"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "name\nada\n"
    bad = subprocess.run(
        [sys.executable, "-m", "federator.cli", "query", "-c", str(catalog_file),
         "SELECT x FROM shop.users"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.startswith("error: unknown column 'x'") and "Traceback" not in bad.stderr
