"""Small numeric pieces the targets, methods and wrt answers share."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf


def example_norm(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """L2 norm per example (axis 0) over every element of every tensor given."""
    squares = [tf.reduce_sum(tf.reshape(tf.square(t), (tf.shape(t)[0], -1)), axis=1) for t in tensors]
    return tf.sqrt(tf.add_n(squares))


def per_example_sum(tensor: tf.Tensor) -> tf.Tensor:
    """[batch, ...] -> [batch] float32: the sum of each example's values."""
    tensor = tf.cast(tensor, tf.float32)
    return tf.reduce_sum(tf.reshape(tensor, (tf.shape(tensor)[0], -1)), axis=1)


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


def tile_rows(tensor: tf.Tensor, times: int) -> tf.Tensor:
    """[batch, ...] -> [times * batch, ...], the whole batch repeated: row i of copy j is row j * batch + i."""
    return tf.tile(tensor, [times] + [1] * (len(tensor.shape) - 1))


def per_point(tensor: tf.Tensor, points: int) -> tf.Tensor:
    """[points * batch, ...] (laid out as `tile_rows` does) -> [points, batch, ...]."""
    return tf.reshape(tensor, tf.concat([[points, -1], tf.shape(tensor)[1:]], axis=0))


def row_range(tensor: tf.Tensor) -> tf.Tensor:
    """Per example: its largest value minus its smallest, shaped to broadcast over the example."""
    flat = tf.reshape(tensor, (tf.shape(tensor)[0], -1))
    return per_example(tf.reduce_max(flat, axis=1) - tf.reduce_min(flat, axis=1), tensor)


# ---------------------------------------------------------------- running statistics over chunks of samples
# A statistic's state is a tuple of tensors (it is a tf.while_loop variable). `update` folds in a chunk of
# values [chunk, batch, ...]; chunks are merged exactly (Chan et al.), so the result does not depend on the chunk.


class Mean:
    """The mean over samples (SmoothGrad)."""

    def init(self, like: tf.Tensor) -> tuple:
        return (tf.zeros((), tf.float32), tf.zeros_like(like))

    def update(self, state: tuple, values: tf.Tensor) -> tuple:
        count, mean = state
        n = tf.cast(tf.shape(values)[0], tf.float32)
        total = count + n
        return (total, mean + (tf.reduce_sum(values, axis=0) - n * mean) / total)

    def result(self, state: tuple) -> tf.Tensor:
        return state[1]


class MeanOfSquares(Mean):
    """The mean of the squared values over samples (SquareGrad)."""

    def update(self, state, values):
        return super().update(state, tf.square(values))


class Variance:
    """The population variance over samples (VarGrad): running mean and sum of squared deviations, merged by chunk."""

    def init(self, like):
        return (tf.zeros((), tf.float32), tf.zeros_like(like), tf.zeros_like(like))

    def update(self, state, values):
        count, mean, m2 = state
        n = tf.cast(tf.shape(values)[0], tf.float32)
        chunk_mean = tf.reduce_mean(values, axis=0)
        chunk_m2 = tf.reduce_sum(tf.square(values - chunk_mean), axis=0)
        total = count + n
        delta = chunk_mean - mean
        return (total, mean + delta * n / total, m2 + chunk_m2 + tf.square(delta) * count * n / total)

    def result(self, state):
        count, _, m2 = state
        return m2 / count


# ---------------------------------------------------------------- seeded noise, the same for a row wherever it runs
# A counter-based generator: each value is a hash of (seed, the row's seed, sample, element), so a row's noise does
# not depend on its batch, its batch size, its worker or its runner. Arithmetic on int64 holding 32-bit values,
# multiplied in 16-bit halves so that nothing overflows.
_MASK32 = 0xFFFFFFFF


def _mul32(h: tf.Tensor, constant: int) -> tf.Tensor:
    """(h * constant) mod 2**32, for 0 <= h < 2**32, without overflowing int64."""
    high, low = constant >> 16, constant & 0xFFFF
    return (h * low + tf.bitwise.left_shift((h * high) & 0xFFFF, 16)) & _MASK32


def mix32(h: tf.Tensor) -> tf.Tensor:
    """MurmurHash3's finalizer: a bijection of 32-bit values that spreads every input bit over the output."""
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16))
    h = _mul32(h, 0x85EBCA6B)
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 13))
    h = _mul32(h, 0xC2B2AE35)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16))


def _unit(h: tf.Tensor) -> tf.Tensor:
    """A 32-bit hash -> float32 in (0, 1), from its top 24 bits (exact in float32)."""
    return (tf.cast(tf.bitwise.right_shift(h, 8), tf.float32) + 0.5) / float(1 << 24)


def seeded_normal(seed: int, stream: int, row_seeds: tf.Tensor, samples: tf.Tensor, shape: tuple[int, ...]) -> tf.Tensor:
    """Standard normal noise [samples * batch, *shape] (Box-Muller), laid out sample by sample as `tile_rows` does.

    Each value is a pure function of (seed, stream, the row's seed, the sample index, the element index):
    `row_seeds` is [batch] int64 (any 64 bits), `samples` [n] int indices, `stream` tells inputs apart.
    """
    row_seeds = tf.cast(row_seeds, tf.int64)
    low = tf.bitwise.bitwise_and(row_seeds, _MASK32)
    high = tf.bitwise.bitwise_and(tf.bitwise.right_shift(row_seeds, 32), _MASK32)
    start = mix32(tf.constant(((seed ^ (seed >> 32)) & _MASK32) ^ (stream * 0x9E3779B9 & _MASK32), tf.int64))
    key = mix32(tf.bitwise.bitwise_xor(mix32(tf.bitwise.bitwise_xor(start, low)), high))  # [batch]
    samples = tf.bitwise.bitwise_and(tf.cast(samples, tf.int64), _MASK32)
    key = tf.reshape(mix32(tf.bitwise.bitwise_xor(key[None, :], samples[:, None])), (-1, 1))  # [samples * batch, 1]
    size = 1
    for d in shape:
        size *= d
    element = 2 * tf.range(size, dtype=tf.int64)[None, :]
    u1 = _unit(mix32(mix32(tf.bitwise.bitwise_xor(key, element))))
    u2 = _unit(mix32(mix32(tf.bitwise.bitwise_xor(key, element + 1))))
    normal = tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos(2.0 * 3.141592653589793 * u2)
    return tf.reshape(normal, (-1, *shape))
