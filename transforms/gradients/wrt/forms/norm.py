"""`norm`: the L2 norm of each row's whole weight gradient, and one per layer (GraNd scores, DP-SGD diagnostics)."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.outputs import Output
from transforms.gradients.wrt.forms.base import WeightForm


class Norm(WeightForm):
    name = "norm"

    def declare(self):
        outputs = [Output("weight_norm", "weight_norm", ())]
        return outputs + [Output(f"weight_norm__{layer}", "weight_norm", ()) for layer in self.selection.layers]

    def compute(self, gradients, prepared):
        # Squares summed in float64: a float32 sum of a million squares can come out a bit apart
        # from run to run, and a row's norm must be the same bytes on every rerun.
        squares = [
            tf.reduce_sum(tf.reshape(tf.square(tf.cast(g, tf.float64)), (tf.shape(g)[0], -1)), axis=1)
            for g in gradients
        ]
        return self.from_squares(squares)

    def from_squares(self, squares: list[tf.Tensor]) -> list[tf.Tensor]:
        """Per selected variable, each row's float64 sum of squared gradient entries -> the declared columns."""
        owners = [w.layer for w in self.selection.weights]
        per_layer = [tf.add_n([s for s, o in zip(squares, owners) if o == layer]) for layer in self.selection.layers]
        return [tf.cast(tf.sqrt(s), tf.float32) for s in [tf.add_n(squares), *per_layer]]
