"""Embedding: z_t = E[id_t]. A row's gradient adds d_t into row id_t of E, so tokens repeated in a row add up:
||g||^2 = sum_{t,t'} [id_t = id_t'] (d_t . d_t'), and the whole gradient is a segment sum over (row, id)."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.wrt.layers.base import LayerKind, Record


class Rows:
    """ids [rows, T] int32 and d [rows, T, width] -> each row's [vocabulary, width] gradient, or its squared norm."""

    def __init__(self, ids: tf.Tensor, d: tf.Tensor, vocabulary: int):
        self.ids, self.d, self.vocabulary = ids, d, vocabulary

    def full(self) -> tf.Tensor:
        rows, width = self.d.shape[0], self.d.shape[2]
        segments = self.ids + tf.range(rows, dtype=self.ids.dtype)[:, None] * self.vocabulary
        g = tf.math.unsorted_segment_sum(tf.reshape(self.d, (-1, width)), tf.reshape(segments, (-1,)), rows * self.vocabulary)
        return tf.reshape(g, (rows, self.vocabulary, width))

    def squares(self) -> tf.Tensor:
        same = tf.cast(tf.equal(self.ids[:, :, None], self.ids[:, None, :]), tf.float64)
        dd = tf.cast(tf.matmul(self.d, self.d, transpose_b=True), tf.float64)
        return tf.maximum(tf.reduce_sum(same * dd, axis=(1, 2)), 0.0)


class EmbeddingKind(LayerKind):
    layer_class = "Embedding"

    @classmethod
    def variables(cls, layer):
        return [layer.embeddings]

    @classmethod
    def call(cls, layer, inputs, *args, **kwargs):
        from keras import ops

        ids = ops.cast(inputs, "int32")
        z = ops.take(layer.embeddings, ids, axis=0)
        return ops.cast(z, layer.compute_dtype), Record(z, ids=ids)

    @classmethod
    def factors(cls, layer, record, d):
        rows, width = d.shape[0], int(layer.embeddings.shape[1])
        ids = tf.reshape(record.ids, (rows, -1))
        return {id(layer.embeddings): Rows(ids, tf.reshape(d, (rows, -1, width)), int(layer.embeddings.shape[0]))}
