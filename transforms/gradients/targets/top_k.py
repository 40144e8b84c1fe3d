"""`top_k`: one head per class among the k highest scores at the inputs (heads top1..topk), and those classes."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.errors import SpecError
from transforms.gradients.outputs import Output
from transforms.gradients.settings import Setting
from transforms.gradients.targets.base import ClassScore

COLUMN = "top_k_classes"


class TopK(ClassScore):
    name = "top_k"
    declares = (Setting("k", int, 3, "Classes per row for {target} top_k (one gradient column each).", minimum=1),)
    chooses = True  # at the inputs, then fixed along a path or over noise samples

    @classmethod
    def check_spec(cls, spec):
        super().check_spec(spec)
        cls.check_declared(spec, "k")

    def __init__(self, model, spec):
        super().__init__(model, spec)
        if spec.k > self.classes:
            raise SpecError(
                "{k} is {value}, but output {output!r} has {classes} classes", value=spec.k,
                output=self.output.name, classes=self.classes,
            )

    @property
    def heads(self):
        return [f"top{i + 1}" for i in range(self.spec.k)]

    def choose(self, outputs):
        return {COLUMN: tf.cast(tf.math.top_k(self.scores(outputs), k=self.spec.k).indices, tf.int64)}

    def declare(self):
        return [Output(COLUMN, "class", (self.spec.k,), dtype="int64")]

    def columns(self, forward):
        return {COLUMN: forward.extras[COLUMN]}

    def __call__(self, forward):
        classes = forward.extras[COLUMN]
        return [self.score(forward, classes[:, i]) for i in range(self.spec.k)]

    def describe(self, head):
        return f"the score of the class ranked {head[3:]} (of output {self.output.name!r})"
