"""Redis translation without a server: pushdown fixtures (SQL in, exact Redis commands out) and
the pure helpers (key templates, SCAN patterns, value conversion).

Fixture cases: tests/fixtures/pushdown/redis/*.sql. Regenerate their expected sections from the
current translator with ``python tests/unit/test_redis_translate.py`` and read the diff.
"""

from __future__ import annotations

import datetime as dt
import decimal
import sys
from typing import Any

import pyarrow as pa
import pytest
from _pushdown import (
    Case,
    collect,
    differences,
    federation_fixture,
    offline_federation,
    params,
    update_fixtures,
)
from federator.adapters.redis import KVTable, from_text, key_text

import federator
from federator.errors import CatalogError

REDIS_SOURCE: dict[str, Any] = {
    "kind": "redis",
    "url": "redis://:s3cret@redis.invalid:6379/0",
    "tables": {
        "user_features": {
            "key": "features:{user_id}",
            "type": "hash",
            "rows": 100_000,
            "columns": {"user_id": "int64", "clicks_7d": "float64", "segment": "string"},
        },
        "profiles": {
            "key": "profile:{user_id}",
            "type": "json",
            "rows": 100_000,
            "columns": {"user_id": "int64", "name": "string"},
        },
        "scores": {
            "key": "score:{version}:{user_id}",
            "type": "string",
            "rows": 100_000,
            "columns": {"version": "string", "user_id": "int64", "score": "int64"},
        },
    },
}


def redis_federation() -> federator.Federation:
    """Redis with declared tables and row counts (no I/O) beside the fixture SQLite source."""
    return offline_federation({"kv": REDIS_SOURCE})


fed = federation_fixture(redis_federation)


def test_there_are_redis_fixtures() -> None:
    assert len(collect("redis")) >= 5


@pytest.mark.parametrize("case", params("redis"))
def test_redis_pushdown(fed: federator.Federation, case: Case) -> None:
    assert not (diff := differences(fed, case)), "\n".join(diff)


def test_explain_hides_the_password(fed: federator.Federation) -> None:
    assert "s3cret" not in fed.explain("SELECT segment FROM kv.user_features WHERE user_id = 1")
    assert "s3cret" not in repr(fed.catalog.adapters["kv"])


# ---- pure helpers -------------------------------------------------------------------------
def test_key_template_round_trips() -> None:
    t = KVTable("t", "s:{app}:{id}", "hash", {"app": pa.string(), "id": pa.int64()})
    assert t.key_columns == ["app", "id"]
    assert t.key({"app": "web", "id": "7"}) == "s:web:7"
    assert t.parse_key("s:web:7") == {"app": "web", "id": "7"}
    assert t.parse_key("x:web:7") is None
    assert t.pattern({}) == "s:*:*"
    assert t.pattern({"app": "w*b"}) == r"s:w\*b:*"


def test_template_and_table_errors() -> None:
    with pytest.raises(CatalogError, match="names no"):
        KVTable("t", "constant", "hash", {})
    with pytest.raises(CatalogError, match="one column besides the key"):
        KVTable("t", "k:{id}", "string", {"id": pa.int64(), "a": pa.int64(), "b": pa.int64()})
    with pytest.raises(CatalogError, match="declares no tables"):
        federator.connect({"sources": {"kv": {"kind": "redis", "url": "redis://h:1/0"}}})
    with pytest.raises(CatalogError, match="has type 'set'"):
        federator.connect(
            {
                "sources": {
                    "kv": {
                        "kind": "redis",
                        "url": "redis://h:1/0",
                        "tables": {"t": {"key": "k:{id}", "type": "set"}},
                    }
                }
            }
        )


def test_values_convert_by_declared_type() -> None:
    assert from_text("42", pa.int64()) == 42
    assert from_text("1.5", pa.float64()) == 1.5
    assert from_text("true", pa.bool_()) is True and from_text("0", pa.bool_()) is False
    assert from_text("1.10", pa.decimal128(10, 2)) == decimal.Decimal("1.10")
    assert from_text("2024-01-02", pa.date32()) == dt.date(2024, 1, 2)
    assert from_text("[1, 2]", pa.list_(pa.int64())) == [1, 2]
    assert from_text(3.0, pa.int64()) == 3  # a JSON number
    with pytest.raises(ValueError):
        from_text("lots", pa.float64())
    assert key_text(5, pa.int64()) == "5"
    assert key_text(5.0, pa.int64()) == "5"
    assert key_text(5.5, pa.int64()) is None  # cannot be an integer key
    assert key_text("a", pa.string()) == "a"


if __name__ == "__main__":
    update_fixtures(redis_federation, "redis", sys.argv[1:])


def test_unreachable_server_names_source_and_address() -> None:
    from federator.errors import SourceUnreachableError

    catalog = {
        "sources": {
            "kv": {
                "kind": "redis",
                "url": "redis://:pw1@127.0.0.1:9/0",
                "timeout": 0.5,
                "tables": {"t": {"key": "k:{id}"}},
            }
        }
    }
    with federator.connect(catalog) as fed, pytest.raises(SourceUnreachableError) as info:
        fed.sql("SELECT id FROM kv.t")
    assert "'kv'" in str(info.value) and "127.0.0.1:9" in str(info.value)
    assert "pw1" not in str(info.value)


def test_a_request_redis_cannot_run_is_named_whole(fed: federator.Federation) -> None:
    """The refusal prints the whole statement (it was cut at 60 characters, mid-word)."""
    from sqlglot import parse_one

    from federator.plan.model import Fragment

    long_name = "a_rather_long_column_alias_that_passes_sixty_characters_easily"
    query = parse_one(f"SELECT 1 AS {long_name} UNION ALL SELECT 2")
    adapter = fed.catalog.adapter("kv")
    with pytest.raises(federator.UnsupportedError) as e:
        adapter.translate(Fragment("f0", "kv", query, [long_name]))
    assert str(e.value).endswith(f"cannot run: {query.sql()}")
    assert "source 'kv' (redis)" in str(e.value)
