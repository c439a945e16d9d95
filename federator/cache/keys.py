"""Cache keys and shapes: exact, type-tagged forms of parameters and the digests built from
them, volatile expressions (never cached), and the literal-free text of a plan's shape.

>>> _canon([1, 1.5, None])
['l', [['i', '1'], ['f', '0x1.8000000000000p+0'], None]]
"""

from __future__ import annotations

import datetime as dt
import decimal
import hashlib
import json
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from sqlglot import exp

if TYPE_CHECKING:
    from federator.plan.model import Fragment, Plan

_VOLATILE_NODES = tuple(
    getattr(exp, n)
    for n in (
        "CurrentTimestamp",
        "CurrentDate",
        "CurrentTime",
        "CurrentDatetime",
        "CurrentUser",
        "Rand",
        "Randn",
        "Uuid",
    )
    if hasattr(exp, n)
)
_VOLATILE_NAMES = {
    "random",
    "rand",
    "now",
    "uuid",
    "gen_random_uuid",
    "uuid_generate_v4",
    "clock_timestamp",
    "statement_timestamp",
    "sysdate",
    "nextval",
    "txid_current",
}


class _Unkeyable(Exception):
    """A value the cache cannot key exactly (the request is then not cached)."""


def _canon(value: Any) -> Any:
    """A JSON-able, type-tagged, exact form of a parameter value."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return ["i", str(value)]
    if isinstance(value, float):
        return ["f", value.hex()]
    if isinstance(value, bytes | bytearray | memoryview):
        return ["b", bytes(value).hex()]
    if isinstance(value, decimal.Decimal):
        return ["d", str(value)]
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return [type(value).__name__, value.isoformat()]
    if isinstance(value, dt.timedelta):
        return ["td", value.days, value.seconds, value.microseconds]
    if isinstance(value, uuid.UUID):
        return ["u", str(value)]
    if isinstance(value, list | tuple):
        return ["l", [_canon(v) for v in value]]
    if isinstance(value, dict):
        return ["m", sorted((str(k), _canon(v)) for k, v in value.items())]
    module = type(value).__module__.split(".")[0]
    if module == "torch":
        value = value.detach().cpu().numpy()
        module = "numpy"
    if module == "numpy":
        import numpy as np

        arr = np.ascontiguousarray(value)
        if arr.dtype == object:
            return ["l", [_canon(v) for v in arr.tolist()]]
        digest = hashlib.blake2b(arr.tobytes(), digest_size=16).hexdigest()
        return ["np", str(arr.dtype), list(arr.shape), digest]
    if isinstance(value, pa.Array | pa.ChunkedArray):
        return ["l", [_canon(v) for v in value.to_pylist()]]
    raise _Unkeyable(f"a parameter of type {type(value).__name__} cannot be part of a cache key")


def _digest(*parts: Any) -> str:
    text = json.dumps(parts, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=20).hexdigest()


def _keys_digest(keys: Sequence[Any] | None) -> Any:
    if keys is None:
        return "all"
    try:
        ordered = sorted(keys, key=lambda v: (v is None, type(v).__name__, v))
    except TypeError:
        ordered = list(keys)
    return _digest(_canon(ordered))


def _volatile(tree: exp.Expression) -> str | None:
    for node in tree.walk():
        if isinstance(node, _VOLATILE_NODES):
            return node.sql()
        if isinstance(node, exp.Anonymous) and str(node.name).lower() in _VOLATILE_NAMES:
            return node.sql()
    return None


def _abstract_literals(tree: exp.Expression) -> str:
    def repl(node: exp.Expression) -> exp.Expression:
        if isinstance(node, exp.Literal):
            return exp.Placeholder(this="lit")
        return node

    return tree.transform(repl).sql(dialect="postgres")


def _table_refs(frag: Fragment) -> list[tuple[str, str]]:
    """(schema, name) of every source table the fragment reads."""
    refs = {
        (t.db, t.name)
        for t in frag.query.find_all(exp.Table)
        if t.name and (not t.catalog or t.catalog == frag.source)
    }
    return sorted(refs)


def fragment_facts(plan: Plan, frag: Fragment) -> tuple[list[tuple[str, str]], str | None]:
    """The fragment's table references and its volatile expression (None: none), walked once
    per planned plan and kept in ``plan.memo``, which every binding of the plan shares."""
    key = ("cache.fragment", frag.id)
    facts = plan.memo.get(key)
    if facts is None or facts[0] is not frag.query:
        facts = plan.memo[key] = (frag.query, _table_refs(frag), _volatile(frag.query))
    return facts[1], facts[2]
