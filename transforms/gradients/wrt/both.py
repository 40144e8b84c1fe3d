"""`both`: the input gradients exactly as `inputs` writes them, and the weight forms as `weights` does, in one row."""

from __future__ import annotations

from transforms.gradients.wrt.base import Wrt
from transforms.gradients.wrt.inputs import Inputs
from transforms.gradients.wrt.weights import Weights


class Both(Wrt):
    """The two answers side by side; each clips its own tensors (inputs together, weights together)."""

    name = "both"

    @classmethod
    def check_spec(cls, spec):
        Inputs.check_spec(spec)
        Weights.check_spec(spec)

    @classmethod
    def used_settings(cls, spec):
        return Inputs.used_settings(spec) + Weights.used_settings(spec)

    def __init__(self, model, spec, target):
        super().__init__(model, spec, target)
        self.inputs = Inputs(model, spec, target)
        self.weights = Weights(model, spec, target)
        self.inputs.unconnected = self.weights.unconnected = self.unconnected  # both record into this answer's set

    def declare(self):
        return self.inputs.declare() + self.weights.declare()

    def provenance(self):
        return self.weights.provenance()

    def differentiate(self, forward_fn, points, extras):
        inputs, forward = self.inputs.differentiate(forward_fn, points, extras)
        weights, _ = self.weights.differentiate(forward_fn, points, extras)
        return [i + w for i, w in zip(inputs, weights)], forward

    def columns(self, gradients):
        split = len(self.inputs.watched)
        values = self.inputs.columns([head[:split] for head in gradients])
        values.update(self.weights.columns([head[split:] for head in gradients]))
        return values
