"""Per-example weight gradients, norms and projections from one batched forward and backward pass per micro-batch.

Each selected variable's layer (the innermost one that owns it: MultiHeadAttention's query, key, value and output
EinsumDense layers, not the attention layer) must be of a kind in `layers.LAYER_KINDS`. While recording, each such
layer's call is its kind's own arithmetic that keeps its input a and watches its pre-activation output z; one
backward pass gives d = dL/dz for every row at once, and each row's gradient of a variable is a small expression
of its own a and d (ghost norms: Goodfellow 2015, Li et al. 2022; TensorFlow Privacy's fast-gradient-clipping
registry). No per-row backward pass, so no `vectorized_map` and none of the kernels it makes (see
per_example.unsafe_matmul). Anything not covered is left to the general per-example path, the oracle.
"""

from __future__ import annotations

import contextlib
import threading

import tensorflow as tf

from transforms.gradients.ops import clip
from transforms.gradients.wrt.layers import kind_of
from transforms.gradients.wrt.per_example import in_micro_batches, micro_batch_rows

# Rows per micro-batch of the fast path (`LayerGradients.rows`), fixed by the model and the spec, never by the batch
# size, so that every call has the same shapes (see `in_micro_batches`); more than the general path's: a row costs
# its layers' inputs and output gradients here, not a copy of its gradient. On a small model each op's fixed cost
# dominates, and 256 rows per op ran the MLP's norms at 0.72 of the backward pass against 0.37 at 64
# (docs/fast-weights.md); a model whose rows' factors outgrow the budget keeps the floor, what every model had before.
ROWS = (64, 256)
# ... but a micro-batch whose factors outgrow the caches runs slower, not faster: a conv's offsets took 78 ms per 256
# rows in micro-batches of 256 (16 MB slices) against about 30 in micro-batches of 64. So the rows' factors are held
# to this many bytes too, as well as to the budget.
CACHED_BYTES = 64 << 20
# What the budget counts per row: this many copies of the tensors its factors keep (the factors, the forward pass's
# activations, the backward pass's temporaries).
FACTOR_COPIES = 3
# One recording at a time per process: a patched layer is shared by every thread that holds the model.
_RECORDING = threading.Lock()


class NotCovered(Exception):
    """Raised while tracing when the model turns out not to fit (a layer called twice, an input it cannot take)."""


def covered_layers(model, selection) -> list | None:
    """Per selected variable, (its innermost owning layer, that layer's kind); None when one is not covered."""
    found = owners_of(model, selection)
    return None if any(f is None for f in found) else found


def owners_of(model, selection) -> list:
    """Per selected variable, (its innermost owning layer, that layer's kind), or None where no kind covers it."""
    owners = {}
    for top in model.layers.values():
        for layer in top._flatten_layers(include_self=True, recursive=True):
            kind = kind_of(layer)
            if kind is not None:
                for variable in kind.variables(layer):
                    owners.setdefault(id(variable), (layer, kind))
    return [owners.get(id(w.variable)) for w in selection.weights]


class LayerGradients:
    """The fast path: per micro-batch, each row's squared norms (norm alone) or whole gradients (for the forms)."""

    def __init__(self, owners, selection, clip_norm: float | None, per_tensor: bool):
        self.owners = owners
        self.selection = selection
        self.clip_norm = clip_norm
        self.per_tensor = per_tensor

    def factors(self, forward_fn, tensors: list[tf.Tensor], points: int, names: list[str]) -> tuple[list, object]:
        """A micro-batch's rows -> (per selected variable, its factor (`layers.base`); the forward pass, whose outputs
        the engine reuses rather than run the model again): one forward, one backward."""
        records = {}
        layers = list(dict.fromkeys(layer for layer, _ in self.owners))
        kinds = {id(layer): kind for layer, kind in self.owners}
        # `outside` sees the variables read outside the selected layers' own calls (it stops inside them).
        with tf.GradientTape() as tape, tf.GradientTape() as outside, self._recording(layers, kinds, tape, records, outside):
            extras = dict(zip(names, tensors[points:]))
            forward = forward_fn(tensors[:points], extras)
            total = tf.reduce_sum(forward.scalars[0])
        if any(len(records[id(layer)]) != 1 or records[id(layer)][0] is None for layer in layers):
            raise NotCovered("a selected layer ran other than once, or on an input its kind does not cover")
        read_elsewhere = {id(v) for v in outside.watched_variables()}
        if any(id(_tf_variable(w.variable)) in read_elsewhere for w in self.selection.weights):
            # tied weights: another layer reads this one's variable (an output layer that multiplies by the
            # embedding's matrix); its gradient has a part the layer's own factors do not hold
            raise NotCovered("a selected variable is read outside its own layer's call")
        zs = [records[id(layer)][0].z for layer in layers]
        deltas = tape.gradient(total, zs, unconnected_gradients=tf.UnconnectedGradients.NONE)
        if any(d is None for d in deltas):
            raise NotCovered("the target does not depend on a selected layer")  # the general path says so
        factors = {}
        for layer, delta in zip(layers, deltas):
            factors.update(kinds[id(layer)].factors(layer, records[id(layer)][0], tf.cast(delta, tf.float32)))
        return [factors[id(w.variable)] for w in self.selection.weights], forward

    @staticmethod
    def rows(factors: list, memory_mb: int, formed: int = 0) -> int:
        """Rows per micro-batch: as many as `memory_mb` and CACHED_BYTES hold of what a row's factors keep, within ROWS,
        rounded down to a power of two, from one row's factors (traced on one row, ops nothing uses, so pruned): a
        conv's patches or a sequence's positions count. Fewer where `memory_mb` does not hold that many rows of the
        `formed` parameters a form makes whole from the factors (a ResNet's convs under `kronecker`: 23.5M a row,
        20 GiB at 64 rows), as the general path's micro-batch holds its gradients."""
        kept = {id(t): t for f in factors for t in vars(f).values() if isinstance(t, tf.Tensor)}
        working = sum(f.working_bytes() for f in factors if hasattr(f, "working_bytes"))  # built while it runs
        per_row = FACTOR_COPIES * (sum(t.shape.num_elements() * t.dtype.size for t in kept.values()) + working)
        low, high = ROWS
        rows = max(low, min(high, min(memory_mb << 20, CACHED_BYTES) // max(1, per_row)))
        rows = 1 << (rows.bit_length() - 1)  # a power of two: divides the usual batch sizes, no padded rows
        return min(rows, micro_batch_rows(formed, memory_mb, None)) if formed else rows

    def clip_scales(self, factors) -> list[tf.Tensor] | None:
        """Per selected variable, each row's float32 clipping factor (min(1, c / norm)), from the factors' squares;
        None without clipping."""
        if self.clip_norm is None:
            return None
        scales = squared_scales([f.squares() for f in factors], self.clip_norm, self.per_tensor)
        return [tf.cast(tf.sqrt(s), tf.float32) for s in scales]

    def clipped_squares(self, factors) -> list[tf.Tensor]:
        """Per selected variable, each row's float64 sum of squares (clipped as asked)."""
        return clip_squares([f.squares() for f in factors], self.clip_norm, self.per_tensor)

    def clipped(self, factors) -> list[tf.Tensor]:
        """Per selected variable, each row's whole gradient [rows, *shape] (clipped as asked)."""
        return clip([f.full() for f in factors], self.clip_norm, self.per_tensor)

    def norms(self, forward_fn, tensors, points, names, norm_form, rows: int, outputs: list) -> list[tf.Tensor]:
        """The norm form's columns for the whole batch, in fixed micro-batches of `rows` rows, then the model's
        `outputs` (per-row specs) from the same forward passes."""
        results = [tf.TensorSpec(o.shape, o.dtype) for o in norm_form.declare()] + outputs

        def micro_batch(ts):
            factors, forward = self.factors(forward_fn, ts, points, names)
            return norm_form.from_squares(self.clipped_squares(factors)) + list(forward.outputs)

        return in_micro_batches(micro_batch, tensors, rows, results)

    @contextlib.contextmanager
    def _recording(self, layers, kinds, tape, records, outside):
        """Each selected layer's `call` replaced, on the instance, by its kind's arithmetic that keeps what the
        factors need and watches z, in this thread only, with `outside` stopped; the class's call is back afterwards."""
        with _RECORDING:
            for layer in layers:
                layer.call = _recording_call(layer, kinds[id(layer)], tape, records.setdefault(id(layer), []), outside)
            try:
                yield
            finally:
                for layer in layers:
                    del layer.call


def _recording_call(layer, kind, tape, seen, outside):
    original = type(layer).call.__get__(layer)
    thread = threading.get_ident()

    def call(inputs, *args, **kwargs):
        if threading.get_ident() != thread:  # another thread's forward pass through the same model
            return original(inputs, *args, **kwargs)
        with outside.stop_recording():
            result = kind.call(layer, inputs, *args, **kwargs)
        if result is None:
            seen.append(None)  # counted, so the layer is not covered
            return original(inputs, *args, **kwargs)
        out, record = result
        tape.watch(record.z)
        seen.append(record)
        return out

    return call


def _tf_variable(variable):
    """The tf.Variable under a Keras variable (what a tape's watched_variables() holds)."""
    return getattr(variable, "_value", variable)


def clip_squares(squares: list[tf.Tensor], clip_norm: float | None, per_tensor: bool) -> list[tf.Tensor]:
    """The squares after clipping each row's gradient to `clip_norm`: all together (DP-SGD), or each tensor alone."""
    if clip_norm is None:
        return squares
    return [s * scale for s, scale in zip(squares, squared_scales(squares, clip_norm, per_tensor))]


def squared_scales(squares: list[tf.Tensor], clip_norm: float, per_tensor: bool) -> list[tf.Tensor]:
    """Per variable, each row's (c / max(||g||, c))^2, its norm taken over all variables or over its own."""
    limit = tf.constant(float(clip_norm) ** 2, tf.float64)
    groups = [[s] for s in squares] if per_tensor else [squares]
    return [limit / tf.maximum(tf.add_n(group), limit) for group in groups for _ in group]
