"""`per_output`: one scalar per model output (head), the sum of that output, per example."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.ops import per_example_sum
from transforms.gradients.targets.base import Target


class PerOutput(Target):
    name = "per_output"
    takes_output_name = False  # one head per output already
    settings = ()

    @property
    def heads(self):
        return self.model.output_names

    def __call__(self, forward) -> list[tf.Tensor]:
        return [per_example_sum(o) for o in forward.outputs]

    def describe(self, head):
        return f"output {head!r}"
