"""Every method x target x wrt (inputs, both) the registries hold, on one small classifier, against eager tapes.

The reference is written from the definitions alone, one row at a time: the
target's scalar of that row's outputs (a class chosen at the input and held
fixed), the method's points (integrated gradients' path by the rule's own
alphas and weights, the noise methods' seeded samples) and its statistic, and
for `both` the row's weight gradient from `tape.gradient(scalar,
model.trainable_variables)`. Combinations the engine refuses are refused with
one line, and only those the definitions exclude: a weight gradient needs the
plain gradient of one scalar per row.

A new target or method enters this matrix through its registry; it then needs
a reference here (`SCALARS`, `REFERENCE_METHODS`), or the test fails saying so.
"""

from __future__ import annotations

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from transforms.gradients import METHODS, TARGETS, GradientEngine, GradientSpec, SpecError, from_keras
from transforms.gradients.methods.steps import alphas_and_weights
from transforms.gradients.ops import seeded_normal

ROWS, FEATURES, CLASSES, K = 5, 3, 4, 2
RNG = np.random.default_rng(21)
X = RNG.normal(size=(ROWS, FEATURES)).astype(np.float32)
LABELS = RNG.integers(0, CLASSES, ROWS).astype(np.float32)
CLASS_INDEX = RNG.integers(0, CLASSES, ROWS).astype(np.int64)
SEEDS = np.arange(7, 7 + ROWS, dtype=np.int64)
SETTINGS = {
    "integrated_gradients": dict(steps=5, ig_rule="gauss_legendre"),
    "smoothgrad": dict(samples=3, noise=0.4, seed=9),
    "vargrad": dict(samples=3, noise=0.4, seed=9),
    "squaregrad": dict(samples=3, noise=0.4, seed=9),
}
TARGET_SETTINGS = {"loss": dict(loss="sparse_categorical_crossentropy"), "top_k": dict(k=K)}
EXTRAS = {"label": LABELS, "class": CLASS_INDEX, "row_seed": SEEDS}


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(21)
    x = keras.Input((FEATURES,), name="x")
    h = keras.layers.Dense(6, activation="tanh", name="hidden")(x)
    return keras.Model(x, keras.layers.Dense(CLASSES, activation="sigmoid", name="probs")(h))  # sigmoid: a sum not constant


def _heads(target: str, at_input: np.ndarray):
    """Per head: (row i's outputs [1, classes], i) -> its scalar, for the target; classes chosen at the input.

    The loss gets the model's output unsliced: Keras computes a cross-entropy from the logits it keeps on a
    sigmoid or softmax output, and a slice of that output loses them.
    """
    top = np.argsort(-at_input, axis=1, kind="stable")
    scce = keras.losses.SparseCategoricalCrossentropy(reduction=None)
    return {
        "sum": [lambda out, i: tf.reduce_sum(out)],
        "per_output": [lambda out, i: tf.reduce_sum(out)],
        "loss": [lambda out, i: scce(LABELS[i : i + 1], out)[0]],
        "class": [lambda out, i: out[0, CLASS_INDEX[i]]],
        "predicted": [lambda out, i: out[0, top[i, 0]]],
        "top_k": [lambda out, i, r=r: out[0, top[i, r]] for r in range(K)],
    }[target]


SCALARS = {"sum", "per_output", "loss", "class", "predicted", "top_k"}


def _grad(model, point: np.ndarray, scalar, i: int, weights: bool = False):
    """d scalar / d point (and / d the trainable variables), for row i alone, eagerly."""
    x = tf.constant(point[None])
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = scalar(model(x, training=False), i)
    if weights:
        return [g.numpy() for g in tape.gradient(value, model.trainable_variables)]
    return tape.gradient(value, x).numpy()[0].astype(np.float64)


def _method(model, method: str, scalar, i: int) -> np.ndarray:
    x = X[i].astype(np.float64)
    if method == "gradient":
        return _grad(model, X[i], scalar, i)
    if method == "gradient_x_input":
        return _grad(model, X[i], scalar, i) * x
    if method == "integrated_gradients":
        s = SETTINGS[method]
        alphas, weights = alphas_and_weights(s["ig_rule"], s["steps"])  # baseline zeros
        path = sum(w * _grad(model, (a * x).astype(np.float32), scalar, i) for a, w in zip(alphas, weights))
        return x * path
    s = SETTINGS[method]
    scale = s["noise"] * (X[i].max() - X[i].min())
    grads = []
    for sample in range(s["samples"]):
        z = seeded_normal(s["seed"], 0, tf.constant(SEEDS[i : i + 1]), tf.constant([sample]), (FEATURES,)).numpy()[0]
        grads.append(_grad(model, (X[i] + scale * z).astype(np.float32), scalar, i))
    grads = np.stack(grads)
    return {"smoothgrad": grads.mean(0), "vargrad": grads.var(0), "squaregrad": (grads**2).mean(0)}[method]


# Grad-CAM maps an image model's feature maps: compared with xplique and an eager tape in test_grad_cam.py, and
# refused here, where the model has no image input.
IMAGE_METHODS = {"grad_cam", "grad_cam_pp"}
REFERENCE_METHODS = {"gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "vargrad", "squaregrad",
                     *IMAGE_METHODS}


def test_every_registered_answer_has_a_reference_here():
    assert set(TARGETS.names) == SCALARS, "a target without a reference in this matrix"
    assert set(METHODS.names) == REFERENCE_METHODS, "a method without a reference in this matrix"


def _refused_by_definition(method: str, target: str, wrt: str) -> bool:
    """A weight gradient is the plain gradient of one scalar per row; Grad-CAM needs an image model."""
    return method in IMAGE_METHODS or wrt == "both" and (method != "gradient" or len(_heads(target, np.zeros((ROWS, CLASSES)))) != 1)


@pytest.mark.parametrize(
    "method, target, wrt", list(itertools.product(METHODS.names, TARGETS.names, ("inputs", "both")))
)
def test_each_combination_equals_an_eager_per_row_tape_or_is_refused_in_one_line(model, method, target, wrt):
    settings = {**SETTINGS.get(method, {}), **TARGET_SETTINGS.get(target, {})}
    if wrt == "both":
        settings["weight_output"] = ("norm", "full")
    try:
        spec = GradientSpec(method=method, target=target, wrt=wrt, **settings)
        engine = GradientEngine(from_keras(model), spec, batch_size=ROWS)
    except SpecError as err:
        assert _refused_by_definition(method, target, wrt), f"refused, though its definition allows it: {err}"
        assert "\n" not in str(err) and str(err), err
        return
    assert not _refused_by_definition(method, target, wrt), "accepted, though a weight gradient needs one scalar"
    result = engine([X], [EXTRAS[r.name] for r in engine.row_inputs])
    heads = _heads(target, model(X).numpy())
    suffixes = [""] if len(heads) == 1 and target != "per_output" else (
        ["__probs"] if target == "per_output" else [f"__top{r + 1}" for r in range(K)])
    for scalar, suffix in zip(heads, suffixes):
        want = np.stack([_method(model, method, scalar, i) for i in range(ROWS)])
        np.testing.assert_allclose(result[f"gradient{suffix}"], want, rtol=2e-4, atol=2e-6, err_msg=f"gradient{suffix}")
    if wrt == "both":
        (scalar,) = heads
        per_row = [_grad(model, X[i], scalar, i, weights=True) for i in range(ROWS)]
        norms = [np.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in row)) for row in per_row]
        np.testing.assert_allclose(result["weight_norm"], norms, rtol=2e-4, err_msg="weight_norm")
        for v, variable in enumerate(model.trainable_variables):
            np.testing.assert_allclose(result[f"weight_gradient__{variable.path}"], [row[v] for row in per_row],
                                       rtol=2e-4, atol=2e-6, err_msg=variable.path)
