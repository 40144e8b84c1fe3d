"""Noise samples around each row (NoiseTunnel): any method evaluated at noisy copies of the inputs, then a statistic.

Sample s of a row is x + noise * (max(x) - min(x)) * N(0, 1), the normal values a
hash of (`seed`, the row's seed, s, the element) (`ops.seeded_normal`): a row gets the
same noise in any batch, at any batch size, on any worker. The row's seed is a row
input (`ROW_SEED`) that the caller computes from the row's keys or position.
Samples are evaluated `chunk` at a time in the compiled function; the statistic
is folded chunk by chunk (`ops.Mean`, `ops.Variance`, ...), so memory holds one chunk.
"""

from __future__ import annotations

from typing import ClassVar

import tensorflow as tf

from transforms.gradients.choices import check_minimum
from transforms.gradients.methods.base import InputAttribution, Attribution, fold_chunks
from transforms.gradients.methods.gradient import Gradient
from transforms.gradients.ops import per_point, row_range, seeded_normal, tile_rows
from transforms.gradients.outputs import ROW_SEED


class NoiseTunnel(InputAttribution):
    """A subclass picks `statistic` (over samples, per element) and, if it likes, the `inner` method."""

    statistic: ClassVar[type]
    inner: ClassVar[type] = Gradient
    settings = ("samples", "noise", "seed", "chunk")

    @classmethod
    def used_settings(cls, spec):
        return cls.settings + cls.inner.used_settings(spec)

    def __init__(self, model, spec):
        super().__init__(model, spec)
        self.method = self.inner(model, spec)

    @classmethod
    def check_spec(cls, spec):
        super().check_spec(spec)
        check_minimum("samples", spec.samples)
        check_minimum("noise", spec.noise)

    @property
    def row_inputs(self):
        return [ROW_SEED] + self.method.row_inputs

    @property
    def dataset_inputs(self):
        return self.method.dataset_inputs

    def declare(self, heads):
        self.heads = heads  # the engine declares before it traces: per head, one gradient per differentiated input
        return self.method.declare(heads)

    def attribute(self, differentiate, inputs, extras, evaluate):
        xs = self.differentiated(inputs)
        scales = [self.spec.noise * row_range(x) for x in xs]
        statistic = self.statistic()
        row_seeds = extras[ROW_SEED.name]

        def step(first, size, state):
            samples = first + tf.range(size)
            points = [tile_rows(x, size) for x in inputs]
            for stream, (i, x, scale) in enumerate(zip(self.floating, xs, scales)):
                noise = seeded_normal(self.spec.seed, stream, row_seeds, samples, tuple(x.shape[1:]))
                points[i] = tf.cast(tile_rows(x, size) + tile_rows(scale, size) * noise, inputs[i].dtype)
            inner = self.method.attribute(
                differentiate, points, {k: tile_rows(v, size) for k, v in extras.items()}, evaluate
            )
            flat = tf.nest.flatten(inner.gradients)
            return [statistic.update(s, per_point(g, size)) for s, g in zip(state, flat)]

        chunk = self.chunk(inputs, self.spec.samples)
        state = [statistic.init(x) for _ in self.heads for x in xs]
        state = fold_chunks(self.spec.samples, chunk, step, state)
        results = iter(statistic.result(s) for s in state)
        return Attribution([[next(results) for _ in xs] for _ in self.heads], None)
