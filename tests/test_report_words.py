"""The report's words for a run: the settings that apply (from their declarations) and what was taken, per method and target."""

import json

import pytest

from pipeline.report.describe import METHOD_NAMES, applicable_settings, parse_spec, spec_words
from transforms.gradients.declared import SETTINGS
from transforms.gradients.spec import GradientSpec

CHOICES = {s.name: s.choices for s in SETTINGS}


def spec(**given) -> dict:
    """A spec as the job records it in the output's metadata (its JSON, with the row inputs' columns)."""
    columns = {"class_column": given.pop("class_column", None), "label_column": given.pop("label_column", None)}
    return {**json.loads(GradientSpec(**given).to_json()), **columns}


def shown(made: dict) -> set[str]:
    return {name for name, _ in applicable_settings(made)}


@pytest.mark.parametrize(
    "given, words",
    [
        (dict(), "Gradients, of the model's output"),
        (dict(method="gradient_x_input", target="per_output"), "Gradient × input, of each output"),
        (dict(method="integrated_gradients", steps=32, target="class", class_column="label"),
         "Integrated gradients, 32 steps, of the labelled class (label)"),
        (dict(method="smoothgrad", samples=50, output_name="classes"), "SmoothGrad, 50 samples, of head classes"),
        (dict(method="vargrad", target="predicted"), "VarGrad, 50 samples, of the predicted class"),
        (dict(method="squaregrad", samples=8, target="top_k", k=2), "SquareGrad, 8 samples, of each of the top 2 classes"),
        (dict(method="integrated_gradients", steps=16, samples=4),
         "SmoothGrad over integrated gradients, 16 steps, 4 samples, of the model's output"),
        (dict(target="loss", loss="mse", label_column="y"), "Gradients, of the loss (mse, label y)"),
        (dict(method="grad_cam", layer="conv", target="predicted"), "Grad-CAM, of the predicted class, at layer conv"),
        (dict(method="grad_cam_pp", target="class", class_column="c"),
         "Grad-CAM++, of the labelled class (c)"),
    ],
)
def test_spec_words_name_the_method_its_steps_or_samples_and_the_target(given, words):
    made = spec_words(spec(**given))
    assert made.title == words
    assert made.quantity == ("gradient" if given.get("method", "gradient") == "gradient" else "attribution")
    assert made.signed == (given.get("method") in ("integrated_gradients", "gradient_x_input"))


def test_every_method_and_target_has_words_and_an_output_without_a_spec_says_gradients():
    assert set(CHOICES["method"]) <= set(METHOD_NAMES)
    for target in CHOICES["target"]:
        assert not spec_words({"target": target, "method": "gradient"}).target.startswith(f"of {target}")
    assert spec_words(None).title == "Gradients" and spec_words(parse_spec("not json")).quantity == "gradient"
    assert parse_spec('["a list"]') is None
    crafted = parse_spec(json.dumps({"method": ["x"], "target": {"a": 1}, "wrt": None, "emit": 3, "weight_output": [1]}))
    assert spec_words(crafted).title == "['x'], of {'a': 1}" and applicable_settings(crafted)  # words, never a crash


def test_only_the_settings_a_run_reads_are_shown():
    plain = shown(spec())
    assert {"target", "method", "wrt", "unconnected"} <= plain
    assert not plain & {"noise", "samples", "seed", "steps", "ig_rule", "baseline", "k", "projection", "projection_dim",
                        "weight_output", "weight_memory_mb", "loss", "label_column", "layer"}
    ig = shown(spec(method="integrated_gradients", steps=32, target="class", class_column="label"))
    assert {"steps", "ig_rule", "baseline", "class_column"} <= ig and not ig & {"noise", "samples", "k", "loss"}
    noisy = shown(spec(method="integrated_gradients", samples=4))  # SmoothGrad over IG: the noise's settings too
    assert {"steps", "samples", "noise", "seed"} <= noisy
    weights = shown(spec(wrt="weights", weight_output=("norm", "projection"), target="loss", loss="mse", label_column="y"))
    assert {"weight_output", "projection_dim", "projection", "projection_seed", "loss", "label_column"} <= weights
    assert "steps" not in weights and "k" not in weights
    assert not shown(spec(wrt="weights")) & {"projection_dim", "projection"}  # norm only: no projection settings
    assert "k" in shown(spec(target="top_k", k=2))
    assert "layer" in shown(spec(method="grad_cam", layer="conv")) and "layer" not in plain  # read by Grad-CAM too
    values = dict(applicable_settings(spec(wrt="weights", weight_output=("norm", "projection"))))
    assert values["weight_output"] == "norm, projection" and values["projection_dim"] == 2048
