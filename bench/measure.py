"""Shared by bench/speed.py and bench/load.py: time whole child processes, make models and Parquet data.

Why whole processes: start-up (importing TensorFlow and Beam, loading the model,
tracing) is part of what a user waits for, and peak RSS is only meaningful per
process. Each command is forked from a small launcher and reaped with
`os.wait4`, whose rusage is that command's own (plus any descendants it
reaped): CPU time is user + sys, peak RSS is `ru_maxrss` (the largest single
process, not a sum over processes).

This module imports neither TensorFlow nor Beam at the top, so the benchmark's
own process stays light; Keras is imported only to build a missing model.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
DEFAULT_WORK = os.path.join(BENCH_DIR, "work")
# The venv's console script when there is one, so the CLI is run exactly as a user runs it.
CLI = os.path.join(os.path.dirname(sys.executable), "beam-gradients")
SUMMARY_ROWS = re.compile(r"rows: (\d+) in, (\d+) out, (\d+) rejected")
JOB_SECONDS = re.compile(r"\), job ([\d.]+) s \(([\d,]+) rows/s\)")


class BenchError(RuntimeError):
    """A child process failed or gave an answer the benchmark cannot trust."""


@dataclasses.dataclass
class Run:
    """One child process: wall seconds, CPU seconds (user + sys), peak RSS in MiB, its log."""

    wall: float
    cpu: float
    rss_mib: float
    log: str
    started: float  # time.time() just before the child was spawned

    def text(self) -> str:
        with open(self.log, errors="replace") as fh:
            return fh.read()


@dataclasses.dataclass
class Stats:
    """The median of several runs of one command (each figure's median taken on its own)."""

    runs: list[Run]

    @property
    def wall(self) -> float:
        return statistics.median(r.wall for r in self.runs)

    @property
    def cpu(self) -> float:
        return statistics.median(r.cpu for r in self.runs)

    @property
    def rss_mib(self) -> float:
        return statistics.median(r.rss_mib for r in self.runs)

    @property
    def spread(self) -> str:
        """min-max of the wall times: how noisy the median is."""
        walls = [r.wall for r in self.runs]
        return f"{min(walls):.1f}-{max(walls):.1f}" if len(walls) > 1 else ""


# Spawns the measured command from a small process and reports its rusage as JSON.
# Why not Popen + wait4 here: Linux keeps a process's peak RSS across exec, and
# Popen's vfork lends the child this (large) process's memory until exec, so the
# child's ru_maxrss would start at this process's own peak. A real fork() of a
# ~10 MiB launcher gives the command a clean count.
LAUNCHER = """
import json, os, sys, time
started = time.time()
t0 = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as err:
        print(f"cannot run {sys.argv[2]}: {err}", file=sys.stderr, flush=True)
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - t0
result = dict(wall=wall, cpu=usage.ru_utime + usage.ru_stime, rss_kib=usage.ru_maxrss,
              status=os.waitstatus_to_exitcode(status), started=started)
with open(sys.argv[1], "w") as fh:
    json.dump(result, fh)
"""


def run_process(argv: Sequence[str], log: str, env: dict | None = None) -> Run:
    """Run `argv` to the end, stdout and stderr into `log`; raise BenchError on a non-zero exit."""
    os.makedirs(os.path.dirname(log), exist_ok=True)
    report = log + ".json"
    with open(log, "wb") as out:
        subprocess.run(
            [sys.executable, "-S", "-c", LAUNCHER, report, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
        )
    with open(report) as fh:
        got = json.load(fh)
    run = Run(got["wall"], got["cpu"], got["rss_kib"] / 1024, log, got["started"])
    if got["status"] != 0:
        tail = "\n".join(run.text().splitlines()[-15:])
        raise BenchError(f"exit status {got['status']}: {shlex.join(argv)}\nlog {log}:\n{tail}")
    return run


def repeat(argv: Sequence[str], times: int, log_prefix: str, before: Callable[[], None] | None = None) -> Stats:
    """`times` runs of `argv`, one after the other; `before` runs before each (to clear outputs)."""
    runs = []
    for i in range(times):
        if before is not None:
            before()
        runs.append(run_process(argv, f"{log_prefix}-{i}.log"))
    return Stats(runs)


def remove(pattern: str) -> None:
    for path in glob.glob(pattern):
        os.remove(path)


def summary_rows(text: str) -> tuple[int, int, int]:
    """(in, out, rejected) from the job's summary line `rows: N in, M out, K rejected`."""
    found = SUMMARY_ROWS.findall(text)
    if not found:
        raise BenchError("the job printed no 'rows: N in, M out, K rejected' line")
    return tuple(int(v) for v in found[-1])


def job_seconds(text: str) -> float:
    """The job's own seconds (wall time less start-up) from its summary line `..., job 12.3 s (N rows/s)`: rows in
    over the rate, which the line prints to the row (five digits), not the seconds' one decimal (on a 1.5 s job a
    tenth of a second is 7%, so a ratio of two such rounded times moved in steps of 0.07)."""
    found = JOB_SECONDS.findall(text)
    if not found:
        raise BenchError("the job printed no 'job N s (R rows/s)' in its wall time line")
    seconds, rate = found[-1]
    rate = int(rate.replace(",", ""))
    return summary_rows(text)[0] / rate if rate else float(seconds)


def parquet_rows(pattern: str) -> int:
    """Rows in every file `pattern` matches, from the footers alone."""
    return sum(pq.ParquetFile(p).metadata.num_rows for p in glob.glob(pattern))


# ---------------------------------------------------------------- models


def make_mlp(path: str, inputs: int, hidden: Sequence[int], outputs: int, seed: int = 0) -> str:
    """A Dense MLP with one vector input named `x`, saved once to `path`."""
    if os.path.exists(path):
        return path
    import keras

    keras.utils.set_random_seed(seed)
    x = keras.Input((inputs,), name="x")
    h = x
    for units in hidden:
        h = keras.layers.Dense(units, activation="relu")(h)
    return _save(keras.Model(x, keras.layers.Dense(outputs)(h)), path)


def make_cnn(
    path: str, shape: Sequence[int] = (32, 32, 3), filters: Sequence[int | str] = (16, 32), seed: int = 0
) -> str:
    """Conv2D layers (3x3, same, relu; "pool" in `filters`: a 2x2 max pooling), global average pooling, Dense 10;
    one image input named `x`, saved once to `path`."""
    if os.path.exists(path):
        return path
    import keras

    keras.utils.set_random_seed(seed)
    x = keras.Input(tuple(shape), name="x")
    h = x
    for n in filters:
        pool = n == "pool"
        h = keras.layers.MaxPooling2D()(h) if pool else keras.layers.Conv2D(n, 3, padding="same", activation="relu")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return _save(keras.Model(x, keras.layers.Dense(10)(h)), path)


def _save(model, path: str) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = path[: -len(".keras")] + ".partial.keras"
    model.save(partial)
    os.replace(partial, path)
    return path


# ---------------------------------------------------------------- data


def write_parquet(path: str, rows: int, row_group_rows: int, chunk: Callable[[int, int], pa.Table]) -> str:
    """`rows` rows made by `chunk(start, stop)`, one row group per chunk; kept if already there.

    Written to a temporary name first, so an interrupted run never leaves a short
    file that a later run would reuse.
    """
    if os.path.exists(path) and pq.ParquetFile(path).metadata.num_rows == rows:
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = path + ".partial"
    writer = None
    try:
        for start in range(0, rows, row_group_rows):
            table = chunk(start, min(rows, start + row_group_rows))
            if writer is None:
                writer = pq.ParquetWriter(partial, table.schema, compression="snappy")
            writer.write_table(table, row_group_size=table.num_rows)
    finally:
        if writer is not None:
            writer.close()
    os.replace(partial, path)
    return path


def tensor_chunk(shape: Sequence[int], seed: int = 0) -> Callable[[int, int], pa.Table]:
    """Rows `id` (int64) and `x` (fixed_shape_tensor<float32> of `shape`), the same for the same ids."""

    def chunk(start: int, stop: int) -> pa.Table:
        rng = np.random.default_rng([seed, start])
        x = rng.standard_normal((stop - start, *shape), dtype=np.float32)
        return pa.table(
            {"id": np.arange(start, stop, dtype=np.int64), "x": pa.FixedShapeTensorArray.from_numpy_ndarray(x)}
        )

    return chunk


BAD_EVERY = 100  # with bad rows on: every 100th row is bad (1%), alternately NaN and null


def feature_names(features: int) -> list[str]:
    return [f"f{j:03d}" for j in range(features)]


def scalar_chunk(features: int, bad: bool, seed: int = 0) -> Callable[[int, int], pa.Table]:
    """Rows `id` and scalar float32 columns f000, f001, ...; with `bad`, 1% of rows hold a NaN or a null.

    Bad rows are every BAD_EVERY-th id, so the expected rejected count is known
    without reading the data (see `expected_bad`).
    """

    def chunk(start: int, stop: int) -> pa.Table:
        rng = np.random.default_rng([seed, start])
        ids = np.arange(start, stop, dtype=np.int64)
        x = rng.standard_normal((stop - start, features), dtype=np.float32)
        masks = np.zeros_like(x, bool)
        if bad:
            rows = np.flatnonzero(ids % BAD_EVERY == 0)
            column = (ids[rows] // BAD_EVERY) % features
            nan = (ids[rows] // BAD_EVERY) % 2 == 0
            x[rows[nan], column[nan]] = np.nan
            masks[rows[~nan], column[~nan]] = True
        columns = {"id": ids}
        for j, name in enumerate(feature_names(features)):
            columns[name] = pa.array(x[:, j], mask=masks[:, j] if masks[:, j].any() else None)
        return pa.table(columns)

    return chunk


def expected_bad(rows: int) -> int:
    return math.ceil(rows / BAD_EVERY)


# ---------------------------------------------------------------- tables


def publish(text: str, path: str | None) -> None:
    """Print a benchmark's tables, and write them to `path` (its --markdown) where given."""
    print(text)
    if path:
        with open(path, "w") as fh:
            fh.write(text)


def markdown(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table, padded so it also reads well in a terminal."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def verdict(value: float, target: float, at_most: bool) -> str:
    if math.isnan(value):
        return "not measured"
    return "met" if (value <= target if at_most else value >= target) else "NOT met"


def machine() -> str:
    """One line saying where the numbers came from."""
    import platform

    load = os.getloadavg()[0]
    return f"{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, load average {load:.1f}"
