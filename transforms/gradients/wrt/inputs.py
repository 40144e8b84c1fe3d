"""`inputs`: one gradient per floating-point model input, with the input's shape."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.errors import SpecError
from transforms.gradients.ops import clip
from transforms.gradients.outputs import Output, gradient_name
from transforms.gradients.wrt.base import Wrt


class Inputs(Wrt):
    """Why one backward pass serves a whole batch: the model runs in inference mode, so example i's
    scalar depends on example i's inputs only, and d(sum over the batch)/d(x_i) is example i's own gradient.
    """

    name = "inputs"

    def __init__(self, model, spec, target):
        super().__init__(model, spec, target)
        self.watched = list(model.attributed)
        if not self.watched:
            from transforms.gradients.wrt.layer_split import embedding_consumers

            layers = [layer.name for found in embedding_consumers(model).values() for layer in found]
            hint = " (its embedding layers: %s)" % ", ".join(dict.fromkeys(layers)) if layers else ""
            raise SpecError(
                "the model has no floating-point input, so no input gradient exists; attribute a layer's output "
                "instead: {wrt} layer {layer} <name>%s" % hint
            )

    def declare(self):
        multi_input = len(self.model.inputs) > 1
        return [
            Output(
                gradient_name(t.name, head, multi_input),
                "gradient",
                self.attributed_shape(t.shape),
                input=t.name,
                per_feature=gradient_name(t.name, head, multi_input, feature="{feature}"),
            )
            for head in self.target.heads
            for t in (self.model.inputs[i] for i in self.watched)
        ]

    def differentiate(self, forward_fn, points, extras):
        watched = [points[i] for i in self.watched]
        heads = self.target.heads
        with tf.GradientTape(persistent=len(heads) > 1) as tape:
            tape.watch(watched)
            forward = forward_fn(points, extras)
            totals = [tf.reduce_sum(s) for s in forward.scalars]  # on the tape: the batch sum is differentiated
        gradients = []
        for head, total in zip(heads, totals):
            grads = tape.gradient(total, watched, unconnected_gradients=tf.UnconnectedGradients.NONE)
            gradients.append([self._connected(g, x, i, head) for g, x, i in zip(grads, watched, self.watched)])
        return gradients, forward

    def _connected(self, gradient, x, index: int, head: str | None):
        """A None gradient (the target ignores this input) becomes zeros, or an error."""
        if gradient is not None:
            return tf.cast(gradient, tf.float32)
        name = self.model.inputs[index].name
        if self.spec.unconnected == "error":
            raise SpecError(
                "model input {input!r} has no gradient: {of} does not depend on it "
                "(use {unconnected} zeros to write zeros instead)",
                input=name,
                of=self.target.describe(head),
            )
        self.unconnected.add((name, head))
        return tf.zeros(tf.shape(x), tf.float32)

    def columns(self, gradients):
        names = iter(o.name for o in self.declare())
        spec = self.spec
        return {next(names): g for head in gradients for g in clip(head, spec.clip_norm, spec.clip_per_tensor)}
