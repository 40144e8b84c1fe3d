"""Methods and class targets through the whole job: real Parquet, saved models, Beam's runners, subprocesses."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from tests.conftest import (
    assert_close, assert_rounding_equal, by_key, read_output, run_on, save, tensor_column, write_parquet,
)
from transforms.gradients import GradientEngine, GradientSpec, SpecError, from_keras

RNG = np.random.default_rng(3)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _classifier(classes=4):
    x = keras.Input((5,), name="x")
    return keras.Model(x, keras.layers.Dense(classes)(keras.layers.Dense(8, activation="tanh")(x)))


def _rows(tmp_path, n=40, files=2, **extra):
    x = RNG.normal(size=(n, 5)).astype(np.float32)
    per = n // files
    for f in range(files):
        part = slice(f * per, (f + 1) * per)
        columns = {"id": np.arange(n)[part], "x": x[part], **{k: v[part] for k, v in extra.items()}}
        write_parquet(tmp_path / f"in/{f}.parquet", columns, row_group_size=7)
    return x


def test_class_target_from_a_column_matches_a_per_row_tape_and_a_class_out_of_range_is_rejected(tmp_path):
    model = _classifier()
    classes = RNG.integers(0, 4, size=40)
    classes[5] = 4  # no such class
    x = _rows(tmp_path, cls=classes)
    summary = run_on(tmp_path, model, "--target", "class", "--class_column", "cls", "--batch_size", 8)
    assert (summary.rows_out, summary.rows_rejected) == (39, 1)
    out = by_key(read_output(tmp_path / "out/g"))
    ids = out.column("id").to_numpy()
    want = []
    for i in ids:
        xi = tf.constant(x[i : i + 1])
        with tf.GradientTape() as tape:
            tape.watch(xi)
            value = model(xi)[0, classes[i]]
        want.append(tape.gradient(value, xi).numpy()[0])
    assert_close(tensor_column(out, "gradient"), np.stack(want), rtol=1e-5)
    rejected = pq.read_table(str(tmp_path / "out/g_rejected-00000-of-00001.parquet"))
    assert rejected.column("id").to_pylist() == [5]
    assert rejected.column("reason").to_pylist() == ["column 'cls' holds class 4, outside the model's 4 classes 0..3"]
    spec = json.loads(out.schema.metadata[b"beam_gradients.spec"])  # the columns the spec read are recorded with it
    assert (spec["class_column"], spec["label_column"], spec["target"]) == ("cls", None, "class")


def test_a_sparse_label_outside_the_classes_rejects_its_row_and_the_rest_match_a_per_row_tape(tmp_path):
    """Keras fails a whole batch on one label outside 0..classes-1 (InvalidArgumentError): the job must reject
    that row alone, as it does a class column's."""
    model = _classifier(3)
    labels = RNG.integers(0, 3, size=40)
    labels[[3, 17]] = [7, -1]
    x = _rows(tmp_path, label=labels)
    summary = run_on(tmp_path, model, "--target", "loss", "--loss", "sparse_categorical_crossentropy",
                     "--label_column", "label", "--batch_size", 8)
    assert (summary.rows_out, summary.rows_rejected) == (38, 2)
    rejected = by_key(pq.read_table(str(tmp_path / "out/g_rejected-00000-of-00001.parquet")))
    assert rejected.column("id").to_pylist() == [3, 17]
    assert rejected.column("reason").to_pylist() == [
        "column 'label' holds class 7, outside the model's 3 classes 0..2",
        "column 'label' holds class -1, outside the model's 3 classes 0..2",
    ]
    out = by_key(read_output(tmp_path / "out/g"))
    loss = keras.losses.SparseCategoricalCrossentropy()
    want = []
    for i in out.column("id").to_numpy():
        xi = tf.constant(x[i : i + 1])
        with tf.GradientTape() as tape:
            tape.watch(xi)
            value = loss(labels[i : i + 1], model(xi))
        want.append(tape.gradient(value, xi).numpy()[0])
    assert_close(tensor_column(out, "gradient"), np.stack(want), rtol=1e-5)


@pytest.mark.parametrize(
    "spec, message",
    [
        (dict(target="class"), "target class needs a classifier's scores, 2 or more; output"),
        (dict(target="predicted"), "target predicted needs a classifier's scores, 2 or more"),
        (dict(target="top_k", k=1), "target top_k needs a classifier's scores, 2 or more"),
        (dict(target="loss", loss="sparse_categorical_crossentropy"),
         "loss sparse_categorical_crossentropy takes class indices against 2 or more scores"),
    ],
)
def test_class_targets_and_sparse_labels_on_one_sigmoid_output_are_refused_before_any_row(spec, message):
    """A binary classifier with one sigmoid unit has one class for argmax, a class column or top k: every row
    would come out class 0 or be rejected."""
    x = keras.Input((5,), name="x")
    model = keras.Model(x, keras.layers.Dense(1, activation="sigmoid")(x))
    with pytest.raises(SpecError) as err:
        GradientEngine(from_keras(model), GradientSpec(**spec), 4)
    assert message in str(err.value), str(err.value)


def test_top_k_with_integrated_gradients_writes_k_heads_their_classes_and_deltas(tmp_path):
    model = _classifier(5)
    x = _rows(tmp_path)
    path = save(model, tmp_path)
    args = ["--method", "integrated_gradients", "--steps", "20", "--target", "top_k", "--k", "2", "--batch_size", "16"]
    run_on(tmp_path, path, *args, "--emit", "norm")
    out = by_key(read_output(tmp_path / "out/g"))
    assert out.schema.names == [
        "id", "gradient__top1", "gradient__top2", "ig_delta__top1", "ig_delta__top2", "top_k_classes",
        "norm__gradient__top1", "norm__gradient__top2",
    ]
    assert out.schema.field("top_k_classes").type == pa.fixed_shape_tensor(pa.int64(), [2])
    engine = GradientEngine(from_keras(model), GradientSpec(method="integrated_gradients", steps=20, target="top_k", k=2), 40)
    want = engine([x])
    assert np.array_equal(tensor_column(out, "top_k_classes"), np.argsort(-model(x).numpy(), axis=1)[:, :2])
    for head in ("top1", "top2"):
        assert_close(tensor_column(out, f"gradient__{head}"), want[f"gradient__{head}"], rtol=1e-5, atol=1e-7)
        assert_close(out.column(f"ig_delta__{head}").to_numpy(), want[f"ig_delta__{head}"], rtol=1e-4, atol=1e-6)


def test_methods_on_stacked_feature_columns_write_one_column_per_feature(tmp_path):
    model = _classifier()
    x = RNG.normal(size=(20, 5)).astype(np.float32)
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(20), **{f"f{j}": x[:, j] for j in range(5)}})
    features = ",".join(f"f{j}" for j in range(5))
    run_on(tmp_path, model, "--method", "gradient_x_input", "--target", "predicted", "--batch_size", 8, features=features)
    out = by_key(read_output(tmp_path / "out/g"))
    assert out.schema.names == ["id", *[f"gradient__f{j}" for j in range(5)], "predicted_class"]
    got = np.stack([out.column(f"gradient__f{j}").to_numpy() for j in range(5)], axis=1)
    logits = model(x).numpy()
    rows = []
    for i in range(20):
        xi = tf.constant(x[i : i + 1])
        with tf.GradientTape() as tape:
            tape.watch(xi)
            value = model(xi)[0, logits[i].argmax()]
        rows.append(tape.gradient(value, xi).numpy()[0] * x[i])
    assert_close(got, np.stack(rows), rtol=1e-5, atol=1e-7)
    assert out.column("predicted_class").to_pylist() == logits.argmax(1).tolist()


def _cnn():
    x = keras.Input((6, 6, 2), name="x")
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="relu")(x))
    return keras.Model(x, keras.layers.Dense(3)(keras.layers.Dense(8, activation="tanh")(h)))


def test_noisy_methods_agree_across_batch_sizes_and_runners_and_a_rerun_to_the_byte(tmp_path, method="smoothgrad"):
    x = RNG.normal(size=(60, 6, 6, 2)).astype(np.float32)
    for f in range(3):
        write_parquet(tmp_path / f"in/{f}.parquet", {"id": np.arange(f * 20, f * 20 + 20), "x": x[f * 20 : f * 20 + 20]},
                      row_group_size=6)
    path = save(_cnn(), tmp_path)
    common = ["--method", method, "--samples", "9", "--noise", "0.3", "--seed", "5"]
    runs = {
        "batch 8": ["--batch_size", "8"],
        "rerun": ["--batch_size", "8"],
        "batch 13": ["--batch_size", "13"],
        "multi-process": ["--batch_size", "8", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"],
    }
    outputs = {}
    for name, extra in runs.items():
        run_on(tmp_path, path, *common, *extra, output=f"{name.replace(' ', '_')}/g")
        out = by_key(read_output(tmp_path / f"{name.replace(' ', '_')}/g"))
        assert out.column("id").to_pylist() == list(range(60))
        outputs[name] = tensor_column(out, "gradient")
    reference = outputs["batch 8"]
    for name, values in outputs.items():
        assert_rounding_equal(values, reference, name)
    assert outputs["rerun"].tobytes() == reference.tobytes()  # the same batches again: the same bytes
    other = run_on(tmp_path, path, *common[:-1], "6", "--batch_size", "8", output="seed6/g")
    assert other.rows_out == 60
    assert np.abs(tensor_column(by_key(read_output(tmp_path / "seed6/g")), "gradient") - reference).max() > 1e-4


def test_without_keys_noise_follows_the_rows_file_and_position(tmp_path):
    x = RNG.normal(size=(30, 6, 6, 2)).astype(np.float32)
    write_parquet(tmp_path / "in/a.parquet", {"x": x}, row_group_size=4)
    path = save(_cnn(), tmp_path)
    results = []
    for batch in (5, 11):
        run_on(tmp_path, path, "--method", "smoothgrad", "--samples", "4", "--batch_size", batch, keys=None,
               output=f"b{batch}/g")
        results.append(tensor_column(read_output(tmp_path / f"b{batch}/g"), "gradient"))
    assert_rounding_equal(results[0], results[1])  # noise drawn by file and position, not by batch


def _peak_rss_mib(argv) -> float:
    """Peak RSS of one child process (its own rusage, from wait4), in MiB."""
    child = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env={**os.environ, "PYTHONPATH": REPO})
    output = child.stdout.read()
    _, status, usage = os.wait4(child.pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, output.decode(errors="replace")[-2000:]
    return usage.ru_maxrss / 1024


def test_peak_memory_is_the_same_at_50_and_1000_steps(tmp_path):
    """Steps run in chunks: memory holds batch_size x chunk points. Unchunked, 1,000 steps would hold ~500 MiB more."""
    x = keras.Input((16, 16, 3), name="x")
    h = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(16, 3, activation="relu", padding="same")(x))
    model = keras.Model(x, keras.layers.Dense(10)(h))
    path = save(model, tmp_path)
    images = RNG.uniform(size=(32, 16, 16, 3)).astype(np.float32)
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(32), "x": images})
    peaks = {}
    for steps in (50, 1000):
        argv = [sys.executable, "-m", "pipeline", "--runner", "DirectRunner", "--input", str(tmp_path / "in/a.parquet"),
                "--output", str(tmp_path / f"s{steps}/g"), "--model", path, "--feature_columns", "x",
                "--method", "integrated_gradients", "--steps", str(steps), "--batch_size", "32", "--chunk", "25"]
        peaks[steps] = _peak_rss_mib(argv)
    assert abs(peaks[1000] - peaks[50]) <= 0.1 * peaks[50], peaks


@pytest.mark.parametrize("runner", [[], ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]])
def test_the_mean_baseline_is_the_datasets_mean_input_from_a_first_pass(tmp_path, runner):
    """On a linear model IG is (x - b) . w exactly: b is the mean over the rows that can be fed, bad rows excluded."""
    x = keras.Input((5,), name="x")
    model = keras.Model(x, keras.layers.Dense(1)(x))
    values = _rows(tmp_path, n=60, files=3) + 3.0  # a mean far from zero
    dirty = pq.read_table(str(tmp_path / "in/1.parquet"))
    broken = tensor_column(dirty, "x").copy()
    broken[2, 0] = np.nan  # row 22 is rejected, and must not count in the mean
    pq.write_table(dirty.set_column(1, "x", pa.FixedShapeTensorArray.from_numpy_ndarray(broken)), str(tmp_path / "in/1.parquet"))
    good = [i for i in range(60) if i != 22]
    summary = run_on(tmp_path, model, "--method", "integrated_gradients", "--baseline", "mean", "--steps", 4,
                     "--batch_size", 16, *runner)
    assert (summary.rows_out, summary.rows_rejected) == (59, 1)
    if summary.counters is not None:
        assert summary.counters["rows_in"] == 60  # the first pass reads again, and counts nothing
    out = by_key(read_output(tmp_path / "out/g"))
    mean = values[good].astype(np.float64).mean(axis=0)
    w = model.layers[-1].kernel.numpy()[:, 0]
    assert_close(tensor_column(out, "gradient"), (values[good] - mean) * w, rtol=1e-4, atol=1e-5)
    assert np.abs(out.column("ig_delta").to_numpy()).max() < 1e-4
