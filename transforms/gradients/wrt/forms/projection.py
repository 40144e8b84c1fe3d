"""`projection`: a seeded k-dimensional sketch of each row's weight gradient that keeps inner products (TRAK, TracIn).

How it is built (construction `countsketch-v1`): every selected parameter j
gets a bucket h(j) in [0, k) and a sign s(j) = +-1, drawn by TensorFlow's
stateless Philox generator from (projection_seed, crc32 of the variable's
path) in the variable's row-major order. A row's vector is
v[b] = sum over j with h(j) = b of s(j) g[j], i.e. v = S g with S a k x P
matrix holding one +-1 per column, never built. E<Sg, Sg'> = <g, g'> exactly,
and Var <Sg, Sg'> <= (|g|^2 |g'|^2 + <g, g'>^2) / k, the variance of a dense
Gaussian projection with entries N(0, 1/k). It costs O(P) per row, not O(P k).

Construction `factored-tensorsketch-v1` (`projection factored`): a kernel whose layer kind gives it as a matrix
W [inputs, outputs] (wrt/layers: Dense, EinsumDense, Conv1D/2D) gets a bucket h1(i) and sign s1(i) per input and
h2(o), s2(o) per output (the same generator, seeded by the path + "/in" and "/out"); parameter (i, o) goes to
bucket (h1(i) + h2(o)) mod k with sign s1(i) s2(o): a TensorSketch (Pham and Pagh 2013). Because a row's gradient
there is sum_t a_t (x) d_t, its sketch is sum_t irfft(rfft(C1 a_t) * rfft(C2 d_t)), computed from the layer's
inputs and output gradients (C1, C2 the count sketches of each side) without forming the gradient, where that
costs less than forming it (`_fft_is_cheaper`: large kernels, few positions); elsewhere, and on the general
path, the same linear map is applied to the whole gradient. Every other variable keeps countsketch (named in the
metadata). Every variable's sketch spans all k buckets and they add: a sketch of the concatenated gradient, as
countsketch is, so no split of k over layers (the split that minimizes variance for a fixed k).
E<v, v'> = <g, g'>; the variance of a kernel's part is about that of countsketch plus a term that grows with the
inner products of the rows' a_t (and of their d_t) across positions: docs/fast-weights.md has the measurements.

Construction `kronecker-gaussian-v1` (`projection kronecker`, forms/kronecker.py): the same factors, each kernel
projected by two small Gaussian matrices P_in (x) P_out (LoGra), by matrix products alone; the faster, with more
variance. Its kernels and the variables that keep countsketch follow the same rules as above.

Why the bytes are the same on any runner, batch size or rerun: S depends only
on the seed, the paths and k; each variable's sum runs in parameter order
(a sorted segment sum), variables are added in the model's order (the factored
form's formed parts: in one segment sum, a bucket over the first variable's
parameters, then the next one's), and the per-example gradients come from
micro-batches of a fixed size.
"""

from __future__ import annotations

import zlib

import tensorflow as tf

from transforms.gradients.errors import SpecError
from transforms.gradients.outputs import Output
from transforms.gradients.settings import Setting
from transforms.gradients.wrt.forms.base import WeightForm
from transforms.gradients.wrt.forms.kronecker import NAME as KRONECKER
from transforms.gradients.wrt.forms.kronecker import Bias, Kronecker
from transforms.gradients.wrt.forms.kronecker import from_factors as kronecker_from_factors
from transforms.gradients.wrt.forms.kronecker import sides as kronecker_sides
from transforms.gradients.wrt.layers.base import Outer
from transforms.gradients.wrt.per_example import GRADIENT_COPIES

CONSTRUCTION = "countsketch-v1"
FACTORED = "factored-tensorsketch-v1"
MAX_DIM = 2**31 - 1  # buckets are int32 indices
DTYPES = ("float32", "float16")
# `projection` -> the construction's name in the metadata
CONSTRUCTIONS = {"countsketch": CONSTRUCTION, "factored": FACTORED, "kronecker": KRONECKER}


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
        Setting(
            "projection",
            str,
            "countsketch",
            "How the projection is built: countsketch of each row's gradient; factored, a TensorSketch of each "
            "layer's inputs and output gradients, never forming the gradient; or kronecker, two small Gaussian "
            "projections of them, faster and a little less exact (docs/fast-weights.md).",
            choices=tuple(CONSTRUCTIONS),
        ),
    )

    def __init__(self, model, spec, selection):
        super().__init__(model, spec, selection)
        self.factored = spec.projection != "countsketch"  # built from the layers' factors (`from_factors`)
        self.splits = [None] * len(selection.weights)
        self.biases = [None] * len(selection.weights)  # kronecker: a bias's kernel (its index), folded in
        if self.factored:
            from transforms.gradients.wrt.layer_gradients import owners_of

            owners = owners_of(model, selection)
            self.splits = [o and o[1].split(o[0], w.variable) for o, w in zip(owners, selection.weights)]
        if spec.projection == "kronecker":
            self.splits = [s if s and o[1].kronecker and Kronecker.covers(s, spec.projection_dim) else None
                           for s, o in zip(self.splits, owners)]
            index = {id(w.variable): j for j, w in enumerate(selection.weights)}
            for j, (owner, weight) in enumerate(zip(owners, selection.weights)):
                kernel = owner and owner[1].bias_of(owner[0], weight.variable)
                if kernel is not None and self.splits[index.get(id(kernel), j)] is not None:
                    self.biases[j] = index[id(kernel)]

    def formed_parameters(self) -> int:
        """Parameters per row that `from_factors` forms whole for their countsketch part (not its kernels by factors,
        nor folded biases): the fast path's micro-batch must hold them too."""
        return sum(n for n, s, b in zip(self.selection.sizes, self.splits, self.biases) if s is None and b is None)

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
        cls.check_declared(spec, "projection")
        if spec.projection == "kronecker" and kronecker_sides(spec.projection_dim) is None:
            raise SpecError(
                "{projection} kronecker splits {projection_dim} into two sides that multiply to it, and {value:,} has "
                "no divisor near its square root; use one that has (a power of two: 1024, 2048, 4096)",
                value=spec.projection_dim,
            )
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
        spec, weights = self.spec, self.selection.weights
        return {
            "projection": {
                "seed": spec.projection_seed,
                "dim": spec.projection_dim,
                "dtype": spec.projection_dtype,
                "construction": CONSTRUCTIONS[spec.projection],
                **({"countsketch_variables": [w.path for w, s, b in zip(weights, self.splits, self.biases)
                                               if s is None and b is None]} if self.factored else {}),
                **({"sides": list(kronecker_sides(spec.projection_dim)),
                    "biases_with_kernels": [w.path for w, b in zip(weights, self.biases) if b is not None]}
                   if spec.projection == "kronecker" else {}),
            }
        }

    def prepare(self):
        """Per variable: its parameters ordered by bucket (stably), their buckets so ordered, and their signs;
        for a factored kernel, also each side's own plan and size (for `from_factors`).

        Made once per trace, eagerly (`tf.init_scope`: constants of the traced function, not ops that sort every
        batch again); sorted, a variable's sum is a segment sum over contiguous rows, in parameter order within each
        bucket (several times faster than an unsorted one).
        """
        with tf.init_scope():
            return self._plans()

    def _plans(self):
        k = self.spec.projection_dim
        plans = []
        for weight, size, split in zip(self.selection.weights, self.selection.sizes, self.splits):
            if split is None:
                bucket, sign = _draw(self.spec.projection_seed, weight.path, size, k)
                plans.append((*_sorted(bucket, sign), None))
                continue
            if self.spec.projection == "kronecker":
                seeds = tuple(sketch_seed(self.spec.projection_seed, weight.path + end) for end in ("/in", "/out"))
                plans.append(Kronecker(seeds, split, k))
                continue
            sides = [_draw(self.spec.projection_seed, weight.path + end, n, k) for end, n in
                     (("/in", split.inputs), ("/out", split.outputs))]
            (b1, s1), (b2, s2) = sides
            bucket = (b1[:, None] + b2[None, :]) % k  # [inputs, outputs] -> the variable's layout
            sign = s1[:, None] * s2[None, :]
            bucket, sign = (tf.reshape(t, split.grouped) for t in (bucket, sign))
            if split.perm is not None:
                bucket, sign = (tf.transpose(t, split.perm) for t in (bucket, sign))
            sides = [(*_sorted(*s), n) for s, n in zip(sides, (split.inputs, split.outputs))]
            plans.append((*_sorted(tf.reshape(bucket, (-1,)), tf.reshape(sign, (-1,))), sides))
        for j, kernel in enumerate(self.biases):
            if kernel is not None:
                seed = sketch_seed(self.spec.projection_seed, self.selection.weights[j].path)
                plans[j] = Bias(seed, kernel, plans[kernel])
        return plans

    def compute(self, gradients, plans):
        k = self.spec.projection_dim
        total = None
        for size, gradient, plan in zip(self.selection.sizes, gradients, plans):
            if isinstance(plan, (Kronecker, Bias)):
                sketch = plan.of_gradient(gradient)
            else:
                sketch = _count_sketch(tf.reshape(gradient, (-1, size)), *plan[:3], k)
            total = sketch if total is None else total + sketch
        return [tf.cast(total, self.spec.projection_dtype)]

    def from_factors(self, factors, scales, plans):
        """The same sketch from the layers' factors (wrt/layers): a factored kernel's part by FFT from its a and d,
        every other part from its factor's whole gradient; each part times its rows' clipping factors.

        Fused, because on a small model each op's fixed cost, not its arithmetic, dominated (docs/fast-weights.md):
        per group of parts over the same number of positions t (up to FUSED_BYTES), one segment sum count-sketches
        every FFT kernel's two sides side by side (and, at t = 1, the formed gradients, into one more block of k
        buckets: `_merged`), and one rfft transforms the sides; the kernels' spectra add (the map is linear) and
        leave by one irfft."""
        k = self.spec.projection_dim
        groups = []  # [positions, FFT kernels [(factor, side plans, scale)], formed parts [(gradient, plan)]]
        total = kronecker_from_factors(factors, scales, plans, k) if self.spec.projection == "kronecker" else None
        for j, (factor, plan) in enumerate(zip(factors, plans)):
            scale = None if scales is None else scales[j][:, None]
            if isinstance(plan, (Kronecker, Bias)):
                continue  # in `total` already
            sides = plan[3]
            fft = sides is not None and isinstance(factor, Outer)
            if fft and _fft_is_cheaper(factor, sides, k, self.spec.weight_memory_mb):
                rows, positions = (int(n) for n in factor.a.shape[:2])
                _group(groups, rows, positions, 2, k)[1].append((factor, sides, scale))
                continue
            gradient = factor.full()
            gradient = tf.reshape(gradient, (gradient.shape[0], -1))
            gradient = gradient if scale is None else gradient * scale
            _group(groups, int(gradient.shape[0]), 1, 1, k)[2].append((gradient, plan[:3]))
        spectrum = None
        for positions, kernels, whole in groups:
            rows = int(whole[0][0].shape[0] if whole else kernels[0][0].a.shape[0])
            columns = [tf.reshape(t, (rows * positions, -1)) for f, _, _ in kernels for t in (f.a, f.d)]
            columns += [g for g, _ in whole]
            with tf.init_scope():  # the plans are eager constants: joined once per trace
                blocks = [s for _, sides, _ in kernels for s in sides]
                blocks += [_merged([(*p, int(g.shape[1])) for g, p in whole])] if whole else []
                plan = _joined(blocks, k)
            x = tf.concat(columns, 1) if len(columns) > 1 else columns[0]
            sketch = tf.reshape(_count_sketch(x, *plan, len(blocks) * k), (rows, positions, len(blocks), k))
            if whole:  # positions is 1: the formed parts' one block
                total = sketch[:, 0, -1] if total is None else total + sketch[:, 0, -1]
            if kernels:
                sides = sketch[:, :, : 2 * len(kernels)] if whole else sketch
                f = tf.signal.rfft(tf.reshape(sides, (rows, positions, len(kernels), 2, k)))
                product = tf.reduce_sum(f[:, :, :, 0] * f[:, :, :, 1], axis=1)  # [rows, kernels, k/2+1], summed over t
                if scales is not None:
                    product = product * tf.complex(tf.concat([s for _, _, s in kernels], 1), 0.0)[:, :, None]
                product = tf.reduce_sum(product, axis=1)  # the circular convolutions add as their spectra
                spectrum = product if spectrum is None else spectrum + product
        if spectrum is not None:
            sketch = tf.signal.irfft(spectrum, [k])
            total = sketch if total is None else total + sketch
        return [tf.cast(total, self.spec.projection_dtype)]


# The routes' costs in units of one multiply-add of the formed route's batched matmul, fitted to both routes timed
# on 19 kernel shapes (convs over 4 to 1,024 positions, sequence and one-position Dense; docs/fast-weights.md): a
# side's number costs about 250 per position (its gathers and segment sum into 2k buckets), the transforms about
# 11 k log2 k per position (k = 2048: about 20 us a row and position), a formed parameter's count sketch about 50.
SIDE_COST, TRANSFORM_COST, SKETCH_COST = 250, 11, 50


def _fft_is_cheaper(factor, sides, k: int, memory_mb: int) -> bool:
    """Whether the FFT route costs less than forming the rows' gradient (T I O) and count-sketching it (per parameter:
    SKETCH_COST): per position it sketches both sides (SIDE_COST per number) and transforms them (TRANSFORM_COST
    k log2 k). Also taken where the micro-batch's copies of the formed gradient would not fit the memory budget."""
    rows = int(factor.d.shape[0])
    positions, inputs, outputs = factor.sizes()  # not factor.a: a conv's patches are built only for this route
    if GRADIENT_COPIES * 4 * rows * inputs * outputs > memory_mb << 20:
        return True
    fft = positions * (SIDE_COST * (inputs + outputs) + TRANSFORM_COST * k * max(1, k.bit_length() - 1))
    return fft < positions * inputs * outputs + SKETCH_COST * inputs * outputs


def _draw(seed: int, path: str, size: int, k: int):
    """`size` buckets in [0, k) and signs +-1 from one stateless draw in [0, 2k) (bucket = draw mod k, sign from
    draw // k: uniform, independent)."""
    draw = tf.random.stateless_uniform(
        (size,), tf.constant(sketch_seed(seed, path), tf.int64), minval=0, maxval=2 * k, dtype=tf.int64, alg="philox"
    )
    return tf.cast(draw % k, tf.int32), tf.cast(draw // k, tf.float32) * 2 - 1


# The most bytes one fused segment sum may write ([rows x positions, blocks x k] float32): blocks join a group
# until then, so fusing never holds much more than one layer's sketches did.
FUSED_BYTES = 64 << 20


def _group(groups: list, rows: int, positions: int, blocks: int, k: int) -> list:
    """The group (`Projection.from_factors`) of `positions` that `blocks` more blocks of k buckets fit
    (FUSED_BYTES; a formed part counted as a block), or a new one (a group holds one part at least)."""
    for group in groups:
        used = 2 * len(group[1]) + len(group[2])
        if group[0] == positions and 4 * rows * positions * (used + blocks) * k <= FUSED_BYTES:
            return group
    groups.append([positions, [], []])
    return groups[-1]


def _joined(plans, k: int):
    """Sorted plans (`_sorted`, each with its number of columns) of consecutive column blocks, as one plan whose
    block m sums into buckets [m k, (m + 1) k): a segment sum over the blocks' concatenated columns gives each
    block's sketch side by side, each summed exactly as alone (its own parameters, in their order)."""
    if len(plans) == 1:
        return plans[0][:3]
    orders, buckets, signs, offset = [], [], [], 0
    for m, (order, bucket, sign, size) in enumerate(plans):
        orders.append(order + offset)
        buckets.append(bucket + m * k)
        signs.append(sign)
        offset += size
    return tf.concat(orders, 0), tf.concat(buckets, 0), tf.concat(signs, 0)


def _merged(plans):
    """Sorted plans of consecutive column blocks (each with its number of columns), as one plan of all their columns
    into the same k buckets: a bucket sums the first block's parameters in order, then the next block's."""
    if len(plans) == 1:
        return plans[0]
    order, bucket, sign = _joined([(*p[:3], p[3]) for p in plans], 0)  # offset columns, buckets kept
    merge = tf.argsort(bucket, stable=True)
    return (*(tf.gather(t, merge) for t in (order, bucket, sign)), sum(p[3] for p in plans))


def _sorted(bucket, sign):
    """(order, sorted buckets, signs in that order): a stable sort, so a bucket sums in parameter order."""
    order = tf.argsort(bucket, stable=True)
    return order, tf.gather(bucket, order), tf.gather(sign, order)


def _count_sketch(x: tf.Tensor, order, bucket, sign, k: int) -> tf.Tensor:
    """[rows, n] -> [rows, k]: v[b] = sum over j with h(j) = b of s(j) x[j], as a sorted segment sum."""
    signed = tf.gather(tf.transpose(x), order) * sign[:, None]  # [n, rows]
    sketch = tf.math.segment_sum(signed, bucket)  # [buckets up to the last one used, rows]
    return tf.transpose(tf.reshape(tf.pad(sketch, [[0, k - tf.shape(sketch)[0]], [0, 0]]), (k, x.shape[0])))
