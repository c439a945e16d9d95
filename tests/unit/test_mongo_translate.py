"""MongoDB translation without a server: pushdown fixtures (SQL in, exact pipeline out) and the
pure helpers (sampling, value conversion, LIKE patterns).

Fixture cases: tests/fixtures/pushdown/mongo/*.sql. Regenerate their expected sections from the
current translator with ``python tests/unit/test_mongo_translate.py`` and read the diff.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
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
from bson import Decimal128, ObjectId
from federator.adapters.mongo_pipeline import like_to_regex
from federator.adapters.mongo_types import FieldSpec, from_bson, sampled_fields, to_bson

import federator
from federator.errors import CatalogError

MONGO_SOURCE: dict[str, Any] = {
    "kind": "mongo",
    "url": "mongodb://fixture:s3cret@mongo.invalid:27017/",
    "database": "shop",
    "discover": False,
    "tables": {
        "shop.orders": {
            "rows": 100_000,
            "columns": {
                "_id": "objectid",
                "id": "int64",
                "customer_id": "int64",
                "product_id": "int64",
                "amount": "decimal(12,2)",
                "status": "string",
                "ordered_at": "timestamp",
                "shipped_at": "timestamp",
                "address.city": "string",
                "items": "list<string>",
                "lines": "list<struct<product_id: int64, qty: int64, unit_price: float64>>",
            },
        },
        "shop.products": {
            "rows": 200,
            "columns": {"id": "int64", "name": "string"},
        },
    },
}


def mongo_federation() -> federator.Federation:
    """Mongo with declared tables (no I/O) beside the fixture SQLite source."""
    return offline_federation({"mongo": MONGO_SOURCE})


fed = federation_fixture(mongo_federation)


def test_there_are_mongo_fixtures() -> None:
    assert len(collect("mongo")) >= 10


@pytest.mark.parametrize("case", params("mongo"))
def test_mongo_pushdown(fed: federator.Federation, case: Case) -> None:
    assert not (diff := differences(fed, case)), "\n".join(diff)


def test_explain_hides_the_password(fed: federator.Federation) -> None:
    text = fed.explain("SELECT id FROM mongo.orders WHERE id = 1")
    assert "s3cret" not in text and "shop.orders.aggregate([" in text
    assert "s3cret" not in repr(fed.catalog.adapters["mongo"])


def test_params_are_bound_at_execution_not_in_text(fed: federator.Federation) -> None:
    result = fed.sql("SELECT id FROM mongo.orders WHERE status = :s", {"s": "x'); drop"})
    request = result.plan.requests[result.plan.fragments[0].id]
    assert ":s" in request.text and "drop" not in request.text
    assert request.params == ["x'); drop"]


def test_fully_qualified_and_short_names_agree(fed: federator.Federation) -> None:
    a = fed.explain("SELECT id FROM mongo.shop.orders WHERE id = 1")
    b = fed.explain("SELECT id FROM mongo.orders WHERE id = 1")
    assert a == b


def test_a_refused_pipeline_says_why_in_whole_words(fed: federator.Federation) -> None:
    """Issue 12: the error cut the statement mid-word ("… FROM (SELECT or as one pipeline")."""
    from federator.plan.model import Fragment
    from federator.sql.dialect import parse

    query = parse(
        'SELECT "x"."customer_id" AS "customer_id" FROM (SELECT "o"."customer_id" AS '
        '"customer_id" FROM "mongo"."shop"."orders" AS "o" WHERE "o"."status" = \'returned\') '
        'AS "x"'
    )
    fragment = Fragment(id="f0", source="mongo", query=query, columns=["customer_id"])
    with pytest.raises(federator.UnsupportedError) as e:
        fed.catalog.adapters["mongo"].translate(fragment)
    text = str(e.value)
    assert "source 'mongo' (mongo) cannot run this as one pipeline" in text
    assert "rule 'from one collection'" in text and text.endswith(query.sql())


# ---- pure helpers -------------------------------------------------------------------------
def test_like_to_regex() -> None:
    assert like_to_regex("Ber_in%") == "^Ber.in.*$"
    assert like_to_regex("a.b*c") == r"^a\.b\*c$"
    assert re.match(like_to_regex("50%"), "50% off")
    assert not re.match(like_to_regex("x_"), "x")


def test_sampled_fields_unify_types() -> None:
    oid = ObjectId()
    docs = [
        {
            "_id": oid,
            "n": 1,
            "x": 1,
            "d": Decimal128("1.5"),
            "t": dt.datetime(2024, 1, 1),
            "a": {"city": "Bern", "zip": 3000},
            "tags": ["a"],
            "mixed": 1,
        },
        {
            "_id": ObjectId(),
            "n": 2,
            "x": 2.5,
            "d": Decimal128("2.25"),
            "a": {"city": None},
            "tags": [],
            "mixed": "one",
            "items": [{"sku": "s", "qty": 1}],
        },
    ]
    fields = sampled_fields(docs)
    assert next(iter(fields)) == "_id"
    assert fields["_id"] == FieldSpec("_id", pa.string(), "objectid")
    assert fields["n"].type == pa.int64()
    assert fields["x"].type == pa.float64()
    assert fields["d"].type == pa.decimal128(38, 2)
    assert fields["t"].type == pa.timestamp("ms", tz="UTC")
    assert pa.types.is_struct(fields["a"].type)
    assert fields["a.city"].type == pa.string()
    assert fields["a.zip"].type == pa.int64()
    assert fields["tags"].type == pa.list_(pa.string())
    assert fields["mixed"].type == pa.string()
    assert fields["items"].type == pa.list_(
        pa.struct([pa.field("sku", pa.string()), pa.field("qty", pa.int64())])
    )


def test_values_between_sql_and_bson() -> None:
    oid = ObjectId()
    assert to_bson(str(oid), FieldSpec("_id", pa.string(), "objectid")) == oid
    assert to_bson("not-hex", FieldSpec("_id", pa.string(), "objectid")) == "not-hex"
    when = to_bson("2024-01-02", FieldSpec("t", pa.timestamp("ms", tz="UTC")))
    assert when == dt.datetime(2024, 1, 2, tzinfo=dt.UTC)
    assert to_bson(3, FieldSpec("d", pa.decimal128(12, 2))) == Decimal128("3")
    assert from_bson(oid) == str(oid)
    assert from_bson(Decimal128("1.25")) == decimal.Decimal("1.25")
    assert from_bson(dt.datetime(2024, 1, 1)).tzinfo is not None
    assert from_bson({"a": [oid]}, FieldSpec("x", pa.string(), "json")) == f'{{"a": ["{oid}"]}}'


def test_catalog_errors_name_what_to_fix() -> None:
    with pytest.raises(CatalogError, match="needs a 'url'"):
        federator.connect({"sources": {"m": {"kind": "mongo"}}})
    with pytest.raises(CatalogError, match="unknown column type 'intt'"):
        federator.connect(
            {
                "sources": {
                    "m": {
                        "kind": "mongo",
                        "url": "mongodb://h/",
                        "tables": {"db.c": {"columns": {"a": "intt"}}},
                    }
                }
            }
        )


if __name__ == "__main__":
    update_fixtures(mongo_federation, "mongo", sys.argv[1:])


def test_decimal_array_decodes_bid_bytes_exactly() -> None:
    from federator.adapters.mongo_types import decimal_array

    t = pa.decimal128(20, 2)
    values = [Decimal128("12.34"), None, Decimal128("-0.5"), Decimal128("7"), Decimal128("1E+3")]
    got = decimal_array(values, t)
    want = pa.array([None if v is None else v.to_decimal() for v in values], type=t)
    assert got is not None and got.equals(want)
    assert decimal_array([Decimal128("1.234")], t) is None  # would lose a digit: general path
    assert decimal_array([Decimal128("Infinity")], t) is None
    assert decimal_array([1.5], t) is None


def test_unreachable_server_names_source_and_address() -> None:
    from federator.errors import SourceUnreachableError

    catalog = {
        "sources": {"m": {"kind": "mongo", "url": "mongodb://u:pw1@127.0.0.1:9/", "timeout": 0.5}}
    }
    with federator.connect(catalog) as fed, pytest.raises(SourceUnreachableError) as info:
        fed.sql("SELECT a FROM m.db.c")
    assert "'m'" in str(info.value) and "127.0.0.1:9" in str(info.value)
    assert "pw1" not in str(info.value)
