"""The engine alone, without Beam: every target with the gradient method, w.r.t. the inputs, against an eager
per-example GradientTape (one row at a time, an independent computation)."""

import pickle

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import assert_close
from transforms.gradients import METHODS, TARGETS, WRT, GradientEngine, GradientSpec, SpecError, from_keras

ROWS = 6
RNG = np.random.default_rng(21)
XA = RNG.normal(size=(ROWS, 3)).astype(np.float32)
XB = RNG.normal(size=(ROWS, 2)).astype(np.float32)


def _two_heads():
    """Inputs a (3) and b (2); head 'left' reads both, head 'right' reads b only."""
    a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
    hidden = keras.layers.Dense(4, activation="tanh")(keras.layers.Concatenate()([a, b]))
    return keras.Model([a, b], [keras.layers.Dense(2, name="left")(hidden), keras.layers.Dense(1, name="right")(b)])


def _one_head():
    x = keras.Input((3,), name="x")
    return keras.Model(x, keras.layers.Dense(2, activation="softplus")(keras.layers.Dense(4, activation="tanh")(x)))


def _eager(model, rows, scalar):
    """Per row: the gradient of scalar(model outputs, row index) w.r.t. each input, on a batch of one."""
    grads = []
    for i in range(len(rows[0])):
        xs = [tf.constant(r[i : i + 1]) for r in rows]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            outputs = model(xs if len(xs) > 1 else xs[0], training=False)
            value = scalar(outputs if isinstance(outputs, list) else [outputs], i)
        per_input = tape.gradient(value, xs)
        zeros = [np.zeros(x.shape[1:], np.float32) for x in xs]  # an input the scalar ignores
        grads.append([g.numpy()[0] if g is not None else z for g, z in zip(per_input, zeros)])
    return [np.stack(per_input) for per_input in zip(*grads)]


def test_the_registries_are_the_choices_and_name_one_file_per_answer():
    assert TARGETS.names == ("sum", "per_output", "loss", "class", "predicted", "top_k")
    assert METHODS.names == (
        "gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "vargrad", "squaregrad", "grad_cam",
        "grad_cam_pp",  # issue 19
    )
    assert WRT.names == ("inputs", "weights", "both", "layer")  # issue 19 added layer
    with pytest.raises(SpecError, match=r"^target must be one of sum, per_output, loss, class, predicted, top_k, not 'sideways'$"):
        GradientSpec(target="sideways")


def test_sum_target_is_each_rows_own_gradient_of_the_sum_of_all_outputs():
    model = _two_heads()
    engine = GradientEngine(from_keras(model), GradientSpec(emit=("predictions", "norm")), batch_size=ROWS)
    result = engine([XA, XB])
    want_a, want_b = _eager(model, [XA, XB], lambda outs, i: tf.add_n([tf.reduce_sum(o) for o in outs]))
    assert_close(result["gradient__a"], want_a, rtol=1e-5)
    assert_close(result["gradient__b"], want_b, rtol=1e-5)
    left, right = model([XA, XB], training=False)
    assert_close(result["prediction__left"], left.numpy())
    assert_close(result["norm__gradient__b"], np.linalg.norm(want_b, axis=1), rtol=1e-5)
    # Everything returned was declared first, with its per-row shape; nothing else.
    assert [o.name for o in engine.outputs] == list(result)
    for o in engine.outputs:
        assert result[o.name].shape == (ROWS, *o.shape)


def test_per_output_target_gives_one_gradient_per_head_and_zeros_where_a_head_ignores_an_input():
    model = _two_heads()
    engine = GradientEngine(from_keras(model), GradientSpec(target="per_output"), batch_size=ROWS).trace()
    result = engine([XA, XB])
    for h, head in enumerate(("left", "right")):
        want_a, want_b = _eager(model, [XA, XB], lambda outs, i, h=h: tf.reduce_sum(outs[h]))
        assert_close(result[f"gradient__a__{head}"], want_a, rtol=1e-5)
        assert_close(result[f"gradient__b__{head}"], want_b, rtol=1e-5)
    assert np.all(result["gradient__a__right"] == 0)
    assert engine.unconnected == {("a", "right")}


def test_unconnected_error_mode_names_the_input_the_head_and_the_spec_field():
    spec = GradientSpec(target="per_output", unconnected="error")
    with pytest.raises(SpecError) as caught:
        GradientEngine(from_keras(_two_heads()), spec, batch_size=2).trace()
    assert str(caught.value) == (
        "model input 'a' has no gradient: output 'right' does not depend on it "
        "(use unconnected zeros to write zeros instead)"
    )
    as_flags = caught.value.named({"unconnected": "--unconnected"})
    assert "(use --unconnected zeros to write zeros instead)" in str(as_flags)
    assert str(pickle.loads(pickle.dumps(as_flags))) == str(as_flags)  # workers' errors travel pickled


def test_loss_target_against_a_per_row_tape_and_the_loss_is_returned_unwritten_unless_emitted():
    model = _one_head()
    y = RNG.normal(size=(ROWS, 2)).astype(np.float32)
    engine = GradientEngine(from_keras(model), GradientSpec(target="loss", loss="mse"), batch_size=ROWS)
    assert [r.name for r in engine.row_inputs] == ["label"]
    result = engine([XA], [y])
    mse = keras.losses.get("mse")
    (want,) = _eager(model, [XA], lambda outs, i: tf.reduce_sum(mse(y[i : i + 1], outs[0])))
    assert_close(result["gradient"], want, rtol=1e-4, atol=1e-7)
    assert_close(result["loss"], mse(y, model(XA, training=False)).numpy(), rtol=1e-5)
    loss_output = next(o for o in engine.outputs if o.name == "loss")
    assert not loss_output.write  # computed to reject a row whose loss is not finite; written with emit loss only


@pytest.mark.parametrize("target", ["sum", "per_output", "loss"])
def test_clip_norm_rescales_each_rows_own_gradient_never_the_batchs(target):
    model = _one_head()
    y = RNG.normal(size=(ROWS, 2)).astype(np.float32)
    x = XA * np.array([[0.01], [1], [3], [0.1], [2], [5]], np.float32)  # rows far below and above the clip
    scalars = {
        "sum": lambda outs, i: tf.reduce_sum(outs[0]),
        "per_output": lambda outs, i: tf.reduce_sum(outs[0]),  # one output: one head, named after it
        "loss": lambda outs, i: tf.reduce_sum(keras.losses.get("mse")(y[i : i + 1], outs[0])),
    }
    (plain,) = _eager(model, [x], scalars[target])
    norms = np.linalg.norm(plain, axis=1)
    clip = float(np.median(norms))
    spec = GradientSpec(target=target, loss="mse" if target == "loss" else None, clip_norm=clip)
    engine = GradientEngine(from_keras(model), spec, batch_size=ROWS)
    result = engine([x], [y] if target == "loss" else [])
    (column,) = [o.name for o in engine.outputs if o.kind == "gradient"]
    want = plain * np.minimum(1.0, clip / norms)[:, None]
    assert_close(result[column], want, rtol=1e-4, atol=1e-7)
    assert (norms < clip).any() and (norms > clip).any()


def test_spec_errors_name_fields_not_flags():
    cases = [
        (dict(clip_norm=0.0), "clip_norm must be above 0, not 0.0"),
        (dict(target="loss"), "target loss needs loss (a Keras loss name or module.path:function)"),
        (dict(loss="hinge_of_doom"), "unknown loss 'hinge_of_doom'"),
        (dict(emit=("loss",)), "emit loss needs loss and label_column"),
        (dict(unconnected="maybe"), "unconnected must be one of zeros, error, not 'maybe'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(SpecError) as caught:
            GradientSpec(**kwargs)
        assert str(caught.value).startswith(message)
        assert not str(caught.value).startswith("--")
    with pytest.raises(SpecError, match="^batch_size must be 1 or more, not 0$"):
        GradientEngine(from_keras(_one_head()), GradientSpec(), batch_size=0)
