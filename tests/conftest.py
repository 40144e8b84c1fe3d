"""Shared helpers: real Parquet files, real saved Keras models, the real job, eager references."""

from __future__ import annotations

import glob
import os

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from pipeline.run import run
from transforms.io.arrow import to_tensor_array


def write_parquet(path, columns: dict, row_group_size=None) -> str:
    """One real Parquet file from numpy arrays (2-D and more become fixed_shape_tensor)."""
    arrays = {}
    for name, values in columns.items():
        if isinstance(values, pa.Array):
            arrays[name] = values
        elif isinstance(values, np.ndarray) and values.ndim > 1:
            arrays[name] = to_tensor_array(values)
        else:
            arrays[name] = pa.array(values)
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    pq.write_table(pa.table(arrays), str(path), row_group_size=row_group_size)
    return str(path)


def save(model, folder, name="model.keras") -> str:
    path = os.path.join(str(folder), name)
    model.save(path)
    return path


def run_job(*args, runner="DirectRunner", fault=None):
    """Run the job in-process on a real Beam runner; the summary. `fault`: a hook from tests/faults.py."""
    return run([f"--runner={runner}", *[str(a) for a in args]], fault=fault)


def read_output(prefix) -> pa.Table:
    """Every output shard of a job, as one table."""
    files = sorted(glob.glob(f"{prefix}-?????-of-?????.parquet"))
    assert files, f"no output shards under {prefix}"
    return pa.concat_tables([pq.read_table(f) for f in files])


def by_key(table: pa.Table, key="id") -> pa.Table:
    return table.sort_by(key)


def tensor_column(table: pa.Table, name) -> np.ndarray:
    return table.column(name).combine_chunks().to_numpy_ndarray()


def eager_gradients(model, x: np.ndarray, target=lambda outputs: outputs) -> np.ndarray:
    """The reference: one GradientTape per example, on a batch of one."""
    rows = []
    for row in x:
        xi = tf.constant(row[None])
        with tf.GradientTape() as tape:
            tape.watch(xi)
            y = target(model(xi, training=False))
        rows.append(tape.gradient(y, xi).numpy()[0])
    return np.stack(rows)


def assert_close(actual, expected, rtol=1e-5, atol=1e-6):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol)


# ig_delta is a difference of two predicted probabilities (at most 1), so it rounds on their scale, not its own.
IG_DELTA_SCALE = {"ig_delta": 1.0}
# How far two groupings of the same rows may round apart, in units of the dtype's epsilon (relative to each value,
# and to the largest value for those near zero).
ROUNDING_EPS = 64


def assert_rounding_equal(actual, expected, what="", scale=None):
    """The same rows computed in other batches (another batch size or runner): equal but for rounding.

    Why not the same bytes: a row's matmuls round by its place in the kernel's blocks (oneDNN's AVX2 sgemm rounds
    the last two rows of 32 and a lone row otherwise; earlier CI machines did not), so only a rerun of the same
    batches promises the same bytes. Same shape and dtype, and a row mixed up with another fails by far more.
    `scale`: the size of what the values were computed from, where that is larger than the values (a difference
    of two outputs, as ig_delta is); the largest value otherwise.
    """
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert (actual.shape, actual.dtype) == (expected.shape, expected.dtype), what
    tolerance = ROUNDING_EPS * float(np.finfo(expected.dtype).eps)
    largest = float(np.abs(expected.astype(np.float64)).max()) if expected.size else 0.0
    scale = max(largest, scale or 0.0)
    np.testing.assert_allclose(
        actual.astype(np.float64), expected.astype(np.float64), rtol=tolerance, atol=tolerance * scale, err_msg=what
    )


def assert_tables_rounding_equal(actual: pa.Table, expected: pa.Table, scales: dict | None = None):
    """Two outputs of the same rows (sorted alike): the same schema, other columns equal, float columns
    `assert_rounding_equal` (with `scales[name]` where given)."""
    assert actual.schema == expected.schema
    for name in expected.column_names:
        a, e = actual.column(name).combine_chunks(), expected.column(name).combine_chunks()
        if isinstance(e, pa.FixedShapeTensorArray):
            a, e = a.to_numpy_ndarray(), e.to_numpy_ndarray()
        elif pa.types.is_list(e.type) and pa.types.is_floating(e.type.value_type):
            assert a.offsets.equals(e.offsets), name
            a, e = a.flatten().to_numpy(), e.flatten().to_numpy()
        elif pa.types.is_floating(e.type):
            a, e = a.to_numpy(), e.to_numpy()
        else:
            assert a.equals(e), name
            continue
        if np.issubdtype(e.dtype, np.floating):
            assert_rounding_equal(a, e, name, (scales or {}).get(name))
        else:
            np.testing.assert_array_equal(a, e, err_msg=name)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)


def pytest_configure(config):
    # Keras 3 on numpy 2 warns about __array__(copy=...) inside its own code; not ours to fix.
    config.addinivalue_line("filterwarnings", "ignore:__array__ implementation doesn't accept a copy keyword")


def run_on(tmp_path, model, *extra, data="in/*.parquet", output="out/g", features="x", keys="id", fault=None):
    """The job over tmp_path/<data> into tmp_path/<output>; `model` is a Keras model (saved here) or a path."""
    path = save(model, tmp_path) if isinstance(model, keras.Model) else model
    args = ["--input", tmp_path / data, "--output", tmp_path / output, "--model", path]
    if features:
        args += ["--feature_columns", features]
    if keys:
        args += ["--keep_columns", keys]
    return run_job(*args, *extra, fault=fault)
