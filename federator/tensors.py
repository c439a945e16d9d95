"""Arrow results as PyTorch tensors (``Result.to_torch``); the training dataset that streams
them is :mod:`federator.torch`.

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
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import torch

from federator.errors import FederatorError, UnknownColumnError

__all__ = [
    "Features",
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
