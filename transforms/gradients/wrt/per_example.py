"""Per-example computations in fixed-size micro-batches: bounded memory, and numbers that ignore the batch size."""

from __future__ import annotations

from typing import Callable, Sequence

import tensorflow as tf

# The budget covers this many float32 copies of a row's whole weight gradient (the gradient, its clipped copy,
# the vectorized backward pass's temporaries); activations come on top.
GRADIENT_COPIES = 4
MAX_ROWS = 32  # beyond this, bigger micro-batches buy little speed and cost padding when batches are small


def micro_batch_rows(parameters: int, memory_mb: int, most: int | None = MAX_ROWS) -> int:
    """Rows per micro-batch: as many as the memory budget holds, 1 at least, `most` at most (None: no limit)."""
    per_row = GRADIENT_COPIES * 4 * parameters
    rows = max(1, (memory_mb << 20) // per_row)
    return rows if most is None else min(most, rows)


def in_micro_batches(
    fn: Callable[[list[tf.Tensor]], list[tf.Tensor]],
    tensors: Sequence[tf.Tensor],
    rows: int,
    results: Sequence[tf.TensorSpec],
) -> list[tf.Tensor]:
    """`fn` over the batch in chunks of exactly `rows` rows (the last padded with zeros), one chunk at a time.

    Why a fixed chunk: every call of `fn` has the same shapes whatever the batch size, so the same kernels run
    for a row in a batch of 1, 7 or 256. A kernel may still round a row by its place in the chunk (oneDNN's AVX2
    matmul rounds the last two of 32 apart), so across batch sizes rows agree to rounding, not to the byte.
    `results` gives the per-row shape and dtype of each tensor `fn` returns.
    """
    batch = int(tensors[0].shape[0])
    chunks = -(-batch // rows)
    # Zeros concatenated, not tf.pad: oneDNN fuses a Pad feeding a Conv2D and drops the padding of the batch axis
    # (the padded conv gives `batch` rows, not `chunks * rows`), when the batch also runs unpadded in the graph.
    padded = [tf.concat([t, tf.zeros((chunks * rows - batch, *t.shape[1:]), t.dtype)], 0) for t in tensors]
    if chunks == 1:
        out = fn(padded)
    else:
        stacked = [tf.reshape(t, (chunks, rows, *t.shape[1:])) for t in padded]
        signature = [tf.TensorSpec((rows, *r.shape), r.dtype) for r in results]
        # parallel_iterations=1: one micro-batch in memory at a time, which is the point of them.
        out = tf.map_fn(lambda xs: fn(list(xs)), stacked, fn_output_signature=signature, parallel_iterations=1)
        out = [tf.reshape(o, (chunks * rows, *o.shape[2:])) for o in out]
    return [o[:batch] for o in out]


def unsafe_matmul(op) -> bool:
    """A batch matmul TensorFlow 2.21's oneDNN kernel gets wrong or crashes on: a rank-4 (or more) operand whose
    batch axes hold a unit axis, times an operand with other batch axes (a (32, 1, 24, 32) tensor by a (32, 32)
    matrix is what `vectorized_map` makes of a row's EinsumDense). Unknown shapes count as unsafe."""
    if op.type not in ("BatchMatMul", "BatchMatMulV2", "BatchMatMulV3"):
        return False
    x, y = (i.shape for i in op.inputs[:2])
    if x.rank is None or y.rank is None:
        return True
    batch_x, batch_y = x.as_list()[:-2], y.as_list()[:-2]
    if batch_x == batch_y or max(x.rank, y.rank) < 4:
        return False
    return any(d is None or d == 1 for d in batch_x + batch_y)


def vectorized_or_looped(fn: Callable, elems: list[tf.Tensor], results: Sequence[tf.TensorSpec]) -> list[tf.Tensor]:
    """`tf.vectorized_map(fn, elems)`, unless the vectorized graph would hold a batch matmul of the shape oneDNN
    gets wrong (`unsafe_matmul`): then one row at a time (`tf.map_fn`), whose kernels see a row's own shapes.

    The vectorized graph is first traced on its own, as a probe that never runs, so a graph this returns holds
    no such kernel at all (a test reads the compiled graph for them).
    """
    specs = [tf.TensorSpec(e.shape, e.dtype) for e in elems]
    probe = tf.function(lambda *xs: tf.vectorized_map(fn, list(xs)), autograph=False).get_concrete_function(*specs)
    if any(unsafe_matmul(op) for op in probe.graph.get_operations()):
        return tf.map_fn(fn, elems, fn_output_signature=list(results))
    return tf.vectorized_map(fn, elems)
