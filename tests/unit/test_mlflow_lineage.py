"""Offline parts of federator.mlflow: the content digest ignores row order but nothing else,
parameter values survive the trip through JSON, and plain ``import federator`` loads no
MLflow."""

from __future__ import annotations

import datetime as dt
import decimal
import subprocess
import sys

import pyarrow as pa
import pytest

fed_mlflow = pytest.importorskip("federator.mlflow")
digest = fed_mlflow.content_digest

TABLE = pa.table({"k": [1, 2, 2, None], "v": ["a", "b", "b", "c"], "x": [[1.0], None, [], [2.0]]})


def test_the_digest_ignores_row_order_and_batching() -> None:
    shuffled = TABLE.take([3, 1, 0, 2])
    batches = shuffled.to_batches(max_chunksize=1)
    assert digest([TABLE], TABLE.schema) == digest(batches, TABLE.schema)


@pytest.mark.parametrize(
    "other",
    [
        TABLE.slice(0, 3),  # a row fewer
        pa.concat_tables([TABLE, TABLE.slice(1, 1)]),  # a duplicate more: a multiset, not a set
        TABLE.set_column(1, "v", pa.array(["a", "b", "b", "C"])),  # one value
        TABLE.rename_columns(["k", "w", "x"]),  # a column's name
        TABLE.set_column(0, "k", pa.array([1, 2, 2, None], pa.int32())),  # a column's type
    ],
)
def test_the_digest_sees_every_other_change(other: pa.Table) -> None:
    assert digest([other], other.schema) != digest([TABLE], TABLE.schema)


def test_a_dictionary_column_digests_as_its_values() -> None:
    plain = pa.table({"v": ["x", "y", "x"]})
    coded = pa.table({"v": pa.array(["x", "y", "x"]).dictionary_encode()})
    recoded = pa.table({"v": pa.DictionaryArray.from_arrays([1, 0, 1], ["y", "x"])})
    assert digest([coded], plain.schema) == digest([recoded], plain.schema)
    assert digest([coded], plain.schema) == digest([plain], plain.schema)


def test_parameter_values_keep_their_types_through_json() -> None:
    params = {
        "n": 3, "f": 1.5, "s": "x", "b": True, "none": None,
        "d": dt.date(2026, 12, 2), "ts": dt.datetime(2026, 12, 2, 15, 1, 2, 345),
        "t": dt.time(9, 30), "dec": decimal.Decimal("12.340"), "raw": b"\x00\xff",
        "gap": dt.timedelta(hours=2), "vec": [0.5, 1.5],
    }  # fmt: skip
    source = fed_mlflow.FederatorDatasetSource("SELECT 1", params, [])
    back = fed_mlflow.FederatorDatasetSource.from_json(source.to_json())
    assert back.params == params
    assert {k: type(v) for k, v in back.params.items()} == {k: type(v) for k, v in params.items()}


def test_an_unrecordable_parameter_is_refused_before_anything_runs() -> None:
    with pytest.raises(fed_mlflow.FederatorError, match=r"type object cannot be recorded"):
        fed_mlflow.FederatorDatasetSource("SELECT :o", {"o": object()}, [])


def test_import_federator_loads_no_mlflow() -> None:
    code = "import sys, federator, federator.result; print('mlflow' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "False", done.stderr
