"""The weight form's contract: what one row's (clipped) weight gradient is written as."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.outputs import Output
from transforms.gradients.registry import Answer
from transforms.gradients.wrt.selection import Selection


class WeightForm(Answer):
    """A row's weight gradient has as many numbers as the selected variables: each form writes it smaller (or whole).

    A subclass sets `name` (its registry key, a `weight_output` value), declares
    its columns and computes them from one micro-batch of per-example gradients
    (one [rows, *variable shape] tensor per selected variable, already clipped),
    one tensor per declared column, in declared order; `prepared` is what its
    `prepare` made for the batch.
    """

    def __init__(self, model, spec, selection: Selection):
        super().__init__(model, spec)
        self.selection = selection

    def declare(self) -> list[Output]:
        raise NotImplementedError

    def prepare(self):
        """Tensors `compute` needs for every micro-batch of a batch, made once per batch (a projection's plan)."""
        return None

    def compute(self, gradients: list[tf.Tensor], prepared) -> list[tf.Tensor]:
        raise NotImplementedError

    def provenance(self) -> dict:
        """What a later job must find equal to compare this form between outputs (beyond the variables)."""
        return {}
