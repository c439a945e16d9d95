"""The planner's knobs (catalog ``[planner]``): when to bind, semi-join, pre-/post-filter."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from federator.errors import CatalogError

_POSITIVE = ("bind_ratio", "bind_large_ratio", "semi_join_ratio", "bind_batch_size", "post_factor")
_VECTOR_FILTERS = ("auto", "pre", "post")
_SWITCHES = ("bind_race", "bind_alternatives", "partial_aggregate", "grouped_bind")


@dataclass
class PlannerSettings:
    """Knobs of the split; the defaults suit loopback servers."""

    bind_max_keys: int = 50_000  # a producer estimated up to this many rows may be bound
    bind_ratio: float = 4.0  # the consumer must be estimated this many times larger
    bind_batch_size: int = 10_000  # keys per request (PostgreSQL array / MySQL IN list)
    # A producer keeping at least this share of its table's unique keys is not bound: the
    # keys would match about every row of the other side (a foreign key) and filter nothing.
    bind_min_share_left: float = 0.9
    # Adaptive ceiling: a larger producer is still bound when the consumer is estimated at
    # least bind_ratio x bind_large_ratio times larger (moving keys beats moving its rows),
    # up to this many keys (the executor drops a bind at run time above its own limit).
    bind_large_max_keys: int = 200_000
    bind_large_ratio: float = 10.0
    # At run time, observed keys above the key limit are still bound (up to
    # bind_large_max_keys) when they are at most this share of the producer table's unique
    # keys: they keep that share of a foreign key's rows (TPC-H Q4: 57 k of 1.5 M order
    # keys keep 4 % of lineitem). 0: never.
    bind_small_share: float = 0.1
    # Semi-join reduction (a keys-only fragment of the producer, bound at run time) where a
    # plain bind is refused: the producer estimated at most semi_join_selectivity of its
    # table and the consumer at least semi_join_ratio times the producer.
    semi_join_selectivity: float = 0.25
    semi_join_ratio: float = 1.0
    # A keys-only fragment is one more query and a wait: only for consumers estimated at
    # least this large (below, fetching them in full on the bulk path was faster here).
    semi_join_min_rows: int = 100_000
    # Adaptive binds: False waits for the keys, then binds or fetches in full; True starts
    # the full fetch at once and cancels it if the keys come first and pay (no waiting when
    # the bind is dropped, but wasted work when it is not: it lost on a busy 2-core machine).
    bind_race: bool = False
    # A consumer several producers could bind (TPC-H Q5's lineitem: order keys or supplier
    # keys) waits for all of them and binds the keys keeping the smallest share of it; False:
    # the bind planned first, from the estimates alone.
    bind_alternatives: bool = True
    # A consumer grouped by the join key (a decorrelated subquery's aggregate per key, TPC-H
    # Q17) waits for the producer's keys and binds them under its GROUP BY when they are within
    # the key limit, whatever the row estimates say (they count its groups, not its work).
    grouped_bind: bool = True
    # Ship the small side to the big source (federator.plan.ship): a two-fragment query whose
    # big side's source can run the rest itself gets the small side's rows as array
    # parameters when at most this many come (0: never, the default: measured slower on
    # TPC-H Q4, where PostgreSQL then aggregates a decorrelated subquery over all lineitem).
    ship_max_rows: int = 0
    # A vector top-k (ORDER BY <distance> LIMIT k) whose filter is on another source: "pre"
    # binds the other side's keys into the search, "post" over-fetches k x factor and filters
    # after; "auto" picks pre when the keys are at most prefilter_selectivity of the collection.
    vector_filter: str = "auto"
    prefilter_selectivity: float = 0.2
    post_factor: int = 4
    # Aggregate before the join: a GROUP BY whose aggregates read one fragment's columns
    # only is computed partially in that fragment (federator.plan.partial_agg).
    partial_aggregate: bool = True
    # Before the bind decisions, each relational source is asked for its own row estimate of
    # its fragments (EXPLAIN), all at once, within this many seconds (0: never asked); a
    # source that errs or is late leaves the catalog's estimate in place.
    source_estimate_seconds: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "vector_filter":
                if value not in _VECTOR_FILTERS:
                    raise CatalogError(
                        f"[planner] vector_filter is {value!r}; use one of {_VECTOR_FILTERS}"
                    )
            elif f.name in _SWITCHES:
                if not isinstance(value, bool):
                    raise CatalogError(f"[planner] {f.name} is {value!r}; use true or false")
            elif isinstance(value, bool) or not isinstance(value, int | float):
                raise CatalogError(f"[planner] {f.name} is {value!r}; it takes a number")
            elif value <= 0 if f.name in _POSITIVE else value < 0:
                bound = "greater than 0" if f.name in _POSITIVE else "0 or more"
                raise CatalogError(f"[planner] {f.name} is {value!r}; it must be {bound}")

    @classmethod
    def from_catalog(cls, settings: Mapping[str, Any]) -> PlannerSettings:
        """The catalog's ``[planner]`` table; an unknown key names the known ones.

        >>> PlannerSettings.from_catalog({"bind_ratio": 2}).bind_ratio
        2
        """
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise CatalogError(
                f"[planner] has no setting {unknown[0]!r}; known: {', '.join(known)}"
            )
        return cls(**settings)
