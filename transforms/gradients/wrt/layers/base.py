"""A layer kind's contract for the fast weight paths, and the per-example gradient factors its variables give.

One forward and one backward pass over a micro-batch record each covered layer's input a and pre-activation
output z, and d = dL/dz. A row's gradient of each variable is then a small expression of its own a and d
(a "factor"), never a per-row backward pass: its whole gradient (`full`), or its squared norm (`squares`).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf


def rows_by_positions(t: tf.Tensor, inner: int) -> tf.Tensor:
    """[rows, ..., *inner dims] -> [rows, positions, inner]: every axis between the row and the last `inner`
    numbers counts as a position t."""
    return tf.reshape(t, (t.shape[0], -1, inner))


class Split(NamedTuple):
    """A kernel as a matrix [inputs, outputs]: reshaped to `grouped` and transposed by `perm`, the variable."""

    inputs: int
    outputs: int
    grouped: tuple
    perm: tuple | None = None


class Outer:
    """g_i = sum_t a_it^T d_it, a [rows, T, I] and d [rows, T, O] (a kernel; a bias with a = ones): reshaped to
    `grouped`, then transposed by `perm` to the variable's shape.

    Every product is a rank-3 batched matmul with the rows as its batch axis, never a broadcast one, so it cannot
    reach the oneDNN kernel that gets unit-axis broadcasts wrong (per_example.unsafe_matmul).
    """

    def __init__(self, a: tf.Tensor, d: tf.Tensor, grouped: tuple | None = None, perm: tuple | None = None):
        self.a, self.d = a, d
        self.grouped, self.perm = grouped, perm

    def sizes(self) -> tuple[int, int, int]:
        """(positions T, inputs I, outputs O)."""
        return tuple(int(n) for n in (self.a.shape[1], self.a.shape[2], self.d.shape[2]))

    def product(self) -> tf.Tensor:
        """[rows, I, O]: each row's gradient as a matrix."""
        return tf.matmul(self.a, self.d, transpose_a=True)

    def full(self) -> tf.Tensor:
        g = self.product()
        if self.grouped is not None:
            g = tf.reshape(g, (g.shape[0], *self.grouped))
        if self.perm is not None:
            g = tf.transpose(g, (0, *[p + 1 for p in self.perm]))
        return g

    def squares(self) -> tf.Tensor:
        """||sum_t a_t d_t^T||_F^2, directly (T I O) or as the ghost norm sum_{t,t'} (a_t.a_t')(d_t.d_t') (T^2 (I + O)),
        whichever costs less; float64 sums."""
        t, i, o = self.sizes()
        if t * i * o <= t * t * (i + o):
            g = self.product()
            return tf.reduce_sum(tf.square(tf.cast(g, tf.float64)), axis=(1, 2))
        aa = tf.matmul(self.a, self.a, transpose_b=True)  # [rows, T, T]
        dd = tf.matmul(self.d, self.d, transpose_b=True)
        return tf.maximum(tf.reduce_sum(tf.cast(aa, tf.float64) * tf.cast(dd, tf.float64), axis=(1, 2)), 0.0)


class Diagonal:
    """g_i = sum_t x_it * d_it elementwise, x and d [rows, T, n] (a LayerNormalization's scale), shaped `shape`."""

    def __init__(self, x: tf.Tensor, d: tf.Tensor, shape: tuple):
        self.x, self.d, self.shape = x, d, shape

    def full(self) -> tf.Tensor:
        return tf.reshape(tf.reduce_sum(self.x * self.d, axis=1), (self.d.shape[0], *self.shape))

    def squares(self) -> tf.Tensor:
        g = tf.cast(tf.reduce_sum(self.x * self.d, axis=1), tf.float64)
        return tf.reduce_sum(tf.square(g), axis=1)


class LayerKind:
    """One kind of Keras layer the fast paths cover: one small class per kind, one file each.

    `covers` says whether a layer instance is of this kind and computes nothing else (no subclass with its own
    call, no LoRA, no quantization, float32); `variables` the variables whose gradients it gives;
    `call` replaces the layer's call while recording: it returns the layer's output and a record whose `z`
    the tape watches; `factors` maps each variable (by id) to its factor, from the record and d = dL/dz.
    """

    layer_class: str = ""  # the keras.layers class name
    # Whether `projection kronecker` projects this kind's kernels by P_in (x) P_out (forms/kronecker.py). Not a conv's:
    # its gradient sums outer products over many pixels of alike images, which two small projections get wrong
    # (median errors 0.06 and 0.09 on the benchmark's CNNs, against 0.02 by countsketch: docs/fast-weights.md).
    kronecker = True

    @classmethod
    def covers(cls, layer) -> bool:
        import keras

        kind = getattr(keras.layers, cls.layer_class)
        return (
            isinstance(layer, kind)
            and type(layer).call is kind.call
            and not getattr(layer, "lora_enabled", False)
            and getattr(layer, "quantization_mode", None) is None
            and getattr(layer, "_remat_mode", None) is None
            and layer.compute_dtype == "float32"
        )

    @classmethod
    def variables(cls, layer) -> list:
        raise NotImplementedError

    @classmethod
    def split(cls, layer, variable) -> Split | None:
        """How a variable whose factor is an `Outer` splits into input and output sides (the factored projection
        hashes each side), or None: the variable has no such form (a bias, a scale, an embedding table)."""
        return None

    @classmethod
    def bias_of(cls, layer, variable):
        """The kernel whose factor's d a bias shares, its own factor `Outer(ones, d)` (Dense): a Kronecker
        projection takes the bias as its kernel's one more, constant, input (LoGra). None for any other variable."""
        return None

    @classmethod
    def call(cls, layer, inputs, *args, **kwargs) -> tuple:
        raise NotImplementedError

    @classmethod
    def factors(cls, layer, record, d) -> dict:
        raise NotImplementedError


class Record:
    """What a recording call keeps: the watched pre-activation output z, and whatever else `factors` reads."""

    def __init__(self, z, **values):
        self.z = z
        self.__dict__.update(values)


def affine_output(layer, inputs, z) -> tuple:
    """A kernel product's layer output from its product `z`: bias and activation as the layer adds them,
    with z recorded (the gradient at z is what the factors read) beside the layer's inputs."""
    from keras import ops

    if layer.bias is not None:
        z = ops.add(z, layer.bias)
    out = layer.activation(z) if layer.activation is not None else z
    return out, Record(z, a=inputs)


class Exact:
    """A per-example gradient small enough to form outright (a bias summed over positions): [rows, *shape]."""

    def __init__(self, g: tf.Tensor):
        self.g = g

    def full(self) -> tf.Tensor:
        return self.g

    def squares(self) -> tf.Tensor:
        return tf.reduce_sum(tf.reshape(tf.square(tf.cast(self.g, tf.float64)), (self.g.shape[0], -1)), axis=1)
