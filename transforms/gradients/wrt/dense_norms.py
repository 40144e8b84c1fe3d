"""Per-example weight-gradient norms of plain Dense layers from one batched backward pass ("ghost norms").

For z = a W + b with a 2-D input a, row i's gradients are g_W = a_i^T d_i and g_b = d_i, d = dL/dz, so
||g_W||^2 = ||a_i||^2 ||d_i||^2 and ||g_b||^2 = ||d_i||^2 (Goodfellow 2015; Opacus): the rows' norms need a
and d, never a row's gradient. Anything this does not cover is left to the general per-example path.
"""

from __future__ import annotations

import contextlib
import threading

import tensorflow as tf

from transforms.gradients.wrt.per_example import in_micro_batches

# Rows per micro-batch, fixed so that a row's bytes do not depend on the batch size (see `in_micro_batches`);
# bigger than the general path's: a row costs its activations here, not a copy of its gradient.
ROWS = 64
# One recording at a time per process: a patched layer is shared by every thread that holds the model.
_RECORDING = threading.Lock()


class NotCovered(Exception):
    """Raised while tracing when the model turns out not to fit the fast path (a layer called twice, a 3-D input)."""


def dense_layers(model, spec, selection) -> list | None:
    """The selected variables' Dense layers, in selection order, or None when the fast path does not apply."""
    import keras

    if set(spec.weight_output) != {"norm"}:
        return None
    layers = []
    for weight in selection.weights:
        layer = model.layers.get(weight.layer)
        if not (
            isinstance(layer, keras.layers.Dense)
            and type(layer).call is keras.layers.Dense.call  # a subclass may compute something else
            and not layer.lora_enabled
            and layer.quantization_mode is None
            and getattr(layer, "_remat_mode", None) is None
            and layer.compute_dtype == "float32"
            and (weight.variable is layer.kernel or weight.variable is layer.bias)
        ):
            return None
        layers.append(layer)
    return layers


class DenseNorms:
    """Squares of each row's Dense kernel and bias gradients, from z and dL/dz recorded in one forward and backward."""

    def __init__(self, layers, selection, clip_norm: float | None, per_tensor: bool):
        self.layers = layers
        self.selection = selection
        self.clip_norm = clip_norm
        self.per_tensor = per_tensor

    def squares(self, forward_fn, tensors: list[tf.Tensor], points: int, names: list[str]) -> list[tf.Tensor]:
        """A micro-batch's rows -> per selected variable, each row's float64 sum of squares (clipped as asked)."""
        records = {}
        with tf.GradientTape() as tape, self._recording(tape, records):
            extras = dict(zip(names, tensors[points:]))
            total = tf.reduce_sum(forward_fn(tensors[:points], extras).scalars[0])
        unique = list(dict.fromkeys(self.layers))
        if any(len(records[id(layer)]) != 1 or records[id(layer)][0] is None for layer in unique):
            raise NotCovered("a selected Dense layer ran other than once on a 2-D input")
        zs = [records[id(layer)][0][1] for layer in unique]
        deltas = tape.gradient(total, zs, unconnected_gradients=tf.UnconnectedGradients.NONE)
        if any(d is None for d in deltas):
            raise NotCovered("the target does not depend on a selected layer")  # the general path says so
        out = {}
        for layer, delta in zip(unique, deltas):
            a = records[id(layer)][0][0]
            out[id(layer)] = (_row_squares(a), _row_squares(delta))
        squares = []
        for weight, layer in zip(self.selection.weights, self.layers):
            a2, d2 = out[id(layer)]
            squares.append(a2 * d2 if weight.variable is layer.kernel else d2)
        return _clip(squares, self.clip_norm, self.per_tensor)

    @contextlib.contextmanager
    def _recording(self, tape, records):
        """Each selected layer's `call` replaced, on the instance, by Dense.call's own arithmetic that keeps
        (input, z) and watches z, in this thread only; the class's call is back afterwards."""
        with _RECORDING:
            for layer in dict.fromkeys(self.layers):
                layer.call = _recording_call(layer, tape, records.setdefault(id(layer), []))
            try:
                yield
            finally:
                for layer in dict.fromkeys(self.layers):
                    del layer.call

    def norms(self, forward_fn, tensors, points, names, norm_form) -> list[tf.Tensor]:
        """The norm form's columns for the whole batch, in fixed micro-batches of ROWS rows."""
        results = [tf.TensorSpec(o.shape, o.dtype) for o in norm_form.declare()]
        return in_micro_batches(
            lambda ts: norm_form.from_squares(self.squares(forward_fn, ts, points, names)), tensors, ROWS, results
        )


def _recording_call(layer, tape, seen):
    from keras import ops

    original = type(layer).call.__get__(layer)
    thread = threading.get_ident()

    def call(inputs, *args, **kwargs):
        if threading.get_ident() != thread:  # another thread's forward pass through the same model
            return original(inputs, *args, **kwargs)
        if len(inputs.shape) != 2:
            seen.append(None)  # counted, so the layer is not covered
            return original(inputs, *args, **kwargs)
        z = ops.matmul(inputs, layer.kernel)
        if layer.bias is not None:
            z = ops.add(z, layer.bias)
        tape.watch(z)
        seen.append((inputs, z))
        return layer.activation(z) if layer.activation is not None else z

    return call


def _row_squares(t: tf.Tensor) -> tf.Tensor:
    """[rows, n] -> [rows] float64 sums of squares (float64: the same bytes on every run, as the norm form)."""
    return tf.reduce_sum(tf.square(tf.cast(t, tf.float64)), axis=1)


def _clip(squares: list[tf.Tensor], clip_norm: float | None, per_tensor: bool) -> list[tf.Tensor]:
    """The squares after clipping each row's gradient to `clip_norm`: all together (DP-SGD), or each tensor alone."""
    if clip_norm is None:
        return squares
    limit = tf.constant(float(clip_norm) ** 2, tf.float64)
    groups = [[s] for s in squares] if per_tensor else [squares]
    out = []
    for group in groups:
        scale = limit / tf.maximum(tf.add_n(group), limit)  # (c / max(||g||, c))^2
        out += [s * scale for s in group]
    return out
