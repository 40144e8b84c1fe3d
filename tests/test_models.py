"""Model shapes the job must handle: images, several inputs, tabular columns, unused inputs."""

import keras
import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf

from pipeline.run import main
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
from transforms.gradients import SpecError


def test_conv_model_on_a_fixed_shape_tensor_column(tmp_path):
    model = keras.Sequential(
        [
            keras.Input((12, 12, 3)),
            keras.layers.Conv2D(4, 3, activation="tanh"),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(5),
        ]
    )
    rows = 150
    images = np.random.default_rng(3).random((rows, 12, 12, 3), dtype=np.float32)
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(rows), "image": images}, row_group_size=40)
    run_on(tmp_path, model, "--batch_size", 32, features="image")
    out = by_key(read_output(tmp_path / "out/g"))
    assert out.schema.field("gradient").type == pa.fixed_shape_tensor(pa.float32(), [12, 12, 3])
    assert_close(tensor_column(out, "gradient"), eager_gradients(model, images, lambda y: tf.reduce_sum(y)))


def _two_input_model():
    image = keras.Input((4, 4), name="image")
    meta = keras.Input((3,), name="meta")
    joined = keras.layers.Concatenate()([keras.layers.Flatten()(image), meta])
    hidden = keras.layers.Dense(8, activation="tanh")(joined)
    return keras.Model([image, meta], keras.layers.Dense(2, name="score")(hidden))


def _eager_two_input(model, image, meta, output_index=None):
    grads = {"image": [], "meta": []}
    for a, b in zip(image, meta):
        ta, tb = tf.constant(a[None]), tf.constant(b[None])
        with tf.GradientTape() as tape:
            tape.watch([ta, tb])
            y = tf.reduce_sum(model([ta, tb], training=False))
        ga, gb = tape.gradient(y, [ta, tb])
        grads["image"].append(ga.numpy()[0])
        grads["meta"].append(gb.numpy()[0])
    return {k: np.stack(v) for k, v in grads.items()}


def test_multi_input_model_mapped_by_input_name_and_by_input_map(tmp_path):
    model = _two_input_model()
    rows = 90
    rng = np.random.default_rng(4)
    image = rng.normal(size=(rows, 4, 4)).astype(np.float32)
    meta = rng.normal(size=(rows, 3)).astype(np.float32)
    path = save(model, tmp_path)
    write_parquet(tmp_path / "named/a.parquet", {"id": np.arange(rows), "image": image, "meta": meta})
    write_parquet(tmp_path / "other/a.parquet", {"id": np.arange(rows), "pix": image, "m": meta})
    expected = _eager_two_input(model, image, meta)

    run_on(tmp_path, path, "--batch_size", 16, data="named/*.parquet", output="out1/g", features=None)
    run_on(
        tmp_path,
        path,
        "--batch_size",
        16,
        "--input_map",
        "image=pix,meta=m",
        data="other/*.parquet",
        output="out2/g",
        features=None,
    )
    for out in (by_key(read_output(tmp_path / "out1/g")), by_key(read_output(tmp_path / "out2/g"))):
        assert out.column_names == ["id", "gradient__image", "gradient__meta"]
        assert_close(tensor_column(out, "gradient__image"), expected["image"])
        assert_close(tensor_column(out, "gradient__meta"), expected["meta"])


def test_tabular_model_from_stacked_scalar_columns(tmp_path):
    # y = tanh(x W1 + b1) W2: dy/dx = W1 diag(1 - h^2) W2, per row; compared with that closed form.
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(2)])
    rows = 123
    rng = np.random.default_rng(5)
    x = rng.normal(size=(rows, 3)).astype(np.float32)
    write_parquet(
        tmp_path / "in/t.parquet",
        {"id": np.arange(rows), "age": x[:, 0].astype(np.float64), "income": x[:, 1], "score": x[:, 2]},
    )
    run_on(tmp_path, model, "--target", "per_output", "--batch_size", 20, features="age,income,score")
    out = by_key(read_output(tmp_path / "out/g"))
    w1, b1 = model.layers[0].kernel.numpy(), model.layers[0].bias.numpy()
    w2 = model.layers[1].kernel.numpy()
    h = np.tanh(x @ w1 + b1)
    output_name = model.layers[-1].name
    # One output tensor of two units: its gradient is that of the sum of both units.
    closed = ((1 - h**2) * w2.sum(axis=1)) @ w1.T  # (rows, 3)
    assert out.column_names == ["id"] + [f"gradient__{f}__{output_name}" for f in ("age", "income", "score")]
    for j, feature in enumerate(["age", "income", "score"]):
        column = out.column(f"gradient__{feature}__{output_name}")
        assert column.type == pa.float32()
        assert_close(column.to_numpy(), closed[:, j], rtol=1e-4)


def _unused_input_model():
    used = keras.Input((3,), name="used")
    unused = keras.Input((2,), name="unused")
    return keras.Model([used, unused], keras.layers.Dense(1)(used))


def test_unused_input_gives_zeros_and_a_counter_or_a_clear_error(tmp_path, capsys):
    model = _unused_input_model()
    rows = 40
    rng = np.random.default_rng(6)
    used, unused = rng.normal(size=(rows, 3)).astype(np.float32), rng.normal(size=(rows, 2)).astype(np.float32)
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(rows), "used": used, "unused": unused})
    args = [
        "--input",
        tmp_path / "in/*.parquet",
        "--model",
        save(model, tmp_path),
        "--keep_columns",
        "id",
        "--batch_size",
        16,
    ]
    summary = run_job(*args, "--output", tmp_path / "out/g")
    out = by_key(read_output(tmp_path / "out/g"))
    assert np.all(tensor_column(out, "gradient__unused") == 0)
    assert_close(
        tensor_column(out, "gradient__used"), np.broadcast_to(model.layers[-1].kernel.numpy()[:, 0], (rows, 3))
    )
    assert summary.counters["none_gradients"] == rows  # one unconnected input, once per row

    with pytest.raises(SpecError, match="model input 'unused' has no gradient"):
        run_job(*args, "--output", tmp_path / "fail/g", "--unconnected", "error")
    code = main(
        ["--runner=DirectRunner", *map(str, args), "--output", str(tmp_path / "fail/g"), "--unconnected", "error"]
    )
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'unused'" in err[0] and "Traceback" not in err[0]
