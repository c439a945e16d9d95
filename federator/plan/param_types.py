"""Parameter values checked against the requests that use them, before anything is sent.

>>> from federator.plan.model import Plan
>>> check_param_types(Plan([], {}, None), {"p": object()}, {})  # no request uses :p
"""

from __future__ import annotations

import datetime
import decimal
import uuid
from collections.abc import Mapping
from typing import Any

from sqlglot import exp

from federator.errors import ParameterError
from federator.plan.model import Plan

_SCALAR_PARAM_TYPES = (
    type(None),
    bool,
    int,
    float,
    str,
    bytes,
    bytearray,
    memoryview,
    decimal.Decimal,
    datetime.date,  # datetime.datetime too
    datetime.time,
    datetime.timedelta,
    uuid.UUID,
)
_SCALAR_MODULES = ("numpy", "bson", "pyarrow.lib")  # numpy scalars, ObjectId, Arrow scalars


def check_param_types(plan: Plan, params: Mapping[str, Any], adapters: Mapping[str, Any]) -> None:
    """Refuse, before anything is sent, a parameter value that no request using it can bind:
    scalars, and lists/tuples of them (IN lists, arrays, vectors), bind everywhere; a dict
    only where the request takes documents (``Adapter.takes_document``: MongoDB, and the
    parameters of raw Cypher in ``cypher('g', '…')``, where a dict is a map)."""
    documents = plan.memo.get("param_types.documents")
    if documents is None:  # the same for every binding of the plan: derived once
        documents = plan.memo["param_types.documents"] = _takes_documents(plan, adapters)
    for name, value_documents in documents.items():
        if name in params and not _bindable(params[name], value_documents):
            raise ParameterError(_param_type_message(name, params[name], value_documents))


def _takes_documents(plan: Plan, adapters: Mapping[str, Any]) -> dict[str, bool]:
    """Parameter name → whether every request using it takes a document (a dict)."""
    documents: dict[str, bool] = {}
    for request in plan.requests.values():
        adapter = adapters.get(request.source)
        for name in request.param_names:
            takes = adapter is not None and adapter.takes_document(request, name)
            documents[name] = documents.get(name, True) and takes
    if plan.residual is not None:
        for node in plan.residual.find_all(exp.Placeholder):
            documents[node.name] = False
    return documents


def _bindable(value: Any, documents: bool) -> bool:
    if isinstance(value, _SCALAR_PARAM_TYPES) or type(value).__module__ in _SCALAR_MODULES:
        return True
    if isinstance(value, list | tuple):
        return all(_bindable(v, documents) for v in value)
    if isinstance(value, dict):
        items = value.items()
        return documents and all(isinstance(k, str) and _bindable(v, True) for k, v in items)
    return False


def _param_type_message(name: str, value: Any, documents: bool) -> str:
    kind = type(value).__name__
    hint = ""
    if isinstance(value, set | frozenset):
        hint = "; pass a list (or tuple) for an IN list or an array"
    elif isinstance(value, dict) and not documents:
        hint = (
            "; pass JSON as a string (json.dumps) or the fields as separate parameters (a dict"
            " binds as a document on MongoDB and as a map in cypher('g', '…') text only)"
        )
    return (
        f"parameter :{name} is a {kind}, which no source here can bind (numbers, strings, bytes,"
        f" decimals, dates, times, UUIDs, None, and lists of them bind){hint}"
    )
