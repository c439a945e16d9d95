"""Every mistake a user can make names what to fix, as a FederatorError subclass."""

from __future__ import annotations

import socket

import pytest

import federator
from federator.errors import SQLSyntaxError


def test_hierarchy() -> None:
    for cls in (
        federator.CatalogError, federator.SQLSyntaxError, federator.BindError,
        federator.UnknownSourceError, federator.UnknownTableError, federator.UnknownColumnError,
        federator.UnsupportedError, federator.ParameterError, federator.SourceError,
        federator.SourceUnreachableError, federator.QueryTimeoutError, federator.JoinKeyTypeError,
        federator.RuleError,
    ):  # fmt: skip
        assert issubclass(cls, federator.FederatorError)
    assert issubclass(federator.UnknownTableError, federator.BindError)
    assert issubclass(federator.SourceUnreachableError, federator.SourceError)


def test_unknown_source_suggests(fed: federator.Federation) -> None:
    with pytest.raises(federator.UnknownSourceError) as info:
        fed.sql("SELECT * FROM shopp.users")
    message = str(info.value)
    assert "unknown source 'shopp'" in message
    assert "did you mean 'shop'?" in message
    assert "sources: lake, shop" in message


def test_unknown_table_suggests(fed: federator.Federation) -> None:
    with pytest.raises(federator.UnknownTableError, match=r"did you mean 'shop\.users'"):
        fed.sql("SELECT * FROM shop.user")
    with pytest.raises(federator.UnknownTableError, match=r"did you mean 'lake\.products'"):
        fed.sql("SELECT * FROM lake.product")


def test_unqualified_table_asks_for_a_source(fed: federator.Federation) -> None:
    with pytest.raises(federator.UnknownTableError, match=r"write it as source\.users"):
        fed.sql("SELECT * FROM users")


def test_unknown_column_suggests(fed: federator.Federation) -> None:
    with pytest.raises(federator.UnknownColumnError, match=r"unknown column 'contry'.*'country'"):
        fed.sql("SELECT contry FROM shop.users")


def test_unknown_qualified_column_suggests(fed: federator.Federation) -> None:
    with pytest.raises(federator.UnknownColumnError, match=r"unknown column 'categry'.*'category'"):
        fed.sql(
            "SELECT p.categry FROM lake.products AS p JOIN shop.orders AS o ON o.product_id = p.id"
        )


@pytest.mark.parametrize(
    ("sql", "line", "cols"),
    [
        ("SELEC id FROM shop.users", 1, range(1, 25)),
        ("SELECT id\nFROM shop.users\nWHERE id = = 3", 3, range(10, 13)),
        ("SELECT id FROM shop.users WHERE (id = 1", 1, range(38, 41)),
    ],
)
def test_syntax_error_has_line_and_column(
    fed: federator.Federation, sql: str, line: int, cols: range
) -> None:
    with pytest.raises(SQLSyntaxError) as info:
        fed.sql(sql)
    assert info.value.line == line
    assert info.value.col in cols
    assert f"line {line}, column {info.value.col}" in str(info.value)


def test_only_one_query_statement(fed: federator.Federation) -> None:
    with pytest.raises(federator.UnsupportedError, match=r"exactly one SQL statement"):
        fed.sql("SELECT 1 FROM shop.users; SELECT 2 FROM shop.users")
    with pytest.raises(federator.UnsupportedError, match=r"only queries.*not INSERT"):
        fed.sql("INSERT INTO shop.users VALUES (1)")


def test_missing_parameter_is_named(fed: federator.Federation) -> None:
    with pytest.raises(federator.ParameterError, match=r"missing value for parameter.*:lo"):
        fed.sql("SELECT id FROM shop.users WHERE id > :lo")


def test_positional_parameter_is_refused(fed: federator.Federation) -> None:
    with pytest.raises(federator.ParameterError, match=r"named parameters"):
        fed.sql("SELECT id FROM shop.users WHERE id > ?", {})


def test_join_key_type_mismatch_is_named(fed: federator.Federation) -> None:
    with pytest.raises(federator.JoinKeyTypeError) as info:
        fed.sql("SELECT u.id FROM shop.users AS u JOIN lake.products AS p ON p.id = u.name")
    assert "shop.u.name is string" in str(info.value)
    assert "lake.p.id is int64" in str(info.value)


def test_pool_usable_after_errors(fed: federator.Federation) -> None:
    for bad in ("SELECT nope FROM shop.users", "SELEC", "SELECT * FROM shop.nope"):
        with pytest.raises(federator.FederatorError):
            fed.sql(bad)
    assert fed.sql("SELECT count(*) AS n FROM shop.users").to_arrow().to_pylist() == [{"n": 6}]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", ["postgres", "mysql"])
def test_unreachable_source_names_host_port_not_password(kind: str) -> None:
    port = _closed_port()
    scheme = "postgresql" if kind == "postgres" else "mysql"
    dsn = f"{scheme}://user:letmein99@127.0.0.1:{port}/db"
    with federator.connect(
        {"sources": {"far": {"kind": kind, "dsn": dsn, "connect_timeout": 3}}}
    ) as fed:
        with pytest.raises(federator.SourceUnreachableError) as info:
            fed.sql("SELECT 1 AS x FROM far.t")
        message = str(info.value)
        assert f"source 'far' unreachable at 127.0.0.1:{port}" in message
        assert "letmein99" not in message


def test_ambiguous_column_names_the_candidates(fed: federator.Federation) -> None:
    with pytest.raises(federator.AmbiguousColumnError, match=r"'id' is ambiguous.*p\.id or u\.id"):
        fed.sql("SELECT id FROM shop.users u JOIN lake.products p ON u.id = p.id")


def test_same_table_name_twice_asks_for_aliases(fed: federator.Federation) -> None:
    with pytest.raises(federator.BindError, match=r"'users' is used more than once.*alias"):
        fed.sql("SELECT shop.users.id FROM shop.users JOIN shop.main.users ON true")


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        ("WITH d AS (DELETE FROM shop.users RETURNING id) SELECT * FROM d", "runs DELETE"),
        (
            "WITH d AS (INSERT INTO shop.users (id) VALUES (9) RETURNING id) SELECT * FROM d",
            "runs INSERT",
        ),
        ("SELECT id INTO copy_of_users FROM shop.users", "INTO copy_of_users writes a table"),
    ],
)
def test_writes_inside_a_query_are_refused_by_name(
    fed: federator.Federation, sql: str, named: str
) -> None:
    with pytest.raises(federator.UnsupportedError, match=named):
        fed.sql(sql)


def test_cross_join_with_a_condition_is_a_syntax_error(fed: federator.Federation) -> None:
    """sqlglot's optimizer dropped the ON and answered the cross product."""
    with pytest.raises(federator.SQLSyntaxError, match=r"CROSS JOIN .* takes no ON"):
        fed.sql("SELECT u.id FROM shop.users u CROSS JOIN lake.products p ON u.id = p.id")
