"""PyTorch hand-off: a streaming, sharded training dataset over a federated query, and (from
:mod:`federator.tensors`) Arrow results as tensors.

:class:`FederatedDataset` streams a federated query into a DataLoader with no LIMIT/OFFSET:
each worker wraps the query in a key-range filter that the planner pushes to the source, with
the ranges cut from a first ``MIN/MAX/COUNT`` query, so every row is read exactly once.
Conversions follow a declared :class:`TorchPolicy` (:func:`to_torch`).
"""

from __future__ import annotations

import datetime as dt
import math
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import torch
from sqlglot import exp
from torch.utils.data import IterableDataset, get_worker_info

from federator.errors import FederatorError
from federator.sql.dialect import parse
from federator.tensors import (
    Features,
    TorchConversionError,
    TorchPolicy,
    Vocabulary,
    _policy,
    move_to,
    to_torch,
)

if TYPE_CHECKING:
    from federator.config import CatalogConfig
    from federator.federation import Federation

__all__ = [
    "Features",
    "FederatedDataset",
    "RayShard",
    "TorchConversionError",
    "TorchPolicy",
    "Vocabulary",
    "move_to",
    "to_torch",
]


# ---- the streaming dataset ---------------------------------------------------------------

_LO, _HI = "federator_shard_lo", "federator_shard_hi"


@dataclass(frozen=True)
class KeyStats:
    """What the first cheap query learned: the key's range and the row counts."""

    lo: Any
    hi: Any
    rows: int
    null_keys: int


class FederatedDataset(IterableDataset):
    """Stream a federated query into training as batches of tensors.

    >>> ds = FederatedDataset(fed, "SELECT * FROM pg.features", key="id",  # doctest: +SKIP
    ...                       features=["f1", "f2"], label="y", batch_size=1024)
    >>> loader = DataLoader(ds, batch_size=None, num_workers=2, pin_memory=True)  # doctest: +SKIP

    Each item is one batch, as :func:`to_torch` returns it (a dict, or :class:`Features` with
    ``features=``), so give the DataLoader ``batch_size=None``. Sharding: with ``key`` (an
    integer, floating, date or timestamp column of the answer), a first query reads
    ``MIN/MAX/COUNT`` of it; each DataLoader worker (and each rank under torch.distributed)
    then runs the query wrapped in ``key >= lo AND key < hi`` for its own ranges (or
    ``key % n = i`` with ``sharding="modulo"``), a filter the planner pushes to the source.
    Rows with a null key go to the first shard. Without ``key`` only one reader may run.

    ``shuffle_buffer`` rows are mixed with a generator seeded by ``seed``, the epoch
    (:meth:`set_epoch`) and the shard, so an epoch's order is reproducible. ``len()`` is the
    number of batches one reader yields (``num_rows`` is exact); each extra worker may add
    one last partial batch.

    ``mlflow=True`` logs the query as a ``training`` input of the active MLflow run when
    iteration starts (:func:`federator.mlflow.log_input`: its digest reads the answer once
    more); ``pip install 'federator[mlflow]'``.
    """

    def __init__(
        self,
        fed: Federation,
        sql: str,
        params: Mapping[str, Any] | None = None,
        *,
        batch_size: int = 1024,
        key: str | None = None,
        sharding: str = "range",
        shards_per_worker: int = 1,
        columns: Sequence[str] | None = None,
        features: Sequence[str] | None = None,
        label: str | None = None,
        dtype: torch.dtype | str | Mapping[str, torch.dtype | str] | None = None,
        label_dtype: torch.dtype | str | None = None,
        shuffle_buffer: int = 0,
        seed: int = 0,
        drop_last: bool = False,
        timeout: float | None = None,
        policy: TorchPolicy | None = None,
        mlflow: bool = False,
        **policy_options: Any,
    ):
        super().__init__()
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if sharding not in ("range", "modulo"):
            raise ValueError("sharding must be 'range' or 'modulo'")
        self._fed: Federation | None = fed
        self._config: CatalogConfig = fed.config
        self._timeout = timeout
        self.sql = sql
        self.params = dict(params or {})
        for reserved in (_LO, _HI):
            if reserved in self.params:
                raise ValueError(f"parameter name {reserved!r} is reserved for sharding")
        self.batch_size = batch_size
        self.key = key
        self.sharding = sharding
        self.shards_per_worker = max(1, int(shards_per_worker))
        self.columns = columns
        self.features = features
        self.label = label
        self.dtype = dtype
        self.label_dtype = label_dtype
        self.shuffle_buffer = shuffle_buffer
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        self._passes = 0
        self.policy = _policy(policy, policy_options)
        self.mlflow = mlflow
        self._logged = False
        if mlflow:
            import federator.mlflow  # noqa: F401  (a missing extra fails here, not in a worker)
        self._query = parse(sql)
        # Plan now so errors surface at construction, not inside a worker.
        fed.sql(self._query, self.params)
        self._stats: KeyStats | None = None
        if key is not None:
            self._stats = self._read_stats(fed)
        self._freeze_vocabularies(fed)

    # ---- sizes ---------------------------------------------------------------------------
    @property
    def stats(self) -> KeyStats | None:
        return self._stats

    @property
    def num_rows(self) -> int:
        if self._stats is None:
            assert self._fed is not None, "num_rows is known in the process that built it"
            self._stats = self._read_stats(self._fed)
        return self._stats.rows

    def __len__(self) -> int:
        rows = self.num_rows
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        """Reseed the shuffle for an epoch (call before iterating, as with DistributedSampler).
        The order is a function of (seed, epoch, passes over this copy, shard); the pass count
        restarts at 0 here."""
        self.epoch = epoch
        self._passes = 0

    # ---- Ray: one stream per trainer -----------------------------------------------------
    def ray_shards(self, n: int, *, equal: bool = False) -> list[RayShard]:
        """With ``engine="ray"``: the answer as a Ray Dataset cut by Ray Data's
        ``streaming_split`` into ``n`` shards, one per trainer (each picklable, e.g. to a Ray
        Train worker). In each epoch every row reaches exactly one shard once; the ``n``
        shards must iterate an epoch together (streaming_split's rule). ``equal=True`` gives
        every shard the same row count (dropping at most ``n - 1`` rows).

        >>> shards = ds.ray_shards(2)  # doctest: +SKIP
        >>> for batch in shards[rank]: ...  # doctest: +SKIP
        """
        fed = self._fed
        if fed is None or fed.engine is None:
            raise FederatorError(
                "ray_shards() needs the Ray engine: build the dataset over"
                " federator.connect(catalog, engine='ray')"
            )
        if n < 1:
            raise ValueError("ray_shards() needs n >= 1")
        import ray.data

        table = fed.sql(self._query, self.params, timeout=self._timeout).to_arrow()
        size = max(1, math.ceil(table.num_rows / n))  # n blocks: every trainer can get one
        blocks = [table.slice(start, size) for start in range(0, table.num_rows, size)]
        dataset = ray.data.from_arrow(blocks or [table])
        return [RayShard(self, it) for it in dataset.streaming_split(n, equal=equal)]

    # ---- pickling to spawned workers: the catalog travels, the open federation does not -----
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_fed"] = None
        return state

    # ---- iteration -----------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, torch.Tensor] | Features]:
        shard, shards = _shard_of_this_reader()
        if shards > 1 and self.key is None:
            raise FederatorError(
                f"{shards} readers (DataLoader workers times ranks) need key= to shard by: an"
                " integer, date or timestamp column of the query"
            )
        own = get_worker_info() is not None or self._fed is None
        fed = self._open_federation() if own else self._fed
        assert fed is not None
        try:
            if self.mlflow and not self._logged and shard == 0:
                self._log_input(fed)
            yield from self._iterate(fed, shard, shards)
        finally:
            if own:
                fed.close()

    def _log_input(self, fed: Federation) -> None:
        """``mlflow=True``: log the (unsharded) query as the run's training input, once per
        copy, by the first shard's reader; a worker process without an active run (spawned)
        warns instead of starting a run of its own."""
        import mlflow

        from federator.mlflow import log_input

        self._logged = True
        if get_worker_info() is not None and mlflow.active_run() is None:
            warnings.warn(
                "FederatedDataset(mlflow=True): no active MLflow run in this DataLoader worker,"
                " so nothing was logged; call federator.mlflow.log_input(sql, params=..., fed=fed)"
                " in the training process instead",
                stacklevel=3,
            )
            return
        log_input(self.sql, "training", self.params, fed=fed)

    def _open_federation(self) -> Federation:
        from federator.federation import Federation

        return Federation(self._config, timeout=self._timeout)

    def _iterate(
        self, fed: Federation, shard: int, shards: int
    ) -> Iterator[dict[str, torch.Tensor] | Features]:
        import numpy as np

        # Passes over this copy of the dataset count too: persistent workers never see
        # set_epoch, and a loop that forgets it still gets a new order each epoch.
        passes = self._passes
        self._passes += 1
        rng = np.random.default_rng([self.seed, self.epoch, passes, shard])
        total = shards * self.shards_per_worker
        mine = list(range(shard, total, shards))
        if self.shuffle_buffer:
            rng.shuffle(mine)
        tables = (t for part in mine for t in self._read_part(fed, part, total))
        if self.shuffle_buffer:
            tables = _shuffled(tables, self.shuffle_buffer, self.batch_size, rng)
        for table in _rebatch(tables, self.batch_size):
            if self.drop_last and table.num_rows < self.batch_size:
                return
            yield self._convert(table)

    def _convert(self, table: pa.Table) -> dict[str, torch.Tensor] | Features:
        return to_torch(
            table,
            self.columns,
            features=self.features,
            label=self.label,
            dtype=self.dtype,
            label_dtype=self.label_dtype,
            policy=self.policy,
        )

    def _read_part(self, fed: Federation, part: int, total: int) -> Iterator[pa.Table]:
        for query, params in self._part_queries(part, total):
            result = fed.sql(query, {**self.params, **params}, timeout=self._timeout)
            with result.to_batches() as reader:  # a loop that stops early stops the query
                for batch in reader:
                    if batch.num_rows:
                        yield pa.Table.from_batches([batch])

    def _part_queries(self, part: int, total: int) -> list[tuple[exp.Query, dict[str, Any]]]:
        """The query (or queries) that read shard ``part`` of ``total``."""
        if total == 1 or self.key is None:
            return [(self._query, {})]
        stats = self._stats
        assert stats is not None
        key = exp.column(self.key, table="q", quoted=True)
        queries: list[tuple[exp.Query, dict[str, Any]]] = []
        if stats.rows > stats.null_keys:
            if self.sharding == "modulo":
                # Shard numbers are ours, not user data: literals, so that positional drivers
                # see no repeated parameter.
                mod = exp.Literal.number(total)
                rem = exp.Mod(
                    this=exp.paren(
                        exp.Add(
                            this=exp.Mod(this=key.copy(), expression=mod), expression=mod.copy()
                        )
                    ),
                    expression=mod.copy(),
                )
                cond = exp.EQ(this=rem, expression=exp.Literal.number(part))
                queries.append((self._wrap(cond), {}))
            else:
                bounds = _bounds(stats.lo, stats.hi, total)
                conds: list[exp.Expression] = []
                values: dict[str, Any] = {}
                if part > 0:
                    conds.append(key.copy() >= exp.Placeholder(this=_LO))
                    values[_LO] = bounds[part - 1]
                if part < total - 1:
                    conds.append(key.copy() < exp.Placeholder(this=_HI))
                    values[_HI] = bounds[part]
                if not conds:
                    conds.append(exp.Not(this=exp.Is(this=key.copy(), expression=exp.Null())))
                queries.append((self._wrap(exp.and_(*conds)), values))
        if part == 0 and stats.null_keys:
            queries.append((self._wrap(exp.Is(this=key.copy(), expression=exp.Null())), {}))
        return queries

    def _sub(self) -> exp.Subquery:
        """The user's query as subquery ``q``."""
        return exp.Subquery(
            this=self._query.copy(), alias=exp.TableAlias(this=exp.to_identifier("q"))
        )

    def _wrap(self, condition: exp.Expression) -> exp.Query:
        return (
            exp.select("*")
            .from_(
                exp.Subquery(
                    this=self._query.copy(), alias=exp.TableAlias(this=exp.to_identifier("q"))
                )
            )
            .where(condition)
        )

    def _read_stats(self, fed: Federation) -> KeyStats:
        if self.key is None:
            counted = exp.select(exp.Count(this=exp.Star()).as_("n")).from_(
                exp.Subquery(
                    this=self._query.copy(), alias=exp.TableAlias(this=exp.to_identifier("q"))
                )
            )
            n = fed.sql(counted, self.params, timeout=self._timeout).to_arrow()
            return KeyStats(None, None, int(n.column(0)[0].as_py()), 0)
        key = exp.column(self.key, table="q", quoted=True)
        query = exp.select(
            exp.Min(this=key.copy()).as_("lo"),
            exp.Max(this=key.copy()).as_("hi"),
            exp.Count(this=exp.Star()).as_("n"),
            exp.Count(this=key.copy()).as_("nk"),
        ).from_(self._sub())
        row = fed.sql(query, self.params, timeout=self._timeout).to_arrow().to_pylist()[0]
        lo, hi = row["lo"], row["hi"]
        if lo is not None and not isinstance(lo, int | float | dt.date | dt.datetime):
            raise FederatorError(
                f"key {self.key!r} is {type(lo).__name__}; shard by an integer, floating, date or"
                " timestamp column"
            )
        if isinstance(lo, bool):
            raise FederatorError(f"key {self.key!r} is boolean; shard by a column with a range")
        rows, non_null = int(row["n"] or 0), int(row["nk"] or 0)
        return KeyStats(lo, hi, rows, rows - non_null)

    def _freeze_vocabularies(self, fed: Federation) -> None:
        """Workers must agree on category codes: read each string column's values once, here."""
        if self.policy.strings != "codes":
            return
        strings = self._string_columns(fed)
        if self.features is not None:
            wanted = [*self.features, *([self.label] if self.label else [])]
        else:
            wanted = list(self.columns) if self.columns is not None else strings
        for name in wanted:
            if name not in strings:
                continue
            if name in self.policy.vocabularies:
                self.policy.vocabularies[name].frozen = True
                continue
            col = exp.column(name, table="q", quoted=True)
            query = (
                exp.select(col.copy().as_(name))
                .distinct()
                .from_(
                    exp.Subquery(
                        this=self._query.copy(), alias=exp.TableAlias(this=exp.to_identifier("q"))
                    )
                )
                .where(exp.Not(this=exp.Is(this=col.copy(), expression=exp.Null())))
                .order_by(col.copy())
            )
            values = fed.sql(query, self.params, timeout=self._timeout).to_arrow().column(0)
            self.policy.vocabularies[name] = Vocabulary(values.to_pylist(), frozen=True)

    def _string_columns(self, fed: Federation) -> list[str]:
        zero = (
            exp.select("*")
            .from_(
                exp.Subquery(
                    this=self._query.copy(), alias=exp.TableAlias(this=exp.to_identifier("q"))
                )
            )
            .where(exp.false())
        )
        schema = fed.sql(zero, self.params, timeout=self._timeout).to_arrow().schema
        return [
            f.name
            for f in schema
            if pa.types.is_string(f.type)
            or pa.types.is_large_string(f.type)
            or (pa.types.is_dictionary(f.type) and pa.types.is_string(f.type.value_type))
        ]


class RayShard:
    """One trainer's share of a :class:`FederatedDataset` on Ray
    (:meth:`FederatedDataset.ray_shards`): each pass over it is one epoch of its rows, as
    batches of tensors."""

    def __init__(self, dataset: FederatedDataset, iterator: Any):
        self._dataset = dataset
        self._iterator = iterator  # a ray.data.DataIterator

    def __repr__(self) -> str:
        return f"<federator RayShard batch_size={self._dataset.batch_size}>"

    def __iter__(self) -> Iterator[dict[str, torch.Tensor] | Features]:
        ds = self._dataset
        batches = self._iterator.iter_batches(
            batch_size=ds.batch_size, batch_format="pyarrow", drop_last=ds.drop_last
        )
        for table in batches:
            if table.num_rows:
                yield ds._convert(table)


def _shard_of_this_reader() -> tuple[int, int]:
    """(this reader's shard, number of readers) across DataLoader workers and ranks."""
    info = get_worker_info()
    worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
    rank, world = 0, 1
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    return rank * workers + worker, world * workers


def _bounds(lo: Any, hi: Any, parts: int) -> list[Any]:
    """``parts - 1`` cut points splitting [lo, hi] into ranges of equal width."""
    if lo is None:
        return [None] * (parts - 1)
    if isinstance(lo, int):
        width = (hi - lo + 1) / parts
        return [lo + math.ceil(width * i) for i in range(1, parts)]
    if isinstance(lo, dt.datetime | dt.date) and not isinstance(lo, dt.datetime):
        days = (hi - lo).days + 1
        return [lo + dt.timedelta(days=math.ceil(days * i / parts)) for i in range(1, parts)]
    return [lo + (hi - lo) * i / parts for i in range(1, parts)]


def _rebatch(tables: Iterable[pa.Table], size: int) -> Iterator[pa.Table]:
    """Tables of exactly ``size`` rows (the last one shorter), zero-copy slices where possible."""
    pending: list[pa.Table] = []
    rows = 0
    for t in tables:
        if not t.num_rows:
            continue
        pending.append(t)
        rows += t.num_rows
        if rows < size:
            continue
        joined = pa.concat_tables(pending) if len(pending) > 1 else pending[0]
        start = 0
        while rows - start >= size:
            yield joined.slice(start, size)
            start += size
        pending = [joined.slice(start)] if start < rows else []
        rows -= start
    if rows:
        yield pa.concat_tables(pending) if len(pending) > 1 else pending[0]


def _shuffled(tables: Iterable[pa.Table], buffer: int, batch: int, rng: Any) -> Iterator[pa.Table]:
    """Rows mixed through a buffer of ``buffer`` rows: when full, permute it, hand out the
    first half and keep the rest to mix with what comes next."""
    pending: list[pa.Table] = []
    rows = 0
    for t in tables:
        pending.append(t)
        rows += t.num_rows
        if rows >= max(buffer, batch):
            pool = pa.concat_tables(pending).combine_chunks()
            pool = pool.take(pa.array(rng.permutation(pool.num_rows)))
            keep = min(buffer // 2, pool.num_rows)
            out = pool.num_rows - keep
            yield pool.slice(0, out)
            pending, rows = [pool.slice(out)], keep
    if rows:
        pool = pa.concat_tables(pending).combine_chunks()
        yield pool.take(pa.array(rng.permutation(pool.num_rows)))
