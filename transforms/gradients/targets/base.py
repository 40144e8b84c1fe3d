"""The target's contract: of what the gradient is taken."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.forward import Forward
from transforms.gradients.outputs import Output, RowInput
from transforms.gradients.registry import Answer

class Target(Answer):
    """Of what: per example, one scalar per head, read from a forward pass.

    A subclass sets `name` (its registry key, the `target` spec value) and
    implements `__call__`. It may name several heads (one gradient column each,
    suffixed `__<head>`), ask for row inputs beyond the model's (a class index
    column), and declare columns of its own (the class indices of top k),
    computed by `columns`. Each example's scalar must depend on that example's
    inputs only: one backward pass over the batch sum then gives every
    example's own gradient.
    """

    @property
    def heads(self) -> list[str | None]:
        """One entry per scalar per row; None: a single scalar, columns get no suffix."""
        return [None]

    @property
    def row_inputs(self) -> list[RowInput]:
        return []

    def declare(self) -> list[Output]:
        return []

    def columns(self, forward: Forward) -> dict[str, tf.Tensor]:
        return {}

    def __call__(self, forward: Forward) -> list[tf.Tensor]:
        """One float32 [batch] tensor per head."""
        raise NotImplementedError

    def describe(self, head: str | None) -> str:
        """What one head differentiates, in words, for error messages."""
        raise NotImplementedError

def per_example_sum(tensor: tf.Tensor) -> tf.Tensor:
    """[batch, ...] -> [batch] float32: the sum of each example's values."""
    tensor = tf.cast(tensor, tf.float32)
    return tf.reduce_sum(tf.reshape(tensor, (tf.shape(tensor)[0], -1)), axis=1)
