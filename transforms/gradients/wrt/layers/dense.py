"""Dense: z = a W + b over any number of leading positions (a sequence's tokens): g_W = sum_t a_t^T d_t."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.wrt.layers.base import LayerKind, Outer, Split, affine_output, rows_by_positions


class DenseKind(LayerKind):
    layer_class = "Dense"

    @classmethod
    def variables(cls, layer):
        return [v for v in (layer.kernel, layer.bias) if v is not None]

    @classmethod
    def split(cls, layer, variable):
        if variable is layer.kernel:
            return Split(*map(int, layer.kernel.shape), tuple(layer.kernel.shape))
        return None

    @classmethod
    def bias_of(cls, layer, variable):
        return layer.kernel if layer.bias is not None and variable is layer.bias else None

    @classmethod
    def call(cls, layer, inputs, *args, **kwargs):
        from keras import ops

        return affine_output(layer, inputs, ops.matmul(inputs, layer.kernel))

    @classmethod
    def factors(cls, layer, record, d):
        a = rows_by_positions(tf.cast(record.a, tf.float32), layer.kernel.shape[0])
        d = rows_by_positions(d, layer.kernel.shape[1])
        out = {id(layer.kernel): Outer(a, d)}
        if layer.bias is not None:
            out[id(layer.bias)] = Outer(tf.ones_like(d[:, :, :1]), d, grouped=tuple(layer.bias.shape))
        return out
