"""PyTorch hand-off: Arrow results as tensors, and a streaming, sharded training dataset.

Every conversion follows a declared :class:`TorchPolicy`; nothing is filled, rounded or
encoded silently. The defaults refuse what they cannot convert exactly: nulls, decimals and
strings raise :class:`~federator.FederatorError` with the option that fixes it.

>>> import pyarrow as pa
>>> t = pa.table({"x": [1.0, 2.0], "y": [0, 1]})
>>> to_torch(t)["x"]
tensor([1., 2.], dtype=torch.float64)
>>> x, y, mask = to_torch(t, features=["x"], label="y")
>>> x.shape, y.tolist(), mask
(torch.Size([2, 1]), [0, 1], None)

Zero-copy: a column of one chunk, without nulls, of a numeric type becomes a tensor over
Arrow's own buffer (DLPack); an in-place change to such a tensor shows through in the Arrow
data, so ``.clone()`` first if the table is used again. Stacking feature columns into one
2-D tensor copies exactly once, straight into the output (with the dtype cast in the same
pass).

:class:`FederatedDataset` streams a federated query into a DataLoader with no LIMIT/OFFSET:
each worker wraps the query in a key-range filter that the planner pushes to the source, with
the ranges cut from a first ``MIN/MAX/COUNT`` query, so every row is read exactly once.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import torch
from sqlglot import exp
from torch.utils.data import IterableDataset, get_worker_info

from federator.errors import FederatorError, UnknownColumnError
from federator.sql.dialect import parse

if TYPE_CHECKING:
    from federator.config import CatalogConfig
    from federator.federation import Federation

__all__ = [
    "Features",
    "FederatedDataset",
    "TorchConversionError",
    "TorchPolicy",
    "Vocabulary",
    "move_to",
    "to_torch",
]

_TIME_UNITS = ("s", "ms", "us", "ns")


class TorchConversionError(FederatorError):
    """A column cannot become a tensor under the declared policy; the message says which
    policy option converts it."""


class Features(NamedTuple):
    """``to_torch(features=..., label=...)``: ``x`` is (rows, width); ``y`` the label or None;
    ``mask`` a bool tensor shaped like ``x`` (True where a value was present) under
    ``nulls="mask"``, else None. A NamedTuple, so DataLoader's ``pin_memory`` pins it."""

    x: torch.Tensor
    y: torch.Tensor | None
    mask: torch.Tensor | None


class Vocabulary:
    """Strings ↔ category codes 0..n-1, in the order first seen (or as given).

    A frozen vocabulary refuses strings it does not hold; an open one appends them.

    >>> v = Vocabulary(["a", "b"])
    >>> v.encode(pa.array(["b", None, "c"])).to_pylist()
    [1, None, 2]
    >>> v.values
    ['a', 'b', 'c']
    """

    def __init__(self, values: Iterable[str] = (), *, frozen: bool = False):
        self.values: list[str] = []
        self._index: dict[str, int] = {}
        for v in values:
            if v not in self._index:
                self._index[v] = len(self.values)
                self.values.append(v)
        self.frozen = frozen

    def __len__(self) -> int:
        return len(self.values)

    def __repr__(self) -> str:
        state = "frozen" if self.frozen else "open"
        return f"<Vocabulary {len(self)} values, {state}>"

    def __getitem__(self, code: int) -> str:
        return self.values[code]

    def code(self, value: str) -> int:
        return self._index[value]

    def encode(self, array: pa.Array | pa.ChunkedArray, column: str = "?") -> pa.Array:
        """Codes (int64) for ``array``; nulls stay null."""
        if isinstance(array, pa.ChunkedArray):
            array = array.combine_chunks()
        if pa.types.is_dictionary(array.type):
            array = array.dictionary_decode()
        array = array.cast(pa.large_string())
        codes = pc.index_in(array, value_set=pa.array(self.values, pa.large_string()))
        unknown = pc.and_(pc.is_null(codes), pc.is_valid(array))
        if pc.any(unknown).as_py():
            new = pc.unique(pc.filter(array, unknown)).to_pylist()
            if self.frozen:
                shown = ", ".join(repr(s) for s in new[:5])
                raise TorchConversionError(
                    f"column {column!r} holds {len(new)} string(s) not in its frozen vocabulary"
                    f" ({shown}{', ...' if len(new) > 5 else ''}); pass an open Vocabulary"
                    " or add them"
                )
            for v in new:
                self._index[v] = len(self.values)
                self.values.append(v)
            codes = pc.index_in(array, value_set=pa.array(self.values, pa.large_string()))
        return codes.cast(pa.int64())


@dataclass
class TorchPolicy:
    """How values without an exact tensor form are converted: declared, never silent.

    - ``nulls``: ``"error"`` (default); a number to fill with; or ``"mask"``: values are
      filled with ``fill`` and a bool mask (True = present) comes with them — in dict output as
      ``"<column>_mask"``, in ``Features`` as ``mask``.
    - ``decimals``: ``"error"`` (default) or a floating dtype (``torch.float64``,
      ``"float32"``…) to convert to; the conversion rounds to that dtype's precision.
    - ``timestamps``: the int64 epoch unit (``"s"``, ``"ms"``, ``"us"`` default, ``"ns"``) for
      timestamps and dates, counted in UTC (a timestamp without a zone is read as UTC) and
      rounded down to the unit.
    - ``strings``: ``"error"`` (default) or ``"codes"``: int64 category codes from
      ``vocabularies[column]``, created open (it grows) if not given. Read the vocabulary back
      from the same attribute after the call.
    - fixed-size lists (embeddings) always become a 2-D tensor (rows, size); so do variable
      lists whose lists all have one length (PostgreSQL arrays); other lists are an error.
    """

    nulls: str | float | int = "error"
    fill: float | int = 0
    decimals: str | torch.dtype = "error"
    timestamps: str = "us"
    strings: str = "error"
    vocabularies: dict[str, Vocabulary] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.nulls, str) and self.nulls not in ("error", "mask"):
            raise ValueError(f"nulls must be 'error', 'mask' or a number, not {self.nulls!r}")
        if isinstance(self.nulls, bool):
            raise ValueError("nulls must be 'error', 'mask' or a number, not a bool")
        if self.decimals != "error":
            self.decimals = _dtype(self.decimals)
            if not self.decimals.is_floating_point:
                raise ValueError(f"decimals must convert to a floating dtype, not {self.decimals}")
        if self.timestamps not in _TIME_UNITS:
            raise ValueError(f"timestamps must be one of {_TIME_UNITS}, not {self.timestamps!r}")
        if self.strings not in ("error", "codes"):
            raise ValueError(f"strings must be 'error' or 'codes', not {self.strings!r}")

    @property
    def masks(self) -> bool:
        return self.nulls == "mask"

    @property
    def fill_value(self) -> float | int:
        return self.fill if isinstance(self.nulls, str) else self.nulls


def _dtype(value: str | torch.dtype) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    found = getattr(torch, str(value).removeprefix("torch."), None)
    if not isinstance(found, torch.dtype):
        raise ValueError(f"{value!r} is not a torch dtype")
    return found


def _policy(policy: TorchPolicy | None, options: dict[str, Any]) -> TorchPolicy:
    if policy is None:
        return TorchPolicy(**options)
    if options:
        raise TypeError("pass either policy= or policy options (nulls=, decimals=, ...), not both")
    return policy


# ---- conversion --------------------------------------------------------------------------


def to_torch(
    data: pa.Table | pa.RecordBatch,
    columns: Sequence[str] | None = None,
    *,
    features: Sequence[str] | None = None,
    label: str | None = None,
    dtype: torch.dtype | str | Mapping[str, torch.dtype | str] | None = None,
    label_dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
    policy: TorchPolicy | None = None,
    **policy_options: Any,
) -> dict[str, torch.Tensor] | Features:
    """Arrow data as tensors.

    Without ``features``: a dict of tensors by column (``columns`` picks and orders them);
    ``dtype`` is one dtype for every value column or a dict by column; None keeps each
    column's own type. With ``features``: :class:`Features` — the feature columns stacked into
    one (rows, width) tensor of ``dtype`` (default float32; a fixed-size list column adds its
    size to the width), and ``label`` apart (its own type, or ``label_dtype``).

    ``device``: where the tensors go; for CUDA they are staged in pinned memory and copied
    with ``non_blocking=True``. Policy options (``nulls=``, ``decimals=``, ``timestamps=``,
    ``strings=``, ``vocabularies=``) or a whole :class:`TorchPolicy` as ``policy=``.
    """
    pol = _policy(policy, policy_options)
    table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
    if features is None:
        if label is not None:
            raise TypeError("label= goes with features=; without features every column is a key")
        names = list(columns) if columns is not None else table.column_names
        _check_names(table, names)
        out: dict[str, torch.Tensor] = {}
        for name in names:
            want = dtype.get(name) if isinstance(dtype, Mapping) else dtype
            values, mask = _column(name, table.column(name), pol)
            if want is not None:
                values = values.to(_dtype(want))
            out[name] = values
            if mask is not None:
                out[f"{name}_mask"] = mask
        return {k: _to_device(v, device) for k, v in out.items()} if device is not None else out
    if isinstance(dtype, Mapping):
        raise TypeError("with features= the stacked tensor has one dtype; pass one dtype")
    names = list(features) + ([label] if label is not None else [])
    _check_names(table, names)
    x, mask = _stack(
        table,
        list(features),
        _dtype(dtype) if dtype is not None else torch.float32,
        pol,
        pinned=_is_cuda(device),
    )
    y = None
    if label is not None:
        y, y_mask = _column(label, table.column(label), pol)
        if y_mask is not None and not bool(y_mask.all()):
            raise TorchConversionError(
                f"label column {label!r} has nulls; a label cannot be masked"
            )
        if label_dtype is not None:
            y = y.to(_dtype(label_dtype))
    if device is not None:
        x = _to_device(x, device)
        y = _to_device(y, device) if y is not None else None
        mask = _to_device(mask, device) if mask is not None else None
    return Features(x, y, mask)


def move_to(batch: Any, device: torch.device | str, non_blocking: bool = True) -> Any:
    """A batch (tensor, dict, Features) on ``device``; use after a DataLoader with
    ``pin_memory=True`` so the copies are asynchronous."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, Features):
        return Features(
            *(move_to(t, device, non_blocking) if t is not None else None for t in batch)
        )
    if isinstance(batch, Mapping):
        return {k: move_to(v, device, non_blocking) for k, v in batch.items()}
    return batch


def _is_cuda(device: torch.device | str | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"


def _to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    if _is_cuda(device):
        if not t.is_pinned():
            t = t.pin_memory()
        return t.to(device, non_blocking=True)
    return t.to(device)


def _check_names(table: pa.Table, names: Sequence[str]) -> None:
    for n in names:
        if n not in table.column_names:
            raise UnknownColumnError(n, table.column_names)


def _column(
    name: str, column: pa.ChunkedArray, pol: TorchPolicy
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One column as (values, mask or None); zero-copy for one clean numeric chunk."""
    chunks = column.chunks or [pa.array([], column.type)]
    parts = [_chunk(name, c, pol) for c in chunks]
    if len(parts) == 1:
        return parts[0]
    values = torch.cat([p[0] for p in parts])
    masks = [p[1] for p in parts]
    if all(m is None for m in masks):
        return values, None
    mask = torch.cat(
        [
            m if m is not None else torch.ones(p[0].shape, dtype=torch.bool)
            for p, m in zip(parts, masks, strict=True)
        ]
    )
    return values, mask


def _chunk(
    name: str, array: pa.Array, pol: TorchPolicy
) -> tuple[torch.Tensor, torch.Tensor | None]:
    typ = array.type
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        array = _as_fixed_list(name, array)
        typ = array.type
    if pa.types.is_fixed_size_list(typ):
        return _fixed_list(name, array, pol)
    array = _numeric(name, array, pol)
    if array.null_count == 0:
        return _tensor(array), (torch.ones(len(array), dtype=torch.bool) if pol.masks else None)
    if pol.nulls == "error":
        raise TorchConversionError(
            f"column {name!r} has {array.null_count} null(s); declare a null policy:"
            " nulls=<fill value> or nulls='mask'"
        )
    mask = _tensor(pc.is_valid(array)) if pol.masks else None
    return _tensor(_fill(name, array, pol.fill_value)), mask


def _numeric(name: str, array: pa.Array, pol: TorchPolicy) -> pa.Array:
    """Numbers, bools, epoch ints or codes for any supported type; nulls kept."""
    typ = array.type
    if pa.types.is_dictionary(typ):
        if pa.types.is_string(typ.value_type) or pa.types.is_large_string(typ.value_type):
            return _codes(name, array, pol)
        array = array.dictionary_decode()
        typ = array.type
    if pa.types.is_integer(typ) or pa.types.is_floating(typ) or pa.types.is_boolean(typ):
        return array
    if pa.types.is_decimal(typ):
        if pol.decimals == "error":
            raise TorchConversionError(
                f"column {name!r} is {typ}; declare decimals=torch.float64 (or float32) to"
                " convert it to floating point"
            )
        values = _decimal_floats(array)
        if pol.decimals in (torch.float32, torch.float16, torch.bfloat16):
            values = values.cast(pa.float32())
        return values
    if pa.types.is_timestamp(typ):
        return _epoch(array.cast(pa.timestamp(typ.unit)), pol.timestamps)  # drop the zone
    if pa.types.is_date(typ):
        return _epoch(array.cast(pa.timestamp("s")), pol.timestamps)
    if pa.types.is_duration(typ):
        return array.cast(pa.duration(pol.timestamps)).cast(pa.int64())
    if pa.types.is_string(typ) or pa.types.is_large_string(typ):
        return _codes(name, array, pol)
    raise TorchConversionError(
        f"column {name!r} has type {typ}, which has no tensor form; select it out or cast it"
        " in the query"
    )


_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def _decimal_floats(array: pa.Array) -> pa.Array:
    """Decimals as float64, correctly rounded (Arrow's cast multiplies by 10^-scale, which
    is off by an ulp for values like -618.06): the unscaled integer divided by 10^scale."""
    import numpy as np

    typ = array.type
    if not (pa.types.is_decimal128(typ) and typ.precision <= 18 and typ.scale <= 22):
        return pc.cast(array, pa.float64(), safe=False)
    n, off = len(array), array.offset
    words = np.frombuffer(array.buffers()[1], dtype=np.int64, count=2 * (off + n))
    unscaled = words[2 * off :: 2]  # low word of each little-endian 128-bit value
    floats = unscaled.astype(np.float64)
    if typ.scale > 0:
        floats /= 10.0**typ.scale
    elif typ.scale < 0:
        floats *= 10.0**-typ.scale
    mask = None if array.null_count == 0 else pc.is_null(array).to_numpy(zero_copy_only=False)
    return pa.array(floats, pa.float64(), mask=mask)


def _epoch(array: pa.Array, unit: str) -> pa.Array:
    """Timestamps as int64 counts of ``unit`` since 1970-01-01 UTC, rounded down (floor)."""
    ints = array.cast(pa.int64())
    have, want = _PER_SECOND[array.type.unit], _PER_SECOND[unit]
    if want >= have:
        return pc.multiply_checked(ints, want // have) if want > have else ints
    step = have // want
    q = pc.divide(ints, step)  # integer division truncates toward zero; make it floor
    short = pc.and_(pc.less(ints, 0), pc.not_equal(pc.multiply(q, step), ints))
    return pc.subtract(q, pc.cast(short, pa.int64()))


def _codes(name: str, array: pa.Array, pol: TorchPolicy) -> pa.Array:
    if pol.strings == "error":
        raise TorchConversionError(
            f"column {name!r} holds strings; declare strings='codes' (category codes from a"
            " vocabulary) or select it out"
        )
    vocab = pol.vocabularies.setdefault(name, Vocabulary())
    return vocab.encode(array, name)


def _fill(name: str, array: pa.Array, value: float | int) -> pa.Array:
    typ = array.type
    if pa.types.is_integer(typ) and isinstance(value, float) and not value.is_integer():
        array = array.cast(pa.float64())
    try:
        return pc.fill_null(array, pa.scalar(value).cast(array.type))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise TorchConversionError(f"column {name!r}: cannot fill nulls with {value!r}: {e}") from e


def _tensor(array: pa.Array) -> torch.Tensor:
    """A tensor over the array's buffer where Arrow's layout allows (DLPack), else one copy."""
    if array.null_count == 0 and not pa.types.is_boolean(array.type):
        try:
            return torch.from_dlpack(array)
        except (TypeError, BufferError, RuntimeError, NotImplementedError, pa.ArrowException):
            pass
    return torch.from_numpy(array.to_numpy(zero_copy_only=False, writable=True))


def _fixed_list(
    name: str, array: pa.FixedSizeListArray, pol: TorchPolicy
) -> tuple[torch.Tensor, torch.Tensor | None]:
    size = array.type.list_size
    n = len(array)
    child = array.values.slice(array.offset * size, n * size)
    child_pol = pol if array.null_count == 0 else _lenient(pol)
    values, child_mask = _chunk(name, child, child_pol)
    values = values.reshape(n, size)
    mask = child_mask.reshape(n, size) if child_mask is not None else None
    if array.null_count:
        if pol.nulls == "error":
            raise TorchConversionError(
                f"column {name!r} has {array.null_count} null list(s); declare a null policy:"
                " nulls=<fill value> or nulls='mask'"
            )
        present = torch.from_numpy(pc.is_valid(array).to_numpy(zero_copy_only=False)).clone()
        values = values.clone()
        values[~present] = pol.fill_value
        if mask is not None:
            mask = mask & present[:, None]
    return values, mask


def _as_fixed_list(name: str, array: pa.Array) -> pa.FixedSizeListArray:
    """A list column whose lists all have one length (PostgreSQL arrays, JSON embeddings)."""
    lengths = pc.unique(pc.list_value_length(array).drop_null())
    if len(lengths) > 1:
        raise TorchConversionError(
            f"column {name!r} holds lists of {len(lengths)} different lengths; only lists of one"
            " length (embeddings) become a 2-D tensor"
        )
    size = lengths[0].as_py() if len(lengths) else 0
    return array.cast(pa.list_(array.type.value_type, size))


def _lenient(pol: TorchPolicy) -> TorchPolicy:
    """Child values under null list rows are garbage; convert them without raising."""
    return TorchPolicy(
        nulls="mask" if pol.masks else pol.fill_value,
        fill=pol.fill,
        decimals=pol.decimals,
        timestamps=pol.timestamps,
        strings=pol.strings,
        vocabularies=pol.vocabularies,
    )


def _width(name: str, column: pa.ChunkedArray) -> int:
    typ = column.type
    if pa.types.is_fixed_size_list(typ):
        return typ.list_size
    if pa.types.is_list(typ) or pa.types.is_large_list(typ):
        chunks = [c for c in column.chunks if len(c)]
        return _as_fixed_list(name, pa.concat_arrays(chunks)).type.list_size if chunks else 0
    return 1


def _stack(
    table: pa.Table, names: list[str], dtype: torch.dtype, pol: TorchPolicy, pinned: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Feature columns copied once, each straight into its slot of one (rows, width) tensor."""
    widths = [_width(name, table.column(name)) for name in names]
    n = table.num_rows
    x = torch.empty((n, sum(widths)), dtype=dtype, pin_memory=pinned)
    mask = torch.ones((n, sum(widths)), dtype=torch.bool) if pol.masks else None
    col = 0
    for name, width in zip(names, widths, strict=True):
        row = 0
        for chunk in table.column(name).chunks:
            values, m = _chunk(name, chunk, pol)
            rows = len(chunk)
            x[row : row + rows, col : col + width] = values.reshape(rows, width)
            if mask is not None and m is not None:
                mask[row : row + rows, col : col + width] = m.reshape(rows, width)
            row += rows
        col += width
    return x, mask


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
            yield from self._iterate(fed, shard, shards)
        finally:
            if own:
                fed.close()

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
            reader = fed.sql(query, {**self.params, **params}, timeout=self._timeout).to_batches()
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
