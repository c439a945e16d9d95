"""Point-in-time training sets: each entity row gets every feature as it was at the row's time.

``fed.training_set(entities, features=[...], timestamp="ts")`` writes one federated query,
``ASOF LEFT JOIN`` per feature over the entity rows, and plans it like any other: each feature
table is a fragment of its own source that receives the entity keys (a bind join, when it pays)
and the time window ``[min(ts) - ttl, max(ts)]`` bound at run time; the as-of match runs in
the DuckDB residual. Entity rows given as Arrow or pandas are held by the federation's
in-memory source (``_entities``) until the result is gone; SQL text is a derived table.

>>> import os, tempfile, datetime as dt, pyarrow as pa, pyarrow.parquet as pq, federator
>>> folder = tempfile.mkdtemp()
>>> day = lambda d: dt.datetime(2026, 1, d)
>>> pq.write_table(pa.table({"user_id": [1, 1, 2], "updated_at": [day(1), day(5), day(2)],
...                          "age": [30, 31, 40]}), os.path.join(folder, "profiles.parquet"))
>>> labels = pa.table({"user_id": [1, 1, 2], "ts": [day(3), day(9), day(1)]})
>>> with federator.connect({"sources": {"lake": {"kind": "files", "path": folder}}}) as fed:
...     age = Feature("lake.profiles", key="user_id", timestamp="updated_at", columns=["age"])
...     rows = fed.training_set(labels, [age]).to_arrow().to_pylist()
>>> sorted((r["user_id"], r["ts"].day, r["age"]) for r in rows)
[(1, 3, 30), (1, 9, 31), (2, 1, None)]
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyarrow as pa
from sqlglot import exp

from federator.adapters.memory import MemoryAdapter
from federator.config import SourceConfig
from federator.errors import BindError, ParameterError, SQLSyntaxError
from federator.sql.dialect import Federated

ENTITIES_SOURCE = "_entities"  # the federation's in-memory source for entity rows


@dataclass(frozen=True)
class Feature:
    """Columns of one source table, taken as of each entity row's time.

    ``table``: ``source.table`` or ``source.schema.table``; ``key``: its key column, matched
    to the entity column of the same name (or ``entity_key``); ``timestamp``: the time the
    row's values became true; ``ttl``: the most a value may be older than the entity row's
    time (exactly ``ttl`` old still counts), else NULL; ``prefix``: put before every column
    name taken (None: names kept, a name clash gets ``<table>_``).

    >>> Feature("pg.profiles", key="user_id", timestamp="updated_at", columns=["age"]).table
    'pg.profiles'
    """

    table: str
    key: str
    timestamp: str
    columns: Sequence[str]
    ttl: timedelta | None = None
    prefix: str | None = None
    entity_key: str | None = None


def training_set(
    fed: Any,
    entities: Any,
    features: Sequence[Feature],
    timestamp: str = "ts",
    ttl: timedelta | None = None,
) -> Any:
    """The :class:`~federator.Result` of every entity row with each feature's columns as of
    the row's ``timestamp``: the entity columns in their order, then each feature's columns
    in the order given. ``ttl`` is the default of features that set none."""
    if not features:
        raise ParameterError("training_set needs at least one Feature")
    for feature in features:
        if not isinstance(feature, Feature) or isinstance(feature.columns, str):
            raise ParameterError(
                "training_set features must be federator.Feature(table, key, timestamp,"
                f" columns=[...]) with a list of columns, got {feature!r}"
            )
    if not isinstance(entities, str):
        entities = _arrow(entities)
    source, held = _entity_source(fed, entities)
    try:
        taken = _entity_columns(fed, entities)
        if timestamp not in taken:
            raise BindError(f"the entities have no timestamp column {timestamp!r} ({taken})")
        result = fed.sql(training_query(source, features, timestamp, ttl, taken))
    except BaseException:
        if held is not None:  # nothing will read it
            _memory(fed).drop(held)
        raise
    if held is not None:
        weakref.finalize(result, _memory(fed).drop, held)
    return result


def training_query(
    entities: exp.Expression,
    features: Sequence[Feature],
    timestamp: str,
    ttl: timedelta | None,
    entity_columns: Sequence[str],
) -> str:
    """The federated SQL of a training set over ``entities`` (a table or a subquery)."""
    names = list(entity_columns)
    select: list[exp.Expression] = [exp.Column(this=exp.Star(), table=_ident("l"))]
    if isinstance(entities, exp.Query):
        source: exp.Expression = entities.subquery("l")
    else:
        source = entities.as_("l", table=True)
    query = exp.select(*select).from_(source)
    for i, feature in enumerate(features):
        alias = f"feat{i}"
        table = _feature_table(feature)
        key = feature.entity_key or feature.key
        if key not in entity_columns:
            raise BindError(f"{feature.table}: the entities have no key column {key!r}")
        on = exp.and_(
            exp.EQ(this=_col("l", key), expression=_col(alias, feature.key)),
            exp.GTE(this=_col("l", timestamp), expression=_col(alias, feature.timestamp)),
        )
        join = exp.Join(this=table.as_(alias, table=True), on=on, method="ASOF", side="LEFT")
        query.append("joins", join)
        max_age = feature.ttl if feature.ttl is not None else ttl
        for column in feature.columns:
            name = _output_name(feature, column, names)
            names.append(name)
            value = _col(alias, column)
            if max_age is not None:
                recent = exp.GTE(
                    this=_col(alias, feature.timestamp),
                    expression=exp.Sub(this=_col("l", timestamp), expression=_interval(max_age)),
                )
                value = exp.Case(ifs=[exp.If(this=recent, true=value)])
            query.select(exp.alias_(value, name, quoted=True), copy=False)
    return query.sql(dialect=Federated)


def _output_name(feature: Feature, column: str, taken: list[str]) -> str:
    if feature.prefix is not None:
        name = feature.prefix + column
    elif column in taken:
        name = f"{_feature_table(feature).name}_{column}"
    else:
        name = column
    if name in taken:
        raise BindError(
            f"{feature.table}: column {name!r} is already taken in the training set;"
            " give the Feature a prefix"
        )
    return name


def _interval(age: timedelta) -> exp.Expression:
    """``INTERVAL 'n' MICROSECOND`` (exact for any timedelta)."""
    micros = (age.days * 86_400 + age.seconds) * 1_000_000 + age.microseconds
    if micros < 0:
        raise ParameterError(f"a feature's ttl must not be negative, got {age}")
    return exp.Interval(this=exp.Literal.string(str(micros)), unit=exp.var("MICROSECOND"))


def _feature_table(feature: Feature) -> exp.Table:
    try:
        table = exp.to_table(feature.table, dialect=Federated)
    except Exception:
        table = None
    if table is None or not table.db or table.alias:
        raise SQLSyntaxError(
            f"Feature table {feature.table!r}: write it as source.table or source.schema.table"
        )
    return table


def _col(table: str, name: str) -> exp.Column:
    return exp.column(name, table=table, quoted=True)


def _ident(name: str) -> exp.Identifier:
    return exp.to_identifier(name)


# ---- entity rows -------------------------------------------------------------------------
def _entity_source(fed: Any, entities: Any) -> tuple[exp.Expression, str | None]:
    """What the query reads the entities from, and the in-memory table to drop afterwards."""
    if isinstance(entities, str):
        return _parse_query(entities), None
    table = _arrow(entities)
    name = _memory(fed).add(table, "entities")
    fed.catalog.forget(ENTITIES_SOURCE)
    return exp.table_(name, db="main", catalog=ENTITIES_SOURCE), name


def _parse_query(text: str) -> exp.Query:
    from federator.sql.dialect import parse

    tree = parse(text)
    if not isinstance(tree, exp.Query):
        raise SQLSyntaxError("training_set entities given as text must be one SELECT query")
    return tree


def _entity_columns(fed: Any, entities: pa.Table | str) -> list[str]:
    if not isinstance(entities, str):
        return list(entities.schema.names)
    plan = fed.sql(entities).plan
    return list(plan.residual.named_selects if plan.residual else plan.fragments[0].columns)


def _arrow(entities: Any) -> pa.Table:
    if isinstance(entities, pa.Table):
        return entities
    if isinstance(entities, pa.RecordBatch):
        return pa.Table.from_batches([entities])
    if type(entities).__module__.startswith("pandas"):
        return pa.Table.from_pandas(entities, preserve_index=False)
    raise ParameterError(
        "training_set entities must be a pyarrow Table, a pandas DataFrame or SQL text,"
        f" not {type(entities).__name__}"
    )


def _memory(fed: Any) -> MemoryAdapter:
    """The federation's in-memory source, made on first use."""
    adapter = fed.catalog.adapters.get(ENTITIES_SOURCE)
    if adapter is None:
        config = SourceConfig(ENTITIES_SOURCE, "memory")
        adapter = fed.catalog.adapters[ENTITIES_SOURCE] = MemoryAdapter(config)
    return adapter
