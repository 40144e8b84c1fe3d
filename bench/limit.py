"""The in-memory limit: what per-example gradients cost with no pipeline at all.

Reads the whole table into numpy, runs one batched `tf.function` gradient
(GradientTape, fixed input signature, the last batch padded so it never
retraces) and writes one Parquet file of `id` + `gradient`. Nothing of the
project is imported, so this is the floor the job is measured against, not a
copy of it. bench/speed.py runs it as a child process; by hand:

    .venv/bin/python bench/limit.py --input bench/work/mlp-300000-rg50000.parquet --model bench/work/mlp.keras \
        --output /tmp/limit.parquet --feature_column x --batch_size 256 [--jit]
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
    parser.add_argument("--feature_column", default="x")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--jit", action="store_true", help="jit_compile the gradient function (XLA)")
    args = parser.parse_args()

    table = pq.read_table(args.input, columns=["id", args.feature_column])
    x = table.column(args.feature_column).combine_chunks().to_numpy_ndarray().astype(np.float32, copy=False)
    ids = table.column("id")
    del table
    model = keras.models.load_model(args.model, compile=False)
    size, rows = args.batch_size, len(x)
    shape = x.shape[1:]

    @tf.function(input_signature=[tf.TensorSpec((size, *shape), tf.float32)], jit_compile=args.jit)
    def gradient(batch):
        with tf.GradientTape() as tape:
            tape.watch(batch)
            target = tf.reduce_sum(model(batch, training=False))
        return tape.gradient(target, batch)

    out = np.empty_like(x)
    padded = np.zeros((size, *shape), np.float32)
    for start in range(0, rows, size):
        stop = min(rows, start + size)
        if stop - start == size:
            out[start:stop] = gradient(x[start:stop]).numpy()
        else:
            padded[: stop - start] = x[start:stop]
            out[start:stop] = gradient(padded).numpy()[: stop - start]
    result = pa.table({"id": ids, "gradient": pa.FixedShapeTensorArray.from_numpy_ndarray(out)})
    pq.write_table(result, args.output, compression="snappy")
    print(f"limit: {rows} rows, batch {size}, jit_compile={args.jit}")


if __name__ == "__main__":
    main()
