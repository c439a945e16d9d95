"""Graph sources take their credentials from the URL percent-decoded, as ``${VAR}`` writes a
password with ``@``, ``/`` or ``#`` into it (issue 19: a Bolt URL's encoded password was
sent encoded, and the neo4j driver refuses a bolt:// URL with user:password@ at all)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

import federator

SECRET = "p@ss/w#1 %x"


def _adapter(source: dict[str, Any]) -> Any:
    fed = federator.connect({"sources": {"g": source}})
    try:
        return fed.catalog.adapters["g"]
    finally:
        fed.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bolt_url_password_from_a_variable_is_sent_decoded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FED_TEST_GRAPH_PW", SECRET)
    url = "bolt://neo:${FED_TEST_GRAPH_PW}@127.0.0.1:7687"
    transport = _adapter({"kind": "neo4j", "url": url}).transport
    assert transport.auth == ("neo", SECRET)
    assert transport.url == "bolt://127.0.0.1:7687"  # the driver refuses userinfo in bolt://


def test_bolt_url_written_encoded_by_hand() -> None:
    transport = _adapter({"kind": "neo4j", "url": "bolt://neo:p%40ss%2Fw@db:7687"}).transport
    assert transport.auth == ("neo", "p@ss/w")


def test_bolt_options_win_over_the_url() -> None:
    source = {"kind": "neo4j", "url": "bolt://a:b@db:7687", "user": "u", "password": "p%40"}
    assert _adapter(source).transport.auth == ("u", "p%40")  # an option is taken as written


def test_falkordb_url_password_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FED_TEST_GRAPH_PW", SECRET)
    source = {"kind": "falkordb", "url": "redis://:${FED_TEST_GRAPH_PW}@db:6379", "graph": "g"}
    transport = _adapter(source).transport
    assert (transport.username, transport.password) == (None, SECRET)
    assert (transport.host, transport.port) == ("db", 6379)


def test_bolt_url_with_credentials_reaches_the_connect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens: the error is the unreachable server, not the driver refusing the URL,
    and it carries no password."""
    pytest.importorskip("neo4j")
    monkeypatch.setenv("FED_TEST_GRAPH_PW", SECRET)
    url = f"bolt://neo:${{FED_TEST_GRAPH_PW}}@127.0.0.1:{_closed_port()}"
    fed = federator.connect({"sources": {"g": {"kind": "neo4j", "url": url}}}, timeout=10)
    with fed, pytest.raises(federator.FederatorError) as caught:
        fed.sql("SELECT * FROM g.Person")
    text = str(caught.value)
    assert "userinfo" not in text and "ConfigurationError" not in text, text
    assert SECRET not in text and "p%40ss" not in text
