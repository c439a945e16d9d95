"""Arrow → torch conversion and its declared policies; FederatedDataset over SQLite."""

from __future__ import annotations

import collections
import datetime as dt
import decimal
import sqlite3
from pathlib import Path

import pyarrow as pa
import pytest

torch = pytest.importorskip("torch")

import federator  # noqa: E402
from federator.torch import (  # noqa: E402
    Features,
    FederatedDataset,
    TorchConversionError,
    TorchPolicy,
    Vocabulary,
    _bounds,
    _rebatch,
    move_to,
    to_torch,
)

D = decimal.Decimal
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ---- dict output ----------------------------------------------------------------------------
def test_dict_of_tensors_keeps_types_and_values() -> None:
    t = pa.table(
        {
            "i": pa.array([1, 2, 3], pa.int32()),
            "f": [0.5, 1.5, -2.0],
            "b": [True, False, True],
        }
    )
    out = to_torch(t)
    assert list(out) == ["i", "f", "b"]
    assert out["i"].dtype == torch.int32 and out["i"].tolist() == [1, 2, 3]
    assert out["f"].dtype == torch.float64 and out["f"].tolist() == [0.5, 1.5, -2.0]
    assert out["b"].dtype == torch.bool and out["b"].tolist() == [True, False, True]


def test_one_clean_numeric_chunk_is_zero_copy() -> None:
    arr = pa.array([1.0, 2.0, 3.0, 4.0], pa.float32())
    out = to_torch(pa.table({"x": arr}))
    assert out["x"].data_ptr() == arr.buffers()[1].address
    sliced = pa.table({"x": arr}).slice(1, 2)
    assert to_torch(sliced)["x"].data_ptr() == arr.buffers()[1].address + 4


def test_columns_and_dtypes() -> None:
    t = pa.table({"a": [1, 2], "b": [3.0, 4.0], "c": [5, 6]})
    out = to_torch(t, ["c", "a"], dtype={"a": torch.float32})
    assert list(out) == ["c", "a"]
    assert out["a"].dtype == torch.float32 and out["c"].dtype == torch.int64
    assert to_torch(t, dtype="float16")["b"].dtype == torch.float16
    with pytest.raises(federator.UnknownColumnError, match="'z'"):
        to_torch(t, ["z"])


def test_several_chunks_are_concatenated() -> None:
    col = pa.chunked_array([[1.0, 2.0], [3.0]])
    assert to_torch(pa.table({"x": col}))["x"].tolist() == [1.0, 2.0, 3.0]


def test_empty_table() -> None:
    out = to_torch(pa.table({"x": pa.array([], pa.float64())}))
    assert out["x"].shape == (0,)
    x, _, _ = to_torch(pa.table({"x": pa.array([], pa.float64())}), features=["x"])
    assert x.shape == (0, 1)


# ---- features + label ----------------------------------------------------------------------
def test_features_stack_into_one_tensor_with_label_apart() -> None:
    t = pa.table({"a": pa.array([1, 2, 3], pa.int16()), "b": [0.5, 0.25, 0.125], "y": [1, 0, 1]})
    x, y, mask = to_torch(t, features=["b", "a"], label="y")
    assert x.dtype == torch.float32 and x.shape == (3, 2)
    assert x.tolist() == [[0.5, 1.0], [0.25, 2.0], [0.125, 3.0]]
    assert x.is_contiguous()
    assert y.tolist() == [1, 0, 1] and y.dtype == torch.int64
    assert mask is None
    x64, y32, _ = to_torch(t, features=["a"], label="y", dtype=torch.float64, label_dtype="float32")
    assert x64.dtype == torch.float64 and y32.dtype == torch.float32


def test_stacking_copies_once_into_a_fresh_buffer() -> None:
    t = pa.table({"a": [1.0, 2.0], "b": [3.0, 4.0]})
    x, _, _ = to_torch(t, features=["a", "b"], dtype=torch.float64)
    x[0, 0] = 99.0  # writable and not Arrow's memory
    assert t.column("a")[0].as_py() == 1.0


def test_label_with_nulls_is_refused_even_under_mask() -> None:
    t = pa.table({"a": [1.0, 2.0], "y": [1, None]})
    with pytest.raises(TorchConversionError, match="label column 'y' has nulls"):
        to_torch(t, features=["a"], label="y", nulls="mask")


# ---- nulls ---------------------------------------------------------------------------------
def test_nulls_are_an_error_by_default_naming_the_fix() -> None:
    t = pa.table({"x": [1.0, None, 3.0]})
    with pytest.raises(TorchConversionError, match=r"'x' has 1 null.*nulls="):
        to_torch(t)


def test_nulls_filled_with_a_declared_value() -> None:
    t = pa.table({"x": [1.0, None, 3.0], "i": [1, None, 3]})
    out = to_torch(t, nulls=-1)
    assert out["x"].tolist() == [1.0, -1.0, 3.0]
    assert out["i"].tolist() == [1, -1, 3] and out["i"].dtype == torch.int64
    assert to_torch(t, nulls=0.5)["i"].tolist() == [1.0, 0.5, 3.0]


def test_null_mask_in_dict_and_features() -> None:
    t = pa.table({"x": [1.0, None, 3.0], "z": [1.0, 2.0, 3.0]})
    out = to_torch(t, nulls="mask")
    assert out["x"].tolist() == [1.0, 0.0, 3.0]
    assert out["x_mask"].tolist() == [True, False, True]
    assert out["z_mask"].all()
    x, _, mask = to_torch(t, features=["z", "x"], policy=TorchPolicy(nulls="mask", fill=7))
    assert x.tolist() == [[1.0, 1.0], [2.0, 7.0], [3.0, 3.0]]
    assert mask.tolist() == [[True, True], [True, False], [True, True]]


def test_policy_and_options_are_exclusive() -> None:
    with pytest.raises(TypeError):
        to_torch(pa.table({"x": [1]}), policy=TorchPolicy(), nulls=0)
    with pytest.raises(ValueError):
        TorchPolicy(nulls="drop")


# ---- decimals ------------------------------------------------------------------------------
def test_decimals_are_an_error_unless_declared() -> None:
    t = pa.table({"d": pa.array([D("1.25"), D("-3.50"), None], pa.decimal128(10, 2))})
    with pytest.raises(TorchConversionError, match=r"decimals=torch\.float64"):
        to_torch(t, nulls=0)
    out = to_torch(t, decimals=torch.float64, nulls="mask")
    assert out["d"].dtype == torch.float64
    assert out["d"].tolist() == [1.25, -3.5, 0.0]
    assert out["d_mask"].tolist() == [True, True, False]
    assert to_torch(t, decimals="float32", nulls=0)["d"].dtype == torch.float32


# ---- timestamps ----------------------------------------------------------------------------
def test_timestamps_are_int64_utc_epoch_in_the_declared_unit() -> None:
    moment = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.UTC)
    berlin = dt.timezone(dt.timedelta(hours=2))
    t = pa.table(
        {
            "tz": pa.array([moment.astimezone(berlin)], pa.timestamp("us", tz="Europe/Berlin")),
            "naive": pa.array([moment.replace(tzinfo=None)], pa.timestamp("ns")),
            "day": pa.array([dt.date(2024, 5, 6)], pa.date32()),
        }
    )
    us = int(moment.timestamp() * 1_000_000)
    out = to_torch(t)
    assert out["tz"].dtype == torch.int64
    assert out["tz"].tolist() == [us]
    assert out["naive"].tolist() == [us]
    assert out["day"].tolist() == [int(dt.datetime(2024, 5, 6, tzinfo=dt.UTC).timestamp()) * 10**6]
    assert to_torch(t, timestamps="s")["tz"].tolist() == [us // 1_000_000]
    assert to_torch(t, timestamps="ns")["naive"].tolist() == [us * 1000]


# ---- strings -------------------------------------------------------------------------------
def test_strings_are_an_error_unless_codes_are_declared() -> None:
    t = pa.table({"s": ["b", "a", "b", None]})
    with pytest.raises(TorchConversionError, match="strings='codes'"):
        to_torch(t)
    policy = TorchPolicy(strings="codes", nulls=-1)
    out = to_torch(t, policy=policy)
    assert out["s"].tolist() == [0, 1, 0, -1]
    vocab = policy.vocabularies["s"]
    assert vocab.values == ["b", "a"]
    # The same policy keeps codes stable across calls and appends new strings.
    again = to_torch(pa.table({"s": ["c", "a"]}), policy=policy)
    assert again["s"].tolist() == [2, 1] and vocab.values == ["b", "a", "c"]


def test_frozen_vocabulary_refuses_unknown_strings() -> None:
    policy = TorchPolicy(strings="codes", vocabularies={"s": Vocabulary(["x", "y"], frozen=True)})
    assert to_torch(pa.table({"s": ["y", "x"]}), policy=policy)["s"].tolist() == [1, 0]
    with pytest.raises(TorchConversionError, match="not in its frozen vocabulary"):
        to_torch(pa.table({"s": ["z"]}), policy=policy)


def test_dictionary_encoded_strings() -> None:
    arr = pa.array(["u", "v", "u"]).dictionary_encode()
    out = to_torch(pa.table({"s": arr}), strings="codes")
    assert out["s"].tolist() == [0, 1, 0]


def test_unsupported_type_names_the_column() -> None:
    t = pa.table({"st": pa.array([{"a": 1}])})
    with pytest.raises(TorchConversionError, match="'st' has type struct"):
        to_torch(t)


# ---- fixed-size lists (embeddings) ---------------------------------------------------------
def test_fixed_size_list_becomes_two_dimensional() -> None:
    emb = pa.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], pa.list_(pa.float32(), 3))
    out = to_torch(pa.table({"e": emb}))
    assert out["e"].shape == (2, 3) and out["e"].dtype == torch.float32
    assert out["e"].tolist() == [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    sliced = to_torch(pa.table({"e": emb}).slice(1))
    assert sliced["e"].tolist() == [[4.0, 5.0, 6.0]]


def test_fixed_size_list_nulls_follow_the_policy() -> None:
    emb = pa.array([[1.0, 2.0], None, [5.0, None]], pa.list_(pa.float64(), 2))
    with pytest.raises(TorchConversionError, match="null"):
        to_torch(pa.table({"e": emb}))
    out = to_torch(pa.table({"e": emb}), nulls="mask")
    assert out["e"].tolist() == [[1.0, 2.0], [0.0, 0.0], [5.0, 0.0]]
    assert out["e_mask"].tolist() == [[True, True], [False, False], [True, False]]
    assert to_torch(pa.table({"e": emb}), nulls=9)["e"].tolist() == [[1, 2], [9, 9], [5, 9]]


def test_features_with_an_embedding_widen_the_tensor() -> None:
    t = pa.table(
        {
            "a": [1.0, 2.0],
            "e": pa.array([[3.0, 4.0], [5.0, 6.0]], pa.list_(pa.float32(), 2)),
            "l": pa.array([[7, 8], [9, 10]], pa.list_(pa.int64())),
        }
    )
    x, _, _ = to_torch(t, features=["a", "e", "l"])
    assert x.tolist() == [[1, 3, 4, 7, 8], [2, 5, 6, 9, 10]]


def test_ragged_lists_are_refused() -> None:
    t = pa.table({"l": pa.array([[1.0], [1.0, 2.0]])})
    with pytest.raises(TorchConversionError, match="different lengths"):
        to_torch(t)


# ---- devices -------------------------------------------------------------------------------
def test_move_to_keeps_structure() -> None:
    t = pa.table({"a": [1.0], "y": [1]})
    moved = move_to(to_torch(t, features=["a"], label="y"), "cpu")
    assert isinstance(moved, Features) and moved.mask is None
    assert move_to(to_torch(t), "cpu")["a"].tolist() == [1.0]


@cuda
def test_to_cuda_pinned_non_blocking() -> None:
    t = pa.table({"a": [1.0, 2.0], "y": [0, 1]})
    x, y, _ = to_torch(t, features=["a"], label="y", device="cuda")
    assert x.is_cuda and y.is_cuda
    assert x.cpu().tolist() == [[1.0], [2.0]]
    assert to_torch(t, device="cuda")["a"].is_cuda


# ---- helpers of the dataset ----------------------------------------------------------------
def test_bounds_split_ranges_evenly() -> None:
    assert _bounds(0, 99, 4) == [25, 50, 75]
    assert _bounds(1, 1, 3) == [2, 2]
    assert _bounds(0.0, 1.0, 2) == [0.5]
    assert _bounds(dt.date(2024, 1, 1), dt.date(2024, 1, 10), 2) == [dt.date(2024, 1, 6)]
    start = dt.datetime(2024, 1, 1)
    assert _bounds(start, start + dt.timedelta(hours=4), 2) == [start + dt.timedelta(hours=2)]


def test_rebatch_gives_exact_sizes() -> None:
    parts = [pa.table({"x": list(range(i, i + n))}) for i, n in [(0, 3), (3, 7), (10, 1)]]
    out = list(_rebatch(parts, 4))
    assert [t.num_rows for t in out] == [4, 4, 3]
    assert [v for t in out for v in t.column("x").to_pylist()] == list(range(11))


# ---- FederatedDataset over an embedded SQLite source ---------------------------------------
N = 1_000


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory):
    path = Path(tmp_path_factory.mktemp("torchds")) / "f.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE items (id INTEGER, x REAL, kind TEXT, y INTEGER)")
        db.executemany(
            "INSERT INTO items VALUES (?, ?, ?, ?)",
            [(i if i % 97 else None, i / 4, f"k{i % 5}", i % 2) for i in range(N)],
        )
    with federator.connect({"sources": {"s": {"kind": "sqlite", "path": str(path)}}}) as f:
        yield f


def _rows_seen(ds: FederatedDataset, workers: int) -> collections.Counter[float]:
    from torch.utils.data import DataLoader

    seen: collections.Counter[float] = collections.Counter()
    for batch in DataLoader(ds, batch_size=None, num_workers=workers):
        x = batch["x"] if isinstance(batch, dict) else batch.x[:, 0]
        seen.update(x.tolist())
    return seen


@pytest.mark.parametrize("workers", [0, 1, 2])
@pytest.mark.parametrize("sharding", ["range", "modulo"])
def test_every_row_exactly_once_per_epoch(fed, workers: int, sharding: str) -> None:
    ds = FederatedDataset(
        fed, "SELECT id, x FROM s.items", key="id", sharding=sharding, batch_size=64, nulls=-1
    )
    assert ds.num_rows == N and len(ds) == 16
    seen = _rows_seen(ds, workers)
    assert sorted(seen) == [i / 4 for i in range(N)]
    assert set(seen.values()) == {1}


def test_shuffle_is_seeded_and_complete(fed) -> None:
    def order(seed: int, epoch: int) -> list[float]:
        ds = FederatedDataset(
            fed, "SELECT id, x FROM s.items", key="id", batch_size=100, nulls=-1,
            shuffle_buffer=300, seed=seed,
        )  # fmt: skip
        ds.set_epoch(epoch)
        return [v for b in ds for v in b["x"].tolist()]

    first = order(1, 0)
    assert sorted(first) == [i / 4 for i in range(N)]
    assert first != sorted(first)
    assert order(1, 0) == first
    assert order(1, 1) != first and order(2, 0) != first


def test_each_pass_reshuffles_and_set_epoch_replays(fed) -> None:
    ds = FederatedDataset(
        fed, "SELECT id, x FROM s.items", key="id", batch_size=100, nulls=-1, shuffle_buffer=300
    )
    first = [v for b in ds for v in b["x"].tolist()]
    second = [v for b in ds for v in b["x"].tolist()]
    assert first != second and sorted(first) == sorted(second)
    ds.set_epoch(0)
    assert [v for b in ds for v in b["x"].tolist()] == first


def test_features_labels_and_codes_are_consistent_across_workers(fed) -> None:
    from torch.utils.data import DataLoader

    ds = FederatedDataset(
        fed, "SELECT id, x, kind, y FROM s.items WHERE id IS NOT NULL", key="id",
        features=["x", "kind"], label="y", batch_size=128, strings="codes", shards_per_worker=3,
    )  # fmt: skip
    vocab = ds.policy.vocabularies["kind"]
    assert vocab.values == [f"k{i}" for i in range(5)] and vocab.frozen
    rows = []
    for x, y, mask in DataLoader(ds, batch_size=None, num_workers=2, pin_memory=False):
        assert mask is None and x.shape[1] == 2
        rows += list(zip(x[:, 0].tolist(), x[:, 1].tolist(), y.tolist(), strict=True))
    want = [(i / 4, float(i % 5), i % 2) for i in range(N) if i % 97]
    assert sorted(rows) == want


def test_workers_without_a_key_are_refused(fed) -> None:
    from torch.utils.data import DataLoader

    ds = FederatedDataset(fed, "SELECT x FROM s.items", batch_size=500)
    assert sum(len(b["x"]) for b in ds) == N
    with pytest.raises(federator.FederatorError, match="need key="):
        list(DataLoader(ds, batch_size=None, num_workers=2))


def test_drop_last(fed) -> None:
    ds = FederatedDataset(fed, "SELECT x FROM s.items", batch_size=300, drop_last=True)
    assert len(ds) == 3 and [len(b["x"]) for b in ds] == [300, 300, 300]


def test_shard_filters_are_pushed_to_the_source(fed) -> None:
    ds = FederatedDataset(fed, "SELECT id, x FROM s.items", key="id", nulls=-1)
    query, params = ds._part_queries(1, 4)[0]
    text = fed.explain(query, params)
    assert "no residual" in text and ">= ?" in text and "< ?" in text
    assert "LIMIT" not in text and "OFFSET" not in text


def test_string_keys_are_refused(fed) -> None:
    with pytest.raises(federator.FederatorError, match="shard by an integer"):
        FederatedDataset(fed, "SELECT kind, x FROM s.items", key="kind")
