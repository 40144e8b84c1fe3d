"""`sum`: the sum of all the model's outputs, per example."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.targets.base import Target, per_example_sum


class Sum(Target):
    name = "sum"

    def __call__(self, forward) -> list[tf.Tensor]:
        return [tf.add_n([per_example_sum(o) for o in forward.outputs])]

    def describe(self, head):
        return "the sum of the model's outputs"
