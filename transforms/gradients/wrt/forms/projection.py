"""`projection`: a seeded k-dimensional sketch of each row's weight gradient that keeps inner products (TRAK, TracIn).

How it is built (construction `countsketch-v1`): every selected parameter j
gets a bucket h(j) in [0, k) and a sign s(j) = +-1, drawn by TensorFlow's
stateless Philox generator from (projection_seed, crc32 of the variable's
path) in the variable's row-major order. A row's vector is
v[b] = sum over j with h(j) = b of s(j) g[j], i.e. v = S g with S a k x P
matrix holding one +-1 per column, never built. E<Sg, Sg'> = <g, g'> exactly,
and Var <Sg, Sg'> <= (|g|^2 |g'|^2 + <g, g'>^2) / k, the variance of a dense
Gaussian projection with entries N(0, 1/k). It costs O(P) per row, not O(P k).

Why the bytes are the same on any runner, batch size or rerun: S depends only
on the seed, the paths and k; each variable's sum runs in parameter order
(a sorted segment sum), variables are added in the model's order, and the
per-example gradients come from micro-batches of a fixed size.
"""

from __future__ import annotations

import zlib

import tensorflow as tf

from transforms.gradients.errors import SpecError
from transforms.gradients.outputs import Output
from transforms.gradients.settings import Setting
from transforms.gradients.wrt.forms.base import WeightForm
from transforms.gradients.wrt.per_example import GRADIENT_COPIES

CONSTRUCTION = "countsketch-v1"
MAX_DIM = 2**31 - 1  # buckets are int32 indices
DTYPES = ("float32", "float16")


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:,.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:,.1f} MiB"


def sketch_seed(projection_seed: int, path: str) -> list[int]:
    """The stateless seed of one variable's buckets and signs: the user's seed and the path's crc32."""
    return [projection_seed, zlib.crc32(path.encode())]


class Projection(WeightForm):
    name = "projection"
    declares = (
        Setting("projection_dim", int, 2048, "Length k of each row's weight projection.", minimum=1),
        Setting("projection_dtype", str, "float32", "Type of the projection.", choices=DTYPES),
        Setting("projection_seed", int, 0, "Seed of the projection: equal seeds, comparable rows."),
    )

    @classmethod
    def check_spec(cls, spec):
        cls.check_declared(spec, "projection_dim")
        row_bytes = GRADIENT_COPIES * 4 * spec.projection_dim
        if spec.projection_dim > MAX_DIM or row_bytes > spec.weight_memory_mb << 20:
            raise SpecError(
                "{projection_dim} {value:,} needs {size} per row ({copies} float32 copies of the projection), more "
                "than {weight_memory_mb} {budget:,} MiB allows; lower {projection_dim} (a few thousand is usual) or "
                "raise {weight_memory_mb}" + (f" (and it may not exceed {MAX_DIM:,})" if spec.projection_dim > MAX_DIM else ""),
                value=spec.projection_dim, size=_size(row_bytes), copies=GRADIENT_COPIES, budget=spec.weight_memory_mb,
            )
        if spec.jit_compile:
            raise SpecError("{weight_output} projection cannot run under {jit_compile}: XLA has no sorted segment sum")
        if spec.projection_dtype not in DTYPES:
            raise SpecError(
                "{projection_dtype} must be one of {choices}, not {value!r}",
                choices=", ".join(DTYPES),
                value=spec.projection_dtype,
            )

    def declare(self):
        spec = self.spec
        return [Output("weight_projection", "weight_projection", (spec.projection_dim,), spec.projection_dtype)]

    def provenance(self):
        spec = self.spec
        return {
            "projection": {
                "seed": spec.projection_seed,
                "dim": spec.projection_dim,
                "dtype": spec.projection_dtype,
                "construction": CONSTRUCTION,
            }
        }

    def prepare(self):
        """Per variable: its parameters ordered by bucket (stably), their buckets so ordered, and their signs.

        Made once per batch, outside the micro-batches; sorted, a variable's sum is a segment sum over
        contiguous rows, in parameter order within each bucket (several times faster than an unsorted one).
        """
        k = self.spec.projection_dim
        plans = []
        for weight, size in zip(self.selection.weights, self.selection.sizes):
            seed = tf.constant(sketch_seed(self.spec.projection_seed, weight.path), tf.int64)
            # One draw in [0, 2k) gives both: bucket = draw mod k, sign from draw // k (uniform, independent).
            draw = tf.random.stateless_uniform((size,), seed, minval=0, maxval=2 * k, dtype=tf.int64, alg="philox")
            bucket = tf.cast(draw % k, tf.int32)
            order = tf.argsort(bucket, stable=True)
            plans.append((order, tf.gather(bucket, order), tf.gather(tf.cast(draw // k, tf.float32) * 2 - 1, order)))
        return plans

    def compute(self, gradients, plans):
        k = self.spec.projection_dim
        total = None
        for size, gradient, (order, bucket, sign) in zip(self.selection.sizes, gradients, plans):
            signed = tf.gather(tf.transpose(tf.reshape(gradient, (-1, size))), order) * sign[:, None]  # [size, rows]
            sketch = tf.math.segment_sum(signed, bucket)  # [buckets up to the last one used, rows]
            sketch = tf.reshape(tf.pad(sketch, [[0, k - tf.shape(sketch)[0]], [0, 0]]), (k, gradient.shape[0]))
            total = sketch if total is None else total + sketch
        return [tf.cast(tf.transpose(total), self.spec.projection_dtype)]
