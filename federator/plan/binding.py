"""Binding: a parsed query's names and parameters against the catalog.

Every source table is resolved to the catalog's exact spelling (``source.schema.table``), a
table function in FROM (``cypher('g', '…')``) becomes the table its source makes of it, and
every ``:name`` parameter must have a value. Values reach the native requests last, in
:func:`bind_params`, so a plan without them can be kept and reused.

>>> from federator.sql.dialect import parse
>>> check_params(parse("SELECT :x AS x"), {"x": 1})  # no error: every parameter has a value
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sqlglot import exp

from federator.adapters.base import TableInfo
from federator.catalog import Catalog
from federator.errors import ParameterError, UnknownTableError, UnsupportedError
from federator.plan.model import Plan


async def bind_tables(
    catalog: Catalog, tree: exp.Query, params: Mapping[str, Any] | None = None
) -> list[TableInfo]:
    """Resolve every source table to the catalog's exact names; return their infos."""
    ctes = {c.alias_or_name for c in tree.find_all(exp.CTE)}
    infos: dict[tuple[str, str, str], TableInfo] = {}
    for table in list(tree.find_all(exp.Table)):
        if isinstance(table.this, exp.Anonymous):  # a table function: cypher('g', '…')
            info = await _table_function(catalog, table, params or {})
            infos[(info.source, info.ref.schema, info.ref.name)] = info
            continue
        if not table.name or (not table.db and table.name in ctes):
            continue
        if table.catalog:
            source, schema = table.catalog, table.db
        elif table.db:
            source, schema = table.db, None
        else:
            raise UnknownTableError(
                f"{table.name} (write it as source.{table.name})",
                [f"{s}.{table.name}" for s in catalog.adapters],
            )
        info = await catalog.resolve(source, schema, table.name)
        alias = table.alias_or_name
        table.set("catalog", exp.to_identifier(source))
        table.set("db", exp.to_identifier(info.ref.schema, quoted=True))
        table.set("this", exp.to_identifier(info.ref.name, quoted=True))
        if not table.alias:
            table.set("alias", exp.TableAlias(this=exp.to_identifier(alias)))
        infos[(source, info.ref.schema, info.ref.name)] = info
    return list(infos.values())


async def _table_function(
    catalog: Catalog, table: exp.Table, params: Mapping[str, Any]
) -> TableInfo:
    """``fn('source', …)`` in FROM: the source's adapter turns it into a table of its own
    (``table_function(name, args, params)``); the node becomes that table."""
    fn = table.this
    args = list(fn.expressions)
    name = str(fn.this).lower()
    if not args or not (isinstance(args[0], exp.Literal) and args[0].is_string):
        raise UnsupportedError(f"table function {name}() wants a source name first")
    adapter = catalog.adapter(args[0].this)
    hook = getattr(adapter, "table_function", None)
    if hook is None:
        raise UnsupportedError(f"source {args[0].this!r} ({adapter.kind}) has no {name}()")
    info = await hook(name, args[1:], params)
    alias = table.alias_or_name or name
    table.replace(
        exp.Table(
            this=exp.to_identifier(info.ref.name, quoted=True),
            db=exp.to_identifier(info.ref.schema, quoted=True),
            catalog=exp.to_identifier(info.source),
            alias=exp.TableAlias(this=exp.to_identifier(alias)),
        )
    )
    return info


def check_params(tree: exp.Expression, params: Mapping[str, Any]) -> None:
    """Every ``:name`` in ``tree`` has a value in ``params`` (positional ``?`` is refused)."""
    names = {p.name for p in tree.find_all(exp.Placeholder)}
    if any(not n or n == "?" for n in names):
        raise ParameterError("use named parameters (:name), not positional '?'")
    missing = sorted(n for n in names if n not in params)
    if missing:
        raise ParameterError(
            f"missing value for parameter(s): {', '.join(':' + m for m in missing)}"
        )


def bind_params(plan: Plan, params: Mapping[str, Any]) -> Plan:
    """``plan`` with ``params``' values in its native requests (the plan itself is kept)."""
    requests = {fid: r.with_params(params) for fid, r in plan.requests.items()}
    return dataclasses.replace(plan, requests=requests)
