"""The loss target for every supported loss, the optional extra columns, and the file metadata."""

import json

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

import transforms
from tests.conftest import assert_close, by_key, read_output, run_on, tensor_column, write_parquet
from transforms.gradients import GradientEngine, GradientSpec, from_keras
from transforms.io.write import ParquetSink

ROWS = 45
RNG = np.random.default_rng(12)
X = RNG.normal(size=(ROWS, 4)).astype(np.float32)


def _labels_and_model(loss):
    """A model whose output suits `loss`, and a label column for it."""
    if loss in ("mse", "mae", "huber", "tests.custom_losses:scaled_squared_error"):
        head, y = keras.layers.Dense(1), RNG.normal(size=(ROWS, 1)).astype(np.float32)
    elif loss == "binary_crossentropy":
        head, y = keras.layers.Dense(1, activation="sigmoid"), RNG.integers(0, 2, (ROWS, 1)).astype(np.float32)
    elif loss == "categorical_crossentropy":
        head, y = keras.layers.Dense(3, activation="softmax"), np.eye(3, dtype=np.float32)[RNG.integers(0, 3, ROWS)]
    else:  # sparse_categorical_crossentropy: one class index per row
        head, y = keras.layers.Dense(3, activation="softmax"), RNG.integers(0, 3, ROWS).astype(np.int64)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="tanh"), head])
    return model, y


def _reference_loss(loss):
    if ":" in loss:
        from tests.custom_losses import scaled_squared_error

        return scaled_squared_error
    return keras.losses.get(loss)


@pytest.mark.parametrize(
    "loss",
    [
        "mse",
        "mae",
        "huber",
        "binary_crossentropy",
        "categorical_crossentropy",
        "sparse_categorical_crossentropy",
        "tests.custom_losses:scaled_squared_error",
    ],
)
def test_loss_target_matches_per_example_eager_tapes(tmp_path, loss):
    model, y = _labels_and_model(loss)
    label = pa.array(y) if y.ndim == 1 else pa.array(list(y), pa.list_(pa.float32(), y.shape[1]))
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(ROWS), "x": X, "y": label})
    run_on(
        tmp_path, model, "--target", "loss", "--label_column", "y", "--loss", loss, "--batch_size", 16, "--emit", "loss"
    )
    out = by_key(read_output(tmp_path / "out/g"))
    fn = _reference_loss(loss)
    grads, losses = [], []
    for xi, yi in zip(X, y):
        xt = tf.constant(xi[None])
        with tf.GradientTape() as tape:
            tape.watch(xt)
            value = tf.reduce_sum(fn(tf.constant(np.asarray(yi, np.float32)[None]), model(xt, training=False)))
        grads.append(tape.gradient(value, xt).numpy()[0])
        losses.append(value.numpy())
    assert_close(tensor_column(out, "gradient"), np.stack(grads), rtol=1e-4, atol=1e-6)
    assert_close(out.column("loss").to_numpy(), np.array(losses), rtol=1e-5)


def test_predictions_and_norms_per_output_for_a_two_input_two_output_model(tmp_path):
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    hidden = keras.layers.Dense(4, activation="tanh")(keras.layers.Concatenate()([a, b]))
    model = keras.Model([a, b], [keras.layers.Dense(2, name="left")(hidden), keras.layers.Dense(1, name="right")(b)])
    xa, xb = X[:, :3].copy(), X[:, 2:].copy()
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(ROWS), "a": xa, "b": xb})
    run_on(tmp_path, model, "--target", "per_output", "--emit", "predictions,norm", "--batch_size", 8, features=None)
    out = by_key(read_output(tmp_path / "out/g"))
    assert out.column_names == [
        "id",
        "gradient__a__left",
        "gradient__b__left",
        "gradient__a__right",
        "gradient__b__right",
        "prediction__left",
        "prediction__right",
        "norm__gradient__a__left",
        "norm__gradient__b__left",
        "norm__gradient__a__right",
        "norm__gradient__b__right",
    ]
    left, right = model([xa, xb], training=False)
    assert_close(tensor_column(out, "prediction__left"), left.numpy())
    assert_close(tensor_column(out, "prediction__right"), right.numpy())
    assert np.all(tensor_column(out, "gradient__a__right") == 0)  # 'right' reads only b
    assert_close(
        tensor_column(out, "gradient__b__right"),
        np.broadcast_to(model.get_layer("right").kernel.numpy()[:, 0], (ROWS, 2)),
    )
    for name in ("a__left", "b__left", "b__right"):
        grads = tensor_column(out, f"gradient__{name}")
        assert_close(out.column(f"norm__gradient__{name}").to_numpy(), np.linalg.norm(grads, axis=1), rtol=1e-5)


def test_metadata_records_model_spec_and_version(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(ROWS), "x": X})
    run_on(tmp_path, model, "--clip_norm", "0.5", "--batch_size", 16, keys=None)
    meta = pq.read_schema(next((tmp_path / "out").glob("g-00000-of-*.parquet"))).metadata
    spec = json.loads(meta[b"beam_gradients.spec"])
    assert spec["target"] == "sum" and spec["clip_norm"] == 0.5
    assert meta[b"beam_gradients.version"].decode() == transforms.__version__
    assert meta[b"beam_gradients.batch_size"] == b"16"


def test_tensor_columns_are_written_without_dictionary_or_statistics_and_scalar_columns_with_them(tmp_path):
    """The sink's writer (transforms/io/write.py): a gradient's numbers hardly repeat and have no useful min/max,
    so its column gets neither (a third faster to write); keys and norms keep both, for readers that filter."""
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(ROWS), "x": X})
    run_on(tmp_path, model, "--emit", "norm", "--batch_size", 16)
    chunks = pq.ParquetFile(next((tmp_path / "out").glob("g-00000-of-*.parquet"))).metadata.row_group(0)
    columns = {chunks.column(i).path_in_schema: chunks.column(i) for i in range(chunks.num_columns)}
    assert set(columns) == {"id", "gradient.list.element", "norm__gradient"}  # one input: unsuffixed
    tensor = columns["gradient.list.element"]
    assert not tensor.has_dictionary_page and not tensor.is_stats_set
    assert columns["id"].has_dictionary_page and columns["id"].statistics.min == 0
    norms = columns["norm__gradient"]
    assert not norms.has_dictionary_page and norms.is_stats_set and norms.statistics.min > 0
    out = by_key(read_output(tmp_path / "out/g"))
    assert_close(tensor_column(out, "gradient"), np.broadcast_to(model.layers[0].kernel.numpy().sum(1), (ROWS, 4)))


def test_the_sink_writes_tables_in_their_order_while_the_next_is_computed_and_a_failed_write_raises(tmp_path):
    """The sink encodes each table on a thread of its own (transforms/io/write.py): the file holds them in the
    order written, and a write that fails there raises in the job's thread, at the next write or at close."""
    schema = pa.schema([("id", pa.int64()), ("x", pa.float32())])
    sink = ParquetSink(str(tmp_path / "g"), schema, 0)
    handle = sink.open(str(tmp_path / "one.parquet"))
    # a local file is pyarrow's own, whose writes need no GIL: through a Python file each page waited for it
    assert isinstance(handle.file, pa.NativeFile) and handle.stream is None
    tables = [pa.table({"id": np.arange(i, i + 7), "x": np.full(7, i, np.float32)}, schema=schema) for i in range(9)]
    for table in tables:
        sink.write_record(handle, table)
    sink.close(handle)
    written = pq.ParquetFile(tmp_path / "one.parquet")
    assert written.num_row_groups == 9 and written.read().equals(pa.concat_tables(tables))

    handle = sink.open(str(tmp_path / "two.parquet"))
    sink.write_record(handle, tables[0])
    sink.write_record(handle, pa.table({"id": [1.5]}))  # not the file's schema: pyarrow refuses it
    with pytest.raises(ValueError, match="schema"):
        for table in tables:  # raises at a later write, or else at close
            sink.write_record(handle, table)
        sink.close(handle)
    assert handle.file.closed  # Beam never closes a writer whose write raised: the handle closed its file itself


def test_engine_agrees_with_central_finite_differences():
    """An independent check of the engine alone, in float64 where differences are precise."""
    inp = keras.Input((3,), dtype="float64")
    hidden = keras.layers.Dense(4, activation="tanh", dtype="float64")(inp)
    model = keras.Model(inp, keras.layers.Dense(2, activation="softplus", dtype="float64")(hidden))
    x = RNG.normal(size=(5, 3))
    engine = GradientEngine(from_keras(model), GradientSpec(), batch_size=5)
    grads = engine([x])["gradient"]
    eps = 1e-6
    numeric = np.zeros_like(x)
    for j in range(3):
        step = np.zeros(3)
        step[j] = eps
        up = model(x + step, training=False).numpy().sum(axis=1)
        down = model(x - step, training=False).numpy().sum(axis=1)
        numeric[:, j] = (up - down) / (2 * eps)
    np.testing.assert_allclose(grads, numeric, rtol=1e-5, atol=1e-7)


def test_dict_outputs_are_named_by_their_keys(tmp_path):
    inp = keras.Input((4,), name="x")
    hidden = keras.layers.Dense(3, activation="tanh")(inp)
    model = keras.Model(inp, {"quality": keras.layers.Dense(2)(hidden), "price": keras.layers.Dense(1)(hidden)})
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(ROWS), "x": X})
    run_on(tmp_path, model, "--target", "per_output", "--batch_size", 16, features=None)
    out = by_key(read_output(tmp_path / "out/g"))
    assert out.column_names == ["id", "gradient__price", "gradient__quality"]
    for key in ("price", "quality"):
        xt = tf.constant(X)
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = tf.reduce_sum(model(xt, training=False)[key])
        assert_close(tensor_column(out, f"gradient__{key}"), tape.gradient(y, xt).numpy())


def test_loss_on_a_model_with_one_number_per_example(tmp_path):
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1), keras.layers.Reshape(())])
    y = RNG.normal(size=ROWS).astype(np.float32)
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(ROWS), "x": X, "y": y})
    run_on(tmp_path, model, "--target", "loss", "--label_column", "y", "--loss", "mse", "--batch_size", 16)
    out = by_key(read_output(tmp_path / "out/g"))
    w, b = model.layers[0].kernel.numpy()[:, 0], model.layers[0].bias.numpy()[0]
    residual = X @ w + b - y
    assert_close(tensor_column(out, "gradient"), 2 * residual[:, None] * w[None, :], rtol=1e-4)
