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


def test_the_ptransform_takes_the_command_lines_settings_and_refuses_what_the_command_line_refuses(tmp_path):
    """The same names as the job's options (keep_columns, or key_columns), comma-separated strings for lists, and
    the same refusals: a setting nothing reads, a misspelt one (with the closest name), a window it cannot batch in."""
    from apache_beam.transforms.window import FixedWindows, TimestampedValue

    from transforms.gradients import SpecError

    model, path = _model(tmp_path)
    x = np.random.default_rng(2).normal(size=(6, 2, 2)).astype(np.float32)
    schema = pa.schema([("id", pa.int64()), ("x", pa.list_(pa.float32()))])
    rows = [{"id": i, "x": x[i]} for i in range(6)]
    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(rows) | ComputeGradients(path, schema=schema, keep_columns="id", emit="norm")
        assert_that(out.results | beam.Map(lambda t: tuple(t.column_names)), equal_to([("id", "gradient", "norm__gradient")]))
    spaced = pa.schema([(" id", pa.int64()), ("id", pa.int64()), ("x", pa.list_(pa.float32()))])
    assert ComputeGradients(path, schema=spaced, keep_columns=" id").output_schema.names[0] == " id"  # as the CLI keeps it
    listed = pa.schema([("id", pa.int64()), ("label", pa.int64()), ("x", pa.list_(pa.float32()))])
    assert ComputeGradients(path, schema=listed, keep_columns="id, label").output_schema.names[:2] == ["id", "label"]
    with pytest.raises(SpecError, match=r"^steps is not used with target sum, method gradient, wrt inputs; leave it out"):
        ComputeGradients(path, schema=schema, key_columns="id", steps=10)
    with pytest.raises(TypeError, match=r"unexpected setting 'keep_colums'; did you mean 'keep_columns'\?$"):
        ComputeGradients(path, schema=schema, keep_colums="id")
    with pytest.raises(TypeError, match=r"^ComputeGradients got an unexpected setting 'stpes'; did you mean 'steps'\?$"):
        ComputeGradients(path, schema=schema, stpes=10)
    with pytest.raises(TypeError, match=r"input_map takes a dict"):
        ComputeGradients(path, schema=schema, input_map="x=x")
    with pytest.raises(SpecError, match=r"^batch_size takes an integer, not 64.5$"):
        ComputeGradients(path, schema=schema, batch_size=64.5)
    with pytest.raises(ValueError, match=r"takes the global window only, not FixedWindows"):
        with beam.Pipeline("DirectRunner") as p:
            windowed = p | beam.Create(rows) | beam.Map(lambda r: TimestampedValue(r, 5)) | beam.WindowInto(FixedWindows(60))
            windowed | ComputeGradients(path, schema=schema, key_columns="id")


def test_run_raises_after_writing_everything_when_more_rows_are_rejected_than_allowed(tmp_path):
    from pipeline.jobs.main import TooManyRejected

    _, path = _model(tmp_path)
    x = [np.ones(4).tolist()] * 8 + [[1.0, 2.0]] * 2  # two rows too short
    write_parquet(tmp_path / "in/0.parquet", {"id": np.arange(10), "x": pa.array(x, pa.list_(pa.float32()))})
    args = dict(runner="DirectRunner", input=str(tmp_path / "in"), model=path, keep_columns="id", quiet=True)
    with pytest.raises(TooManyRejected, match=r"^20.0% of rows were rejected \(2 of 10\), above max_rejected_fraction 0.1;"):
        run(output=str(tmp_path / "out/g"), max_rejected_fraction=0.1, **args)
    assert read_arrays(str(tmp_path / "out/g"))["id"].size == 8  # written all the same
    assert run(output=str(tmp_path / "out/h"), max_rejected_fraction=0.2, **args).rows_rejected == 2


def test_the_engine_names_an_array_that_does_not_fit_its_compiled_shapes(tmp_path):
    from transforms.gradients import GradientEngine, GradientSpec, SpecError, from_keras

    model, _ = _model(tmp_path)
    engine = GradientEngine(from_keras(model), GradientSpec(), 8)
    with pytest.raises(SpecError, match=r"^'x' has shape \(5, 2, 2\), not \(8, 2, 2\) \(pad a short batch to batch_size rows"):
        engine([np.zeros((5, 2, 2), np.float32)])
    with pytest.raises(SpecError, match=r"^the engine takes a list of arrays"):
        engine(np.zeros((8, 2, 2), np.float32))
    np.testing.assert_allclose(engine([np.ones((8, 2, 2), np.float32)])["gradient"], eager_gradients(model, np.ones((8, 2, 2), np.float32)), rtol=1e-5, atol=1e-6)


def test_a_batch_failure_rebuilt_by_beam_keeps_one_tag():
    """Beam re-raises a step's error as type(e)(e.args[0] + " [while running 'step']"): the API user's message
    read 'beam-gradients failure: beam-gradients failure: ...'."""
    from transforms import FAILURE_TAG, BatchFailed

    err = BatchFailed("InvalidArgumentError: bad label, in a batch of rows 0-7 of a.parquet")
    rebuilt = type(err)(err.args[0] + " [while running 'Job/Gradients']", *err.args[1:])
    assert str(rebuilt) == FAILURE_TAG + "InvalidArgumentError: bad label, in a batch of rows 0-7 of a.parquet [while running 'Job/Gradients']"
