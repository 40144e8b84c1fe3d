"""Weight-gradient benchmark (issues 10 and 20): per-example norms and projections against their ceiling and limit.

Workloads (`--target loss` with sparse categorical cross-entropy against a `label` column, every trainable
variable; rows: of each job, of the engine runs, of the recipe, of the quality runs):
  mlp: 128 inputs, Dense 256-256-10 (101,386 parameters); 100,000 / 4,096 / 200 / 64
  cnn: 32x32x3, Conv2D 16 and 32, global average pooling, Dense 10 (5,418 parameters); 30,000 / 4,096 / 200 / 64
  convnet (conv-heavy): 32x32x3, Conv2D 32, 32, max pooling, 64, 64, max pooling, 128, 128 (3x3, same, relu),
       global average pooling, Dense 10 (288,298 parameters); 10,000 / 1,024 / 50 / 64
  transformer (no job): 128 int tokens, Embedding(1000, 256), 4 encoder blocks (4 heads, LayerNormalization,
       feed-forward 1024), average pooling, Dense 10 (about 3.4M parameters); 0 / 256 / 10 / 16

Engine alone, in this process (rows/s over the engine rows, batch 256; the ceiling and the engine's runs best of 5
interleaved rounds, or fewer once 60 s a run are spent; the recipe and vmap once):
  ceiling    (a) the batched loss gradient w.r.t. the weights: one backward pass per batch, NOT per example
  recipe     (b) the article's recipe, eager, one row at a time: `tape.gradient(loss, model.trainable_variables)`
                 per row, on the recipe rows, extrapolated
  vmap       (c) plain `tf.vectorized_map` per-example gradients over the whole batch, reduced to norms in-graph
                 (not on the transformer: the attention's vectorized map is the oneDNN kernel that crashes)
  norm       the engine, `--wrt weights --weight_output norm`
  projection the engine, `--weight_output projection --projection_dim 2048` (countsketch)
  factored   the engine, `--weight_output projection --projection factored` (issue 20, docs/fast-weights.md)
  kronecker  the engine, `--weight_output projection --projection kronecker` (issue 20, docs/fast-weights.md)
Projection quality (the quality rows): per construction, the median over row pairs of
  |<p_i, p_j> - <g_i, g_j>| / (|g_i| |g_j|) at k = 2048, g the exact per-example gradients (`full`), the mean of
  |p_i|^2 / |g_i|^2 (unbiased: about 1) and the correlation of projected with exact inner products.
The job itself (the CLI, DirectRunner, Parquet to Parquet, each a fresh process, the same rows, into an output its
  last run's files are first removed from, outside its time):
  (--job_rounds N: N interleaved rounds of every job, each job's best time; the job times are noisier than the
  engine's, one 2-second job against another)
  the limit: the input-gradient job (`--wrt inputs`, same target, loss and labels), then `--wrt weights` norm,
  projection (countsketch), factored and kronecker: rows/s of job time (the CLI's "job N s", start-up excluded)
  and of the whole process, each job's time over the input-gradient job's, peak RSS (--times 1,3: flat?);
  then pyarrow's writer alone writing the kronecker job's output again as the job's sink does (best of 3, in
  this process), its time over the input-gradient job's: the part of a projection job that is writing its bytes
  (the sink: pyarrow's own file for a local path); then the same beside a thread running Python, through the
  sink and through a Python file, whose every write waits for the GIL (the sink's way before 2026-12-07)
  resnet50: keras.applications.ResNet50(weights=None) at 64x64x3 (25.6M parameters), projection k=2048
            countsketch, factored and kronecker, --weight_memory_mb 2048, --resnet_rows rows: rows/s and peak RSS,
            and how far each peak is above the input-gradient job's on the same rows (the budget's part)
At the end, a table of issue 20's goals: each measured value, met or not.

    .venv/bin/python bench/weights.py                          # everything (about 20 minutes on 2 busy cores)
    .venv/bin/python bench/weights.py --workloads mlp,cnn --scale 0.02 --times 1,3 --skip quality,resnet
    .venv/bin/python bench/weights.py --workloads transformer --skip job,resnet  # engine and quality alone
    .venv/bin/python bench/weights.py --workloads mlp --skip engine,quality,job --resnet_rows 128  # ResNet50 alone
    # docs/fast-weights.md, "The run to read" (2026-12-06): the three runs
    PYTHONPATH=. .venv/bin/python bench/weights.py --workloads mlp,transformer --skip resnet
    PYTHONPATH=. .venv/bin/python bench/weights.py --workloads cnn,convnet --resnet_rows 128
    # docs/fast-weights.md, "Goals not reached": the MLP's jobs alone, on an AVX2 machine (and with the writer
    # alone, "The MLP's projection job is mostly its writing", 2026-12-06 evening)
    PYTHONPATH=. .venv/bin/python bench/weights.py --workloads mlp --skip engine,quality,resnet
    # docs/fast-weights.md, "Conv kernels by rows" (2026-12-06 evening): the CNNs with their jobs, then ResNet50
    PYTHONPATH=. .venv/bin/python bench/weights.py --workloads cnn,convnet --skip quality,resnet
    PYTHONPATH=. .venv/bin/python bench/weights.py --workloads mlp --skip engine,quality,job --resnet_rows 128
    # docs/fast-weights.md, "2026-12-07 morning": the CNN's engine, ResNet50 with its input-gradient job, the MLP's jobs
    PYTHONPATH=. .venv/bin/python bench/weights.py --workloads cnn --skip job,quality,resnet
    PYTHONPATH=. .venv/bin/python bench/weights.py --workloads mlp --skip engine,quality,job --resnet_rows 128
    PYTHONPATH=. .venv/bin/python bench/weights.py --workloads mlp --skip engine,quality,resnet
    PYTHONPATH=. .venv/bin/python bench/weights.py --workloads mlp --skip engine,quality,resnet --job_rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import threading
import time
import traceback
from typing import NamedTuple

import numpy as np
import pyarrow as pa

from measure import DEFAULT_WORK, CLI, job_seconds, machine, make_cnn, make_mlp, markdown, run_process
from measure import remove, summary_rows, tensor_chunk, verdict
from measure import write_parquet as write_rows


class Workload(NamedTuple):
    shape: tuple
    job_rows: int  # 0: no job
    engine_rows: int
    recipe_rows: int
    quality_rows: int


WORKLOADS = {
    "mlp": Workload((128,), 100_000, 4096, 200, 64),
    "cnn": Workload((32, 32, 3), 30_000, 4096, 200, 64),
    "convnet": Workload((32, 32, 3), 10_000, 1024, 50, 64),
    "transformer": Workload((128,), 0, 256, 10, 16),
}
CONVNET = (32, 32, "pool", 64, 64, "pool", 128, 128)
LOSS = "sparse_categorical_crossentropy"
BATCH = 256
# The engine's runs: --weight_output and --projection.
ENGINE = {
    "norm": ("norm", "countsketch"),
    "projection": ("projection", "countsketch"),
    "factored": ("projection", "factored"),
    "kronecker": ("projection", "kronecker"),
}
# The jobs of one workload; the first is the limit the others are measured against.
JOBS = {
    "inputs": ["--wrt", "inputs"],
    "norm": ["--wrt", "weights", "--weight_output", "norm"],
    "projection": ["--wrt", "weights", "--weight_output", "projection"],
    "factored": ["--wrt", "weights", "--weight_output", "projection", "--projection", "factored"],
    "kronecker": ["--wrt", "weights", "--weight_output", "projection", "--projection", "kronecker"],
}
RESNET_BASELINE = 0.6  # rows/s of job time, issue 20 (32 rows, --batch_size 32, countsketch)
# The weight jobs' --weight_memory_mb: what their peak RSS may exceed the input-gradient job's by (the model, its
# activations and TensorFlow's own memory are in both)
RESNET_BUDGET_MB = 2048


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
    if name == "convnet":
        return make_cnn(os.path.join(work, "convnet.keras"), filters=CONVNET)
    return make_cnn(os.path.join(work, "cnn.keras"))


def data(work, name, rows):
    shape = WORKLOADS[name].shape
    return write_rows(os.path.join(work, f"{name}-labelled-{rows}.parquet"), rows, 10_000, labelled(shape))


def best_rate(fn, rows, repeats=3, budget_s=60.0):
    """rows / the best of `repeats` timed calls after one untimed (tracing) call; fewer once `budget_s` is spent."""
    return interleaved_rates({"fn": (fn, rows)}, repeats, budget_s)["fn"]


def interleaved_rates(fns, repeats=3, budget_s=60.0):
    """{name: (fn, rows)} -> {name: rows / the best of its timed calls}, each traced once untimed, then timed in
    rounds, one call of each per round: on a shared machine a load that comes and goes falls on every one alike,
    not on whichever ran then. Fewer rounds once `budget_s` is spent."""
    for fn, _ in fns.values():
        fn()  # trace
    began, best = time.perf_counter(), {name: float("inf") for name in fns}
    for _ in range(repeats):
        for name, (fn, _) in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
        if time.perf_counter() - began > budget_s * len(fns):
            break
    return {name: rows / best[name] for name, (_, rows) in fns.items()}


def engine_rates(name, path, shape, rows, recipe_rows):
    """rows/s of (a), (b), (c) and the engine's norm and projection, on random rows."""
    import keras
    import tensorflow as tf

    model = keras.models.load_model(path, compile=False)
    print(f"\n{name}: {model.count_params():,} parameters", flush=True)
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
        run = weight_engine(model, output, construction)
        return lambda: [run([xb], [yb]) for xb, yb in batches]

    done = len(batches) * BATCH
    rates = {
        "recipe": best_rate(recipe, recipe_rows, repeats=1),
        "vmap": best_rate(lambda: [vmap(xb, yb).numpy() for xb, yb in batches], done, repeats=1)
        if name != "transformer" else float("nan"),  # the attention's vectorized map: the oneDNN kernel that crashes
    }
    timed = {"ceiling": (lambda: [[g.numpy() for g in ceiling(xb, yb)] for xb, yb in batches], done)}
    for kind, (output, construction) in ENGINE.items():
        timed[kind] = (engine(output, construction), done)
    return {**interleaved_rates(timed, repeats=5), **rates}


def weight_engine(model, output, construction="countsketch"):
    """The engine of a `--wrt weights` job on this bench's loss, `--weight_output output`, batch BATCH."""
    from transforms.gradients import GradientEngine, GradientSpec, from_keras

    spec = GradientSpec(target="loss", loss=LOSS, wrt="weights", weight_output=(output,), projection=construction)
    return GradientEngine(from_keras(model), spec, BATCH)


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


def job(work, name, model, source, kind, rows, extra=()):
    """One fresh CLI process of JOBS[kind]: (job seconds, start-up excluded; whole-process seconds; peak RSS MiB)."""
    out = os.path.join(work, "weights-out", f"{name}-{kind}-{rows}")
    remove(out + "-*")  # as the other benches do: a rerun over the last run's 800 MB output would first free it
    remove(out + "_*")  # (0.38 s of a 3 s MLP projection job: docs/fast-weights.md)
    argv = [CLI, "--runner", "DirectRunner", "--input", source, "--output", out, "--model", model]
    argv += ["--feature_columns", "x", "--keep_columns", "id", "--target", "loss", "--loss", LOSS]
    argv += ["--label_column", "label", *JOBS[kind], *extra]
    run = run_process(argv, os.path.join(work, "weights-logs", f"{name}-{kind}-{rows}.log"))
    text = run.text()
    got = summary_rows(text)
    if got != (rows, rows, 0):
        raise RuntimeError(f"{name} {kind}: expected {rows} rows in and out, got {got}")
    return job_seconds(text), run.wall, run.rss_mib


def writer_alone(work, name, kind, rows, beside_python=False, through_python=False):
    """Seconds pyarrow's Parquet writer alone takes to write a job's output again, as the job's sink writes it
    (`write_groups`), in this process: how much of the job's time is the writing of its bytes.

    `beside_python`: while a thread of pure Python runs, as the job's own thread does between engine calls;
    `through_python`: through a Python file, as the sink wrote local files before 2026-12-07 (each write takes
    the GIL)."""
    groups, target = job_groups(work, name, kind, rows), os.path.join(work, "writer-alone.parquet")
    with python_running() if beside_python else contextlib.nullcontext():
        best = min(write_groups(target, groups, through_python) for _ in range(3))
    os.remove(target)
    return best


@contextlib.contextmanager
def python_running():
    """A thread running Python bytecode (holding the GIL but at each switch interval) for the block's time."""
    stop = threading.Event()

    def spin():
        count = 0
        while not stop.is_set():
            count += 1

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def job_groups(work, name, kind, rows):
    """The row groups `job` wrote for this workload, kind and rows, in order (empty where it has not run)."""
    import glob

    import pyarrow.parquet as pq

    files = sorted(glob.glob(os.path.join(work, "weights-out", f"{name}-{kind}-{rows}-*-of-*.parquet")))
    opened = [pq.ParquetFile(path) for path in files]
    return [f.read_row_group(i) for f in opened for i in range(f.num_row_groups)]


def write_groups(path, groups, through_python=False):
    """Seconds to write `groups` to `path` as the job's sink does (`ParquetSink`: its file, its writer's thread,
    one table a row group), or through a Python file."""
    from transforms.io.write import ParquetSink, parquet_writer

    start = time.perf_counter()
    if through_python:
        with open(path, "wb") as handle:
            writer = parquet_writer(handle, groups[0].schema)
            for group in groups:
                writer.write_table(group)
            writer.close()
        return time.perf_counter() - start
    sink = ParquetSink(path, groups[0].schema, 0)
    handle = sink.open(path)
    for group in groups:
        sink.write_record(handle, group)
    sink.close(handle)
    return time.perf_counter() - start


def resnet(work, rows, batch, kind):
    path = os.path.join(work, "resnet50-64.keras")
    if not os.path.exists(path):
        import keras

        keras.utils.set_random_seed(0)
        keras.applications.ResNet50(weights=None, input_shape=(64, 64, 3)).save(path)
    source = write_rows(os.path.join(work, f"resnet-labelled-{rows}.parquet"), rows, rows, labelled((64, 64, 3)))
    extra = ["--batch_size", str(batch)] + (["--weight_memory_mb", str(RESNET_BUDGET_MB)] if kind != "inputs" else [])
    return job(work, "resnet50", path, source, kind, rows, extra)


def goals(found):
    """Issue 20's goals: (goal, measured value as text, verdict), from what this run measured."""

    def best(workload, part, kinds, higher, every=False):
        values = {k: found.get((workload, part, k), float("nan")) for k in kinds}
        if every and any(v != v for v in values.values()):  # one not measured: the goal is not measured
            return float("nan"), kinds[0]
        values = {k: v for k, v in values.items() if v == v} or {kinds[0]: float("nan")}
        kind = (max if higher else min)(values, key=values.get)
        return values[kind], kind

    rows = []

    def goal(text, workload, part, kinds, target, at_most, every=False):
        """Met by the best of `kinds`, or by every one of them (`every`: the worst is shown)."""
        value, kind = best(workload, part, kinds, at_most if every else not at_most, every)
        number = f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.3g}"
        shown = "" if value != value else f"{number} ({kind})" if len(kinds) > 1 else number
        rows.append([text, shown, verdict(value, target, at_most)])

    projections = ("projection", "factored", "kronecker")
    goal("MLP projection >= 0.5 of the ceiling", "mlp", "engine", projections, 0.5, False)
    goal("MLP projection job <= 1.5x the input-gradient job", "mlp", "job", projections, 1.5, True)
    goal("CNN norm >= 0.8 of the ceiling", "cnn", "engine", ("norm",), 0.8, False)
    goal("CNN projection >= 0.8 of the ceiling", "cnn", "engine", projections, 0.8, False)
    goal("conv-heavy CNN norm job <= 2x the input-gradient job", "convnet", "job", ("norm",), 2, True)
    goal("conv-heavy CNN projection job <= 3x the input-gradient job", "convnet", "job", projections, 3, True)
    goal(f"ResNet50 64x64 projection >= {10 * RESNET_BASELINE:g} rows/s of job time (10x {RESNET_BASELINE})",
         "resnet50", "job", projections, 10 * RESNET_BASELINE, False)
    goal(f"ResNet50 projection jobs' peak RSS above the input-gradient job's <= {RESNET_BUDGET_MB:,} MiB (each)",
         "resnet50", "rss above inputs", projections, RESNET_BUDGET_MB, True, every=True)
    goal("Transformer norm >= 0.5 of the ceiling", "transformer", "engine", ("norm",), 0.5, False)
    goal("Transformer projection >= 0.3 of the ceiling", "transformer", "engine", projections, 0.3, False)
    for name, label in (("mlp", "MLP"), ("cnn", "CNN"), ("transformer", "Transformer")):
        for kind in ("factored", "kronecker"):  # each construction built from the factors, not the best of them
            goal(f"{label} {kind} median rel. error <= 0.05 at k=2048", name, "quality", (kind,), 0.05, True)
    return rows


def attempt(what, fn):
    """fn(), or None after printing its error in full: one failing part does not stop the others."""
    try:
        return fn()
    except Exception:  # noqa: BLE001 - printed, never hidden
        print(f"\n{what}: FAILED\n{traceback.format_exc()}", flush=True)
        return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default=DEFAULT_WORK)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of each workload's rows for the job runs")
    parser.add_argument("--times", default="1", help="comma-separated multiples of the job rows (1,3: is RSS flat?)")
    parser.add_argument("--job_rounds", type=int, default=1,
                        help="interleaved rounds of every job: each job's best time and whole-process time, "
                             "and its highest peak RSS")
    parser.add_argument("--engine_rows", type=int, help="rows of the engine runs (default: the workload's)")
    parser.add_argument("--recipe_rows", type=int, help="rows of the eager recipe (default: the workload's)")
    parser.add_argument("--quality_rows", type=int, help="rows of the quality runs (default: the workload's)")
    parser.add_argument("--resnet_rows", type=int, default=32)
    parser.add_argument("--resnet_batch", type=int, help="its --batch_size (default: --resnet_rows, no padding)")
    parser.add_argument("--workloads", default="mlp,cnn,convnet,transformer")
    parser.add_argument("--skip", default="", help="comma-separated: engine, job, resnet, quality")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    found = {}  # (workload, part, kind) -> ratio or rows/s, for the goals
    print(machine(), flush=True)
    for name in args.workloads.split(","):
        w = WORKLOADS[name]
        path = model_path(args.work, name)
        if "engine" not in skip:
            engine_rows, recipe_rows = args.engine_rows or w.engine_rows, args.recipe_rows or w.recipe_rows
            rates = attempt(f"{name} engine", lambda: engine_rates(name, path, w.shape, engine_rows, recipe_rows))
            if rates:
                ceiling, recipe = rates["ceiling"], rates["recipe"]
                found.update({(name, "engine", k): v / ceiling for k, v in rates.items()})
                rows = [[k, f"{v:,.1f}", f"{v / ceiling:.2f}", f"{v / recipe:.1f}"] for k, v in rates.items()]
                print(f"\n{name}: engine alone, batch {BATCH}, {engine_rows} rows (recipe {recipe_rows}), "
                      f"{machine()}\n")
                print(markdown(["what", "rows/s", "of (a) ceiling", "x (b) recipe"], rows), flush=True)
        if "quality" not in skip:
            quality_rows = args.quality_rows or w.quality_rows
            got = attempt(f"{name} quality", lambda: quality(name, path, w.shape, quality_rows))
            if got:
                found.update({(name, "quality", c): e for c, (e, _, _) in got.items()})
                rows = [[c, f"{e:.4f}", f"{n:.3f}", f"{r:.4f}"] for c, (e, n, r) in got.items()]
                print(f"\n{name}: projection quality at k=2048, {quality_rows} rows\n")
                print(markdown(["construction", "median rel. error", "mean |p|^2/|g|^2", "corr."], rows), flush=True)
        if "job" not in skip and w.job_rows:
            for times in (int(t) for t in args.times.split(",")):
                rows = max(BATCH, int(w.job_rows * args.scale)) * times
                source = data(args.work, name, rows)
                runs: dict[str, list] = {}
                for _ in range(args.job_rounds):  # interleaved: a slow minute of the machine hits every job
                    for kind in JOBS:
                        ran = attempt(f"{name} {kind} job", lambda: job(args.work, name, path, source, kind, rows))
                        if ran:
                            runs.setdefault(kind, []).append(ran)
                table, limit = [], None
                for kind, got in ((k, runs[k]) for k in JOBS if k in runs):
                    seconds, wall, rss = min(r[0] for r in got), min(r[1] for r in got), max(r[2] for r in got)
                    limit = limit or (seconds if kind == "inputs" else None)
                    ratio = seconds / limit if limit else float("nan")
                    if times == 1:
                        found[(name, "job", kind)] = ratio
                    table.append([kind, f"{rows / seconds:,.0f}", f"{rows / wall:,.0f}", f"{ratio:.2f}", f"{rss:,.0f}"])
                if limit and (name, "job", "kronecker") in found and times == 1:
                    seconds = attempt(f"{name} writer", lambda: writer_alone(args.work, name, "kronecker", rows))
                    if seconds:
                        table.append(["writer alone (kronecker's output)", f"{rows / seconds:,.0f}", "",
                                      f"{seconds / limit:.2f}", ""])
                    for label, through in (("the sink's file", False), ("a Python file", True)):
                        seconds = attempt(f"{name} writer beside Python", lambda: writer_alone(
                            args.work, name, "kronecker", rows, beside_python=True, through_python=through))
                        if seconds:
                            table.append([f"writer alone beside a Python thread, through {label}",
                                          f"{rows / seconds:,.0f}", "", f"{seconds / limit:.2f}", ""])
                print(f"\n{name}: the job (CLI, DirectRunner), {rows:,} rows, {machine()}\n")
                header = ["job", "rows/s of job time", "rows/s whole process", "x input-gradient job", "peak RSS MiB"]
                print(markdown(header, table), flush=True)
    if "resnet" not in skip:
        batch = args.resnet_batch or args.resnet_rows
        table, base_rss = [], None
        for kind in ("inputs", "projection", "factored", "kronecker"):
            ran = attempt(f"resnet50 {kind}", lambda: resnet(args.work, args.resnet_rows, batch, kind))
            if not ran:
                continue
            seconds, wall, rss = ran
            base_rss = rss if kind == "inputs" else base_rss
            above = "" if kind == "inputs" or base_rss is None else f"{rss - base_rss:,.0f}"
            if kind != "inputs":
                found[("resnet50", "job", kind)] = args.resnet_rows / seconds
                if above:
                    found[("resnet50", "rss above inputs", kind)] = rss - base_rss
            table.append([kind, f"{args.resnet_rows / seconds:.2f}", f"{args.resnet_rows / wall:.2f}",
                          f"{args.resnet_rows / seconds / RESNET_BASELINE:.1f}", f"{rss:,.0f}", above])
        print(f"\nresnet50 64x64, k=2048, --weight_memory_mb 2048, {args.resnet_rows} rows, batch {batch}, "
              f"{machine()}\n")
        header = ["job", "rows/s of job time", "rows/s whole process", f"x {RESNET_BASELINE}", "peak RSS MiB",
                  "MiB above the input-gradient job"]
        print(markdown(header, table))
    print(f"\nissue 20's goals (this run; {machine()})\n")
    print(markdown(["goal", "measured", ""], goals(found)))


if __name__ == "__main__":
    main()
