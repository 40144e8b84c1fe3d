"""The MLP's projection job against its two largest parts (issue 20): the engine on kronecker batches, and
pyarrow's writer writing that job's own output again as the job's sink does, each alone, then both at once in one
process (the writer on a thread of its own, as the sink runs it). How much each slows the other is what the job's
writer thread cannot hide (docs/fast-weights.md, "What did not shorten the MLP's projection job"). Then the same for
a plain memory copy (numpy, 64 MiB at a time, which releases the GIL): one thread alone against two at once, the
machine's memory bandwidth shared by its CPUs.

The writer's rows are the first `--groups` row groups of `bench/weights.py`'s MLP kronecker job (run first if
missing); the engine's are as many rows of random inputs, batch 256. Best of `--rounds` interleaved rounds.

    PYTHONPATH=. .venv/bin/python bench/contention.py
    PYTHONPATH=. .venv/bin/python bench/contention.py --groups 6 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np

import weights as bench
from measure import DEFAULT_WORK

NAME, KIND = "mlp", "kronecker"


def output_groups(work: str, count: int):
    """The first `count` row groups of the MLP's kronecker job, written by bench/weights.py's `job` if missing."""
    rows = bench.WORKLOADS[NAME].job_rows
    if not bench.job_groups(work, NAME, KIND, rows):
        bench.job(work, NAME, bench.model_path(work, NAME), bench.data(work, NAME, rows), KIND, rows)
    return bench.job_groups(work, NAME, KIND, rows)[:count]


def copies(repeats: int = 30, size: int = 64 << 20) -> tuple[float, float]:
    """Seconds for one thread's `repeats` copies of `size` bytes alone, and for the slower of two threads at once."""
    buffers = [(np.ones(size, np.uint8), np.empty(size, np.uint8)) for _ in range(2)]

    def copy(pair, out, key):
        start = time.perf_counter()
        for _ in range(repeats):
            np.copyto(pair[1], pair[0])
        out[key] = time.perf_counter() - start

    alone, both = {}, {}
    copy(buffers[0], alone, 0)
    threads = [threading.Thread(target=copy, args=(buffers[i], both, i)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return alone[0], max(both.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default=DEFAULT_WORK)
    parser.add_argument("--groups", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import keras

    groups = output_groups(args.work, args.groups)
    rows = sum(g.num_rows for g in groups)
    model = keras.models.load_model(bench.model_path(args.work, NAME), compile=False)
    engine = bench.weight_engine(model, *bench.ENGINE[KIND])
    x = bench.inputs_for(NAME, bench.WORKLOADS[NAME].shape, rows)
    y = (np.arange(rows) % 10).astype(np.float32)
    batches = [(x[i : i + bench.BATCH], y[i : i + bench.BATCH]) for i in range(0, rows - bench.BATCH + 1, bench.BATCH)]
    engine([batches[0][0]], [batches[0][1]])  # trace
    target = os.path.join(args.work, "contention.parquet")

    def compute():
        start = time.perf_counter()
        for xb, yb in batches:
            engine([xb], [yb])
        return time.perf_counter() - start

    def write():
        return bench.write_groups(target, groups)

    best = {"engine alone": [], "writer alone": [], "engine with the writer": [], "writer with the engine": []}
    for r in range(args.rounds):
        alone = compute(), write()
        together = {}
        thread = threading.Thread(target=lambda: together.setdefault("writer", write()))
        thread.start()
        together["engine"] = compute()
        thread.join()
        for key, value in zip(best, (*alone, together["engine"], together["writer"])):
            best[key].append(value)
        print(f"round {r}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in best.items()), flush=True)
    os.remove(target)
    b = {k: min(v) for k, v in best.items()}
    print(f"\n{NAME} {KIND}: {len(batches) * bench.BATCH:,} engine rows, {rows:,} written rows; best of {args.rounds}")
    for key, value in b.items():
        print(f"  {key:24s} {value:6.2f} s")
    print(f"  the engine slowed by the writer {b['engine with the writer'] / b['engine alone']:.2f}x, the writer by "
          f"the engine {b['writer with the engine'] / b['writer alone']:.2f}x; both at once "
          f"{max(b['engine with the writer'], b['writer with the engine']):.2f} s against "
          f"{b['engine alone'] + b['writer alone']:.2f} s one after the other")
    copied = [copies() for _ in range(args.rounds)]
    alone, both = min(c[0] for c in copied), min(c[1] for c in copied)
    print(f"  memory copies, 30 x 64 MiB a thread: one thread {alone:.2f} s, two at once {both:.2f} s "
          f"({both / alone:.2f}x; independent CPUs with bandwidth to spare: 1.00x)")


if __name__ == "__main__":
    main()
