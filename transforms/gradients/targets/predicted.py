"""`predicted`: the score of the class the model predicts for the row (the argmax at the inputs), and that class."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.outputs import Output
from transforms.gradients.targets.base import ClassScore

COLUMN = "predicted_class"


class Predicted(ClassScore):
    name = "predicted"
    chooses = True  # at the inputs, then fixed along a path or over noise samples

    def choose(self, outputs):
        return {COLUMN: tf.argmax(self.scores(outputs), axis=1)}

    def declare(self):
        return [Output(COLUMN, "class", (), dtype="int64")]

    def columns(self, forward):
        return {COLUMN: forward.extras[COLUMN]}

    def __call__(self, forward):
        return [self.score(forward, forward.extras[COLUMN])]

    def describe(self, head):
        return f"the score of the predicted class (of output {self.output.name!r})"
