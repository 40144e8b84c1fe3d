"""LayerNormalization over its input's last axes: z = xhat * gamma + beta, so per row g_gamma = sum_t xhat_t * d_t
and g_beta = sum_t d_t (elementwise, over the positions t that share them)."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.wrt.layers.base import Diagonal, Exact, LayerKind, Record


class LayerNormKind(LayerKind):
    layer_class = "LayerNormalization"

    @classmethod
    def covers(cls, layer):
        return super().covers(layer) and not layer.rms_scaling

    @classmethod
    def variables(cls, layer):
        return [v for v in (layer.gamma, layer.beta) if v is not None]

    @classmethod
    def call(cls, layer, inputs, *args, **kwargs):
        from keras import ops

        rank = len(inputs.shape)
        axes = sorted(a % rank for a in ([layer.axis] if isinstance(layer.axis, int) else layer.axis))
        if axes != list(range(rank - len(axes), rank)):
            return None  # not the trailing axes: not covered
        xhat = ops.layer_normalization(inputs, None, None, layer.axis, layer.epsilon)
        z = xhat
        if layer.gamma is not None:
            z = z * ops.reshape(layer.gamma, inputs.shape[rank - len(axes):])
        if layer.beta is not None:
            z = z + ops.reshape(layer.beta, inputs.shape[rank - len(axes):])
        return ops.cast(z, layer.compute_dtype), Record(z, xhat=xhat, inner=len(axes))

    @classmethod
    def factors(cls, layer, record, d):
        rows = d.shape[0]
        width = int(tf.TensorShape(d.shape[len(d.shape) - record.inner:]).num_elements())
        x = tf.reshape(tf.cast(record.xhat, tf.float32), (rows, -1, width))
        d = tf.reshape(d, (rows, -1, width))
        out = {}
        if layer.gamma is not None:
            out[id(layer.gamma)] = Diagonal(x, d, tuple(layer.gamma.shape))
        if layer.beta is not None:
            out[id(layer.beta)] = Exact(tf.reshape(tf.reduce_sum(d, axis=1), (rows, *layer.beta.shape)))
        return out
