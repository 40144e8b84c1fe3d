"""Per-example gradients with respect to the weights (--wrt weights/both), engine alone and through the job.

The reference is the article's third recipe run eagerly one row at a time:
`tape.gradient(loss, model.trainable_variables)` on a batch of one, clipped in
numpy; the projection's reference applies the documented construction (buckets
and signs from the stateless generator) to those eager gradients with numpy.
"""

import json

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from pipeline.run import main
from tests.conftest import (
    assert_close, assert_rounding_equal, by_key, read_output, run_on, save, tensor_column, write_parquet,
)
from transforms.gradients import FORMS, WRT, GradientEngine, GradientSpec, SpecError, from_keras
from transforms.gradients.wrt.forms.projection import CONSTRUCTION, sketch_seed
from transforms.io.arrow import to_tensor_array

ROWS = 5
LOSS = "mse"


def _dense():
    x = keras.Input((3,), name="x")
    return keras.Model(x, keras.layers.Dense(2)(keras.layers.Dense(4, activation="tanh")(x)))


def _conv1d():
    x = keras.Input((8, 2), name="x")
    h = keras.layers.Conv1D(3, 3, activation="tanh")(x)
    return keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(h)))


def _conv2d():
    x = keras.Input((6, 6, 2), name="x")
    h = keras.layers.Conv2D(3, 3, activation="tanh")(x)
    return keras.Model(x, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h)))


def _embedding():
    x = keras.Input((5,), dtype="int32", name="x")
    h = keras.layers.Embedding(20, 4)(x)
    return keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(h)))


def _layer_norm():
    x = keras.Input((3,), name="x")
    h = keras.layers.LayerNormalization()(keras.layers.Dense(4)(x))
    return keras.Model(x, keras.layers.Dense(2)(h))


def _batch_norm():
    x = keras.Input((3,), name="x")
    norm = keras.layers.BatchNormalization()
    model = keras.Model(x, keras.layers.Dense(2)(norm(keras.layers.Dense(4)(x))))
    norm.moving_mean.assign([0.5, -1.0, 0.2, 0.0])  # inference mode reads these; make them matter
    norm.moving_variance.assign([2.0, 0.5, 1.0, 3.0])
    return model


def _residual():
    x = keras.Input((3,), name="x")
    h = keras.layers.Dense(4)(x)
    block = keras.layers.Dense(4)(keras.layers.ReLU()(keras.layers.Dense(4, activation="relu")(h)))
    return keras.Model(x, keras.layers.Dense(2)(keras.layers.Add()([h, block])))


def _two_inputs():
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    h = keras.layers.Dense(4, activation="tanh")(keras.layers.Concatenate()([a, b]))
    return keras.Model([a, b], keras.layers.Dense(2)(h))


LAYERS = {
    "dense": _dense,
    "conv1d": _conv1d,
    "conv2d": _conv2d,
    "embedding": _embedding,
    "layer_norm": _layer_norm,
    "batch_norm": _batch_norm,
    "residual": _residual,
    "two_inputs": _two_inputs,
}


def _rows(model, rows=ROWS, seed=3):
    rng = np.random.default_rng(seed)
    inputs = [
        rng.integers(0, 20, size=(rows, *t.shape[1:])).astype(np.int32)
        if t.dtype.startswith("int")
        else rng.normal(size=(rows, *t.shape[1:])).astype(np.float32)
        for t in model.inputs
    ]
    return inputs, rng.normal(size=(rows, 2)).astype(np.float32)


def _eager(model, inputs, labels, clip_norm=None, per_tensor=False):
    """The article's recipe per row: [per row: per trainable variable: its gradient], clipped as asked."""
    loss = keras.losses.get(LOSS)
    rows = []
    for i in range(len(labels)):
        xs = [tf.constant(x[i : i + 1]) for x in inputs]
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(loss(labels[i : i + 1], model(xs if len(xs) > 1 else xs[0], training=False)))
        grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(value, model.trainable_variables)]
        if clip_norm is not None:
            groups = [[g] for g in grads] if per_tensor else [grads]
            scales = [min(1.0, clip_norm / np.sqrt(sum(np.sum(g**2) for g in group))) for group in groups]
            grads = [g * s for group, s in zip(groups, scales) for g in group]
        rows.append(grads)
    return rows


def _sketch(paths, grads, seed, k):
    """The documented construction, applied with numpy: v[h(j)] += s(j) g[j] over every parameter."""
    out = np.zeros(k, np.float64)
    for path, g in zip(paths, grads):
        draw = tf.random.stateless_uniform(
            (g.size,), tf.constant(sketch_seed(seed, path), tf.int64), 0, 2 * k, tf.int64, alg="philox"
        ).numpy()
        np.add.at(out, draw % k, (2.0 * (draw // k) - 1) * g.reshape(-1))
    return out


def _spec(**kw):
    return GradientSpec(target="loss", loss=LOSS, wrt="weights", **kw)


def test_the_registries_list_the_new_answers():
    assert WRT.names == ("inputs", "weights", "both", "layer")  # issue 19 added layer
    assert FORMS.names == ("norm", "projection", "full")
    with pytest.raises(SpecError, match=r"^weight_output must be one of norm, projection, full, not 'sum'$"):
        _spec(weight_output=("sum",))


@pytest.mark.parametrize("clip", [None, "together", "per_tensor"])
@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_norms_projections_and_full_gradients_match_the_eager_recipe_row_by_row(kind, clip):
    model = LAYERS[kind]()
    inputs, labels = _rows(model)
    clip_norm = None if clip is None else 0.3
    spec = _spec(
        weight_output=("norm", "projection", "full"),
        projection_dim=16,
        projection_seed=7,
        clip_norm=clip_norm,
        clip_per_tensor=clip == "per_tensor",
    )
    engine = GradientEngine(from_keras(model), spec, batch_size=ROWS)
    result = engine(inputs, [labels])
    want = _eager(model, inputs, labels, clip_norm, clip == "per_tensor")
    paths = [v.path for v in model.trainable_variables]
    for j, path in enumerate(paths):
        assert_close(result[f"weight_gradient__{path}"], np.stack([row[j] for row in want]), rtol=2e-4, atol=1e-6)
    total = np.array([np.sqrt(sum(np.sum(g**2) for g in row)) for row in want])
    assert_close(result["weight_norm"], total, rtol=1e-4)
    if clip == "together":
        assert result["weight_norm"].max() <= 0.3 * (1 + 1e-5) and total.max() > 0.29
    for layer in model.layers:
        owned = [paths.index(v.path) for v in layer.trainable_variables]
        if owned:
            per_layer = [np.sqrt(sum(np.sum(row[j] ** 2) for j in owned)) for row in want]
            assert_close(result[f"weight_norm__{layer.name}"], per_layer, rtol=1e-4)
    sketches = np.stack([_sketch(paths, row, 7, 16) for row in want])
    assert_close(result["weight_projection"], sketches, rtol=1e-4, atol=1e-6)
    assert [o.name for o in engine.outputs] == list(result)


def test_projections_agree_to_rounding_across_batch_sizes():
    model = _residual()
    inputs, labels = _rows(model, rows=40, seed=5)
    spec = _spec(weight_output=("projection", "norm"), weight_memory_mb=1)
    got = {}
    for size in (1, 7, 256):
        engine = GradientEngine(from_keras(model), spec, batch_size=size)
        parts = []
        for start in range(0, 40, size):
            chunk = [x[start : start + size] for x in inputs + [labels]]
            rows = len(chunk[0])
            padded = [np.concatenate([c, np.zeros((size - rows, *c.shape[1:]), c.dtype)]) for c in chunk]
            result = engine(padded[:-1], padded[-1:])
            parts.append({k: v[:rows] for k, v in result.items()})
        got[size] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    for name in ("weight_projection", "weight_norm"):
        assert_rounding_equal(got[1][name], got[256][name], name)
        assert_rounding_equal(got[7][name], got[256][name], name)


def test_inner_products_of_projections_are_within_the_documented_bound():
    """README: E<Pg,Pg'> = <g,g'> and Var <= (|g|^2 |g'|^2 + <g,g'>^2) / k; with k = 4096, checked on every pair."""
    x = keras.Input((40,), name="x")
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.Dense(64, activation="tanh")(x)))  # 2,754 parameters
    inputs, labels = _rows(model, rows=24, seed=9)
    k = 4096
    result = GradientEngine(from_keras(model), _spec(weight_output=("projection",), projection_dim=k), 24)(
        inputs, [labels]
    )
    grads = np.stack([np.concatenate([g.reshape(-1) for g in row]) for row in _eager(model, inputs, labels)])
    exact = grads @ grads.T
    sketched = result["weight_projection"].astype(np.float64) @ result["weight_projection"].T.astype(np.float64)
    norms = np.sqrt(np.diag(exact))
    sigma = np.sqrt((np.outer(norms, norms) ** 2 + exact**2) / k)
    z = (sketched - exact)[np.triu_indices(24)] / sigma[np.triu_indices(24)]
    assert np.mean(z**2) < 1.5  # the variance bound (expected at most 1)
    assert np.mean(np.abs(z) > 3) <= 1 / 9  # Chebyshev at 3 sigma
    assert np.abs(z).max() < 10  # Chebyshev: 1% per pair
    assert np.abs(z).max() > 0.1  # a projection, not an identity: errors exist


def test_wrt_both_gives_the_input_gradients_of_wrt_inputs_and_the_weight_forms_of_wrt_weights():
    model = _two_inputs()
    inputs, labels = _rows(model)
    common = dict(target="loss", loss=LOSS, clip_norm=0.5, emit=("norm",))
    alone = GradientEngine(from_keras(model), GradientSpec(**common), ROWS)(inputs, [labels])
    weights = GradientEngine(from_keras(model), GradientSpec(wrt="weights", **common), ROWS)(inputs, [labels])
    both = GradientEngine(from_keras(model), GradientSpec(wrt="both", **common), ROWS)(inputs, [labels])
    assert set(both) == set(alone) | set(weights)
    for name in alone:
        np.testing.assert_array_equal(both[name], alone[name])
    for name in weights:
        assert_close(both[name], weights[name], rtol=1e-6)


class _Unused(keras.layers.Layer):
    """Holds a variable its output ignores."""

    def build(self, shape):
        self.ignored = self.add_weight(shape=(2,), name="ignored")

    def call(self, x):
        return x


def test_a_variable_the_target_ignores_is_zeros_and_counted_or_an_error_naming_it():
    x = keras.Input((3,), name="x")
    model = keras.Model(x, keras.layers.Dense(2)(_Unused(name="unused")(x)))
    inputs, labels = _rows(model)
    engine = GradientEngine(from_keras(model), _spec(weight_output=("full",)), ROWS)
    result = engine(inputs, [labels])
    assert np.all(result["weight_gradient__unused/ignored"] == 0)
    assert engine.unconnected == {("unused/ignored", None)}
    with pytest.raises(SpecError, match=r"^variable 'unused/ignored' has no gradient: the loss does not depend on it"):
        GradientEngine(from_keras(model), _spec(unconnected="error"), ROWS).trace()


def test_selection_by_layer_names_or_regex_and_its_errors():
    model = _residual()
    names = [layer.name for layer in model.layers if layer.trainable_variables]
    engine = GradientEngine(from_keras(model), _spec(weights=f"{names[0]},{names[-1]}"), ROWS)
    assert [o.name for o in engine.outputs if o.kind == "weight_norm"] == [
        "weight_norm",
        f"weight_norm__{names[0]}",
        f"weight_norm__{names[-1]}",
    ]
    record = GradientEngine(from_keras(model), _spec(weights=r"/bias$"), ROWS).wrt.provenance()
    assert record["variables"] == [v.path for v in model.trainable_variables if v.path.endswith("/bias")]
    assert record["parameters"] == sum(int(np.prod(v.shape)) for v in model.trainable_variables if "bias" in v.path)
    assert record["projection"] is None
    unmatched = rf"^weights 'nope' matches no trainable variable; give layer names \({names[0]}, "
    with pytest.raises(SpecError, match=unmatched):
        GradientEngine(from_keras(model), _spec(weights="nope"), ROWS)
    for layer in model.layers:
        layer.trainable = False
    with pytest.raises(SpecError, match="^the model has no trainable variable"):
        GradientEngine(from_keras(model), _spec(), ROWS)


def test_spec_errors_for_weights():
    with pytest.raises(SpecError, match=r"^clip_per_tensor needs clip_norm"):
        _spec(clip_per_tensor=True)
    with pytest.raises(SpecError, match=r"^projection_dim must be 1 or more, not 0$"):
        _spec(weight_output=("projection",), projection_dim=0)
    with pytest.raises(SpecError, match=r"^projection_dtype must be one of float32, float16, not 'int8'$"):
        _spec(weight_output=("projection",), projection_dtype="int8")
    with pytest.raises(SpecError, match=r"^weight_output projection cannot run under jit_compile"):
        _spec(weight_output=("projection",), jit_compile=True)
    with pytest.raises(SpecError, match=r"^weight_memory_mb must be 1 or more"):
        _spec(weight_memory_mb=0)
    x = keras.Input((3,))
    two_heads = keras.Model(x, [keras.layers.Dense(1, name="l")(x), keras.layers.Dense(1, name="r")(x)])
    with pytest.raises(SpecError, match=r"^wrt weights needs one scalar per row; target per_output gives 2 \(l, r\)$"):
        GradientEngine(from_keras(two_heads), GradientSpec(target="per_output", wrt="weights"), ROWS)
    big = keras.Sequential([keras.Input((1000,)), keras.layers.Dense(1000)])  # 1,001,000 parameters
    with pytest.raises(SpecError, match=r"^weight_output full would write 1,001,000 numbers per row .*large_rows$"):
        GradientEngine(from_keras(big), _spec(weight_output=("full",)), 2)
    assert GradientEngine(from_keras(big), _spec(weight_output=("full",), allow_large_rows=True), 2).outputs


# ---------------------------------------------------------------- through the job


# Runs whose outputs must agree: batch sizes and the multi-process runner to rounding, a rerun to the byte.
JOB_RUNS = {
    "b1": ["--batch_size", 1],
    "b7": ["--batch_size", 7],
    "b256": ["--batch_size", 256],
    "again": ["--batch_size", 256],
    "multi": ["--batch_size", 7, "--direct_num_workers", 2, "--direct_running_mode", "multi_processing"],
}


def _job_data(tmp_path, rows=60):
    """A residual model's data in two files of several row groups; row 3 is null, row 8 overflows the model."""
    rng = np.random.default_rng(12)
    x, y = rng.normal(size=(rows, 3)).astype(np.float32), rng.normal(size=(rows, 2)).astype(np.float32)
    x[8] = 3e38
    column = pa.array([None if i == 3 else list(map(float, r)) for i, r in enumerate(x)], pa.list_(pa.float32()))
    half = rows // 2
    for i, part in enumerate((slice(0, half), slice(half, rows))):
        write_parquet(
            tmp_path / f"in/{i}.parquet",
            {"id": np.arange(rows)[part], "x": column[part], "y": to_tensor_array(y[part])},
            row_group_size=11,
        )
    return x, y


def _weights_args(*extra):
    return ["--target", "loss", "--loss", LOSS, "--label_column", "y", "--wrt", "weights", *extra]


def test_job_projections_agree_across_groupings_and_a_rerun_to_the_byte_with_the_contracts_metadata(tmp_path):
    model = _residual()
    x, y = _job_data(tmp_path)
    path = save(model, tmp_path)
    args = _weights_args("--weight_output", "norm,projection", "--projection_dim", "64", "--projection_seed", "3")
    tables = {}
    for name, extra in JOB_RUNS.items():
        summary = run_on(tmp_path, path, *args, *extra, output=f"{name}/g")
        assert (summary.rows_in, summary.rows_out, summary.rows_rejected) == (60, 58, 2)
        tables[name] = by_key(read_output(tmp_path / f"{name}/g"))
    reference = tensor_column(tables["b256"], "weight_projection")
    norms = tables["b256"].column("weight_norm").to_numpy()
    for name, table in tables.items():
        assert_rounding_equal(tensor_column(table, "weight_projection"), reference, name)
        assert_rounding_equal(table.column("weight_norm").to_numpy(), norms, name)
    assert tables["again"].equals(tables["b256"])  # the same batches again: the same bytes
    table = tables["b7"]
    layers = [layer.name for layer in model.layers if layer.trainable_variables]
    assert table.column_names == ["id", "weight_norm", *[f"weight_norm__{n}" for n in layers], "weight_projection"]
    kept = table.column("id").to_numpy()
    assert sorted(set(range(60)) - set(kept)) == [3, 8]
    want = _eager(model, [x[kept]], y[kept])
    paths = [v.path for v in model.trainable_variables]
    assert_close(reference, np.stack([_sketch(paths, row, 3, 64) for row in want]), rtol=1e-4, atol=1e-6)

    schema = pq.read_schema(sorted((tmp_path / "b7").glob("g-*.parquet"))[0])
    assert str(schema.field("weight_projection").type.storage_type) == "fixed_size_list<item: float>[64]"
    meta = {k.decode(): v.decode() for k, v in schema.metadata.items()}
    assert json.loads(meta["beam_gradients.weights"]) == {
        "variables": paths,
        "parameters": sum(int(np.prod(v.shape)) for v in model.trainable_variables),
        "projection": {"seed": 3, "dim": 64, "dtype": "float32", "construction": CONSTRUCTION},
    }
    assert len(meta["beam_gradients.model_sha256"]) == 64
    rejected = read_output(tmp_path / "b7/g_rejected").sort_by("id")
    assert rejected.column("id").to_pylist() == [3, 8]
    assert rejected.column("stage").to_pylist() == ["decode", "compute"]
    assert rejected.column("reason").to_pylist()[1] == "the computed weight_norm is NaN or infinite for this row"


def test_job_wrt_both_float16_projection_and_full_gradients(tmp_path):
    model = _residual()
    x, y = _job_data(tmp_path)
    path = save(model, tmp_path)
    run_on(tmp_path, path, *_weights_args()[:-2], "--clip_norm", "0.5", output="inputs/g")
    run_on(
        tmp_path,
        path,
        *_weights_args("--weight_output", "full", "--weight_output", "projection", "--clip_norm", "0.5"),
        "--wrt=both",
        "--projection_dtype",
        "float16",
        "--projection_dim",
        "32",
        output="both/g",
    )
    inputs, both = by_key(read_output(tmp_path / "inputs/g")), by_key(read_output(tmp_path / "both/g"))
    np.testing.assert_array_equal(tensor_column(both, "gradient"), tensor_column(inputs, "gradient"))
    kept = both.column("id").to_numpy()
    want = _eager(model, [x[kept]], y[kept], clip_norm=0.5)
    for j, v in enumerate(model.trainable_variables):
        assert_close(tensor_column(both, f"weight_gradient__{v.path}"), np.stack([r[j] for r in want]), rtol=2e-4)
    projection = tensor_column(both, "weight_projection")
    assert projection.dtype == np.float16
    paths = [v.path for v in model.trainable_variables]
    sketches = np.stack([_sketch(paths, row, 0, 32) for row in want])
    assert_close(projection.astype(np.float32), sketches, rtol=2e-3, atol=1e-3)
    meta = pq.read_schema(sorted((tmp_path / "both").glob("g-*.parquet"))[0]).metadata
    assert json.loads(meta[b"beam_gradients.weights"])["projection"]["dtype"] == "float16"
    plain = pq.read_schema(sorted((tmp_path / "inputs").glob("g-*.parquet"))[0]).metadata
    assert b"beam_gradients.weights" not in plain


def test_job_refuses_a_selection_that_matches_nothing_in_one_line_naming_the_flag_and_the_layers(tmp_path, capsys):
    model = _residual()
    _job_data(tmp_path, rows=10)
    path = save(model, tmp_path)
    args = ["--input", tmp_path / "in/*.parquet", "--output", tmp_path / "out/g", "--model", path]
    args += ["--feature_columns", "x", "--runner", "DirectRunner", *_weights_args("--weights", "convolution")]
    assert main([str(a) for a in args]) == 2
    layers = ", ".join(layer.name for layer in model.layers if layer.trainable_variables)
    line = capsys.readouterr().err.strip()
    assert line == (
        f"beam-gradients: error: --weights 'convolution' matches no trainable variable; give layer names ({layers}) "
        "or a regular expression over variable paths ("
        + ", ".join(v.path for v in model.trainable_variables[:6])
        + ", ...)"
    )
