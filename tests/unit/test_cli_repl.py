"""The REPL without a terminal: statement splitting, Enter's rule, completion candidates, and
piped input through ``federator repl`` (the pty tests are in tests/integration/test_repl.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from _data import USERS

import federator
from federator import cli
from federator.demo import catalog_toml
from federator.repl import CatalogCompleter, split_statements, statement_complete


@pytest.fixture
def catalog_file(tmp_path: Path, catalog: dict[str, Any]) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(catalog_toml(catalog))
    return path


def repl(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    catalog_file: Path,
    script: str,
    *args: str,
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    code = cli.main(["repl", str(catalog_file), *args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("text", "statements"),
    [
        ("SELECT 1; SELECT 2;", ["SELECT 1", "SELECT 2"]),
        ("SELECT ';' AS s;", ["SELECT ';' AS s"]),
        ("SELECT 1 -- a; comment\n;", ["SELECT 1 -- a; comment"]),
        ("SELECT 'it''s;' AS s", ["SELECT 'it''s;' AS s"]),
        (
            "\\d\nSELECT 1;\n\\timing off\nSELECT\n2;",
            ["\\d", "SELECT 1", "\\timing off", "SELECT\n2"],
        ),
        ("SELECT 1\n\\d", ["SELECT 1\n\\d"]),  # inside an unfinished statement: SQL text
        ("-- only a comment\n;;", []),
    ],
)
def test_split_statements(text: str, statements: list[str]) -> None:
    assert split_statements(text) == statements


@pytest.mark.parametrize(
    ("text", "complete"),
    [
        ("SELECT 1", False),
        ("SELECT 1;", True),
        ("SELECT 1;  -- done", True),
        ("SELECT ';'", False),
        ("SELECT 1;\nSELECT 2", False),
        ("\\d shop.users", True),
        ("", True),
        ("quit", True),
    ],
)
def test_enter_runs_only_complete_statements(text: str, complete: bool) -> None:
    assert statement_complete(text) is complete


def test_completion_candidates(fed: federator.Federation) -> None:
    completer = CatalogCompleter(fed)

    def words(word: str, statement: str = "") -> list[str]:
        return [c for c, _ in completer.candidates(word, statement or word)]

    assert words("sh") == ["shop."]
    assert words("shop.us") == ["shop.users"]
    assert "lake.products" in words("lake.")
    statement = "SELECT sc FROM shop.users AS u WHERE u.na"
    assert words("sc", statement) == ["score"]
    assert words("u.na", statement) == ["u.name"]
    assert words("sel") == ["select"] and words("SEL") == ["SELECT"]


def test_piped_script_prints_tables_and_meta_output(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, catalog_file: Path
) -> None:
    script = (
        "SELECT id, name, score FROM shop.users ORDER BY id;\n"
        "\\sources\n"
        "\\d shop.users\n"
        "\\d\n"
        "\\explain on\n"
        "SELECT name FROM shop.users WHERE id = 2;\n"
        "\\q\n"
        "SELECT 'never run' AS x FROM shop.users;\n"
    )
    code, out, err = repl(capsys, monkeypatch, catalog_file, script)
    assert (code, err) == (0, "")
    assert f"({len(USERS)} rows) in " in out
    assert "NULL" in out  # alan has no score
    assert "sqlite" in out and "files" in out  # \sources
    assert "score" in out and "double" in out  # \d shop.users
    assert "lake.products" in out  # \d
    assert "Fragment f0: source shop (sqlite)" in out  # \explain on
    assert "never run" not in out


def test_formats_output_file_and_timing(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    catalog_file: Path,
    tmp_path: Path,
) -> None:
    target = tmp_path / "users.parquet"
    script = (
        "\\timing off\n\\format json\nSELECT id, name FROM shop.users ORDER BY id LIMIT 2;\n"
        "\\format csv\nSELECT id, name FROM shop.users ORDER BY id LIMIT 2;\n"
        f"\\o {target}\nSELECT id FROM shop.users;\n\\o\n"
    )
    code, out, err = repl(capsys, monkeypatch, catalog_file, script)
    assert (code, err) == (0, "")
    start = out.index("[")
    assert json.loads(out[start : out.index("]", start) + 1]) == [
        {"id": 1, "name": "ada"},
        {"id": 2, "name": "alan"},
    ]
    assert "id,name\n1,ada\n2,alan\n(2 rows)\n" in out  # timing off: no " in ..."
    assert pq.read_table(target).num_rows == len(USERS)
    assert f"wrote {len(USERS)} rows to {target} (parquet)" in out


def test_max_rows_truncates_with_a_note(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, catalog_file: Path
) -> None:
    code, out, _ = repl(
        capsys, monkeypatch, catalog_file, "SELECT id FROM shop.orders;", "--max-rows", "3"
    )
    assert code == 0
    assert "(60 rows; first 3 shown" in out


def test_errors_are_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, catalog_file: Path
) -> None:
    script = (
        "SELEC id FROM shop.users;\nSELECT nme FROM shop.users;\n\\bogus\n\\format xml\n"
        "SELECT 1 AS ok FROM shop.users LIMIT 1;\n"
    )
    code, out, err = repl(capsys, monkeypatch, catalog_file, script)
    assert code == 1
    assert "Traceback" not in err
    lines = err.splitlines()
    assert lines[0].startswith("error: SQL syntax error (line 1, column ")
    assert lines[1] == "  SELEC id FROM shop.users"
    assert lines[2].strip() == "^"
    assert "unknown column 'nme'; did you mean 'name'?" in err
    assert "unknown command \\bogus" in err
    assert "\\format wants table, csv or json" in err
    assert "(1 row)" in out  # later statements still run


def test_explain_analyze_and_verbose(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, catalog_file: Path
) -> None:
    script = (
        "EXPLAIN ANALYZE SELECT name FROM shop.users WHERE id = 2;\n"
        "explain verbose SELECT u.name FROM shop.users AS u WHERE u.id > 2;\n"
    )
    code, out, err = repl(capsys, monkeypatch, catalog_file, script)
    assert (code, err) == (0, "")
    assert "analyze: actual rows 1" in out
    assert "pushed u.id > 2 by rule 'GT'" in out


def test_debug_shows_the_traceback(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, catalog_file: Path
) -> None:
    code, _, err = repl(capsys, monkeypatch, catalog_file, "SELEC 1;", "--debug")
    assert code == 1 and "Traceback" in err


def test_cache_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, catalog_file: Path
) -> None:
    code, out, _ = repl(capsys, monkeypatch, catalog_file, "\\cache\n")
    assert code == 0
    assert "cache not configured" in out or ":" in out


def test_repl_usage(capsys: pytest.CaptureFixture[str], catalog_file: Path) -> None:
    code = cli.main(["repl", str(catalog_file), "--catalog", str(catalog_file)])
    assert code == 2
    assert "give the catalog once" in capsys.readouterr().err
    assert cli.main(["repl", "--help"]) == 0
