"""Conv1D and Conv2D (channels last, one group, valid or same padding): z = patches(a) W + b, so per row
g_W = sum_p patch_p^T d_p over output positions p (im2col).

The product is taken per row by TensorFlow's own filter gradient, or one kernel offset at a time over all rows
(`Shifted`), whichever its shape runs faster; never over the patches: tf.image.extract_patches was most of the
fast path's time on a small CNN (docs/fast-weights.md)."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.wrt.layers.base import LayerKind, Outer, Record, Split, rows_by_positions

ROW_PARALLEL = 16  # rows whose filter gradients may run at once (`Shifted.by_rows`)
# Output positions from which `Shifted.product` takes a kernel's gradient by rows: on 64 rows, by rows took 0.5 to
# 0.7 of the offsets' time at 32x32, 0.73 to 0.79 at 16x16, 0.84 to 0.89 at 8x8, but 1.05 at 4x4 and 1.19 at 2x2.
ROWS_ROUTE_POSITIONS = 64


class ConvKind(LayerKind):
    layer_class = "Conv2D"
    kronecker = False  # LayerKind.kronecker: its kernels keep countsketch under `projection kronecker`

    @classmethod
    def covers(cls, layer):
        return (
            super().covers(layer)
            and layer.data_format == "channels_last"
            and getattr(layer, "groups", 1) == 1
            and layer.padding in ("valid", "same")
        )

    @classmethod
    def variables(cls, layer):
        return [layer.kernel] + ([layer.bias] if layer.use_bias else [])

    @classmethod
    def split(cls, layer, variable):
        if variable is layer.kernel:
            return Split(int(layer.kernel.shape[:-1].num_elements()), layer.filters, tuple(layer.kernel.shape))
        return None

    @classmethod
    def call(cls, layer, inputs, *args, **kwargs):
        from keras import ops

        z = layer.convolution_op(inputs, layer.kernel)
        if layer.use_bias:
            z = ops.add(z, ops.reshape(layer.bias, (1,) * (layer.rank + 1) + (layer.filters,)))
        out = layer.activation(z) if layer.activation is not None else z
        return out, Record(z, a=inputs)

    @classmethod
    def factors(cls, layer, record, d):
        a = tf.cast(record.a, tf.float32)
        if layer.rank == 1:  # a row of height 1
            a, d = a[:, None], d[:, None]
        geometry = [
            (1, *g) if layer.rank == 1 else tuple(g) for g in (layer.kernel_size, layer.strides, layer.dilation_rate)
        ]
        out = {id(layer.kernel): Shifted(a, d, *geometry, layer.padding.upper(), tuple(layer.kernel.shape))}
        d = rows_by_positions(d, layer.filters)
        if layer.use_bias:
            out[id(layer.bias)] = Outer(tf.ones_like(d[:, :, :1]), d, grouped=tuple(layer.bias.shape))
        return out


class Shifted(Outer):
    """A kernel's `Outer` over im2col patches [rows, T, kh kw C] (kernel row-major order), whose product is taken
    one kernel offset (i, j) at a time: g[i, j] = x_ij^T d, x_ij the input seen by that offset at every output
    position (a slice of the zero-padded input), kh kw rank-3 batched matmuls [rows, T, C]^T [rows, T, O]
    (`by_offsets`), or each row's filter gradient alone (`by_rows`). Each offset's matmul is the patches' matmul
    restricted to that offset's columns, so the numbers are the same but for rounding. Building the
    patches themselves took most of the fast path's time (docs/fast-weights.md); they are built only when asked
    for (`a`: the ghost norm, the factored projection's FFT route)."""

    def __init__(self, image, d, size, strides, rates, padding, grouped):
        self.image, self.size, self.strides, self.rates, self.padding = image, size, strides, rates, padding
        self.d, self.grouped, self.perm = rows_by_positions(d, int(d.shape[-1])), grouped, None
        self.out = tuple(int(n) for n in d.shape[1:3])  # output height, width
        self._patches = None

    @property
    def a(self) -> tf.Tensor:
        if self._patches is None:
            patches = tf.image.extract_patches(
                self.image, (1, *self.size, 1), (1, *self.strides, 1), (1, *self.rates, 1), self.padding
            )
            self._patches = rows_by_positions(patches, self.sizes()[1])
        return self._patches

    def working_bytes(self) -> int:
        """What its product builds besides what it keeps (`LayerGradients.rows`): the offsets' slices of the input,
        as many numbers as the patches."""
        positions, inputs, _ = self.sizes()
        return int(self.image.shape[0]) * positions * inputs * 4

    def sizes(self):
        return self.out[0] * self.out[1], self.size[0] * self.size[1] * int(self.image.shape[-1]), int(self.d.shape[2])

    def product(self):
        """[rows, kh kw C, O]: each row's kernel gradient, by the route measured faster for its shape (the routes
        differ only by rounding). By rows where each offset sees many positions; by the offsets for 1x1 kernels
        (one matmul), on ResNet's small late maps (a few large matmuls) and where the kernel is dilated
        (TensorFlow's CPU filter gradient takes no dilation)."""
        undilated, offsets = set(self.rates) == {1}, self.size[0] * self.size[1]
        if undilated and offsets > 1 and self.out[0] * self.out[1] >= ROWS_ROUTE_POSITIONS:
            return self.by_rows()
        return self.by_offsets()

    def by_rows(self):
        """Each row's kernel gradient as TensorFlow's Conv2DBackpropFilter of that row alone (batch 1: the op the
        article's recipe runs per row), ROW_PARALLEL rows at a time. On the bench CNN's 3x3 kernels it took half
        the offsets' time (docs/fast-weights.md): oneDNN's filter gradient outruns kh kw small batched matmuls."""
        rows, channels, outputs = int(self.image.shape[0]), int(self.image.shape[-1]), int(self.d.shape[2])
        d = tf.reshape(self.d, (rows, *self.out, outputs))

        def row(pair):
            image, gradient = pair
            return tf.raw_ops.Conv2DBackpropFilter(
                input=image[None],
                filter_sizes=(*self.size, channels, outputs),
                out_backprop=gradient[None],
                strides=(1, *self.strides, 1),
                dilations=(1, *self.rates, 1),
                padding=self.padding,
            )

        g = tf.map_fn(row, (self.image, d), fn_output_signature=self.image.dtype, parallel_iterations=ROW_PARALLEL)
        return tf.reshape(g, (rows, -1, outputs))

    def by_offsets(self):
        """[rows, kh kw C, O] as kh kw batched matmuls, one per kernel offset (see the class)."""
        rows, channels = int(self.image.shape[0]), int(self.image.shape[-1])
        blocks = [
            tf.matmul(tf.reshape(x, (rows, -1, channels)), self.d, transpose_a=True) for x in self._offsets()
        ]  # each [rows, C, O]
        return tf.reshape(tf.stack(blocks, 1), (rows, -1, int(self.d.shape[2])))

    def _offsets(self) -> list:
        """Per kernel offset (i, j) in row-major order, [rows, out h, out w, C]: the padded input at rows
        i r_h + h s_h and columns j r_w + w s_w. Unit-stride slices only (a strided slice took several times as
        long): with stride s an axis is first split into s phases, [n, s] (zero-padded to a multiple of s)."""
        x, (ho, wo) = self.image, self.out
        extents = [(k - 1) * r + 1 for k, r in zip(self.size, self.rates)]
        if self.padding == "SAME":  # TensorFlow's: the odd one after
            pads = [max((o - 1) * s + e - n, 0) for o, s, e, n in zip(self.out, self.strides, extents, x.shape[1:3])]
            x = tf.pad(x, [[0, 0], *([p // 2, p - p // 2] for p in pads), [0, 0]])
        (kh, kw), (rh, rw), (sh, sw) = self.size, self.rates, self.strides
        if (sh, sw) == (1, 1):
            return [x[:, i * rh : i * rh + ho, j * rw : j * rw + wo] for i in range(kh) for j in range(kw)]
        hq, wq = (kh - 1) * rh // sh + ho, (kw - 1) * rw // sw + wo  # phases' lengths that every offset fits
        x = x[:, : hq * sh, : wq * sw]  # rows past the last offset's reach: never read
        x = tf.pad(x, [[0, 0], [0, hq * sh - x.shape[1]], [0, wq * sw - x.shape[2]], [0, 0]])
        x = tf.reshape(x, (x.shape[0], hq, sh, wq, sw, x.shape[3]))
        return [
            x[:, i * rh // sh : i * rh // sh + ho, i * rh % sh, j * rw // sw : j * rw // sw + wo, j * rw % sw]
            for i in range(kh)
            for j in range(kw)
        ]


class Conv1DKind(ConvKind):
    layer_class = "Conv1D"
