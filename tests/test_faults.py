"""Faults lose nothing and duplicate nothing: bad rows, corrupt pages, killed runs, retried bundles."""

import glob
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from tests.conftest import assert_close, by_key, read_output, run_on, save, tensor_column, write_parquet
from tests.faults import FailFirstAttempt

GROUP = 30


def _two_input_model():
    """Input 'x' (4 values, from a list column) and input 't' (2 values, from scalar columns a and b)."""
    x, t = keras.Input((4,), name="x"), keras.Input((2,), name="t")
    hidden = keras.layers.Dense(5, activation="tanh")(keras.layers.Concatenate()([x, t]))
    return keras.Model([x, t], keras.layers.Dense(1)(hidden))


def _corrupt_column_chunk(path, row_group, column):
    """Overwrite the first page header of one column chunk, as a bad disk or a torn copy would."""
    chunk = pq.ParquetFile(path).metadata.row_group(row_group).column(column)
    start = chunk.dictionary_page_offset or chunk.data_page_offset
    with open(path, "r+b") as fh:
        fh.seek(start)
        fh.write(b"\xff" * 16)


def test_every_kind_of_bad_row_is_rejected_with_its_reason_and_every_row_is_counted(tmp_path):
    model = _two_input_model()
    rng = np.random.default_rng(3)
    rows = 4 * GROUP
    x = rng.normal(size=(rows, 4))
    ab = rng.normal(size=(rows, 2))
    y = rng.normal(size=rows)
    xs = [list(r) for r in x]
    a, b, labels = list(ab[:, 0]), list(ab[:, 1]), list(y)
    bad = {
        2: ("decode", "column 'x' is null"),
        5: ("decode", "column 'x' has 3 values"),
        7: ("validate", "column 'x' holds NaN or infinity"),
        11: ("validate", "column 'a' holds NaN or infinity"),
        13: ("decode", "column 'b' is null"),
        17: ("decode", "column 'a' holds a value too large for float32"),
        19: ("decode", "column 'y' is null"),
        23: ("compute", "the computed loss is NaN or infinite"),  # its gradient may still be finite
        31: ("validate", "column 'b' holds NaN or infinity"),
    }
    xs[2] = None
    xs[5] = xs[5][:3]
    xs[7][1] = float("nan")
    a[11] = float("-inf")
    b[13] = None
    a[17] = 1e300  # a float64 that no float32 can hold
    labels[19] = None
    labels[23] = 1e38  # finite, but its squared error overflows float32
    b[31] = float("inf")
    table = pa.table(
        {
            "id": np.arange(rows),
            "x": pa.array(xs, pa.list_(pa.float64())),
            "a": pa.array(a, pa.float64()),
            "b": pa.array(b, pa.float64()),
            "y": pa.array(labels, pa.float64()),
        }
    )
    path = tmp_path / "in/mixed.parquet"
    os.makedirs(path.parent)
    pq.write_table(table, path, row_group_size=GROUP)
    _corrupt_column_chunk(path, 2, table.column_names.index("x"))  # rows 60..89: their 'x' cannot be decoded
    corrupt = set(range(2 * GROUP, 3 * GROUP))

    summary = run_on(
        tmp_path,
        model,
        "--input_map",
        "x=x,t=a+b",
        "--target",
        "loss",
        "--loss",
        "mse",
        "--label_column",
        "y",
        "--batch_size",
        16,
        data="in/mixed.parquet",
        features=None,
    )

    rejected = by_key(read_output(tmp_path / "out/g_rejected"))
    ids = rejected.column("id").to_pylist()
    assert ids == sorted(set(bad) | corrupt)
    for row_id, stage, reason, source in zip(
        ids, *(rejected.column(c).to_pylist() for c in ("stage", "reason", "source_file"))
    ):
        want_stage, want_reason = bad.get(row_id, ("read", "row group 2 cannot be read: column 'x' is corrupt"))
        assert stage == want_stage and want_reason in reason, (row_id, stage, reason)
        assert source == str(path)

    good = np.array(sorted(set(range(rows)) - set(bad) - corrupt))
    out = by_key(read_output(tmp_path / "out/g"))
    assert out.column("id").to_pylist() == good.tolist()
    xg = tf.constant(x[good], tf.float32)
    tg = tf.constant(ab[good], tf.float32)
    with tf.GradientTape() as tape:
        tape.watch([xg, tg])
        loss = keras.losses.MeanSquaredError(reduction=None)(y[good, None].astype(np.float32), model([xg, tg]))
    grad_x, grad_t = tape.gradient(loss, [xg, tg])  # rows are independent: each row's own loss gradient
    assert_close(tensor_column(out, "gradient__x"), grad_x.numpy(), rtol=1e-4)
    assert_close(out.column("gradient__a").to_numpy(), grad_t.numpy()[:, 0], rtol=1e-4)
    assert_close(out.column("gradient__b").to_numpy(), grad_t.numpy()[:, 1], rtol=1e-4)

    c = summary.counters
    assert c["rows_in"] == rows and c["rows_out"] == len(good) and c["rows_rejected"] == len(bad) + len(corrupt)
    assert f"rows: {rows} in, {len(good)} out, {len(bad) + len(corrupt)} rejected" in str(summary)


def _mlp_data(tmp_path, rows, files=1):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(3)])
    rng = np.random.default_rng(5)
    x = rng.normal(size=(rows, 6)).astype(np.float32)
    per_file = rows // files
    for i in range(files):
        part = slice(i * per_file, (i + 1) * per_file)
        write_parquet(
            tmp_path / f"in/{i}.parquet", {"id": np.arange(rows)[part], "x": x[part]}, row_group_size=per_file // 4
        )
    return model, x


def test_a_transient_error_is_retried_and_every_key_is_written_once(tmp_path):
    rows = 600
    model, x = _mlp_data(tmp_path, rows, files=3)
    faults = tmp_path / "faults"
    faults.mkdir()
    fault = FailFirstAttempt(faults)
    # BundleBasedDirectRunner retries bundles.
    summary = run_on(tmp_path, model, "--batch_size", 32, "--runner", "BundleBasedDirectRunner", fault=fault)

    assert len(os.listdir(faults)) >= 1  # bundles did fail once each, and were retried
    out = read_output(tmp_path / "out/g")
    ids = out.column("id").to_numpy()
    assert sorted(ids.tolist()) == list(range(rows))
    with tf.GradientTape() as tape:
        xt = tf.constant(x[ids])
        tape.watch(xt)
        total = tf.reduce_sum(model(xt))
    assert_close(tensor_column(out, "gradient"), tape.gradient(total, xt).numpy(), rtol=1e-5)
    assert summary.counters["rows_out"] == rows


def test_two_runs_on_the_same_input_give_identical_outputs(tmp_path):
    model, _ = _mlp_data(tmp_path, 2000, files=4)
    path = save(model, tmp_path)
    run_on(tmp_path, path, "--batch_size", 48, "--emit", "predictions,norm", output="one/g")
    run_on(tmp_path, path, "--batch_size", 48, "--emit", "predictions,norm", output="two/g")
    one, two = by_key(read_output(tmp_path / "one/g")), by_key(read_output(tmp_path / "two/g"))
    assert one.schema.equals(two.schema, check_metadata=True)
    assert one.equals(two)  # bit for bit, not within a tolerance


def test_empty_input_is_not_an_error_the_output_has_zero_rows_and_its_schema(tmp_path):
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3)])
    for i in range(2):
        write_parquet(tmp_path / f"in/{i}.parquet", {"id": np.arange(0), "x": np.zeros((0, 6), np.float32)})
    summary = run_on(tmp_path, model, "--emit", "norm")
    out = read_output(tmp_path / "out/g")
    assert out.num_rows == 0
    assert out.schema.names == ["id", "gradient", "norm__gradient"]
    assert out.schema.field("gradient").type.shape == [6]
    assert out.schema.metadata[b"beam_gradients.model_sha256"]
    c = summary.counters
    assert c["rows_in"] == c["rows_out"] == c["rows_rejected"] == c["batches"] == 0
