"""`sum`: the sum of all the model's outputs, per example."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.ops import per_example_sum
from transforms.gradients.targets.base import Target


class Sum(Target):
    name = "sum"

    def __call__(self, forward) -> list[tf.Tensor]:
        return [tf.add_n([per_example_sum(forward.outputs[i]) for i in self.selected])]

    def describe(self, head):
        if self.spec.output_name:
            return f"the sum of output {self.spec.output_name!r}"
        return "the sum of the model's outputs"
