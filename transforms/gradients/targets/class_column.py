"""`class`: the score of the class whose index each row holds in a column (`class_column`)."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.outputs import RowInput
from transforms.gradients.settings import Setting
from transforms.gradients.targets.base import ClassScore


class ClassColumn(ClassScore):
    name = "class"
    declares = (Setting("class_column", str, None, "Column holding each row's class index, for {target} class.", kind="column"),)

    @property
    def row_inputs(self):
        return [RowInput("class", (), tf.int64, "class_column", "target", classes=self.classes)]

    def __call__(self, forward):
        return [self.score(forward, forward.extras["class"])]

    def describe(self, head):
        return f"the score of each row's class (of output {self.output.name!r})"
