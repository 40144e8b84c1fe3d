"""The in-memory limit for integrated gradients and SmoothGrad: no pipeline, every step of a batch in one call.

Reads the whole table into numpy and runs one batched `tf.function` per batch
that evaluates all the batch's steps (or noise samples) at once, as
batch_size x steps rows (memory grows with the steps; that is what the job's
chunks avoid), then writes one Parquet file of `id` + `gradient`. The target is
the predicted class; IG is the trapezoid rule from a zero baseline; SmoothGrad's
noise is plain `tf.random` (the job's seeded noise costs more; this is the floor).
Nothing of the project is imported. bench/methods.py runs it as a child process.
"""

from __future__ import annotations

import argparse

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--method", choices=("integrated_gradients", "smoothgrad"), required=True)
    parser.add_argument("--points", type=int, default=50, help="steps or samples")
    parser.add_argument("--noise", type=float, default=0.2)
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()

    table = pq.read_table(args.input, columns=["id", "x"])
    x = table.column("x").combine_chunks().to_numpy_ndarray().astype(np.float32, copy=False)
    ids = table.column("id")
    model = keras.models.load_model(args.model, compile=False)
    size, rows, n = args.batch_size, len(x), args.points
    shape = x.shape[1:]
    alphas = tf.constant(np.linspace(0, 1, n), tf.float32)
    weights = np.full(n, 1 / (n - 1), np.float32)
    weights[[0, -1]] /= 2
    weights = tf.constant(weights)
    expand = (-1,) + (1,) * len(shape)

    @tf.function(input_signature=[tf.TensorSpec((size, *shape), tf.float32)])
    def explain(batch):
        classes = tf.argmax(model(batch, training=False), axis=1)
        tiled = tf.tile(batch, [n] + [1] * len(shape))
        if args.method == "integrated_gradients":
            points = tf.reshape(tf.repeat(alphas, size), expand) * tiled
        else:
            flat = tf.reshape(batch, (size, -1))
            scale = args.noise * (tf.reduce_max(flat, 1) - tf.reduce_min(flat, 1))
            points = tiled + tf.reshape(tf.tile(scale, [n]), expand) * tf.random.normal(tf.shape(tiled))
        with tf.GradientTape() as tape:
            tape.watch(points)
            logits = model(points, training=False)
            total = tf.reduce_sum(tf.gather(logits, tf.tile(classes, [n]), axis=1, batch_dims=1))
        grads = tf.reshape(tape.gradient(total, points), (n, size, *shape))
        if args.method == "integrated_gradients":
            return tf.tensordot(weights, grads, axes=1) * batch
        return tf.reduce_mean(grads, axis=0)

    out = np.empty_like(x)
    padded = np.zeros((size, *shape), np.float32)
    for start in range(0, rows, size):
        stop = min(rows, start + size)
        padded[: stop - start] = x[start:stop]
        out[start:stop] = explain(padded).numpy()[: stop - start]
    result = pa.table({"id": ids, "gradient": pa.FixedShapeTensorArray.from_numpy_ndarray(out)})
    pq.write_table(result, args.output, compression="snappy")
    print(f"limit: {rows} rows, {args.method}, {n} points, batch {size}")


if __name__ == "__main__":
    main()
