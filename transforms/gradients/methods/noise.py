"""Noise samples around each row (NoiseTunnel): any method evaluated at noisy copies of the inputs, then a statistic.

Sample s of a row is x + noise * (max(x) - min(x)) * N(0, 1), the normal values a
hash of (`seed`, the row's seed, s, the element) (`ops.seeded_normal`): a row gets the
same noise in any batch, at any batch size, on any worker. The row's seed is a row
input (`ROW_SEED`) that the caller computes from the row's keys or position.
Samples are evaluated `chunk` at a time in the compiled function; the statistic
is folded chunk by chunk (`ops.Mean`, `ops.Variance`, ...), so memory holds one chunk.

The tunnel wraps any method, as captum's `NoiseTunnel(IntegratedGradients(model))`:
`smoothgrad`, `vargrad` and `squaregrad` wrap the plain gradient; `samples` given to
another method wraps that method in `SmoothGrad` (`methods.build_method`). The inner
method's own columns (integrated gradients' `ig_delta`) are folded with the same
statistic's mean: SmoothGrad over IG writes the mean over the samples of each
sample's completeness gap.
"""

from __future__ import annotations

from typing import ClassVar

import tensorflow as tf

from transforms.gradients.methods.base import InputAttribution, Attribution, Method, fold_chunks
from transforms.gradients.methods.gradient import Gradient
from transforms.gradients.ops import Mean, per_point, row_range, seeded_normal, tile_rows
from transforms.gradients.outputs import ROW_SEED
from transforms.gradients.settings import Setting


class NoiseTunnel(InputAttribution):
    """A subclass picks `statistic` (over samples, per element); the inner method is the constructor's `inner`.

    `inner` is a method instance (default: the plain gradient at each sample).
    """

    statistic: ClassVar[type]
    SAMPLES: ClassVar[int] = 50  # samples per row when the spec gives none (the one place this default lives)
    declares = (
        Setting(
            "samples",
            int,
            None,
            f"Noisy samples per row (default {SAMPLES} for smoothgrad, vargrad, squaregrad; with another method: "
            "SmoothGrad over it).",
            minimum=1,
        ),
        Setting(
            "noise",
            float,
            0.2,
            "Noise standard deviation, as a fraction of each row's range.",
            minimum=0,
            range_text="0 or more (a fraction of each row's input range)",
        ),
        Setting("seed", int, 0, "Seed of the noise (mixed with each row's keys or position)."),
    )

    @classmethod
    def used_settings(cls, spec, inner: type = Gradient):
        return cls.settings + inner.used_settings(spec)

    def __init__(self, model, spec, inner: Method | None = None):
        super().__init__(model, spec)
        self.method = inner if inner is not None else Gradient(model, spec)

    @classmethod
    def check_spec(cls, spec):
        super().check_spec(spec)
        cls.check_declared(spec, "samples", "noise")

    @property
    def samples(self) -> int:
        return self.SAMPLES if self.spec.samples is None else self.spec.samples

    @property
    def row_inputs(self):
        return [ROW_SEED] + self.method.row_inputs

    @property
    def dataset_inputs(self):
        return self.method.dataset_inputs

    def declare(self, heads):
        self.heads = heads  # the engine declares before it traces: per head, one gradient per differentiated input
        self.columns = self.method.declare(heads)  # the inner method's own columns, folded with the mean
        return self.columns

    def attribute(self, differentiate, inputs, extras, evaluate):
        xs = self.differentiated(inputs)
        scales = [self.spec.noise * row_range(x) for x in xs]
        statistic, mean = self.statistic(), Mean()
        row_seeds = extras[ROW_SEED.name]
        samples = self.samples

        def step(first, size, state):
            gradient_state, column_state = state
            indices = first + tf.range(size)
            points = [tile_rows(x, size) for x in inputs]
            for stream, (i, x, scale) in enumerate(zip(self.floating, xs, scales)):
                noise = seeded_normal(self.spec.seed, stream, row_seeds, indices, tuple(x.shape[1:]))
                points[i] = tf.cast(tile_rows(x, size) + tile_rows(scale, size) * noise, inputs[i].dtype)
            inner = self.method.attribute(
                differentiate, points, {k: tile_rows(v, size) for k, v in extras.items()}, evaluate
            )
            flat = tf.nest.flatten(inner.gradients)
            columns = [tf.cast(inner.columns[o.name], tf.float32) for o in self.columns]
            return (
                [statistic.update(s, per_point(g, size)) for s, g in zip(gradient_state, flat)],
                [mean.update(s, per_point(c, size)) for s, c in zip(column_state, columns)],
            )

        rows = int(inputs[0].shape[0])
        state = (
            [statistic.init(x) for _ in self.heads for x in xs],
            [mean.init(tf.zeros((rows, *o.shape), tf.float32)) for o in self.columns],
        )
        gradient_state, column_state = fold_chunks(samples, self.chunk(inputs, samples), step, state)
        results = iter(statistic.result(s) for s in gradient_state)
        columns = {o.name: mean.result(s) for o, s in zip(self.columns, column_state)}
        return Attribution([[next(results) for _ in xs] for _ in self.heads], None, columns)
