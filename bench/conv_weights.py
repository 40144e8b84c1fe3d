"""Where the CNN's fast weight path spends its time (issue 20): per piece, ms per 256 rows, in one process.

The CNN of bench/weights.py (32x32x3, Conv2D 16 and 32, global average pooling, Dense 10), batch 256 in the fast
path's micro-batches (as many rows as the engine takes, `Weights.micro_batch`; one `tf.map_fn` step each):

  ceiling          the batched loss gradient w.r.t. the weights (one backward pass, not per example)
  engine norm      GradientEngine's per-example weight norms (the fast path, what bench/weights.py times)
  forward alone    the model's forward pass and loss over the batch (the engine runs one for the loss column)
  forward+backward the conv kind's recording forward pass and one backward pass to d = dL/dz of each conv
  + patches        ... and tf.image.extract_patches of each conv's input (the im2col patches)
  + one matmul     ... and each row's kernel gradient as one batched matmul over the patches (the old route)
  + offsets        forward+backward and each row's kernel gradient one kernel offset at a time (Shifted.by_offsets)
  + by rows        forward+backward and each row's kernel gradient by Conv2DBackpropFilter on that row alone
                   (Shifted.by_rows, the route the engine takes for undilated kernels)
  (each "+" row is also shown as its difference from the row before: the piece's own cost)

Every line is the best of N rounds, the rounds interleaved, so a load that comes and goes (the machine is shared)
reaches every line alike. The three kernel-gradient routes are checked equal before timing. Usage:
  python bench/conv_weights.py
"""

from __future__ import annotations

import os
import time

from measure import DEFAULT_WORK, machine, make_cnn

BATCH, ROUNDS = 256, 7


def main():
    import keras
    import numpy as np
    import tensorflow as tf

    from transforms.gradients import GradientEngine, GradientSpec, from_keras
    from transforms.gradients.wrt.layers.base import Outer
    from transforms.gradients.wrt.layers.conv import ConvKind, Shifted

    model = keras.models.load_model(make_cnn(os.path.join(DEFAULT_WORK, "cnn.keras")), compile=False)
    loss = keras.losses.SparseCategoricalCrossentropy(reduction=None)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    rest = [layer for layer in model.layers[1:] if layer not in convs]
    x = np.random.default_rng(0).normal(size=(BATCH, 32, 32, 3)).astype(np.float32)
    y = (np.arange(BATCH) % 10).astype(np.float32)
    signature = [tf.TensorSpec(x.shape), tf.TensorSpec(y.shape)]

    @tf.function(input_signature=signature)
    def ceiling(xb, yb):
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(loss(yb, model(xb, training=False)))
        return tape.gradient(total, model.trainable_variables)

    spec = GradientSpec(target="loss", loss="sparse_categorical_crossentropy", wrt="weights", weight_output=("norm",))
    engine = GradientEngine(from_keras(model), spec, BATCH)
    engine([x], [y])
    ROWS = engine.wrt.micro_batch  # noqa: N806 (the rows per micro-batch, as the engine chose)

    def factors(xm, ym):
        """The conv kernels' factors (conv.Shifted) of one micro-batch: recording forward, one backward pass."""
        with tf.GradientTape() as tape:
            h, records = xm, []
            for layer in convs:
                h, record = ConvKind.call(layer, h)
                tape.watch(record.z)
                records.append(record)
            for layer in rest:
                h = layer(h)
            total = tf.reduce_sum(loss(ym, h))
        deltas = tape.gradient(total, [r.z for r in records])
        return [ConvKind.factors(layer, r, d)[id(layer.kernel)] for layer, r, d in zip(convs, records, deltas)]

    def per_row(piece):
        """A micro-batch at a time, per row, the sum of a few numbers of each tensor the piece makes: each tensor
        is computed whole (nothing pruned), while summing costs next to nothing."""

        def rows(xm, ym):
            return tf.add_n([tf.reduce_sum(tf.cast(tf.reshape(t, (ROWS, -1))[:, :8], tf.float64), 1)
                             for t in piece(factors(xm, ym))])

        @tf.function(input_signature=signature)
        def run(xb, yb):
            chunks = (tf.reshape(xb, (-1, ROWS, *xb.shape[1:])), tf.reshape(yb, (-1, ROWS)))
            out = tf.map_fn(lambda c: rows(*c), chunks, fn_output_signature=tf.TensorSpec((ROWS,), tf.float64),
                            parallel_iterations=1)
            return tf.reshape(out, (-1,))

        return run

    def patches(f):
        return Outer(f.a, f.d, grouped=f.grouped)

    pieces = {
        "forward+backward": per_row(lambda fs: [f.d for f in fs]),
        "+ patches": per_row(lambda fs: [t for f in fs for t in (f.d, f.a)]),
        "+ one matmul": per_row(lambda fs: [t for f in fs for t in (f.d, patches(f).full())]),
        "+ offsets": per_row(lambda fs: [t for f in fs for t in (f.d, f.by_offsets())]),
        "+ by rows": per_row(lambda fs: [t for f in fs for t in (f.d, f.by_rows())]),
    }
    fs = factors(x[:ROWS], y[:ROWS])
    assert all(isinstance(f, Shifted) for f in fs)
    for f in fs:  # the three routes of the kernel gradients agree
        for route in (f.by_offsets(), f.by_rows()):
            assert np.allclose(patches(f).product().numpy(), route.numpy(), rtol=1e-5, atol=1e-5)

    @tf.function(input_signature=signature)
    def forward(xb, yb):
        return loss(yb, model(xb, training=False))

    calls = {"ceiling": lambda: [g.numpy() for g in ceiling(x, y)], "engine norm": lambda: engine([x], [y]),
             "forward alone": lambda: forward(x, y).numpy()}
    calls.update({name: lambda run=run: run(x, y).numpy() for name, run in pieces.items()})
    for call in calls.values():
        call()
    best = dict.fromkeys(calls, float("inf"))
    for _ in range(ROUNDS):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            best[name] = min(best[name], time.perf_counter() - start)
    print(f"{machine()}; best of {ROUNDS} interleaved rounds, batch {BATCH}, micro-batches of {ROWS}")
    print("| what | ms per 256 rows | the piece alone | of the ceiling's time |\n|---|---|---|---|")
    before = {"+ patches": "forward+backward", "+ one matmul": "+ patches", "+ offsets": "forward+backward",
              "+ by rows": "forward+backward"}
    for name, seconds in best.items():
        ms = 1000 * seconds * 256 / BATCH
        piece = f"{ms - 1000 * best[before[name]] * 256 / BATCH:.1f}" if name in before else ""
        print(f"| {name} | {ms:.1f} | {piece} | {seconds / best['ceiling']:.2f} |")


if __name__ == "__main__":
    main()
