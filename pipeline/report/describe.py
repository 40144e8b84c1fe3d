"""A run's spec (the output's `beam_gradients.spec` metadata) in the page's words: which settings apply, and what was taken.

Which settings apply comes from their declarations (transforms/gradients/declared.py, generated from the
classes' `declares`, so no TensorFlow here): a setting applies where its owner is "every gradient" or names
this run's target, method, wrt or weight form. The words name the method, its steps or samples, the target
and its class or head, so a title says "Integrated gradients, 32 steps, of the labelled class (label)".
"""

from __future__ import annotations

import dataclasses
import json

from transforms.gradients.declared import SETTINGS

# The noise methods: `samples` given to another method is SmoothGrad over it (transforms/gradients/methods).
NOISE_METHODS = ("smoothgrad", "vargrad", "squaregrad")
# method -> its name in words; the methods whose values are a gradient (not an attribution) say "gradient".
METHOD_NAMES = {
    "gradient": "Gradients",
    "gradient_x_input": "Gradient × input",
    "integrated_gradients": "Integrated gradients",
    "smoothgrad": "SmoothGrad",
    "vargrad": "VarGrad",
    "squaregrad": "SquareGrad",
    "grad_cam": "Grad-CAM",
    "grad_cam_pp": "Grad-CAM++",
}
# Methods whose per-element values carry a meaningful sign (they add up to f(x) - f(baseline) or are signed
# products): drawn on a diverging scale centred at 0. The others are drawn as magnitudes.
SIGNED_METHODS = ("gradient_x_input", "integrated_gradients")


def json_object(text: str | None) -> dict | None:
    """A metadata value as a dict, or None where absent or not a JSON object (an older or crafted output)."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def parse_spec(text: str | None) -> dict | None:
    """The metadata's spec as a dict, or None where absent or not a JSON object (an older or crafted output)."""
    spec = json_object(text)
    if spec is None:
        return None
    # A crafted file may hold anything: the answers as text, the lists as lists of text.
    for name in ("target", "method", "wrt"):
        if name in spec and not isinstance(spec[name], str):
            spec[name] = str(spec[name])
    for name in ("emit", "weight_output"):
        if name in spec and not (isinstance(spec[name], list) and all(isinstance(v, str) for v in spec[name])):
            spec[name] = [str(spec[name])]
    return spec


def _wrapped(spec: dict) -> bool:
    return spec.get("samples") is not None and spec.get("method") not in NOISE_METHODS


def _owner_applies(owner: str, spec: dict) -> bool:
    """Whether a declared owner ("every gradient", "method smoothgrad, vargrad", "wrt weights", ...) is in this run."""
    if owner == "every gradient":
        return True
    field, _, names = owner.partition(" ")
    names = {n.strip() for n in names.split(",")}
    value = spec.get(field)
    if field == "wrt":
        chosen = {"inputs", "weights"} if value == "both" else {value}
    elif field == "weight_output":  # a weight form: only where the weights are differentiated
        chosen = set(value or ()) if spec.get("wrt") in ("weights", "both") else set()
    elif field == "method" and _wrapped(spec):  # SmoothGrad over another method: the noise's settings too
        chosen = {value, *NOISE_METHODS}
    else:
        chosen = {value}
    return bool(chosen & names)


def applicable_settings(spec: dict) -> list[tuple[str, object]]:
    """(name, value) of the declared settings this run's answers read and that hold a value, in declared order.

    A setting without a default that holds a value was given and read (the job refuses a given setting nothing
    reads), though its owner is another answer: Grad-CAM's `layer`, for one."""
    emitted_loss = "loss" in (spec.get("emit") or ())
    shown = []
    for setting in SETTINGS:
        value = spec.get(setting.name)
        given = setting.default is None and value is not None
        applies = given or _owner_applies(setting.owner, spec) or (emitted_loss and setting.name in ("loss", "label_column"))
        switched_off = setting.type is bool and setting.default is False and value is False  # an opt-in not taken
        if applies and not switched_off and value not in (None, (), [], ""):
            shown.append((setting.name, ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else value))
    return shown


@dataclasses.dataclass(frozen=True)
class Words:
    """What a run took, in words: `method` ("Integrated gradients, 32 steps"), `target` ("of the labelled class
    (label)"), `quantity` ("gradient" or "attribution") and whether its values are `signed`."""

    method: str
    target: str
    quantity: str
    signed: bool

    @property
    def title(self) -> str:
        return f"{self.method}, {self.target}" if self.target else self.method


def method_words(spec: dict) -> str:
    method = spec.get("method", "gradient")
    name = METHOD_NAMES.get(method, str(method))
    if method == "integrated_gradients":
        name += f", {spec.get('steps')} steps"
    if _wrapped(spec):
        inner = name if method != "gradient" else "gradients"
        name = f"SmoothGrad over {inner[0].lower() + inner[1:]}, {spec['samples']} samples"
    elif method in NOISE_METHODS and spec.get("samples") is not None:
        name += f", {spec['samples']} samples"
    return name


def target_words(spec: dict) -> str:
    target, head = spec.get("target", "sum"), spec.get("output_name")
    of_head = f" of head {head}" if head else ""
    if target == "sum":
        return f"of head {head}" if head else "of the model's output"
    if target == "per_output":
        return "of each output"
    if target == "loss":
        return f"of the loss ({spec.get('loss')}, label {spec.get('label_column')}){of_head}"
    if target == "class":
        return f"of the labelled class ({spec.get('class_column')}){of_head}"
    if target == "predicted":
        return f"of the predicted class{of_head}"
    if target == "top_k":
        return f"of each of the top {spec.get('k')} classes{of_head}"
    return f"of {target}"


def spec_words(spec: dict | None) -> Words:
    """The words for a run's spec; an output without one (older, or crafted) says "Gradients"."""
    if not spec:
        return Words("Gradients", "", "gradient", False)
    method = spec.get("method", "gradient")
    target = target_words(spec)
    if spec.get("layer"):  # wrt layer's, or Grad-CAM's
        target += f", at layer {spec['layer']}"
    quantity = "gradient" if method == "gradient" and not _wrapped(spec) else "attribution"
    signed = method in SIGNED_METHODS
    return Words(method_words(spec), target, quantity, signed)
