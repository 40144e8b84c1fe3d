"""Integrated gradients w.r.t. a text classifier's embedding (issue 19): the job against its in-memory limit.

The model: vocabulary 20,000, 128 tokens, embedding 64, a Conv1D, pooling, a softmax head.
The job: `--wrt layer --layer emb --method integrated_gradients --steps 32 --target predicted`,
as a whole process on the DirectRunner. The limit: a child process that reads the table into
numpy and runs one `tf.function` per batch computing the same IG (the embedding looked up,
the path through the rest of the network, all steps of the batch at once), then writes
`id`, `gradient__emb` and `token_scores__emb` to Parquet, as the job does. Both are timed as whole processes, one after the other.

    PYTHONPATH=. python bench/text_layer.py --rows 100000      # prints job, limit and job/limit (wall and CPU)
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

VOCAB, LENGTH, WIDTH, STEPS = 20_000, 128, 64, 32
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def build(folder: str, rows: int) -> tuple[str, str]:
    import keras
    import pyarrow as pa
    import pyarrow.parquet as pq

    keras.utils.set_random_seed(0)
    ids = keras.Input((LENGTH,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCAB, WIDTH, name="emb")(ids)
    x = keras.layers.Conv1D(64, 5, padding="same", activation="relu", name="conv")(x)
    x = keras.layers.GlobalMaxPooling1D()(x)
    model = keras.Model(ids, keras.layers.Dense(2, activation="softmax", name="head")(x))
    path = os.path.join(folder, "text.keras")
    model.save(path)
    tokens = np.random.default_rng(0).integers(1, VOCAB, size=(rows, LENGTH)).astype(np.int32)
    column = pa.FixedSizeListArray.from_arrays(pa.array(tokens.reshape(-1)), LENGTH)
    data = os.path.join(folder, "text.parquet")
    pq.write_table(pa.table({"id": np.arange(rows), "tokens": column}), data, row_group_size=10_000)
    return path, data


def limit(model_path: str, data: str, output: str, batch_size: int) -> None:
    """The in-memory limit: no pipeline, one tf.function per batch, every step of the batch in one call."""
    import keras
    import pyarrow as pa
    import pyarrow.parquet as pq
    import tensorflow as tf

    table = pq.read_table(data)
    tokens = table.column("tokens").combine_chunks().values.to_numpy().reshape(-1, LENGTH)
    model = keras.models.load_model(model_path, compile=False)
    emb, conv, head = (model.get_layer(n) for n in ("emb", "conv", "head"))
    pool = model.layers[-2]
    alphas = tf.constant(np.linspace(0, 1, STEPS), tf.float32)
    weights = np.full(STEPS, 1 / (STEPS - 1), np.float32)
    weights[[0, -1]] /= 2

    def rest(a):
        return head(pool(conv(a)))

    @tf.function(input_signature=[tf.TensorSpec((batch_size, LENGTH), tf.int32)])
    def explain(batch):
        a = emb(batch)
        classes = tf.argmax(rest(a), axis=1)
        points = tf.reshape(alphas, (-1, 1, 1, 1)) * a[None]  # zero baseline
        points = tf.reshape(points, (-1, LENGTH, WIDTH))
        with tf.GradientTape() as tape:
            tape.watch(points)
            total = tf.reduce_sum(tf.gather(rest(points), tf.tile(classes, [STEPS]), axis=1, batch_dims=1))
        grads = tf.reshape(tape.gradient(total, points), (STEPS, batch_size, LENGTH, WIDTH))
        return tf.tensordot(tf.constant(weights), grads, axes=1) * a

    out = []
    for start in range(0, len(tokens), batch_size):
        batch = tokens[start : start + batch_size]
        padded = np.zeros((batch_size, LENGTH), np.int32)
        padded[: len(batch)] = batch
        out.append(explain(padded).numpy()[: len(batch)])
    gradient = np.concatenate(out)
    pq.write_table(pa.table({  # what the job writes: the attribution at the layer and its token scores
        "id": table.column("id"),
        "gradient__emb": pa.FixedShapeTensorArray.from_numpy_ndarray(gradient),
        "token_scores__emb": pa.FixedShapeTensorArray.from_numpy_ndarray(gradient.sum(-1)),
    }), output)


def timed(argv: list[str]) -> tuple[float, float, float]:
    """(wall s, CPU s, the 1-minute load average when it ended) of a whole child process.

    Why CPU seconds too: on a machine shared with other work the wall time of either side
    grows with the load at its moment, the CPU time it needs much less.
    """
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    subprocess.run(argv, cwd=ROOT, check=True, env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True)
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return wall, cpu, os.getloadavg()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--limit", nargs=3, metavar=("MODEL", "DATA", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.limit:
        limit(*args.limit, args.batch_size)
        return
    with tempfile.TemporaryDirectory() as folder:
        model, data = build(folder, args.rows)
        job = timed([sys.executable, "-m", "pipeline", "--runner", "DirectRunner", "--input", data, "--model", model,
                     "--output", os.path.join(folder, "job/g"), "--feature_columns", "tokens", "--keep_columns", "id",
                     "--wrt", "layer", "--layer", "emb", "--method", "integrated_gradients", "--steps", str(STEPS),
                     "--target", "predicted", "--batch_size", str(args.batch_size)])
        bound = timed([sys.executable, __file__, "--batch_size", str(args.batch_size), "--limit", model, data,
                       os.path.join(folder, "limit.parquet")])
    print(f"rows {args.rows}: job {job[0]:.1f} s, limit {bound[0]:.1f} s, job/limit {job[0] / bound[0]:.2f}; "
          f"CPU job {job[1]:.1f} s, limit {bound[1]:.1f} s, job/limit {job[1] / bound[1]:.2f}; "
          f"load average at their ends {job[2]:.1f}, {bound[2]:.1f} ({os.cpu_count()} CPUs)")


if __name__ == "__main__":
    main()
