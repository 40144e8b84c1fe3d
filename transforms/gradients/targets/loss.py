"""`loss`: the per-example loss between the row's label and the prediction."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.choices import KERAS_LOSSES
from transforms.gradients.errors import SpecError
from transforms.gradients.settings import Setting
from transforms.gradients.targets.base import Target


class Loss(Target):
    name = "loss"
    # output_name (the base's): on a model with several heads, the one the loss compares to the label
    declares = (
        Setting("loss", str, None, f"Per-example loss: {', '.join(KERAS_LOSSES)} or module.path:function."),
        Setting("label_column", str, None, "Column holding each row's label, for {loss}.", kind="column"),
    )

    @classmethod
    def check_spec(cls, spec):
        super().check_spec(spec)
        if not spec.loss:
            raise SpecError("{target} loss needs {loss} (a Keras loss name or module.path:function)")

    def __call__(self, forward) -> list[tf.Tensor]:
        return [forward.loss]  # the engine feeds the label whenever the spec has a loss

    def describe(self, head):
        return "the loss"
