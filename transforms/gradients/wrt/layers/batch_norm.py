"""BatchNormalization at inference, as the engine runs every model (training=False: the moving statistics, fixed):
z = xhat * gamma + beta with xhat = (x - moving_mean) / sqrt(moving_variance + epsilon) over the last (channel) axis,
so per row g_gamma = sum_t xhat_t * d_t and g_beta = sum_t d_t over the positions (pixels) that share them: the
factors of LayerNormalization, whose kind this extends. What puts a ResNet on the fast path."""

from __future__ import annotations

from transforms.gradients.wrt.layers.base import Record
from transforms.gradients.wrt.layers.layer_norm import LayerNormKind


class BatchNormKind(LayerNormKind):
    layer_class = "BatchNormalization"

    @classmethod
    def covers(cls, layer):
        return super(LayerNormKind, cls).covers(layer) and not layer.renorm and not layer.synchronized

    @classmethod
    def variables(cls, layer):
        return [v for v in (layer.gamma, layer.beta) if v is not None]

    @classmethod
    def call(cls, layer, inputs, training=None, mask=None, **kwargs):
        from keras import ops

        rank = len(inputs.shape)
        if training or mask is not None or layer.axis % rank != rank - 1:
            return None  # batch statistics, a mask or a channel axis other than the last: not covered
        mean, variance = ops.cast(layer.moving_mean, inputs.dtype), ops.cast(layer.moving_variance, inputs.dtype)
        z = ops.batch_normalization(
            inputs, mean, variance, layer.axis, offset=layer.beta, scale=layer.gamma, epsilon=layer.epsilon
        )
        xhat = (inputs - mean) * ops.rsqrt(variance + layer.epsilon)
        return ops.cast(z, layer.compute_dtype), Record(z, xhat=xhat, inner=1)
