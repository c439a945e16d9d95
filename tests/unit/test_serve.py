"""``federator serve`` offline: the Flight SQL wire codec against bytes written out by hand from
protobuf's encoding rules, password and token checks, parameter binding, LIKE filters, the
SqlInfo answer and the command's refusals."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.flight as flight
import pytest

from federator import cli
from federator.errors import CatalogError
from federator.serve import protocol
from federator.serve.auth import Authenticator, check_password, hash_password, token_entry
from federator.serve.flight import ServeSettings, _like, _params
from federator.serve.sqlinfo import sql_info_table

ANY_PREFIX = b"type.googleapis.com/arrow.flight.protocol.sql."


def any_of(name: bytes, body: bytes) -> bytes:
    """google.protobuf.Any by hand: field 1 (type_url) and 2 (value), both length-delimited."""
    url = ANY_PREFIX + name
    return bytes([0x0A, len(url)]) + url + bytes([0x12, len(body)]) + body


def test_a_statement_query_encodes_as_protobuf_does() -> None:
    body = b"\x0a\x08SELECT 1"  # field 1, wire type 2, 8 bytes
    assert protocol.encode("CommandStatementQuery", query="SELECT 1") == any_of(
        b"CommandStatementQuery", body
    )


def test_get_tables_decodes_every_field_kind() -> None:
    body = (
        b"\x0a\x02pg"  # catalog
        b"\x1a\x03fl%"  # table_name_filter_pattern (3)
        b"\x22\x05TABLE\x22\x04VIEW"  # table_types (4), repeated
        b"\x28\x01"  # include_schema (5), varint
        b"\x78\x07"  # field 15, unknown: skipped
    )
    command = protocol.decode(any_of(b"CommandGetTables", body))
    assert command.name == "CommandGetTables"
    assert command.fields == {
        "catalog": "pg",
        "table_name_filter_pattern": "fl%",
        "table_types": ["TABLE", "VIEW"],
        "include_schema": True,
    }


def test_sql_info_ids_packed_or_not_and_large() -> None:
    packed = b"\x0a\x04\x00\x01\xf8\x03"  # [0, 1, 504]: 504 = 0xf8 0x03 as a varint
    unpacked = b"\x08\x00\x08\x01\x08\xf8\x03"
    for body in (packed, unpacked):
        assert protocol.decode(any_of(b"CommandGetSqlInfo", body)).get("info") == [0, 1, 504]
    again = protocol.decode(protocol.encode("CommandGetSqlInfo", info=[0, 1, 504]))
    assert again.get("info") == [0, 1, 504]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x0a\x03abc", "not a Flight SQL command"),
        (any_of(b"CommandStatementUpdate", b""), "CommandStatementUpdate is not supported"),
        (any_of(b"CommandStatementQuery", b"\x0a\x09SELECT"), "runs past its end"),
        (b"\x0a", "truncated"),
    ],
)
def test_malformed_or_unknown_messages_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=message):
        protocol.decode(data)


# ---- credentials --------------------------------------------------------------------------
def test_passwords_and_tokens() -> None:
    entry = hash_password("correct horse", n=2**10)
    assert entry.startswith("scrypt$1024$8$1$") and "correct horse" not in entry
    assert check_password("correct horse", entry)
    assert not check_password("correct hors", entry)
    auth = Authenticator({"users": {"ada": entry}, "tokens": {"etl": token_entry("t0k")}})
    assert auth.login("ada", "nope") is None and auth.login("bob", "correct horse") is None
    session = auth.login("ada", "correct horse")
    assert session is not None and auth.bearer(session) == "ada"
    assert auth.bearer("t0k") == "token:etl"
    assert auth.bearer("t0k ") is None
    assert "t0k" not in repr(auth) and entry not in repr(auth)


@pytest.mark.parametrize(
    ("serve", "message"),
    [
        ({"users": {"ada": "plain-text"}}, r"\[serve.users\] ada is not a scrypt"),
        ({"tokens": {"etl": "t0k"}}, r"\[serve.tokens\] etl must be a sha256"),
        ({"users": ["ada"]}, r"\[serve.users\] must map names"),
    ],
)
def test_malformed_entries_name_what_to_fix(serve: dict[str, object], message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        Authenticator(serve)


def test_serve_settings_refuse_unknown_names() -> None:
    assert ServeSettings.from_catalog({"timeout": 5, "users": {}}).timeout == 5
    with pytest.raises(CatalogError, match=r"\[serve\] has no setting 'timout'"):
        ServeSettings.from_catalog({"timout": 5})


# ---- parameters, filters, SqlInfo ---------------------------------------------------------
QUERY = "SELECT * FROM pg.t WHERE a = :low AND b < :high AND c <> :low"


def test_bound_parameters_by_name_or_by_position() -> None:
    by_name = pa.table({"high": [9], "low": [1]})
    assert _params(QUERY, by_name) == {"high": 9, "low": 1}
    by_position = pa.table({"0": [1], "1": [9]})  # what ADBC sends for a tuple
    assert _params(QUERY, by_position) == {"low": 1, "high": 9}
    with pytest.raises(flight.FlightServerError, match=r"takes 2 parameter\(s\) \(low, high\)"):
        _params(QUERY, pa.table({"0": [1]}))
    with pytest.raises(flight.FlightServerError, match="one row of parameters"):
        _params(QUERY, pa.table({"low": [1, 2], "high": [3, 4]}))


@pytest.mark.parametrize(
    ("pattern", "value", "matches"),
    [
        ("fl%", "flight_many", True),
        ("%many", "flight_many", True),
        ("flight_man_", "flight_many", True),
        ("flight_man_", "flight_man", False),
        ("a.b", "axb", False),  # regex characters are literal
        ("public", "Public", False),
    ],
)
def test_like_filters(pattern: str, value: str, matches: bool) -> None:
    assert _like(pattern, value) is matches


def test_sql_info_answers_the_ids_asked_for() -> None:
    table = sql_info_table([0, 3, 504, 9999], "1.2.3", "20.0")
    assert table.column("info_name").to_pylist() == [0, 3, 504]  # 9999: unknown, left out
    assert table.column("value").to_pylist() == ["federator", True, '"']


# ---- the command ----------------------------------------------------------------------------
@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(f'[sources.lite]\nkind = "sqlite"\npath = "{tmp_path / "x.db"}"\n')
    return path


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--insecure-local", "--host", "0.0.0.0"], "--host 0.0.0.0 is not"),
        (["--tls-cert", "cert.pem"], "both --tls-cert and --tls-key"),
        ([], r"nobody can log in: add \[serve.users\]"),
    ],
)
def test_serve_refuses_unsafe_or_useless_options(
    capsys: pytest.CaptureFixture[str], catalog_file: Path, options: list[str], message: str
) -> None:
    assert cli.main(["serve", str(catalog_file), *options]) == cli.EXIT_USAGE
    assert re.search(message, capsys.readouterr().err)


def test_hash_password_and_new_token_print_catalog_entries(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("s3cret pass\n"))
    assert cli.main(["serve", "--hash-password"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    entry = out.split('"')[1]
    assert check_password("s3cret pass", entry) and "s3cret" not in out
    assert cli.main(["serve", "--new-token"]) == cli.EXIT_OK
    lines = capsys.readouterr().out.splitlines()
    token = lines[0].rsplit(" ", 1)[1]
    assert lines[1].split('"')[1] == token_entry(token)
