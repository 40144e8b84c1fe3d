"""Weight-gradient benchmark (issue 10): per-example norms and projections against their ceiling and the recipe.

Workloads (bench/speed.py's models, `--target loss` with sparse categorical
cross-entropy against a `label` column, every trainable variable):
  mlp: 128 inputs, Dense 256-256-10 (101,386 parameters), 300,000 rows
  cnn: 32x32x3, Conv2D 16 and 32, global average pooling, Dense 10 (5,818 parameters), 30,000 rows
  transformer (engine and quality only): 128 int tokens, Embedding(1000, 256), 4 encoder blocks (4 heads,
       LayerNormalization, feed-forward 1024), average pooling, Dense 10 (about 3.4M parameters)

Engine alone, in this process (rows/s over --engine_rows rows, batch 256, best of 3):
  ceiling    (a) the batched loss gradient w.r.t. the weights: one backward pass per batch, NOT per example
  recipe     (b) the article's recipe, eager, one row at a time: `tape.gradient(loss, model.trainable_variables)`
                 per row, on --recipe_rows rows, extrapolated
  vmap       (c) plain `tf.vectorized_map` per-example gradients over the whole batch, reduced to norms in-graph
  norm       the engine, `--wrt weights --weight_output norm`
  projection the engine, `--weight_output projection --projection_dim 2048` (countsketch)
  factored   the engine, `--weight_output projection --projection factored` (issue 20, docs/fast-weights.md)
  kronecker  the engine, `--weight_output projection --projection kronecker` (issue 20, docs/fast-weights.md)
Projection quality (--quality_rows rows): per construction, the median over row pairs of
  |<p_i, p_j> - <g_i, g_j>| / (|g_i| |g_j|) at k = 2048, g the exact per-example gradients (`full`), the mean of
  |p_i|^2 / |g_i|^2 (unbiased: about 1) and the correlation of projected with exact inner products.
The job itself (the CLI, DirectRunner, Parquet to Parquet, each a fresh process):
  norm and projection at 1x and 3x the rows: rows/s and peak RSS (flat as rows triple?)
  resnet50: keras.applications.ResNet50(weights=None) at 64x64x3 (25.6M parameters), projection k=2048,
            --weight_memory_mb 2048, --resnet_rows rows: rows/s and peak RSS

    .venv/bin/python bench/weights.py                          # full size (long on 2 cores)
    .venv/bin/python bench/weights.py --scale 0.02 --resnet_rows 32   # what the README reports
    # docs/fast-weights.md (issue 20): engine rates and projection quality, then the transformer's
    PYTHONPATH=. .venv/bin/python bench/weights.py --workloads mlp,cnn --engine_rows 2048 --recipe_rows 20 --skip job,resnet
    PYTHONPATH=. .venv/bin/python bench/weights.py --workloads transformer --quality_rows 16 --skip engine,job,resnet
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pyarrow as pa

from measure import DEFAULT_WORK, CLI, machine, make_cnn, make_mlp, markdown, run_process, summary_rows, tensor_chunk
from measure import write_parquet as write_rows

WORKLOADS = {"mlp": ((128,), 300_000), "cnn": ((32, 32, 3), 30_000), "transformer": ((128,), 0)}
LOSS = "sparse_categorical_crossentropy"
BATCH = 256


def labelled(shape, rows_per_group=10_000):
    """bench/speed.py's rows, plus an int64 `label` in [0, 10)."""
    chunk = tensor_chunk(shape)

    def with_label(start, stop):
        table = chunk(start, stop)
        return table.append_column("label", pa.array(np.arange(start, stop) % 10, pa.int64()))

    return with_label


def make_transformer(path, tokens=128, width=256, heads=4, blocks=4, vocabulary=1000):
    """A small Transformer encoder classifier on int32 tokens named `x`, saved once to `path`."""
    if os.path.exists(path):
        return path
    import keras

    keras.utils.set_random_seed(0)
    x = keras.Input((tokens,), dtype="int32", name="x")
    h = keras.layers.Embedding(vocabulary, width)(x)
    for _ in range(blocks):
        a = keras.layers.MultiHeadAttention(num_heads=heads, key_dim=width // heads)(h, h)
        h = keras.layers.LayerNormalization()(keras.layers.Add()([h, a]))
        f = keras.layers.Dense(width)(keras.layers.Dense(4 * width, activation="relu")(h))
        h = keras.layers.LayerNormalization()(keras.layers.Add()([h, f]))
    model = keras.Model(x, keras.layers.Dense(10)(keras.layers.GlobalAveragePooling1D()(h)))
    model.save(path)
    return path


def inputs_for(name, shape, rows):
    rng = np.random.default_rng(0)
    if name == "transformer":
        return rng.integers(0, 1000, (rows, *shape)).astype(np.int32)
    return rng.standard_normal((rows, *shape), dtype=np.float32)


def model_path(work, name):
    if name == "transformer":
        return make_transformer(os.path.join(work, "transformer.keras"))
    if name == "mlp":
        return make_mlp(os.path.join(work, "mlp.keras"), 128, (256, 256), 10)
    return make_cnn(os.path.join(work, "cnn.keras"))


def data(work, name, rows):
    shape, _ = WORKLOADS[name]
    return write_rows(os.path.join(work, f"{name}-labelled-{rows}.parquet"), rows, 10_000, labelled(shape))


def best_rate(fn, rows, repeats=3):
    fn()  # trace
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return rows / best


def engine_rates(name, path, shape, rows, recipe_rows):
    """rows/s of (a), (b), (c) and the engine's norm and projection, on random rows."""
    import keras
    import tensorflow as tf

    from transforms.gradients import GradientEngine, GradientSpec, from_keras

    model = keras.models.load_model(path, compile=False)
    loss = keras.losses.SparseCategoricalCrossentropy(reduction=None)
    variables = model.trainable_variables
    x = inputs_for(name, shape, rows)
    y = (np.arange(rows) % 10).astype(np.float32)
    batches = [(x[i : i + BATCH], y[i : i + BATCH]) for i in range(0, rows - BATCH + 1, BATCH)]
    signature = [tf.TensorSpec((BATCH, *shape), x.dtype), tf.TensorSpec((BATCH,))]

    @tf.function(input_signature=signature)
    def ceiling(xb, yb):
        with tf.GradientTape() as tape:
            total = tf.reduce_sum(loss(yb, model(xb, training=False)))
        return [tf.convert_to_tensor(g) for g in tape.gradient(total, variables)]  # an embedding's: dense

    @tf.function(input_signature=signature)
    def vmap(xb, yb):
        def row(args):
            xi, yi = args
            with tf.GradientTape() as tape:
                total = tf.reduce_sum(loss(yi[None], model(xi[None], training=False)))
            return tape.gradient(total, variables)

        grads = tf.vectorized_map(row, (xb, yb))
        return tf.sqrt(tf.add_n([tf.reduce_sum(tf.reshape(g * g, (BATCH, -1)), 1) for g in grads]))

    def recipe():
        for i in range(recipe_rows):
            with tf.GradientTape() as tape:
                total = tf.reduce_sum(loss(y[i : i + 1], model(x[i : i + 1], training=False)))
            [tf.convert_to_tensor(g).numpy() for g in tape.gradient(total, variables)]

    def engine(output, construction="countsketch"):
        spec = GradientSpec(
            target="loss", loss=LOSS, wrt="weights", weight_output=(output,), projection=construction
        )
        run = GradientEngine(from_keras(model), spec, BATCH)
        return lambda: [run([xb], [yb]) for xb, yb in batches]

    done = len(batches) * BATCH
    return {
        "ceiling": best_rate(lambda: [[g.numpy() for g in ceiling(xb, yb)] for xb, yb in batches], done),
        "recipe": best_rate(recipe, recipe_rows, repeats=1),
        "vmap": best_rate(lambda: [vmap(xb, yb).numpy() for xb, yb in batches], done, repeats=1)
        if name != "transformer" else float("nan"),  # the attention's vectorized map: the oneDNN kernel that crashes
        "norm": best_rate(engine("norm"), done),
        "projection": best_rate(engine("projection"), done),
        "factored": best_rate(engine("projection", "factored"), done),
        "kronecker": best_rate(engine("projection", "kronecker"), done),
    }


def quality(name, path, shape, rows, k=2048):
    """Per construction: the median relative inner-product error, mean |p|^2/|g|^2, and the correlation of the
    projected with the exact inner products, over every pair of `rows` rows."""
    import keras

    from transforms.gradients import GradientEngine, GradientSpec, from_keras

    model = keras.models.load_model(path, compile=False)
    x, y = inputs_for(name, shape, rows), (np.arange(rows) % 10).astype(np.float32)
    out = {}
    for construction in ("countsketch", "factored", "kronecker"):
        spec = GradientSpec(target="loss", loss=LOSS, wrt="weights", weight_output=("projection", "full"),
                            projection=construction, projection_dim=k, allow_large_rows=True, weight_memory_mb=4096)
        result = GradientEngine(from_keras(model), spec, rows)([x], [y])
        g = np.concatenate([v.reshape(rows, -1) for n, v in result.items() if n.startswith("weight_gradient__")], 1)
        g, p = g.astype(np.float64), result["weight_projection"].astype(np.float64)
        exact, sketched, norms = g @ g.T, p @ p.T, np.linalg.norm(g, axis=1)
        upper = np.triu_indices(rows, 1)
        error = np.abs(sketched - exact)[upper] / np.outer(norms, norms)[upper]
        out[construction] = (float(np.median(error)), float(np.mean(np.diag(sketched) / norms**2)),
                             float(np.corrcoef(sketched[upper], exact[upper])[0, 1]))
    return out


def job(work, name, model, source, output, rows, extra=()):
    out = os.path.join(work, "weights-out", f"{name}-{output}-{rows}")
    argv = [CLI, "--runner", "DirectRunner", "--input", source, "--output", out, "--model", model]
    argv += ["--feature_columns", "x", "--keep_columns", "id", "--target", "loss", "--loss", LOSS]
    argv += ["--label_column", "label", "--wrt", "weights", "--weight_output", output, *extra]
    run = run_process(argv, os.path.join(work, "weights-logs", f"{name}-{output}-{rows}.log"))
    got = summary_rows(run.text())
    if got != (rows, rows, 0):
        raise RuntimeError(f"{name} {output}: expected {rows} rows in and out, got {got}")
    return rows / run.wall, run.rss_mib


def resnet(work, rows, batch):
    path = os.path.join(work, "resnet50-64.keras")
    if not os.path.exists(path):
        import keras

        keras.utils.set_random_seed(0)
        keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3)).save(path)
    source = write_rows(os.path.join(work, f"resnet-labelled-{rows}.parquet"), rows, rows, labelled((64, 64, 3)))
    extra = ["--weight_memory_mb", "2048", "--batch_size", str(batch)]
    return job(work, "resnet50", path, source, "projection", rows, extra)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=DEFAULT_WORK)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each workload's rows for the job runs")
    parser.add_argument("--engine_rows", type=int, default=4096)
    parser.add_argument("--recipe_rows", type=int, default=200)
    parser.add_argument("--resnet_rows", type=int, default=64)
    parser.add_argument("--resnet_batch", type=int, help="its --batch_size (default: --resnet_rows, no padding)")
    parser.add_argument("--workloads", default="mlp,cnn,transformer")
    parser.add_argument("--quality_rows", type=int, default=64)
    parser.add_argument("--skip", default="", help="comma-separated: engine, job, resnet, quality")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    print(machine())
    for name in args.workloads.split(","):
        shape, full = WORKLOADS[name]
        path = model_path(args.work, name)
        if "engine" not in skip:
            rates = engine_rates(name, path, shape, args.engine_rows, args.recipe_rows)
            ceiling, recipe = rates["ceiling"], rates["recipe"]
            rows = [[k, f"{v:,.0f}", f"{v / ceiling:.2f}", f"{v / recipe:.1f}"] for k, v in rates.items()]
            print(f"\n{name}: engine alone, batch {BATCH}, {args.engine_rows} rows\n")
            print(markdown(["what", "rows/s", "of (a) ceiling", "x (b) recipe"], rows))
        if "quality" not in skip:
            found = quality(name, path, shape, args.quality_rows)
            rows = [[c, f"{e:.4f}", f"{n:.3f}", f"{r:.4f}"] for c, (e, n, r) in found.items()]
            print(f"\n{name}: projection quality at k=2048, {args.quality_rows} rows\n")
            print(markdown(["construction", "median rel. error", "mean |p|^2/|g|^2", "corr."], rows))
        if "job" not in skip and full:
            table = []
            for output in ("norm", "projection"):
                for times in (1, 3):
                    rows = max(BATCH, int(full * args.scale)) * times
                    rate, rss = job(args.work, name, path, data(args.work, name, rows), output, rows)
                    table.append([output, f"{rows:,}", f"{rate:,.0f}", f"{rss:,.0f}"])
            print(f"\n{name}: the job (CLI, DirectRunner, whole process)\n")
            print(markdown(["--weight_output", "rows", "rows/s", "peak RSS MiB"], table))
    if "resnet" not in skip:
        batch = args.resnet_batch or args.resnet_rows
        rate, rss = resnet(args.work, args.resnet_rows, batch)
        print(f"\nresnet50 64x64, projection k=2048, --weight_memory_mb 2048, {args.resnet_rows} rows, batch {batch}: "
              f"{rate:.2f} rows/s (whole process), peak RSS {rss:,.0f} MiB")


if __name__ == "__main__":
    main()
