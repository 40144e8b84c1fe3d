"""A loss on one head of a model with several, picked by `output_name`, against eager per-row tapes.

A classifier with a second regression head (the demo's model) has a loss per head; the
loss target must differentiate the named head's loss and nothing else, for inputs and
weights alike, and without `output_name` say which heads there are.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from transforms.gradients import GradientEngine, GradientSpec, SpecError, from_keras

ROWS, FEATURES, CLASSES = 6, 4, 3
RNG = np.random.default_rng(5)
X = RNG.normal(size=(ROWS, FEATURES)).astype(np.float32)
LABELS = RNG.integers(0, CLASSES, ROWS).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(5)
    x = keras.Input((FEATURES,), name="x")
    h = keras.layers.Dense(5, activation="tanh", name="hidden")(x)
    score = keras.layers.Dense(1, name="score")(h)  # first, so the named head is not simply output 0
    classes = keras.layers.Dense(CLASSES, activation="softmax", name="classes")(h)
    return keras.Model(x, [score, classes])


def _eager(model, i):
    """Row i's scce on the `classes` head: gradient w.r.t. the input and every trainable variable."""
    scce = keras.losses.SparseCategoricalCrossentropy(reduction=None)
    x = tf.constant(X[i : i + 1])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        loss = scce(LABELS[i : i + 1], model(x)[1])[0]
    return loss.numpy(), tape.gradient(loss, x).numpy()[0], [tape.gradient(loss, v) for v in model.trainable_variables]


def test_the_loss_of_the_named_head_equals_an_eager_tape_for_inputs_and_weights(model):
    spec = GradientSpec(
        target="loss", loss="sparse_categorical_crossentropy", output_name="classes", wrt="both",
        weight_output=("norm",), emit=("loss",),
    )
    engine = GradientEngine(from_keras(model), spec, ROWS)
    out = engine([X], [LABELS])
    for i in range(ROWS):
        loss, grad_x, grads_w = _eager(model, i)
        np.testing.assert_allclose(out["loss"][i], loss, rtol=1e-5)
        np.testing.assert_allclose(out["gradient"][i], grad_x, rtol=1e-4, atol=1e-7)
        # the score head's variables get no gradient from the classes head's loss: zeros, not another head's loss
        norm = np.sqrt(sum(float(np.sum(np.square(g.numpy()))) for g in grads_w if g is not None))
        assert any(g is None for g in grads_w)
        np.testing.assert_allclose(out["weight_norm"][i], norm, rtol=1e-4)
        assert norm > 1e-4  # a loss whose gradient vanished would pass the comparisons above


def test_a_loss_on_a_model_with_several_heads_and_no_output_name_names_the_heads(model):
    with pytest.raises(SpecError) as e:
        GradientEngine(from_keras(model), GradientSpec(target="loss", loss="sparse_categorical_crossentropy"), ROWS)
    assert str(e.value) == "a loss needs one output; this model has 2 (score, classes): pick one with output_name"
