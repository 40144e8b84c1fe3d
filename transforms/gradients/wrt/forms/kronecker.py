"""Construction `kronecker-gaussian-v1` of the weight projection (`projection kronecker`), after LoGra (Choe et al.
2024): a kernel that its layer kind gives as a matrix W [inputs, outputs] is projected by P_in (x) P_out, with
P_in [inputs, k_in] and P_out [outputs, k_out] Gaussian, entries N(0, 1/side), k_in * k_out <= k. A row's gradient
there is G = sum_t a_t d_t^T, so its sketch P_in^T G P_out = sum_t (P_in^T a_t) (P_out^T d_t)^T comes from the
layer's inputs and output gradients by matrix products alone: no FFT, no scatter, and never the gradient.

Why it exists beside the TensorSketch (`factored`): a TensorSketch needs a k-point FFT per side and position, which
bounds its speed on CPUs (docs/fast-weights.md); this costs two small matrix products per position. Its price is
variance: two independent projections multiply, so its error is about that of a k_in- or k_out-dimensional one
times how alike rows' inputs (or output gradients) are. Only kernels of more than k parameters, of a layer kind that
allows it (`LayerKind.kronecker`: not a conv's), are so projected,
a side no longer than sqrt(k) kept whole (`kernel_sides`: never spread); every other variable keeps countsketch.
E<v, v'> = <g, g'> exactly, since E[P P^T] = I on each side.
"""

from __future__ import annotations

import math

import tensorflow as tf

NAME = "kronecker-gaussian-v1"


def sides(k: int) -> tuple[int, int] | None:
    """(short, long), short * long = k: short the largest divisor of k at most sqrt(k) (2048: 32 and 64). None when
    it would be under half of sqrt(k), as for a prime: no balanced split."""
    short = max(d for d in range(1, math.isqrt(k) + 1) if k % d == 0)
    return (short, k // short) if 4 * short * short >= k else None


def kernel_sides(inputs: int, outputs: int, k: int) -> tuple[int, int] | None:
    """(k_in, k_out) for a kernel [inputs, outputs], k_in * k_out <= k; None for a kernel of k parameters or fewer
    (it keeps countsketch: nearly lossless there, and cheap to form). A kernel side no longer than sqrt(k) (a
    classifier's 10 outputs) is kept whole (k_side = its length: exact on that side; a
    square Gaussian matrix would add variance, not compress) and the other side gets k // it; otherwise the two
    sides of `sides(k)`, the longer on the kernel's longer side (outputs on a tie)."""
    if inputs * outputs <= k:
        return None
    short, long = sides(k)
    if min(inputs, outputs) * min(inputs, outputs) <= k:
        return (inputs, k // inputs) if inputs <= outputs else (k // outputs, outputs)
    return (long, short) if inputs > outputs else (short, long)


def _side(seed: list[int], rows: int, columns: int) -> tf.Tensor | None:
    """One side's matrix [rows, columns], Gaussian N(0, 1/columns); None where the side is kept whole."""
    if rows == columns:
        return None
    return tf.random.stateless_normal((rows, columns), tf.constant(seed, tf.int64), alg="philox") / math.sqrt(columns)


class Kronecker:
    """One kernel's P_in and P_out (drawn from the projection seed and the variable's path + "/in" and "/out"),
    and its split (`layers.base.Split`): how the variable reshapes to [inputs, outputs]."""

    def __init__(self, seeds: tuple[list[int], list[int]], split, k: int):
        self.k_in, self.k_out = kernel_sides(split.inputs, split.outputs, k)
        self.split, self.k = split, k
        self.p_in = _side(seeds[0], split.inputs, self.k_in)
        self.p_out = _side(seeds[1], split.outputs, self.k_out)

    @staticmethod
    def covers(split, k: int) -> bool:
        return kernel_sides(split.inputs, split.outputs, k) is not None

    def factors_are_cheaper(self, positions: int) -> bool:
        """Whether projecting each position's two sides (T (I k_in + O k_out + k)) costs less than forming the
        row's gradient and projecting it (T I O + I O k_out + k_out I k_in): over many positions (a conv's
        pixels) a small kernel is cheaper formed. The same map either way."""
        i, o = self.split.inputs, self.split.outputs
        sides_cost = positions * (i * self.k_in + o * self.k_out + self.k_in * self.k_out)
        return sides_cost <= positions * i * o + i * o * self.k_out + self.k_out * i * self.k_in

    def of_gradient(self, gradient: tf.Tensor) -> tf.Tensor:
        """[rows, *variable shape] -> [rows, k]: P_in^T G P_out of each row's whole gradient, flattened k_in-major
        (the general path's, and the fast path's where a kernel's gradient is formed anyway)."""
        rows, split = int(gradient.shape[0]), self.split
        if split.perm is not None:  # the variable is the matrix reshaped to `grouped`, then transposed by `perm`
            inverse = sorted(range(len(split.perm)), key=split.perm.__getitem__)
            gradient = tf.transpose(gradient, (0, *[p + 1 for p in inverse]))
        m = _times(tf.reshape(gradient, (rows * split.inputs, split.outputs)), self.p_out)  # 2-D products only
        m = tf.transpose(tf.reshape(m, (rows, split.inputs, self.k_out)), (0, 2, 1))
        m = _times(tf.reshape(m, (rows * self.k_out, split.inputs)), self.p_in)
        m = tf.reshape(tf.transpose(tf.reshape(m, (rows, self.k_out, self.k_in)), (0, 2, 1)), (rows, -1))
        return _padded(m, self.k)

    def sides_of(self, a: tf.Tensor, d: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """a [rows, T, inputs], d [rows, T, outputs] -> P_in^T a_t [rows, T, k_in] and P_out^T d_t [rows, T, k_out]."""
        rows, positions = int(a.shape[0]), int(a.shape[1])
        left = tf.reshape(_times(tf.reshape(a, (rows * positions, -1)), self.p_in), (rows, positions, self.k_in))
        right = tf.reshape(_times(tf.reshape(d, (rows * positions, -1)), self.p_out), (rows, positions, self.k_out))
        return left, right


class Bias:
    """A bias folded into its kernel's sketch (`LayerKind.bias_of`): its gradient s = sum_t d_t is sketched as
    u (x) P_out^T s, u a random unit vector of the kernel's input side (from the bias's path), which is the kernel's
    sketch with one more input, the constant 1, projected by u (LoGra's). It costs nothing on the fast path (u is
    added to every position's input side) where a countsketch of a small vector cost as much as the rest
    (docs/fast-weights.md). ||u|| = 1 keeps its inner products unbiased, and P_in's zero mean the cross terms."""

    def __init__(self, seed: list[int], kernel: int, plan: Kronecker):
        self.kernel, self.plan = kernel, plan  # the kernel's index among the selected variables, its plan
        u = tf.random.stateless_normal((plan.k_in,), tf.constant(seed, tf.int64), alg="philox")
        self.u = u / tf.norm(u)

    def of_gradient(self, gradient: tf.Tensor) -> tf.Tensor:
        """[rows, outputs] -> [rows, k]: u (x) P_out^T s for each row's bias gradient s."""
        rows = int(gradient.shape[0])
        right = _times(tf.reshape(gradient, (rows, -1)), self.plan.p_out)
        return _padded(tf.reshape(self.u[None, :, None] * right[:, None, :], (rows, -1)), self.plan.k)


def from_factors(factors: list, scales: list | None, plans: list, k: int) -> tf.Tensor | None:
    """The Kronecker kernels' and their biases' part of a micro-batch's sketch ([rows, k], None without any), each
    times its rows' clipping factor (on the input side: a bias's may differ from its kernel's)."""
    sides, total = {}, None
    for j, (factor, plan) in enumerate(zip(factors, plans)):
        if not isinstance(plan, Kronecker):
            continue
        scale = None if scales is None else scales[j]
        if plan.factors_are_cheaper(factor.sizes()[0]):
            left, right = plan.sides_of(factor.a, factor.d)
            sides[j] = [left if scale is None else left * scale[:, None, None], right]
        else:
            total = _sum(total, plan.of_gradient(_scaled(factor.full(), scale)))
    for j, (factor, plan) in enumerate(zip(factors, plans)):
        if not isinstance(plan, Bias):
            continue
        scale = None if scales is None else scales[j]
        if plan.kernel in sides:  # one more input, the constant 1, at every position
            u = plan.u[None, None, :]
            sides[plan.kernel][0] += u if scale is None else u * scale[:, None, None]
        else:
            total = _sum(total, plan.of_gradient(_scaled(factor.full(), scale)))
    return _sum(total, outer_sum([tuple(s) for s in sides.values()], k)) if sides else total


def outer_sum(sides: list[tuple[tf.Tensor, tf.Tensor]], k: int) -> tf.Tensor:
    """Every kernel's sum_t (P_in^T a_t) (P_out^T d_t)^T, added: per shape (k_in, k_out), one rank-3 batched product
    over all their positions side by side (the rows its batch axis, never a broadcast one:
    per_example.unsafe_matmul). On a small model one product, not one per layer, is what keeps it near the backward
    pass's speed. [rows, k], each sketch in its first k_in * k_out buckets."""
    shapes = {}
    for left, right in sides:
        shapes.setdefault((int(left.shape[2]), int(right.shape[2])), []).append((left, right))
    total = None
    for group in shapes.values():
        left, right = (tf.concat([s[i] for s in group], 1) if len(group) > 1 else group[0][i] for i in (0, 1))
        sketch = _padded(tf.reshape(tf.matmul(left, right, transpose_a=True), (int(left.shape[0]), -1)), k)
        total = sketch if total is None else total + sketch
    return total


def _sum(total: tf.Tensor | None, part: tf.Tensor) -> tf.Tensor:
    return part if total is None else total + part


def _scaled(gradient: tf.Tensor, scale: tf.Tensor | None) -> tf.Tensor:
    """[rows, ...] times each row's factor ([rows]), or as it is."""
    return gradient if scale is None else gradient * tf.reshape(scale, (-1, *[1] * (gradient.shape.rank - 1)))


def _times(x: tf.Tensor, side: tf.Tensor | None) -> tf.Tensor:
    return x if side is None else x @ side


def _padded(sketch: tf.Tensor, k: int) -> tf.Tensor:
    """[rows, n <= k] -> [rows, k], zeros after."""
    n = int(sketch.shape[1])
    return sketch if n == k else tf.concat([sketch, tf.zeros((sketch.shape[0], k - n), sketch.dtype)], 1)
