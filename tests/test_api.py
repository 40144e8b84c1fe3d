"""The Python API: the PTransform in a user's own pipeline, run() with keyword arguments, the reader."""

import sys

import apache_beam as beam
import keras
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.reader import IncompleteOutput, iter_tables, read_arrays, read_dataframe
from pipeline.run import run
from tests.conftest import eager_gradients, save, write_parquet
from transforms.api import ComputeGradients


def _model(tmp_path):
    model = keras.Sequential([keras.Input((2, 2), name="x"), keras.layers.Flatten(), keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(1)])
    return model, save(model, tmp_path)


def test_the_ptransform_in_a_users_own_test_pipeline_matches_an_eager_tape(tmp_path):
    model, path = _model(tmp_path)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 2, 2)).astype(np.float32)
    expected = eager_gradients(model, x)
    schema = pa.schema([("id", pa.int64()), ("x", pa.list_(pa.float32()))])
    rows = [{"id": i, "x": x[i]} for i in range(30)] + [{"id": 99, "x": [1.0, 2.0]}]  # the last is too short
    transform = ComputeGradients(path, schema=schema, key_columns=["id"], batch_size=8)

    def gradients_by_id(tables):
        out = {}
        for table in tables:
            ids = table.column("id").to_pylist()
            values = table.column("gradient").combine_chunks().to_numpy_ndarray()
            out.update(zip(ids, values))
        return out

    def matches_tape(tables):
        got = gradients_by_id(tables)
        assert sorted(got) == list(range(30))
        np.testing.assert_allclose(np.stack([got[i] for i in range(30)]), expected, rtol=1e-5, atol=1e-6)

    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(rows) | transform
        assert_that(out.results | beam.combiners.ToList(), lambda lists: matches_tape(lists[0]), label="gradients")
        rejected = out.rejected | beam.FlatMap(lambda t: zip(t.column("id").to_pylist(), t.column("stage").to_pylist()))
        assert_that(rejected, equal_to([(99, "decode")]), label="rejected")
    assert transform.output_schema.names == ["id", "gradient"]


def test_record_batches_in_and_run_with_keyword_arguments(tmp_path):
    model, path = _model(tmp_path)
    x = np.random.default_rng(1).normal(size=(10, 2, 2)).astype(np.float32)
    from transforms.io.arrow import to_tensor_array

    batch = pa.record_batch({"id": pa.array(np.arange(10)), "x": to_tensor_array(x)})
    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create([batch]) | ComputeGradients(path, schema=batch.schema, key_columns=["id"])
        assert_that(out.results | beam.Map(lambda t: t.num_rows), equal_to([10]))

    write_parquet(tmp_path / "in/0.parquet", {"id": np.arange(10), "x": x})
    summary = run(runner="DirectRunner", input=str(tmp_path / "in"), output=str(tmp_path / "out/g"), model=path,
                  keep_columns=["id"], emit=["norm"], quiet=True)
    assert summary.rows_out == 10
    arrays = read_arrays(str(tmp_path / "out/g"))
    order = np.argsort(arrays["id"])
    np.testing.assert_allclose(arrays["gradient"][order], eager_gradients(model, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(arrays["norm__gradient"][order], np.linalg.norm(arrays["gradient"][order].reshape(10, -1), axis=1), rtol=1e-5)
    assert sum(t.num_rows for t in iter_tables(str(tmp_path / "out/g"), ["id"], batch_rows=3)) == 10
    frame = read_dataframe(str(tmp_path / "out/g"))
    assert list(frame.columns) == ["id", "gradient", "norm__gradient"] and frame["gradient"][0].shape == (2, 2)
    with pytest.raises(IncompleteOutput, match="no .*_SUCCESS marker"):
        read_arrays(str(tmp_path / "nowhere/g"))


def test_the_reader_needs_no_pandas(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # as if pandas were not installed
    with pytest.raises(ImportError, match="pip install pandas"):
        read_dataframe(str(tmp_path / "x"))
