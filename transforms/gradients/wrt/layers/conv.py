"""Conv1D and Conv2D (channels last, one group, valid or same padding): z = patches(a) W + b, so per row
g_W = sum_p patch_p^T d_p over output positions p (im2col), one batched matmul, no loop over rows."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.wrt.layers.base import LayerKind, Outer, Record, Split, rows_by_positions


class ConvKind(LayerKind):
    layer_class = "Conv2D"

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
    def bias_of(cls, layer, variable):
        return layer.kernel if layer.use_bias and variable is layer.bias else None

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
            a = a[:, None]
        size = (1, *layer.kernel_size) if layer.rank == 1 else tuple(layer.kernel_size)
        strides = (1, *layer.strides) if layer.rank == 1 else tuple(layer.strides)
        rates = (1, *layer.dilation_rate) if layer.rank == 1 else tuple(layer.dilation_rate)
        patches = tf.image.extract_patches(
            a, (1, *size, 1), (1, *strides, 1), (1, *rates, 1), layer.padding.upper()
        )  # [rows, out h, out w, kh * kw * channels], in the kernel's row-major order
        inner = int(layer.kernel.shape[:-1].num_elements())
        d = rows_by_positions(d, layer.filters)
        out = {id(layer.kernel): Outer(rows_by_positions(patches, inner), d, grouped=tuple(layer.kernel.shape))}
        if layer.use_bias:
            out[id(layer.bias)] = Outer(tf.ones_like(d[:, :, :1]), d, grouped=tuple(layer.bias.shape))
        return out


class Conv1DKind(ConvKind):
    layer_class = "Conv1D"
