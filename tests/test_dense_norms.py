"""The fast path for `--weight_output norm` on Dense models (wrt/layer_gradients.py): the eager recipe's numbers, the
general path's wherever it does not apply, and a row's bytes independent of the batch size, runner and rerun.
(Conv, sequence Dense and the other layer kinds: tests/test_fast_weights.py.)

`Weights.path` says which path the traced function took: "ghost_norms", "layer_gradients" or "per_example".
"""

import keras
import numpy as np
import pytest

from tests.conftest import assert_close, assert_rounding_equal, by_key, read_output, run_on, save
from tests.test_weights import JOB_RUNS, _eager, _job_data, _rows, _spec, _weights_args
from transforms.gradients import GradientEngine, from_keras

ROWS = 9


def _mlp(bias=True):
    x = keras.Input((3,), name="x")
    h = keras.layers.Dense(5, activation="relu", use_bias=bias)(x)
    h = keras.layers.Dense(4, activation="tanh", use_bias=bias)(h)
    return keras.Model(x, keras.layers.Dense(2, activation="softmax", use_bias=bias)(h))


def _cnn():
    x = keras.Input((6, 6, 2), name="x")
    h = keras.layers.Conv2D(3, 3, activation="relu")(x)
    return keras.Model(x, keras.layers.Dense(2, name="head")(keras.layers.GlobalAveragePooling2D()(h)))


def _norms(model, spec, inputs, labels):
    engine = GradientEngine(from_keras(model), spec, batch_size=len(labels))
    return engine(inputs, [labels]), engine.wrt.path


def _want(model, inputs, labels, layers, clip_norm=None, per_tensor=False):
    """The eager recipe's norms over the given layers' variables: the whole, and one per layer."""
    rows = _eager(model, inputs, labels, clip_norm, per_tensor)
    paths = [v.path for v in model.trainable_variables]
    owned = {n: [paths.index(v.path) for v in model.get_layer(n).trainable_variables] for n in layers}
    chosen = [j for n in layers for j in owned[n]]
    want = {"weight_norm": [np.sqrt(sum(np.sum(row[j] ** 2) for j in chosen)) for row in rows]}
    for n in layers:
        want[f"weight_norm__{n}"] = [np.sqrt(sum(np.sum(row[j] ** 2) for j in owned[n])) for row in rows]
    return want


@pytest.mark.parametrize("clip", [None, "together", "per_tensor"])
@pytest.mark.parametrize("bias", [True, False])
def test_mlp_norms_take_the_fast_path_and_match_the_eager_recipe(bias, clip):
    model = _mlp(bias)
    inputs, labels = _rows(model, rows=ROWS)
    layers = [layer.name for layer in model.layers if layer.trainable_variables]
    raw = np.array(_want(model, inputs, labels, layers)["weight_norm"])
    clip_norm = None if clip is None else float(np.median(raw))  # the limit bites on half the rows
    spec = _spec(weight_output=("norm",), clip_norm=clip_norm, clip_per_tensor=clip == "per_tensor")
    got, path = _norms(model, spec, inputs, labels)
    assert path == "ghost_norms"
    want = _want(model, inputs, labels, layers, clip_norm, clip == "per_tensor")
    assert list(got) == [*want, "loss"]
    for name, values in want.items():
        assert_close(got[name], values, rtol=1e-5, atol=1e-9)


def test_the_dense_head_of_a_cnn_alone_takes_the_fast_path():
    model = _cnn()
    inputs, labels = _rows(model, rows=ROWS)
    got, path = _norms(model, _spec(weight_output=("norm",), weights="head"), inputs, labels)
    assert path == "ghost_norms"
    for name, values in _want(model, inputs, labels, ["head"]).items():
        assert_close(got[name], values, rtol=1e-5)


@pytest.mark.parametrize(
    "case",
    ["PReLU selected", "layer called twice"],  # conv, projections, 3-D inputs and batch norm are covered now
)
def test_what_the_fast_path_does_not_cover_falls_back_to_the_same_bytes_as_the_general_path(case):
    spec = _spec(weight_output=("norm",))
    if case == "PReLU selected":  # a layer no kind covers, with a variable (its slopes)
        x = keras.Input((3,), name="x")
        model = keras.Model(x, keras.layers.Dense(2)(keras.layers.PReLU()(keras.layers.Dense(4)(x))))
    else:
        x = keras.Input((3,), name="x")
        shared = keras.layers.Dense(3, activation="tanh", name="shared")
        model = keras.Model(x, keras.layers.Dense(2)(shared(shared(x))))
    inputs, labels = _rows(model, rows=ROWS)
    got, path = _norms(model, spec, inputs, labels)
    assert path == "per_example"
    general, general_path = _norms(model, _spec(weight_output=("norm", "full")), inputs, labels)
    assert general_path == "per_example"
    for name in (n for n in got if n.startswith("weight_norm")):
        assert got[name].tobytes() == general[name].tobytes(), name
    layers = [layer.name for layer in model.layers if layer.trainable_variables]
    for name, values in _want(model, inputs, labels, layers).items():
        assert_close(got[name], values, rtol=1e-4)
    assert not any("call" in vars(layer) for layer in model.layers)  # every layer's own call is back


def test_norms_agree_to_rounding_across_batch_sizes():
    model = _mlp()
    inputs, labels = _rows(model, rows=80, seed=5)
    got = {}
    for size in (1, 7, 256):
        engine = GradientEngine(from_keras(model), _spec(weight_output=("norm",)), batch_size=size)
        parts = []
        for start in range(0, 80, size):
            chunk = [x[start : start + size] for x in inputs + [labels]]
            rows = len(chunk[0])
            padded = [np.concatenate([c, np.zeros((size - rows, *c.shape[1:]), c.dtype)]) for c in chunk]
            parts.append({k: v[:rows] for k, v in engine(padded[:-1], padded[-1:]).items()})
        assert engine.wrt.path == "ghost_norms"
        got[size] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    for name in got[1]:
        assert_rounding_equal(got[1][name], got[256][name], name)
        assert_rounding_equal(got[7][name], got[256][name], name)


def test_job_norms_agree_across_batch_sizes_and_runners_and_a_rerun_to_the_byte(tmp_path):
    model = _mlp()
    x, y = _job_data(tmp_path)
    path = save(model, tmp_path)
    tables = {}
    for name, extra in JOB_RUNS.items():
        summary = run_on(tmp_path, path, *_weights_args("--weight_output", "norm"), *extra, output=f"{name}/g")
        assert (summary.rows_in, summary.rows_out, summary.rows_rejected) == (60, 58, 2)
        tables[name] = by_key(read_output(tmp_path / f"{name}/g"))
    columns = [c for c in tables["b256"].column_names if c.startswith("weight_norm")]
    assert len(columns) == 4
    for name, table in tables.items():
        for column in columns:
            assert_rounding_equal(table.column(column).to_numpy(), tables["b256"].column(column).to_numpy(), name)
    assert tables["again"].equals(tables["b256"])  # the same batches again: the same bytes
    kept = tables["b7"].column("id").to_numpy()
    layers = [layer.name for layer in model.layers if layer.trainable_variables]
    for name, values in _want(model, [x[kept]], y[kept], layers).items():
        assert_close(tables["b7"].column(name).to_numpy(), values, rtol=1e-5)
