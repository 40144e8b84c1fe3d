"""One forward pass at a batch of points: what targets read and methods combine."""

from __future__ import annotations

import functools

import tensorflow as tf

from transforms.gradients.losses import PerExampleLoss


class Forward:
    """The model's outputs at some points, the rows' extra inputs by name, and the loss, computed once if read.

    `scalars` (one [batch] tensor per head of the target) is set by the engine
    when the target has been applied.
    """

    def __init__(self, outputs: list[tf.Tensor], extras: dict[str, tf.Tensor], loss_fn: PerExampleLoss | None):
        self.outputs = outputs
        self.extras = extras
        self._loss_fn = loss_fn
        self.scalars: list[tf.Tensor] = []

    def at(self, outputs: list[tf.Tensor], extras: dict[str, tf.Tensor]) -> "Forward":
        """The same loss at other outputs: a batch's forward pass put together from its micro-batches'."""
        return Forward(outputs, extras, self._loss_fn)

    @functools.cached_property
    def loss(self) -> tf.Tensor:
        return self._loss_fn(self.outputs, self.extras["label"])
