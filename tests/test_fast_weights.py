"""The per-layer fast weight paths (wrt/layer_gradients.py, wrt/layers/): each layer kind's norms and whole
per-example gradients against the article's recipe run eagerly per row (`tape.gradient(loss,
model.trainable_variables)`) and against the general per-example path (the oracle), clipped or not; and the
oneDNN batch matmul that TensorFlow 2.21 gets wrong kept off every path.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import assert_close, assert_rounding_equal
from tests.test_weights import _eager, _rows, _spec
from transforms.gradients import GradientEngine, from_keras
from transforms.gradients.wrt.per_example import unsafe_matmul

ROWS = 7


def _mlp():
    x = keras.Input((6,), name="x")  # Dense layers over one position: their kernels share one fused group
    h = keras.layers.Dense(5, activation="tanh")(keras.layers.Dense(4, activation="tanh")(x))
    return keras.Model(x, keras.layers.Dense(2)(h))


def _sequence_dense():
    x = keras.Input((5, 3), name="x")
    h = keras.layers.Dense(4, activation="tanh")(x)  # each of 5 positions: a sum of 5 outer products per row
    return keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(h)))


def _einsum_dense():
    x = keras.Input((4, 3), name="x")
    h = keras.layers.EinsumDense("abc,cde->abde", (4, 2, 3), bias_axes="de", activation="tanh")(x)
    h = keras.layers.EinsumDense("abde,de->ab", (4,), bias_axes="b")(h)
    return keras.Model(x, keras.layers.Dense(2)(h))


def _conv1d():
    x = keras.Input((9, 2), name="x")
    h = keras.layers.Conv1D(3, 3, strides=2, padding="same", activation="tanh")(x)
    return keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(h)))


def _conv2d():
    x = keras.Input((8, 8, 2), name="x")  # the first kernel's gradient by rows (64 positions), the others by offsets
    h = keras.layers.Conv2D(3, 3, padding="same", activation="relu")(x)
    h = keras.layers.Conv2D(4, 2, strides=2, dilation_rate=1, use_bias=False)(h)
    h = keras.layers.Conv2D(2, 2, dilation_rate=2, activation="tanh")(h)
    return keras.Model(x, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h)))


def _embedding():
    x = keras.Input((6,), dtype="int32", name="x")  # 6 tokens from 20: rows repeat tokens (forced below too)
    h = keras.layers.Embedding(20, 4)(x)
    return keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(h)))


def _layer_norm():
    x = keras.Input((3, 4), name="x")
    h = keras.layers.LayerNormalization()(keras.layers.Dense(4)(x))
    return keras.Model(x, keras.layers.Dense(2)(keras.layers.Flatten()(h)))


def _batch_norm():
    """A conv block as ResNet has it (conv, BatchNormalization, relu), the moving statistics far from 0 and 1."""
    x = keras.Input((6, 6, 2), name="x")
    norm = keras.layers.BatchNormalization()
    h = keras.layers.Activation("relu")(norm(keras.layers.Conv2D(3, 3, padding="same")(x)))
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h)))
    norm.moving_mean.assign([0.3, -0.2, 0.1])
    norm.moving_variance.assign([2.0, 0.5, 1.5])
    norm.gamma.assign([1.5, 0.7, -0.4])
    return model


def _attention(tokens=24, width=32):
    """The issue's text classifier (tokens -> Embedding -> MultiHeadAttention -> pooling -> Dense), with a
    LayerNormalization and a residual as an encoder block has."""
    x = keras.Input((tokens,), dtype="int32", name="x")
    h = keras.layers.Embedding(20, width)(x)
    a = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16)(h, h)
    h = keras.layers.LayerNormalization()(keras.layers.Add()([h, a]))
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(x, keras.layers.Dense(2)(h))


MODELS = {
    "mlp": _mlp,
    "sequence_dense": _sequence_dense,
    "einsum_dense": _einsum_dense,
    "conv1d": _conv1d,
    "conv2d": _conv2d,
    "embedding": _embedding,
    "layer_norm": _layer_norm,
    "batch_norm": _batch_norm,
    "attention": _attention,
}


def _data(model, rows=ROWS):
    inputs, labels = _rows(model, rows=rows)
    if inputs[0].dtype == np.int32:
        inputs[0][:, 1] = inputs[0][:, 0]  # a token repeated in every row
        inputs[0][0, :] = 5  # one row of a single token
    return inputs, labels


def _run(model, spec, inputs, labels, general=False):
    engine = GradientEngine(from_keras(model), spec, batch_size=len(labels))
    if general:
        engine.wrt.fast = None  # the general per-example path, the oracle
    return engine(inputs, [labels]), engine.wrt.path


@pytest.mark.parametrize("clip", [None, "together", "per_tensor"])
@pytest.mark.parametrize("kind", sorted(MODELS))
def test_fast_norms_and_full_gradients_match_the_eager_recipe_and_the_general_path(kind, clip):
    keras.utils.set_random_seed(1)
    model = MODELS[kind]()
    inputs, labels = _data(model)
    raw = _eager(model, inputs, labels)
    whole = np.array([np.sqrt(sum(np.sum(g**2) for g in row)) for row in raw])
    clip_norm = None if clip is None else float(np.median(whole))  # the limit bites on half the rows
    options = dict(clip_norm=clip_norm, clip_per_tensor=clip == "per_tensor")
    want = _eager(model, inputs, labels, clip_norm, clip == "per_tensor")
    paths = [v.path for v in model.trainable_variables]

    norms, path = _run(model, _spec(weight_output=("norm",), **options), inputs, labels)
    assert path == "ghost_norms"
    assert_close(norms["weight_norm"], [np.sqrt(sum(np.sum(g**2) for g in row)) for row in want], rtol=1e-4)
    full, path = _run(model, _spec(weight_output=("full", "norm"), **options), inputs, labels)
    assert path == "layer_gradients"
    for j, p in enumerate(paths):
        assert_close(full[f"weight_gradient__{p}"], np.stack([row[j] for row in want]), rtol=1e-4, atol=1e-6)

    oracle, path = _run(model, _spec(weight_output=("full", "norm"), **options), inputs, labels, general=True)
    assert path == "per_example"
    for name in oracle:
        if name.startswith("weight_"):
            assert_close(full[name], oracle[name], rtol=1e-4, atol=1e-6)
            if name.startswith("weight_norm"):
                assert_close(norms[name], oracle[name], rtol=1e-4, atol=1e-6)


def _numpy_kernel_gradients(layer, a, d):
    """Each row's conv kernel gradient by numpy, a loop over kernel offsets: g[i, j] = sum over output positions of
    the padded input the offset sees there (outer) d. Independent of TensorFlow's filter-gradient kernel, which
    both the recipe's tape and `Shifted.by_rows` run."""
    a, d = np.asarray(a, np.float64), np.asarray(d, np.float64)
    if layer.rank == 1:
        a, d = a[:, None], d[:, None]
    size, strides, rates = ((1, *g) if layer.rank == 1 else tuple(g) for g in
                            (layer.kernel_size, layer.strides, layer.dilation_rate))
    out = d.shape[1:3]
    if layer.padding == "same":
        geometry = zip(out, strides, size, rates, a.shape[1:3])
        pads = [max((o - 1) * s + (k - 1) * r + 1 - n, 0) for o, s, k, r, n in geometry]
        a = np.pad(a, [(0, 0), *((p // 2, p - p // 2) for p in pads), (0, 0)])
    g = np.zeros((a.shape[0], *size, a.shape[3], d.shape[3]))
    for i in range(size[0]):
        for j in range(size[1]):
            seen = a[:, i * rates[0] :: strides[0], j * rates[1] :: strides[1]][:, : out[0], : out[1]]
            g[:, i, j] = np.einsum("rhwc,rhwo->rco", seen, d)
    return g.reshape(a.shape[0], *layer.kernel.shape)


@pytest.mark.parametrize(
    "layer, shape",
    [
        (lambda: keras.layers.Conv2D(4, 3, padding="same"), (8, 8, 3)),  # the bench CNN's kind
        (lambda: keras.layers.Conv2D(3, 3, strides=2, padding="same"), (9, 9, 2)),  # padding split 1 + 1
        (lambda: keras.layers.Conv2D(3, 4, strides=(3, 2), padding="same"), (10, 11, 2)),  # padding 3: 1, then 2
        (lambda: keras.layers.Conv2D(2, (2, 3), dilation_rate=2, padding="same"), (8, 7, 3)),
        (lambda: keras.layers.Conv2D(4, 2, strides=2), (7, 7, 2)),  # the last input row never read
        (lambda: keras.layers.Conv2D(5, 1, strides=2), (6, 6, 3)),  # ResNet's projection shortcut
        (lambda: keras.layers.Conv1D(3, 4, strides=3, padding="same"), (13, 2)),
        (lambda: keras.layers.Conv1D(3, 3, dilation_rate=2), (12, 2)),
    ],
)
def test_conv_kernel_gradients_by_both_routes_match_numpy_and_each_rows_tape(layer, shape):
    """The conv kind's kernel factor (`conv.Shifted`) on strides, dilations and paddings the models above do not
    reach: each route of its whole gradients (per row by TensorFlow's filter gradient; one matmul per kernel
    offset), the factor's own choice and both norm routes (direct, and the ghost norm over the im2col patches),
    against numpy and against each row's own tape."""
    from transforms.gradients.wrt.layers import kind_of

    layer = layer()
    rng = np.random.default_rng(3)
    a = tf.constant(rng.normal(size=(5, *shape)), tf.float32)
    d = tf.constant(rng.normal(size=layer(a).shape), tf.float32)
    want = []
    for i in range(5):
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(layer.convolution_op(a[i : i + 1], layer.kernel) * d[i : i + 1])
        want.append(tape.gradient(total, layer.kernel).numpy())
    want = np.stack(want)
    assert_close(want, _numpy_kernel_gradients(layer, a, d), rtol=1e-5, atol=1e-5)
    factor = kind_of(layer).factors(layer, type("Recorded", (), {"a": a}), d)[id(layer.kernel)]
    routes = {"offsets": factor.by_offsets} if set(layer.dilation_rate) != {1} else {
        "offsets": factor.by_offsets, "rows": factor.by_rows}  # TensorFlow's CPU filter gradient: no dilation
    for name, route in routes.items():
        np.testing.assert_allclose(tf.reshape(route(), want.shape), want, rtol=1e-5, atol=1e-5, err_msg=name)
    assert_close(factor.full(), want, rtol=1e-5, atol=1e-5)
    squares = np.sum(want.astype(np.float64).reshape(5, -1) ** 2, axis=1)
    assert_close(factor.squares(), squares, rtol=1e-5)
    aa, dd = (tf.cast(tf.matmul(t, t, transpose_b=True), tf.float64) for t in (factor.a, factor.d))
    assert_close(tf.reduce_sum(aa * dd, axis=(1, 2)), squares, rtol=1e-5)  # the ghost norm


@pytest.mark.parametrize(
    "side, found",  # 24 x 24 pixels at 1 GiB: the budget would hold 256 rows of factors, the caches hold 128
    [(16, {1: 64, 20: 128, 1024: 256}), (24, {1: 64, 20: 64, 1024: 128})],
)
def test_the_fast_paths_micro_batch_is_what_the_budget_and_caches_hold_of_a_rows_factors(side, found):
    """A row's factors (a conv's pixels) set the rows per micro-batch: a power of two from 64 to 256 that the budget
    and CACHED_BYTES hold, the same for every batch size; the norms stay the recipe's at every size."""
    keras.utils.set_random_seed(4)
    x = keras.Input((side, side, 3), name="x")
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    model = keras.Model(x, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(h)))
    inputs, labels = _data(model)
    want = [np.sqrt(sum(np.sum(g**2) for g in row)) for row in _eager(model, inputs, labels)]
    for budget, rows in found.items():
        spec = _spec(weight_output=("norm",), weight_memory_mb=budget)
        for batch in (ROWS, 3):
            engine = GradientEngine(from_keras(model), spec, batch_size=batch)
            got = engine([t[:batch] for t in inputs], [labels[:batch]])
            assert_close(got["weight_norm"], want[:batch], rtol=1e-4)
            assert engine.wrt.micro_batch == rows, (budget, batch, engine.wrt.micro_batch)


def test_a_small_models_micro_batch_is_the_largest():
    model = MODELS["mlp"]()  # a row's factors: a few hundred bytes, so 256 rows even in 1 MiB
    engine = GradientEngine(from_keras(model), _spec(weight_output=("norm",), weight_memory_mb=1), batch_size=ROWS)
    inputs, labels = _data(model)
    engine(inputs, [labels])
    assert engine.wrt.micro_batch == 256


def test_the_projection_of_the_fast_path_is_the_general_paths():
    keras.utils.set_random_seed(2)
    model = _attention()
    inputs, labels = _data(model)
    spec = _spec(weight_output=("projection",), projection_dim=64, projection_seed=4)
    fast, path = _run(model, spec, inputs, labels)
    assert path == "layer_gradients"
    oracle, _ = _run(model, spec, inputs, labels, general=True)
    assert_close(fast["weight_projection"], oracle["weight_projection"], rtol=1e-4, atol=1e-5)


def test_a_layer_the_registry_does_not_cover_sends_the_model_to_the_general_path():
    x = keras.Input((3,), name="x")
    h = keras.layers.PReLU(alpha_initializer=keras.initializers.Constant(0.3))(keras.layers.Dense(4)(x))
    model = keras.Model(x, keras.layers.Dense(2)(h))
    inputs, labels = _data(model)
    got, path = _run(model, _spec(weight_output=("norm",)), inputs, labels)
    assert path == "per_example"
    want = _eager(model, inputs, labels)
    assert_close(got["weight_norm"], [np.sqrt(sum(np.sum(g**2) for g in row)) for row in want], rtol=1e-4)


@pytest.mark.parametrize("shapes", [((8, 1, 24, 32), (32, 32)), ((200, 1, 24, 32), (32, 32)), ((4, 1, 5, 3), (3, 2))])
def test_the_batch_matmul_oneDNN_gets_wrong_is_recognized(shapes):
    """The shapes seen wrong (a relative 0.98 to 2.2 off) or crashing: recognized from the graph, never run."""
    graph = tf.Graph()
    with graph.as_default():
        tf.matmul(tf.zeros(shapes[0]), tf.zeros(shapes[1]))
        tf.matmul(tf.zeros((8, 24, 32)), tf.zeros((32, 32)))  # rank 3: right
        tf.matmul(tf.zeros((8, 1, 24, 32)), tf.zeros((8, 1, 32, 32)))  # the same batch axes: right
    flagged = [unsafe_matmul(op) for op in graph.get_operations() if "MatMul" in op.type]
    assert flagged == [True, False, False]


def test_the_issues_attention_classifier_runs_on_every_path_and_no_graph_holds_the_wrong_kernel():
    """200 rows, 24 tokens: the job that died with SIGSEGV. Each path's graph is free of `unsafe_matmul`s."""
    keras.utils.set_random_seed(3)
    x = keras.Input((24,), dtype="int32", name="x")
    h = keras.layers.Embedding(300, 32)(x)
    h = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16)(h, h)
    model = keras.Model(x, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling1D()(h)))
    rng = np.random.default_rng(0)
    tokens, labels = rng.integers(0, 300, (200, 24)).astype(np.int32), (np.arange(200) % 3).astype(np.int64)
    want = []
    for i in range(3):
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(labels[i : i + 1], model(tokens[i : i + 1]))
        want.append(np.sqrt(sum(np.sum(tf.convert_to_tensor(g).numpy() ** 2) for g in tape.gradient(loss, model.trainable_variables))))
    from transforms.gradients import GradientSpec

    for general in (False, True):
        for output in ("norm", "full", "projection"):
            spec = GradientSpec(
                target="loss", loss="sparse_categorical_crossentropy", wrt="weights",
                weight_output=(output, "norm") if output != "norm" else ("norm",), projection_dim=32,
            )
            engine = GradientEngine(from_keras(model), spec, batch_size=200)
            if general:
                engine.wrt.fast = None
            engine.trace()
            assert not _unsafe_ops(engine._concrete.graph), (general, output)
            got = engine([tokens], [labels])
            assert_close(got["weight_norm"][:3], want, rtol=1e-4)


def _unsafe_ops(graph):
    found = [op for op in graph.get_operations() if unsafe_matmul(op)]
    for function in getattr(graph, "_functions", {}).values():
        if hasattr(function, "graph"):
            found += _unsafe_ops(function.graph)
    return found


# ---------------------------------------------------------------- projection factored


def _factored_reference(model, rows, k, seed):
    """The documented construction with numpy on the eager gradients: a Dense/Conv kernel as [inputs, outputs],
    parameter (i, o) in bucket (h1(i) + h2(o)) mod k with sign s1(i) s2(o); every other variable countsketch."""
    from transforms.gradients.wrt.forms.projection import sketch_seed

    def draw(path, n):
        d = tf.random.stateless_uniform((n,), tf.constant(sketch_seed(seed, path), tf.int64), 0, 2 * k, tf.int64,
                                        alg="philox").numpy()
        return d % k, (d // k) * 2 - 1

    out = np.zeros((len(rows), k))
    for j, v in enumerate(model.trainable_variables):
        if v.path.endswith("kernel"):
            shape = tuple(v.shape)
            h1, s1 = draw(v.path + "/in", int(np.prod(shape[:-1])))
            h2, s2 = draw(v.path + "/out", shape[-1])
            bucket, sign = ((h1[:, None] + h2[None, :]) % k).ravel(), (s1[:, None] * s2[None, :]).ravel()
        else:
            bucket, sign = draw(v.path, int(np.prod(v.shape)))
        for r, row in enumerate(rows):
            np.add.at(out[r], bucket, sign * row[j].ravel())
    return out


@pytest.fixture(params=["factors", "formed"])
def route(request, monkeypatch):
    """The factored kernels' route, forced both ways (by cost it is chosen per kernel; the tiny test kernels would
    always form the gradient): the TensorSketch by FFT or the Kronecker sides, against forming the gradient."""
    from transforms.gradients.wrt.forms import projection
    from transforms.gradients.wrt.forms.kronecker import Kronecker

    monkeypatch.setattr(projection, "_fft_is_cheaper", lambda *args: request.param == "factors")
    monkeypatch.setattr(Kronecker, "factors_are_cheaper", lambda *args: request.param == "factors")
    return request.param


@pytest.mark.parametrize("clip", [None, "together", "per_tensor"])
@pytest.mark.parametrize("kind", ["conv2d", "sequence_dense", "conv1d", "mlp"])
@pytest.mark.parametrize("construction, k", [("factored", 32), ("kronecker", 8)])  # at 8 all but 2 x 2 kernels project
def test_factored_projections_are_the_documented_constructions_on_the_eager_gradients(
    kind, clip, route, construction, k
):
    keras.utils.set_random_seed(5)
    model = MODELS[kind]()
    inputs, labels = _data(model)
    clip_norm = None if clip is None else 0.05
    options = dict(clip_norm=clip_norm, clip_per_tensor=clip == "per_tensor")
    spec = _spec(weight_output=("projection",), projection=construction, projection_dim=k, projection_seed=9, **options)
    reference = _factored_reference if construction == "factored" else _kronecker_reference
    want = reference(model, _eager(model, inputs, labels, clip_norm, clip == "per_tensor"), k, 9)
    got, path = _run(model, spec, inputs, labels)
    assert path == "layer_gradients"
    scale = np.abs(want).max()
    assert_close(got["weight_projection"] / scale, want / scale, rtol=1e-4, atol=1e-5)
    oracle, path = _run(model, spec, inputs, labels, general=True)
    assert path == "per_example"
    assert_close(got["weight_projection"] / scale, oracle["weight_projection"] / scale, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("construction", ["factored", "kronecker"])
def test_factored_projection_of_attention_equals_the_general_path_and_ignores_the_batch_size(route, construction):
    keras.utils.set_random_seed(6)
    model = _attention(tokens=6, width=8)
    inputs, labels = _data(model, rows=9)
    spec = _spec(weight_output=("projection", "norm"), projection=construction, projection_dim=64, projection_seed=2)
    got, path = _run(model, spec, inputs, labels)
    assert path == "layer_gradients"
    oracle, _ = _run(model, spec, inputs, labels, general=True)
    scale = np.abs(oracle["weight_projection"]).max()
    assert_close(got["weight_projection"] / scale, oracle["weight_projection"] / scale, rtol=1e-4, atol=1e-5)
    engine = GradientEngine(from_keras(model), spec, batch_size=4)
    parts = []
    for start in range(0, 9, 4):
        chunk = [x[start : start + 4] for x in inputs + [labels]]
        n = len(chunk[0])
        padded = [np.concatenate([c, np.zeros((4 - n, *c.shape[1:]), c.dtype)]) for c in chunk]
        parts.append(engine(padded[:-1], padded[-1:])["weight_projection"][:n])
    assert_rounding_equal(np.concatenate(parts), got["weight_projection"])
    record = engine.wrt.provenance()["projection"]
    biases = [v.path for v in model.trainable_variables if not v.path.endswith("kernel")]
    if construction == "factored":
        assert record["construction"] == "factored-tensorsketch-v1"
        assert record["countsketch_variables"] == biases  # embeddings, biases, the normalization's scale and offset
    else:  # the attention's 8 x 32 kernels keep their 8 side whole; the classifier's 8 x 2 has k parameters or fewer
        assert (record["construction"], record["sides"]) == ("kronecker-gaussian-v1", [8, 8])
        assert record["biases_with_kernels"] == []  # EinsumDense biases are summed over letters: countsketch
        classifier = model.trainable_variables[-2].path
        assert record["countsketch_variables"] == [v.path for v in model.trainable_variables
                                                   if v.path in biases or v.path == classifier]


# ---------------------------------------------------------------- projection kronecker


def _kronecker_reference(model, rows, k, seed):
    """The documented construction with numpy on the eager gradients: a Dense/Conv kernel as G [inputs, outputs],
    its sketch P_in^T G P_out (Gaussian N(0, 1/side) from the seed and path + "/in" and "/out", a side kept whole
    as the identity) in the first k_in k_out buckets, k_in-major; its bias s as u (x) P_out^T s (u a unit vector
    from the bias's path); every other variable countsketch, a conv's kernel too."""
    from transforms.gradients.wrt.forms.kronecker import kernel_sides
    from transforms.gradients.wrt.forms.projection import _draw, sketch_seed

    def normal(path, shape):
        return tf.random.stateless_normal(shape, tf.constant(sketch_seed(seed, path), tf.int64), alg="philox").numpy()

    def side(path, n, columns):
        return np.eye(n) if n == columns else normal(path, (n, columns)) / np.sqrt(columns)

    variables = model.trainable_variables
    convs = {v.path for layer in model.layers if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D))
             for v in layer.trainable_variables}  # a conv's kernel keeps countsketch, and so its bias
    sides = {}  # kernel path -> (k_in, k_out, P_out)
    out = np.zeros((len(rows), k))
    for j, v in enumerate(variables):
        inputs, outputs = int(np.prod(v.shape[:-1])), int(v.shape[-1])
        found = v.path.endswith("kernel") and v.path not in convs and kernel_sides(inputs, outputs, k)
        if found:
            k_in, k_out = found
            p_in, p_out = side(v.path + "/in", inputs, k_in), side(v.path + "/out", outputs, k_out)
            sides[v.path] = k_in, k_out, p_out
            for r, row in enumerate(rows):
                out[r, : k_in * k_out] += (p_in.T @ row[j].reshape(inputs, outputs) @ p_out).ravel()
        elif v.path.endswith("bias") and v.path[: -len("bias")] + "kernel" in sides:
            k_in, k_out, p_out = sides[v.path[: -len("bias")] + "kernel"]
            u = normal(v.path, (k_in,))
            u /= np.linalg.norm(u)
            for r, row in enumerate(rows):
                out[r, : k_in * k_out] += np.outer(u, row[j] @ p_out).ravel()
        else:
            bucket, sign = (t.numpy() for t in _draw(seed, v.path, int(np.prod(v.shape)), k))
            for r, row in enumerate(rows):
                np.add.at(out[r], bucket, sign * row[j].ravel())
    return out


def test_kronecker_sides_compress_and_never_spread():
    from transforms.gradients.wrt.forms.kronecker import kernel_sides, sides

    assert sides(2048) == (32, 64) and sides(8) == (2, 4) and sides(509) is None
    assert kernel_sides(256, 256, 2048) == (32, 64)  # both compressed, the longer sketch side on outputs
    assert kernel_sides(1024, 256, 2048) == (64, 32)
    assert kernel_sides(256, 10, 2048) == (204, 10)  # 10 outputs kept whole (exact), inputs get k // 10
    assert kernel_sides(144, 32, 2048) == (64, 32)
    assert kernel_sides(27, 16, 2048) is None  # 432 parameters: countsketch
    for i, o in [(256, 256), (1024, 256), (256, 10), (144, 32), (9, 1000), (3000, 40)]:
        k_in, k_out = kernel_sides(i, o, 2048)
        assert k_in * k_out <= 2048 and k_in <= i and k_out <= o


def test_kronecker_projection_keeps_inner_products_on_average():
    """E <v, v'> = <g, g'> for a kernel G and its folded bias s (E[P P^T] = I on each side, ||u|| = 1, and P_in's
    zero mean for the cross terms): over 300 seeds the means of a projected inner product and of a projected
    squared norm are within 4 standard errors of the exact ones."""
    from transforms.gradients.wrt.forms.kronecker import Bias, Kronecker
    from transforms.gradients.wrt.layers.base import Split

    rng = np.random.default_rng(0)
    g, b = rng.standard_normal((2, 40, 50)).astype(np.float32), 6 * rng.standard_normal((2, 50)).astype(np.float32)
    g[1], b[1] = 0.6 * g[0] + 0.8 * g[1], 0.6 * b[0] + 0.8 * b[1]  # two rows, inner products about 0.6 of the norms;
    # the bias as large as the kernel, so that a wrong bias part would show
    exact = float(np.sum(g[0] * g[1]) + b[0] @ b[1]), float(np.sum(g[0] ** 2) + b[0] @ b[0])
    found = []
    for seed in range(300):
        kernel = Kronecker(([seed, 1], [seed, 2]), Split(40, 50, (40, 50)), 64)
        p = (kernel.of_gradient(tf.constant(g)) + Bias([seed, 3], 0, kernel).of_gradient(tf.constant(b))).numpy()
        found.append((p[0] @ p[1], p[0] @ p[0]))
    found = np.array(found, np.float64)
    mean, error = found.mean(0), found.std(0) / np.sqrt(len(found))
    assert np.all(np.abs(mean - exact) < 4 * error), (mean, exact, error)
    assert np.all(error < 0.05 * np.abs(exact))  # and the test can tell: its standard errors are small


def test_kronecker_needs_a_dimension_with_a_balanced_split():
    from transforms.gradients.errors import SpecError

    with pytest.raises(SpecError, match=r"projection kronecker splits projection_dim into two sides .* 509 has no"):
        _spec(weight_output=("projection",), projection="kronecker", projection_dim=509)


@pytest.mark.parametrize("other", ["factored-tensorsketch-v1", "kronecker-gaussian-v1"])
def test_influence_refuses_to_mix_constructions(other):
    from transforms.influence.projections import ProjectionMeta

    a = ProjectionMeta("sha", ("d/kernel",), 0, 64, "float32", "countsketch-v1")
    b = ProjectionMeta("sha", ("d/kernel",), 0, 64, "float32", other)
    assert a.differences(b) == [f"projection construction countsketch-v1 vs {other}"]


@pytest.mark.parametrize("output", ["norm", "full", "projection"])
def test_the_issues_attention_job_runs_through_the_cli_and_matches_the_eager_recipe(tmp_path, output):
    """The job that died with SIGSEGV (exit 139): 200 rows of 24 tokens, the loss of a 3-class softmax."""
    from tests.conftest import by_key, read_output, run_on, tensor_column, write_parquet

    keras.utils.set_random_seed(7)
    x = keras.Input((24,), dtype="int32", name="x")
    h = keras.layers.Embedding(300, 32)(x)
    h = keras.layers.MultiHeadAttention(num_heads=2, key_dim=16)(h, h)
    model = keras.Model(x, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling1D()(h)))
    rng = np.random.default_rng(1)
    tokens, labels = rng.integers(0, 300, (200, 24)).astype(np.int32), (np.arange(200) % 3).astype(np.int64)
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(200), "x": tokens, "label": labels})
    summary = run_on(
        tmp_path, model, "--target", "loss", "--loss", "sparse_categorical_crossentropy", "--label_column", "label",
        "--wrt", "weights", "--weight_output", f"{output},norm" if output != "norm" else "norm",
        *(["--projection_dim", "64"] if output == "projection" else []), "--batch_size", "64",
    )
    assert (summary.rows_in, summary.rows_out) == (200, 200)
    table = by_key(read_output(tmp_path / "out/g"))
    paths = [v.path for v in model.trainable_variables]
    for i in (0, 77, 199):
        with tf.GradientTape() as tape:
            loss = keras.losses.sparse_categorical_crossentropy(labels[i : i + 1], model(tokens[i : i + 1]))
        grads = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(loss, model.trainable_variables)]
        assert_close(table.column("weight_norm").to_numpy()[i], np.sqrt(sum(np.sum(g**2) for g in grads)), rtol=1e-4)
        if output == "full":
            for p, g in zip(paths, grads):
                assert_close(tensor_column(table, f"weight_gradient__{p}")[i], g, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("construction", ["countsketch", "factored", "kronecker"])
def test_self_influence_finds_the_flipped_labels_with_either_construction(tmp_path, construction):
    """The mislabeled-rows example end to end (main job, then influence): ROC AUC at least 0.8 with each."""
    from pipeline.run import main
    from tests.test_influence_mislabeled import DIM, mislabeled_data, self_influence_auc

    path, _, _, _, flipped = mislabeled_data(tmp_path)
    status = main(
        ["--runner=DirectRunner", "--input", str(tmp_path / "data/*.parquet"), "--output", str(tmp_path / "g/out")]
        + ["--model", path, "--feature_columns", "x", "--keep_columns", "id", "--target", "loss"]
        + ["--loss", "sparse_categorical_crossentropy", "--label_column", "label"]
        + ["--wrt", "weights", "--weight_output", "projection", "--projection_dim", str(DIM)]
        + ["--projection", construction]
    )
    assert status == 0
    auc = self_influence_auc(tmp_path, tmp_path / "g/out-?????-of-?????.parquet", flipped)
    print(f"self-influence ROC AUC, {construction}: {auc:.3f}")
    assert auc >= 0.8, auc


@keras.saving.register_keras_serializable("test_fast_weights")
class TiedOutput(keras.layers.Layer):
    """Logits over the vocabulary from the embedding's own matrix (weight tying), read outside the embedding's call."""

    def __init__(self, embedding, **kwargs):
        super().__init__(**kwargs)
        self.embedding = embedding

    def call(self, h):
        return keras.ops.matmul(h, keras.ops.transpose(self.embedding.embeddings))


def test_tied_weights_read_outside_their_layer_send_the_model_to_the_general_path():
    keras.utils.set_random_seed(3)
    ids = keras.Input((6,), dtype="int32", name="tokens")
    embedding = keras.layers.Embedding(20, 4, name="emb")
    h = keras.layers.Dense(4, name="mid")(keras.layers.GlobalAveragePooling1D()(embedding(ids)))
    model = keras.Model(ids, keras.layers.Softmax()(TiedOutput(embedding, name="tied")(h)))
    inputs = [np.random.default_rng(0).integers(0, 20, size=(ROWS, 6)).astype(np.int32)]
    labels = np.eye(20, dtype=np.float32)[np.arange(ROWS) % 20]  # the tests' loss is mse
    want = _eager(model, inputs, labels)  # the recipe: the embedding's gradient holds both of its uses
    for form, path in (("norm", "per_example"), ("full", "per_example")):
        got, taken = _run(model, _spec(weight_output=(form,)), inputs, labels)
        assert taken == path  # the fast path would miss the tied use: it is refused while tracing
        if form == "norm":
            assert_close(got["weight_norm"], [np.sqrt(sum(np.sum(g**2) for g in row)) for row in want], rtol=1e-4)
        else:
            assert_close(got["weight_gradient__emb/embeddings"], np.stack([row[0] for row in want]), rtol=1e-4, atol=1e-6)
    # the same model untied takes the fast path: the check refuses only what it must
    untied = keras.Model(ids, keras.layers.Dense(20, activation="softmax", name="out")(h))
    assert _run(untied, _spec(weight_output=("norm",)), inputs, labels)[1] == "ghost_norms"
