"""Catalog and DSN parsing (pure functions, a table of cases) and secret redaction."""

from __future__ import annotations

from pathlib import Path

import pytest

import federator
from federator.config import SourceConfig, load_catalog, parse_dsn, redact_dsn

SECRET = "pa:ss@w/rd"
SECRET_IN_DSN = "pa%3Ass%40w%2Frd"  # percent-encoded, as a URL needs it


@pytest.mark.parametrize(
    ("dsn", "default_port", "expected"),
    [
        (
            "postgresql://alice:pw@db.example.com:6543/sales",
            5432,
            ("postgresql", "db.example.com", 6543, "alice", "pw", "sales"),
        ),
        ("postgresql://alice@db/sales", 5432, ("postgresql", "db", 5432, "alice", None, "sales")),
        ("mysql://root@127.0.0.1/test", 3306, ("mysql", "127.0.0.1", 3306, "root", None, "test")),
        ("mysql://127.0.0.1:3307", 3306, ("mysql", "127.0.0.1", 3307, None, None, None)),
        ("postgresql:///sales", 5432, ("postgresql", "localhost", 5432, None, None, "sales")),
        (
            "postgresql://u:p%40ss%3Aword@h/d",
            None,
            ("postgresql", "h", None, "u", "p@ss:word", "d"),
        ),
        ("postgresql://[::1]:5433/d", 5432, ("postgresql", "::1", 5433, None, None, "d")),
    ],
)
def test_parse_dsn(dsn: str, default_port: int | None, expected: tuple[object, ...]) -> None:
    d = parse_dsn(dsn, default_port=default_port)
    assert (d.scheme, d.host, d.port, d.user, d.password, d.database) == expected


def test_parse_dsn_query_and_where() -> None:
    d = parse_dsn("postgresql://u@h:1/d?sslmode=disable&application_name=x")
    assert d.query == {"sslmode": "disable", "application_name": "x"}
    assert d.where == "h:1"
    assert parse_dsn("mysql://h/d").where == "h"


@pytest.mark.parametrize(
    "bad", ["no-scheme-here", "postgresql://u:pw@h:notaport/d", "postgresql://u:pw@h:99999/d"]
)
def test_malformed_dsn_is_a_catalog_error_without_password(bad: str) -> None:
    with pytest.raises(federator.CatalogError) as info:
        parse_dsn(bad)
    assert "pw" not in str(info.value)


def test_password_never_in_dsn_repr() -> None:
    d = parse_dsn(f"postgresql://u:{'s3cr3t'}@h/d")
    assert d.password == "s3cr3t"
    assert "s3cr3t" not in repr(d) and "s3cr3t" not in str(d)


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("mysql://root:x@127.0.0.1/test", "mysql://root:***@127.0.0.1/test"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db", "postgresql://h/db"),
    ],
)
def test_redact_dsn(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown


def test_env_substitution_and_secret_redaction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FED_TEST_PW", "hunter2")
    monkeypatch.setenv("FED_TEST_TOKEN", "tok-123")
    cfg = load_catalog(
        {
            "sources": {
                "pg": {"kind": "postgres", "dsn": "postgresql://u:${FED_TEST_PW}@h:5432/d"},
                "x": {"kind": "sqlite", "path": "a.db", "token": "${FED_TEST_TOKEN}"},
            },
            "timeout": 5,
        }
    )
    pg, x = cfg.sources["pg"], cfg.sources["x"]
    assert pg.options["dsn"] == "postgresql://u:hunter2@h:5432/d"
    assert x.options["token"] == "tok-123"
    assert cfg.settings == {"timeout": 5}
    for shown in (repr(pg), str(pg), repr(x), str(x), repr(cfg)):
        assert "hunter2" not in shown
        assert "tok-123" not in shown
    assert "***" in repr(pg) and "***" in repr(x)


def test_missing_env_var_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FED_TEST_MISSING", raising=False)
    with pytest.raises(federator.CatalogError, match=r"\$\{FED_TEST_MISSING\}.*not set"):
        load_catalog({"sources": {"pg": {"kind": "postgres", "dsn": "${FED_TEST_MISSING}"}}})


def test_toml_catalog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FED_TEST_DB", str(tmp_path / "x.db"))
    path = tmp_path / "federator.toml"
    path.write_text(
        'timeout = 30\n[sources.shop]\nkind = "sqlite"\npath = "${FED_TEST_DB}"\n'
        '[sources.lake]\nkind = "files"\npath = "data"\n'
    )
    cfg = load_catalog(path)
    assert set(cfg.sources) == {"shop", "lake"}
    assert cfg.sources["shop"].options["path"] == str(tmp_path / "x.db")
    assert cfg.settings["timeout"] == 30
    assert load_catalog(str(path)).sources["lake"].kind == "files"


@pytest.mark.parametrize(
    ("catalog", "message"),
    [
        ({}, "needs a \\[sources\\] table"),
        ({"sources": {}}, "needs a \\[sources\\] table"),
        ({"sources": {"a": "sqlite"}}, "must be a table of settings"),
        ({"sources": {"a": {"path": "x"}}}, "needs a 'kind'"),
        ({"sources": {"bad-name": {"kind": "sqlite", "path": "x"}}}, "plain identifier"),
    ],
)
def test_malformed_catalogs(catalog: dict[str, object], message: str) -> None:
    with pytest.raises(federator.CatalogError, match=message):
        load_catalog(catalog)


def test_catalog_file_errors(tmp_path: Path) -> None:
    with pytest.raises(federator.CatalogError, match=r"does not exist"):
        load_catalog(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sources\nkind = ")
    with pytest.raises(federator.CatalogError, match=r"not valid TOML"):
        load_catalog(bad)


def test_unknown_kind_lists_known_kinds() -> None:
    with pytest.raises(federator.CatalogError, match=r"unknown source kind 'oracle'.*sqlite"):
        federator.connect({"sources": {"o": {"kind": "oracle"}}})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "sqlite"}, "needs a 'path'"),
        ({"kind": "files"}, "needs a 'path'"),
        ({"kind": "postgres"}, "needs a 'dsn'"),
        ({"kind": "mysql"}, "needs a 'dsn'"),
    ],
)
def test_source_settings_are_checked(spec: dict[str, str], message: str) -> None:
    with pytest.raises(federator.CatalogError, match=message):
        federator.connect({"sources": {"s": spec}})


def test_federation_never_shows_a_password() -> None:
    with federator.connect(
        {
            "sources": {
                "pg": {
                    "kind": "postgres",
                    "dsn": f"postgresql://u:{SECRET_IN_DSN}@db.invalid:5432/d",
                },
                "my": {"kind": "mysql", "dsn": "mysql://root:topsecret@my.invalid:3307/shop"},
            }
        }
    ) as fed:
        shown = [repr(fed), str(fed.sources()), *map(repr, fed.catalog.adapters.values())]
        shown += [repr(s) for s in fed.config.sources.values()]
        for text in shown:
            assert SECRET not in text and "topsecret" not in text
        assert fed.sources() == {
            "pg": "postgres at db.invalid:5432",
            "my": "mysql at my.invalid:3307",
        }
        assert fed.catalog.adapters["pg"].dsn.password == SECRET


def test_source_config_repr_hides_secret_keys() -> None:
    cfg = SourceConfig("s", "redis", {"password": "pw1", "host": "h"}, frozenset({"password"}))
    assert "pw1" not in repr(cfg) and "'h'" in repr(cfg)


URL_SPECIAL = "p#ss/w@rd?:%x&y=1"


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("postgresql://app:${FED_PW}@h:5432/db", "postgresql://app:{enc}@h:5432/db"),
        ("mysql://${FED_PW}@h/db", "mysql://{enc}@h/db"),
        (
            "postgresql://u@h/db?sslpassword=${FED_PW}&x=1",
            "postgresql://u@h/db?sslpassword={enc}&x=1",
        ),
        ("redis://:${FED_PW}@h:6379/0", "redis://:{enc}@h:6379/0"),
        ("${FED_PW}", "{raw}"),  # not a URL: the value as it is
        ("/data/${FED_PW}/lake", "/data/{raw}/lake"),
    ],
)
def test_env_values_are_percent_encoded_inside_urls(
    monkeypatch: pytest.MonkeyPatch, template: str, expected: str
) -> None:
    from urllib.parse import quote

    monkeypatch.setenv("FED_PW", URL_SPECIAL)
    cfg = load_catalog({"sources": {"s": {"kind": "postgres", "dsn": template}}})
    dsn = cfg.sources["s"].options["dsn"]
    assert dsn == expected.format(enc=quote(URL_SPECIAL, safe=""), raw=URL_SPECIAL)
    if "://" in template:
        d = parse_dsn(dsn)
        assert URL_SPECIAL in (d.password, d.user, d.query.get("sslpassword"))
        assert d.host == "h"


def test_a_url_special_password_never_reaches_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from urllib.parse import quote

    monkeypatch.setenv("FED_PW", URL_SPECIAL)
    monkeypatch.setenv("FED_TOKEN", "tok-987")
    cfg = load_catalog(
        {
            "sources": {
                "pg": {"kind": "postgres", "dsn": "postgresql://u:${FED_PW}@h:5432/d"},
                "my": {"kind": "mysql", "dsn": "mysql://h/d?user=u&password=${FED_PW}"},
                "m": {"kind": "mongo", "url": "mongodb://u:${FED_PW}@h/db", "auth": {"token": "x"}},
                "k": {"kind": "redis", "url": "redis://:plain-secret@h:6379/0"},
                "g": {"kind": "neo4j", "url": "bolt://h", "password": "${FED_PW}"},
                "v": {"kind": "milvus", "uri": "http://h", "token": "${FED_TOKEN}"},
            },
            "cache": {"redis": "redis://:${FED_PW}@h:6379/0", "ttl": 5},
        }
    )
    assert cfg.settings["cache"]["redis"] == f"redis://:{quote(URL_SPECIAL, safe='')}@h:6379/0"
    from federator.cache import CacheSettings

    cache = CacheSettings.from_config(cfg.settings["cache"])
    shown = [repr(cfg), str(cfg), repr(cache), *(repr(s) for s in cfg.sources.values())]
    shown += [repr(parse_dsn(cfg.sources["my"].options["dsn"]))]
    for text in shown:
        for secret in (URL_SPECIAL, quote(URL_SPECIAL, safe=""), "plain-secret", "tok-987"):
            assert secret not in text
    assert "redis://:***@h:6379/0" in repr(cache) and "ttl=5" in repr(cache)
    assert "'token': '***'" in repr(cfg.sources["m"])


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://u:p@ss/w#rd@h:5/d", "postgresql://u:***@h:5/d"),  # raw @ / # in it
        ("mysql://h/d?user=u&password=pw&ssl=1", "mysql://h/d?user=u&password=***&ssl=1"),
        ("https://h/x?api_key=k1&access_token=t2", "https://h/x?api_key=***&access_token=***"),
        ("mongodb://u:pw@h1,h2/db?authSource=admin", "mongodb://u:***@h1,h2/db?authSource=admin"),
    ],
)
def test_redact_dsn_every_credential_form(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown


@pytest.mark.parametrize("sep", ["#", "/", "?"])
def test_malformed_dsn_error_never_quotes_a_password_piece(sep: str) -> None:
    with pytest.raises(federator.CatalogError) as info:
        parse_dsn(f"postgresql://u:hunterA{sep}hunterB@h:5432/db")
    assert "hunterA" not in str(info.value) and "hunterB" not in str(info.value)
    assert "percent-encoded" in str(info.value)


@pytest.mark.parametrize(
    ("planner", "named"),
    [
        ({"bind_ratio": 0}, "bind_ratio is 0; it must be greater than 0"),
        ({"bind_max_keys": -1}, "bind_max_keys is -1; it must be 0 or more"),
        ({"bind_ratio": "4"}, "bind_ratio is '4'; it takes a number"),
        ({"vector_filter": "sometimes"}, "vector_filter is 'sometimes'"),
        ({"bind_ratoi": 2}, "no setting 'bind_ratoi'; known: bind_max_keys, bind_ratio"),
    ],
)
def test_planner_settings_are_checked(tmp_path, planner: dict, named: str) -> None:
    """A bad [planner] value is a CatalogError naming it (bind_ratio = 0 divided by zero)."""
    import re

    import federator

    catalog = {"sources": {"f": {"kind": "files", "path": str(tmp_path)}}, "planner": planner}
    with pytest.raises(federator.CatalogError, match=re.escape(named)):
        federator.connect(catalog)
