"""Grad-CAM and Grad-CAM++ (issue 19): equal to xplique 2.0.2's on a small CNN, and to an eager computation.

The xplique maps are stored in tests/data/grad_cam_xplique.npz (xplique pins an older TensorFlow, so it runs
in its own venv). Regenerate them after changing the model or inputs:

    bash bench/xplique_venv.sh
    bench/.xplique-venv/bin/python bench/xplique_grad_cam.py --model tests/data/grad_cam_cnn.keras \\
        --inputs tests/data/grad_cam_inputs.npy --output tests/data/grad_cam_xplique.npz
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import (
    assert_close, assert_rounding_equal, by_key, read_output, run_on, tensor_column, write_parquet,
)
from transforms.gradients import GradientEngine, GradientSpec, SpecError, from_keras

DATA = os.path.join(os.path.dirname(__file__), "data")
MODEL = os.path.join(DATA, "grad_cam_cnn.keras")


def _load():
    return keras.models.load_model(MODEL, compile=False), np.load(os.path.join(DATA, "grad_cam_inputs.npy"))


def _eager(model, x, layer, plus):
    """Per row: the map from a two-output sub-model (feature maps, logits) and a tape on the maps."""
    split = keras.Model(model.inputs, [model.get_layer(layer).output, model.output])
    rows = []
    for row in x:
        with tf.GradientTape() as tape:
            maps, logits = split(row[None])
            score = logits[0, int(np.argmax(logits[0]))]
        g = tape.gradient(score, maps).numpy()[0]
        maps = maps.numpy()[0]
        if plus:
            denominator = 2 * g**2 + g**3 * maps.mean(axis=(0, 1))
            denominator[denominator == 0] = 1e-4
            weights = (g**2 / denominator * np.maximum(g, 0)).mean(axis=(0, 1))
        else:
            weights = g.mean(axis=(0, 1))
        cam = np.maximum((maps * weights).sum(-1), 0)
        rows.append(tf.image.resize(cam[..., None], x.shape[1:3], method="bicubic").numpy()[..., 0])
    return np.stack(rows)


@pytest.mark.parametrize("method", ["grad_cam", "grad_cam_pp"])
def test_grad_cam_equals_xplique_and_an_eager_tape(method):
    model, x = _load()
    result = GradientEngine(from_keras(model), GradientSpec(method=method, target="predicted"), len(x))([x])
    cam = result["gradient"]
    assert cam.shape == x.shape[:3] and cam.max() > 1e-4
    assert_close(cam, _eager(model, x, "conv2", method == "grad_cam_pp"), rtol=1e-4, atol=1e-7)
    reference = np.load(os.path.join(DATA, "grad_cam_xplique.npz"))
    assert str(reference["xplique"]) == "2.0.2"
    assert_close(cam, reference[method], rtol=1e-4, atol=1e-6)


def test_a_named_layer_and_the_refusals():
    model, x = _load()
    named = GradientEngine(from_keras(model), GradientSpec(method="grad_cam", layer="conv1", target="predicted"), 6)
    assert_close(named([x])["gradient"], _eager(model, x, "conv1", False), rtol=1e-4, atol=1e-7)
    with pytest.raises(SpecError, match="is not a layer of the model; the model.s layers are: conv1, pool, conv2, gap, logits$"):
        GradientEngine(from_keras(model), GradientSpec(method="grad_cam", layer="conv9"), 6)
    with pytest.raises(SpecError, match="feature maps"):
        GradientEngine(from_keras(model), GradientSpec(method="grad_cam", layer="logits"), 6)
    dense = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(SpecError, match="image input"):
        GradientEngine(from_keras(dense), GradientSpec(method="grad_cam"), 2)
    with pytest.raises(SpecError, match="samples"):
        GradientSpec(method="grad_cam", samples=4)


def test_the_default_layer_is_the_last_convolution_inside_a_nested_backbone_too():
    """A backbone sub-model (as keras.applications give): its last convolution, where the top level has none."""
    rng = np.random.default_rng(3)
    image = keras.Input((10, 10, 2))
    inner = keras.layers.Conv2D(3, 3, activation="relu", name="inner_last")
    backbone = keras.Model(image, inner(keras.layers.Conv2D(4, 3, activation="relu")(image)), name="backbone")
    outer_in = keras.Input((10, 10, 2))
    model = keras.Model(outer_in, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(backbone(outer_in))))
    x = rng.normal(size=(4, 10, 10, 2)).astype(np.float32)
    for method in ("grad_cam", "grad_cam_pp"):
        default = GradientEngine(from_keras(model), GradientSpec(method=method, target="predicted"), 4)([x])
        named = GradientEngine(from_keras(model), GradientSpec(method=method, target="predicted", layer="inner_last"), 4)([x])
        assert default["gradient"].max() > 1e-4
        np.testing.assert_array_equal(default["gradient"], named["gradient"])
    flat = keras.Sequential([keras.Input((10, 10, 2)), keras.layers.Flatten(), keras.layers.Dense(2)])
    with pytest.raises(SpecError, match=r"^method grad_cam_pp found no layer with filters"):
        GradientEngine(from_keras(flat), GradientSpec(method="grad_cam_pp"), 2)


def test_grad_cam_through_the_job_agrees_across_batch_sizes_and_processes(tmp_path):
    model, x = _load()
    x = np.concatenate([x, x[::-1] * 0.5])
    for f in range(2):
        write_parquet(tmp_path / f"in/{f}.parquet", {"id": np.arange(f * 6, f * 6 + 6), "x": x[f * 6 : f * 6 + 6]},
                      row_group_size=4)
    runs = {"b4": ["--batch_size", "4"], "b7": ["--batch_size", "7"],
            "multi": ["--batch_size", "4", "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]}
    outputs = {}
    for name, extra in runs.items():
        run_on(tmp_path, MODEL, "--method", "grad_cam_pp", "--target", "predicted", *extra, output=f"{name}/g")
        outputs[name] = tensor_column(by_key(read_output(tmp_path / f"{name}/g")), "gradient")
    assert outputs["b4"].shape == (12, 16, 16)
    for name, values in outputs.items():
        assert_rounding_equal(values, outputs["b4"], name)
    want = GradientEngine(from_keras(model), GradientSpec(method="grad_cam_pp", target="predicted"), 12)([x])
    assert_close(outputs["b4"], want["gradient"], rtol=1e-5, atol=1e-7)
