"""The seed article's three GradientTape recipes, made exact and run through the whole job."""

import keras
import numpy as np
import pyarrow as pa
import tensorflow as tf

from tests.conftest import (
    assert_close,
    by_key,
    eager_gradients,
    read_output,
    run_job,
    run_on,
    save,
    tensor_column,
    write_parquet,
)

ROWS = 437  # not a multiple of any batch size used below: the last batch is padded


def test_example_1_dense_gradient_matches_eager_tape_and_closed_form(tmp_path):
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(1)])
    x = np.random.default_rng(0).normal(size=(ROWS, 10)).astype(np.float32)
    # A plain list<float> column: the variable-length path, length checked per row.
    write_parquet(tmp_path / "in/data.parquet", {"id": np.arange(ROWS), "x": pa.array(list(x), pa.list_(pa.float32()))})
    summary = run_on(tmp_path, model, "--batch_size", 64)
    out = by_key(read_output(tmp_path / "out/g"))
    grads = tensor_column(out, "gradient")
    assert grads.shape == (ROWS, 10)
    assert_close(grads, eager_gradients(model, x))
    # d(x.w + b)/dx = w for every row.
    assert_close(grads, np.broadcast_to(model.layers[0].kernel.numpy()[:, 0], (ROWS, 10)))
    assert summary.counters["rows_in"] == summary.counters["rows_out"] == ROWS
    assert summary.counters["padded_rows"] == 64 * 7 - ROWS


def _two_head_model():
    inputs = keras.Input((10,), name="features")
    trunk = keras.layers.Dense(5, activation="tanh")(inputs)
    head_a = keras.layers.Dense(2, name="head_a")(trunk)
    head_b = keras.layers.Dense(3, name="head_b")(trunk)
    return keras.Model(inputs, [head_a, head_b])


def test_example_2_per_output_gives_each_head_and_sum_equals_the_articles_tape(tmp_path):
    model = _two_head_model()
    x = np.random.default_rng(1).normal(size=(ROWS, 10)).astype(np.float32)
    write_parquet(tmp_path / "in/data.parquet", {"id": np.arange(ROWS), "x": x}, row_group_size=100)
    common = [
        "--input",
        tmp_path / "in/*.parquet",
        "--model",
        save(model, tmp_path),
        "--feature_columns",
        "x",
        "--keep_columns",
        "id",
        "--batch_size",
        50,
    ]
    run_job(*common, "--output", tmp_path / "per/g", "--target", "per_output")
    run_job(*common, "--output", tmp_path / "sum/g")

    per_output = by_key(read_output(tmp_path / "per/g"))
    assert set(per_output.column_names) == {"id", "gradient__head_a", "gradient__head_b"}
    for index, head in enumerate(["head_a", "head_b"]):
        expected = eager_gradients(model, x, target=lambda outs, i=index: outs[i])
        assert_close(tensor_column(per_output, f"gradient__{head}"), expected)

    # The article's recipe: tape.gradient([y1, y2], x) over the whole batch.
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y1, y2 = model(xt, training=False)
    article = tape.gradient([y1, y2], xt).numpy()
    summed = by_key(read_output(tmp_path / "sum/g"))
    assert summed.column_names == ["id", "gradient"]
    assert_close(tensor_column(summed, "gradient"), article)
    # ... and it is the sum of the two heads, not either one of them.
    assert_close(
        tensor_column(summed, "gradient"),
        tensor_column(per_output, "gradient__head_a") + tensor_column(per_output, "gradient__head_b"),
    )


def test_example_3_mse_loss_with_per_example_clipping(tmp_path):
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(1)])
    rng = np.random.default_rng(2)
    x = rng.normal(size=(ROWS, 10)).astype(np.float32)
    # Residuals sized so that about half the examples' gradients (2|r| |w|) exceed the clip norm.
    w_norm = np.linalg.norm(model.layers[0].kernel.numpy())
    y = (model.predict(x, verbose=0)[:, 0] + rng.normal(scale=0.75 / w_norm, size=ROWS)).astype(np.float32)
    write_parquet(tmp_path / "in/data.parquet", {"id": np.arange(ROWS), "x": x, "y": y})
    run_on(
        tmp_path,
        model,
        "--target",
        "loss",
        "--label_column",
        "y",
        "--loss",
        "mse",
        "--clip_norm",
        "1.0",
        "--batch_size",
        32,
        "--emit",
        "loss,norm",
    )
    out = by_key(read_output(tmp_path / "out/g"))
    grads = tensor_column(out, "gradient")

    expected, unclipped_norms, losses = [], [], []
    for xi, yi in zip(x, y):
        xt = tf.constant(xi[None])
        with tf.GradientTape() as tape:
            tape.watch(xt)
            loss = tf.reduce_mean(tf.square(yi - model(xt, training=False)))
        g = tape.gradient(loss, xt)[0]
        unclipped_norms.append(tf.norm(g).numpy())
        expected.append(tf.clip_by_norm(g, 1.0).numpy())  # clipped alone: its own norm
        losses.append(loss.numpy())
    unclipped_norms = np.array(unclipped_norms)
    assert (unclipped_norms > 1.0).sum() > 20 and (unclipped_norms < 1.0).sum() > 20, "both cases exercised"
    assert_close(grads, np.stack(expected))
    norms = np.linalg.norm(grads, axis=1)
    assert norms.max() <= 1.0 + 1e-5
    assert_close(out.column("norm__gradient").to_numpy(), norms, rtol=1e-5)
    assert_close(out.column("loss").to_numpy(), np.array(losses), rtol=1e-5)
    # Unclipped rows keep their exact gradient: clipping by the batch norm would shrink them all.
    small = unclipped_norms < 1.0
    assert_close(norms[small], unclipped_norms[small], rtol=1e-5)
