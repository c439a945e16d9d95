"""sqlglot writes ``x IS NOT NULL`` and ``x NOT LIKE p`` as ``Is``/``Like`` with ``negate``:
the translators with a filter language of their own must keep the NOT (the conformance matrix
found FalkorDB answering ``IS NOT NULL`` as ``IS NULL``)."""

from __future__ import annotations

from federator.adapters.milvus import _filter

from federator.sql.dialect import parse


def test_milvus_filter_keeps_is_not_null_and_not_like() -> None:
    where = parse("SELECT a FROM t WHERE b IS NOT NULL AND c NOT LIKE 'x%' AND d IS NULL")
    text = "".join(p for p in _filter(where.args["where"], []) if isinstance(p, str))
    assert text == '((not (b is null) and not (c like "x%")) and d is null)'


def test_milvus_not_in_drops_null_rows() -> None:
    """Milvus's ``in`` is false on NULL, so ``not (x in [..])`` kept NULL rows (found by the
    conformance matrix); under NOT the list is written as ``==`` comparisons, unknown on NULL."""
    where = parse("SELECT a FROM t WHERE n NOT IN (3, 7) AND m IN (1, 2)")
    text = "".join(p for p in _filter(where.args["where"], []) if isinstance(p, str))
    assert text == "(not ((n == 3 or n == 7)) and m in [1, 2])"
