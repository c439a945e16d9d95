"""Pushdown fixtures per backend: federated SQL in, native requests and residual out.

The cases live in tests/fixtures/pushdown/<backend>/*.sql (format: ``_pushdown.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _pushdown import (
    FIXTURES,
    Case,
    ExpectedFragment,
    collect,
    differences,
    parse_fixture,
    planning_federation,
    render_case,
)

import federator

BACKENDS = ("sqlite", "files", "postgres", "mysql")


def _params(backend: str) -> list[object]:
    return [
        pytest.param(
            case,
            id=case.id,
            marks=[pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else [],
        )
        for case in collect(backend)
    ]


@pytest.fixture(scope="module")
def fed() -> Iterator[federator.Federation]:
    federation = planning_federation()
    yield federation
    federation.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_backend_has_fixtures(backend: str) -> None:
    assert len(collect(backend)) >= 5, f"no pushdown fixtures for {backend} in {FIXTURES / backend}"


@pytest.mark.parametrize("case", _params("sqlite"))
def test_sqlite(fed: federator.Federation, case: Case) -> None:
    assert not (diff := differences(fed, case)), "\n".join(diff)


@pytest.mark.parametrize("case", _params("files"))
def test_files(fed: federator.Federation, case: Case) -> None:
    assert not (diff := differences(fed, case)), "\n".join(diff)


@pytest.mark.parametrize("case", _params("postgres"))
def test_postgres(fed: federator.Federation, case: Case) -> None:
    assert not (diff := differences(fed, case)), "\n".join(diff)


@pytest.mark.parametrize("case", _params("mysql"))
def test_mysql(fed: federator.Federation, case: Case) -> None:
    assert not (diff := differences(fed, case)), "\n".join(diff)


# ---- the fixture machinery itself --------------------------------------------------------
def test_planning_federation_does_no_io(fed: federator.Federation) -> None:
    # The postgres and mysql hosts are .invalid: planning works because only metadata is used.
    plan = fed.sql("SELECT id FROM pg.customers WHERE id = 1").plan
    assert plan.fragments[0].source == "pg"
    assert "s3cret" not in plan.explain()


def test_wrong_fixture_fails_with_readable_diff(fed: federator.Federation, tmp_path: Path) -> None:
    path = tmp_path / "wrong.sql"
    path.write_text(
        "-- case: wrong\n"
        "SELECT id FROM lite.customers WHERE id = 1\n"
        "-- fragment lite\n"
        "SELECT 1\n"
        "-- residual\n"
        "none\n"
    )
    (case,) = parse_fixture(path)
    diff = differences(fed, case)
    assert len(diff) == 1
    assert "expected: SELECT 1" in diff[0]
    assert 'got: SELECT "customers"."id" AS "id" FROM "customers"' in diff[0]


def test_fixture_parser_sections(tmp_path: Path) -> None:
    path = tmp_path / "cases.sql"
    path.write_text(
        "# header comment\n\n"
        "-- case: one\n"
        "-- params: a=1 b=x\n"
        "SELECT 1\nFROM lite.t\n"
        "-- note: pushed\n"
        "-- fragment lite\n"
        "SELECT  *\n  FROM x\n"
        "-- bind: k <- f1.id\n"
        "-- fragment lake\n"
        "SELECT y\n"
        "-- residual\n"
        "SELECT 2\n\n"
        "-- case: two\n"
        "-- xfail: known gap\n"
        "SELECT bad\n"
        "-- error: UnknownColumnError: did you mean\n"
    )
    one, two = parse_fixture(path)
    assert one.sql == "SELECT 1\nFROM lite.t"
    assert one.params == {"a": 1, "b": "x"}
    assert one.notes == ["pushed"]
    assert one.fragments == [
        ExpectedFragment("lite", "SELECT  *\n  FROM x", "k <- f1.id"),
        ExpectedFragment("lake", "SELECT y", None),
    ]
    assert one.residual == "SELECT 2"
    assert two.xfail == "known gap"
    assert two.error == ("UnknownColumnError", "did you mean")
    assert two.residual is None and two.fragments == []


def test_fixture_parser_rejects_stray_text(tmp_path: Path) -> None:
    path = tmp_path / "bad.sql"
    path.write_text("SELECT 1\n-- case: x\nSELECT 2\n")
    with pytest.raises(ValueError, match="outside a case"):
        parse_fixture(path)


def test_render_case_round_trips(fed: federator.Federation, tmp_path: Path) -> None:
    path = tmp_path / "rt.sql"
    path.write_text("-- case: rt\n-- params: x=3\nSELECT name FROM lite.customers WHERE id = :x\n")
    (case,) = parse_fixture(path)
    path.write_text("\n".join(render_case(fed, case)) + "\n")
    (again,) = parse_fixture(path)
    assert differences(fed, again) == []
    assert again.fragments[0].text.endswith('WHERE "customers"."id" = ?')
