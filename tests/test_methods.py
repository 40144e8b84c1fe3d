"""The methods and class targets on the engine alone, against closed forms and eager per-row tapes."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import assert_close
from transforms.gradients import GradientEngine, GradientSpec, SpecError, from_keras
from transforms.gradients.methods.steps import RULES, alphas_and_weights
from transforms.gradients.ops import seeded_normal

RNG = np.random.default_rng(5)
ROWS = 6
X = RNG.normal(size=(ROWS, 3)).astype(np.float32)
SEEDS = np.arange(100, 100 + ROWS, dtype=np.int64)


def _run(model, spec, inputs, extras=(), batch=ROWS):
    return GradientEngine(from_keras(model), spec, batch_size=batch)(inputs, list(extras))


def _linear(w, bias=0.5):
    x = keras.Input((len(w),), name="x")
    dense = keras.layers.Dense(1)
    model = keras.Model(x, dense(x))
    dense.set_weights([np.asarray(w, np.float32)[:, None], np.array([bias], np.float32)])
    return model


def _quadratic(a, c):
    """f(x) = sum(a * x**2) + sum(c * x)."""
    x = keras.Input((len(a),), name="x")
    dense = keras.layers.Dense(1, use_bias=False)
    model = keras.Model(x, dense(keras.layers.Concatenate()([keras.layers.Multiply()([x, x]), x])))
    dense.set_weights([np.concatenate([a, c]).astype(np.float32)[:, None]])
    return model


def _classifier(classes=4):
    x = keras.Input((3,), name="x")
    return keras.Model(x, keras.layers.Dense(classes)(keras.layers.Dense(8, activation="tanh")(x)))


def _cnn():
    x = keras.Input((8, 8, 2), name="image")
    h = keras.layers.Conv2D(6, 3, activation="tanh")(x)
    h = keras.layers.Conv2D(6, 3, activation="tanh")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(x, keras.layers.Dense(3)(keras.layers.Dense(8, activation="tanh")(h)))


def _eager(model, x, scalar):
    """Per row: d scalar(outputs of that row alone, row index) / d x, on a batch of one."""
    rows = []
    for i in range(len(x)):
        xi = tf.constant(x[i : i + 1])
        with tf.GradientTape() as tape:
            tape.watch(xi)
            value = scalar(model(xi, training=False)[0], i)
        rows.append(tape.gradient(value, xi).numpy()[0])
    return np.stack(rows)


@pytest.mark.parametrize("rule", list(RULES))
@pytest.mark.parametrize("baseline, b", [("zeros", 0.0), ("value:0.7", 0.7)])
def test_integrated_gradients_of_a_linear_model_is_x_minus_baseline_times_w_for_every_rule(rule, baseline, b):
    w = np.array([1.5, -2.0, 0.25], np.float32)
    result = _run(_linear(w), GradientSpec(method="integrated_gradients", ig_rule=rule, steps=7, baseline=baseline), [X])
    assert_close(result["gradient"], (X - b) * w, rtol=1e-5)
    assert np.abs(result["ig_delta"]).max() < 1e-5  # complete: sum of attributions = f(x) - f(b)


def test_integrated_gradients_from_a_baseline_column_is_per_row():
    w = np.array([1.5, -2.0, 0.25], np.float32)
    base = RNG.normal(size=X.shape).astype(np.float32)
    spec = GradientSpec(method="integrated_gradients", baseline="column:b", steps=3)
    assert_close(_run(_linear(w), spec, [X], [base])["gradient"], (X - base) * w, rtol=1e-5)


@pytest.mark.parametrize("rule", list(RULES))
def test_integrated_gradients_of_a_quadratic_is_the_rules_own_path_integral(rule):
    """df/dx_i on the path b + t d is 2 a_i (b_i + t d_i) + c_i: a rule integrates it to 2 a_i (b_i + d_i sum(w t)) + c_i.

    Trapezoid, midpoint and Gauss-Legendre are exact for it (sum(w t) = 1/2); left and right Riemann sums are not.
    """
    a, c = np.array([0.5, -1.0, 2.0]), np.array([0.3, 0.1, -0.4])
    steps, b = 9, 0.25
    alphas, weights = alphas_and_weights(rule, steps)
    mean_t = float(np.sum(weights * alphas.astype(np.float64)))
    d = X - b
    want = (2 * a * (b + d * mean_t) + c) * d
    spec = GradientSpec(method="integrated_gradients", ig_rule=rule, steps=steps, baseline="value:0.25", chunk=4)
    result = _run(_quadratic(a, c), spec, [X])
    assert_close(result["gradient"], want, rtol=1e-4, atol=1e-5)
    if rule != "riemann_left" and rule != "riemann_right":
        exact = (a * (X + b) + c) * d
        assert_close(result["gradient"], exact, rtol=1e-4, atol=1e-5)


def test_ig_delta_shrinks_as_steps_grow_and_is_tiny_at_300_steps_on_a_small_cnn():
    model = _cnn()
    images = RNG.uniform(-3, 3, size=(4, 8, 8, 2)).astype(np.float32)
    deltas = {}
    for steps in (2, 4, 16, 300):
        spec = GradientSpec(method="integrated_gradients", steps=steps, target="predicted")
        result = _run(model, spec, [images], batch=4)
        deltas[steps] = np.abs(result["ig_delta"])
    logits = model(images).numpy()
    chosen = result["predicted_class"]
    gap = np.abs(logits[np.arange(4), chosen] - model(np.zeros_like(images)).numpy()[np.arange(4), chosen])
    assert deltas[2].mean() > deltas[4].mean() > deltas[16].mean() > deltas[300].mean()
    assert np.all(deltas[300] < 1e-3 * gap), (deltas, gap)
    assert deltas[2].mean() > 1e-2 * gap.mean()  # so the shrinking is the rule's error, not float noise


@pytest.mark.parametrize("jit_compile", [False, True])
def test_chunks_do_not_change_integrated_gradients(jit_compile):
    """Under XLA too: with two or more full chunks the steps' slice came back whole there (a shape error)."""
    model = _cnn()
    images = RNG.uniform(size=(3, 8, 8, 2)).astype(np.float32)
    results = [
        _run(model, GradientSpec(method="integrated_gradients", steps=11, chunk=chunk, jit_compile=jit_compile),
             [images], batch=3)["gradient"]
        for chunk in (11, 1, 4)
    ]
    assert_close(results[1], results[0], rtol=1e-5, atol=1e-7)
    assert_close(results[2], results[0], rtol=1e-5, atol=1e-7)


def test_blur_baseline_is_a_separable_gaussian_of_the_row():
    """A linear model's IG is (x - blur(x)) w: the blur of a single bright pixel is the Gaussian kernel around it."""
    x = keras.Input((9, 9), name="x")
    dense = keras.layers.Dense(1, use_bias=False)
    model = keras.Model(x, dense(keras.layers.Flatten()(x)))
    dense.set_weights([np.ones((81, 1), np.float32)])
    image = np.zeros((1, 9, 9), np.float32)
    image[0, 4, 4] = 1.0
    ig = _run(model, GradientSpec(method="integrated_gradients", baseline="blur:1.0", steps=2), [image], batch=1)
    g = np.exp(-0.5 * np.arange(-3, 4) ** 2)
    g /= g.sum()
    blurred = np.zeros((9, 9))
    blurred[1:8, 1:8] = np.outer(g, g)
    assert_close(ig["gradient"][0], image[0] - blurred, rtol=1e-5, atol=1e-6)


def test_gradient_x_input_is_the_eager_gradient_times_the_input():
    model = _classifier()
    result = _run(model, GradientSpec(method="gradient_x_input"), [X])
    assert_close(result["gradient"], _eager(model, X, lambda out, i: tf.reduce_sum(out)) * X, rtol=1e-5)


@pytest.mark.parametrize("method", ["smoothgrad", "vargrad", "squaregrad"])
def test_noise_zero_gives_the_gradient_its_square_or_no_variance(method):
    model = _classifier()
    gradient = _eager(model, X, lambda out, i: tf.reduce_sum(out))
    result = _run(model, GradientSpec(method=method, noise=0.0, samples=5, chunk=2), [X], [SEEDS])["gradient"]
    want = {"smoothgrad": gradient, "squaregrad": gradient**2, "vargrad": np.zeros_like(gradient)}[method]
    assert_close(result, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("method", ["smoothgrad", "vargrad", "squaregrad"])
def test_noise_methods_are_their_statistic_over_eager_gradients_at_the_seeded_noisy_points(method):
    model = _classifier()
    samples, noise, seed = 7, 0.3, 11
    spec = GradientSpec(method=method, noise=noise, samples=samples, seed=seed, chunk=3, target="predicted")
    result = _run(model, spec, [X], [SEEDS])
    chosen = result["predicted_class"]
    scale = noise * (X.max(axis=1) - X.min(axis=1))[:, None]
    grads = []
    for s in range(samples):
        z = seeded_normal(seed, 0, tf.constant(SEEDS), tf.constant([s]), (3,)).numpy()
        grads.append(_eager(model, X + scale * z, lambda out, i: out[chosen[i]]))
    grads = np.stack(grads).astype(np.float64)
    want = {"smoothgrad": grads.mean(0), "squaregrad": (grads**2).mean(0), "vargrad": grads.var(0)}[method]
    assert_close(result["gradient"], want, rtol=1e-4, atol=1e-6)


def test_a_rows_noise_follows_its_seed_not_its_place_in_the_batch():
    model = _classifier()
    spec = GradientSpec(method="smoothgrad", samples=6, noise=0.5)
    order = np.array([3, 0, 5, 1, 4, 2])
    first = _run(model, spec, [X], [SEEDS])["gradient"]
    shuffled = _run(model, spec, [X[order]], [SEEDS[order]])["gradient"]
    assert_close(shuffled, first[order], rtol=1e-6, atol=1e-7)
    other_seed = _run(model, GradientSpec(method="smoothgrad", samples=6, noise=0.5, seed=1), [X], [SEEDS])
    assert np.abs(other_seed["gradient"] - first).max() > 1e-3


def test_class_target_is_the_eager_gradient_of_each_rows_own_class():
    model = _classifier()
    classes = np.array([0, 3, 1, 2, 3, 0], np.int64)
    result = _run(model, GradientSpec(target="class"), [X], [classes])
    assert_close(result["gradient"], _eager(model, X, lambda out, i: out[classes[i]]), rtol=1e-5)


def test_predicted_and_top_k_targets_are_the_eager_gradients_of_the_chosen_logits():
    model = _classifier(5)
    logits = model(X).numpy()
    predicted = _run(model, GradientSpec(target="predicted"), [X])
    assert np.array_equal(predicted["predicted_class"], logits.argmax(1))
    assert_close(predicted["gradient"], _eager(model, X, lambda out, i: out[logits[i].argmax()]), rtol=1e-5)
    top = _run(model, GradientSpec(target="top_k", k=3), [X])
    order = np.argsort(-logits, axis=1)[:, :3]
    assert np.array_equal(top["top_k_classes"], order)
    for j in range(3):
        assert_close(top[f"gradient__top{j + 1}"], _eager(model, X, lambda out, i: out[order[i, j]]), rtol=1e-5)


def test_top_k_with_integrated_gradients_holds_each_class_fixed_along_the_path():
    """Head j of top_k equals IG of a class target whose column holds the j-th class chosen at the input."""
    model = _classifier(5)
    spec = dict(method="integrated_gradients", steps=16)
    top = _run(model, GradientSpec(target="top_k", k=2, **spec), [X])
    for j in range(2):
        one = _run(model, GradientSpec(target="class", **spec), [X], [top["top_k_classes"][:, j]])
        assert_close(top[f"gradient__top{j + 1}"], one["gradient"], rtol=1e-5, atol=1e-7)
        assert_close(top[f"ig_delta__top{j + 1}"], one["ig_delta"], rtol=1e-4, atol=1e-6)


def test_output_name_picks_the_head_of_a_multi_output_model():
    x = keras.Input((3,), name="x")
    h = keras.layers.Dense(6, activation="tanh")(x)
    model = keras.Model(x, [keras.layers.Dense(4, name="kind")(h), keras.layers.Dense(1, name="size")(h)])
    result = _run(model, GradientSpec(target="predicted", output_name="kind"), [X])
    kind = model(X)[0].numpy()
    assert_close(result["gradient"], _eager_of(model, lambda outs, i: outs[0][0, kind[i].argmax()]), rtol=1e-5)
    summed = _run(model, GradientSpec(output_name="size"), [X])
    assert_close(summed["gradient"], _eager_of(model, lambda outs, i: tf.reduce_sum(outs[1])), rtol=1e-5)
    with pytest.raises(SpecError, match=r"target predicted needs one output; this model has 2 \(kind, size\)"):
        GradientEngine(from_keras(model), GradientSpec(target="predicted"), batch_size=2)
    with pytest.raises(SpecError, match=r"output_name 'colour' is not an output of the model; its outputs are: kind"):
        GradientEngine(from_keras(model), GradientSpec(output_name="colour"), batch_size=2)


def _eager_of(model, scalar):
    """Per row of X: d scalar(all the model's outputs on that row alone, row index) / d x."""
    rows = []
    for i in range(ROWS):
        xi = tf.constant(X[i : i + 1])
        with tf.GradientTape() as tape:
            tape.watch(xi)
            value = scalar(model(xi, training=False), i)
        rows.append(tape.gradient(value, xi).numpy()[0])
    return np.stack(rows)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(method="integrated_gradients", steps=0), r"^steps must be 1 or more, not 0$"),
        (dict(method="integrated_gradients", ig_rule="simpson"), r"^ig_rule must be one of riemann_left, .*'simpson'$"),
        (dict(method="integrated_gradients", baseline="ones"), r"^baseline must be one of zeros, value:<number>"),
        (dict(method="integrated_gradients", baseline="value:x"), r"^baseline value:<number> needs a finite number, not 'x'$"),
        (dict(method="integrated_gradients", baseline="blur:-1"), r"^baseline blur:<sigma> needs a number above 0"),
        (dict(method="integrated_gradients", baseline="column"), r"^baseline column needs name: column:<name>$"),
        (dict(method="smoothgrad", samples=0), r"^samples must be 1 or more, not 0$"),
        (dict(method="vargrad", noise=-0.1), r"^noise must be 0 or more"),
        (dict(target="top_k", k=0), r"^k must be 1 or more, not 0$"),
        (dict(target="per_output", output_name="a"), r"^target per_output does not take output_name$"),
        (dict(method="smoothgrad", chunk=0), r"^chunk must be 1 or more, not 0$"),
    ],
)
def test_spec_errors_name_the_field(fields, message):
    with pytest.raises(SpecError, match=message):
        GradientSpec(**fields)


def test_model_errors_name_the_field():
    with pytest.raises(SpecError, match=r"^k is 9, but output '.*' has 4 classes$"):
        GradientEngine(from_keras(_classifier()), GradientSpec(target="top_k", k=9), batch_size=2)
    with pytest.raises(SpecError, match=r"^baseline blur needs image inputs .*input 'x' has shape \(3,\)$"):
        GradientEngine(from_keras(_classifier()), GradientSpec(method="integrated_gradients", baseline="blur:1"), 2)
