"""Small numeric pieces the targets, methods and wrt answers share."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf


def example_norm(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """L2 norm per example (axis 0) over every element of every tensor given."""
    squares = [tf.reduce_sum(tf.reshape(tf.square(t), (tf.shape(t)[0], -1)), axis=1) for t in tensors]
    return tf.sqrt(tf.add_n(squares))


def per_example(scale: tf.Tensor, like: tf.Tensor) -> tf.Tensor:
    """A [batch] vector shaped to broadcast over `like`'s per-example dimensions."""
    return tf.reshape(scale, (-1,) + (1,) * (len(like.shape) - 1))


def clip_per_example(tensors: Sequence[tf.Tensor], clip_norm: float | None) -> list[tf.Tensor]:
    """Rescale each example's tensors together to an L2 norm of `clip_norm` at most: its own norm, never the batch's."""
    if clip_norm is None:
        return list(tensors)
    scale = clip_norm / tf.maximum(example_norm(tensors), clip_norm)
    return [t * per_example(scale, t) for t in tensors]


def clip(tensors: Sequence[tf.Tensor], clip_norm: float | None, per_tensor: bool) -> list[tf.Tensor]:
    """Per example: all tensors clipped together (DP-SGD), or each on its own (`per_tensor`), to `clip_norm`."""
    if not per_tensor:
        return clip_per_example(tensors, clip_norm)
    return [clip_per_example([t], clip_norm)[0] for t in tensors]
