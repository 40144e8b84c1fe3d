"""Speed benchmark (issue 4): the job against the in-memory limit and the seed recipe, as whole processes.

Workloads, each one Parquet file of several row groups with `id` and `x`
(a fixed_shape_tensor column), made once under the work dir and reused:
  mlp: 128 inputs, Dense 256-256-10, 300,000 rows
  cnn: 32x32x3 input, Conv2D 16 and 32, global average pooling, Dense 10, 30,000 rows

For each it times, each in a fresh Python process (median of --repeats runs,
taken in turns so that drifting machine load hits all three alike):
  pipeline  the CLI, `beam-gradients --runner DirectRunner ... --target sum`, Parquet to Parquet
  limit     bench/limit.py: whole table in numpy, one batched tf.function, one Parquet file
  seed      bench/seed_recipe.py: ReadFromParquet dicts, BatchElements, eager GradientTape, WriteToParquet
and reports wall time, CPU time (user + sys) and peak RSS of each process, the
ratios against the targets, peak RSS of the pipeline at 3x the rows, and
start-up: from spawning the CLI to its first computed batch, measured by
bench/first_batch.py (the CLI run in-process with the engine's first call
timestamped, then the process ends), so no change to the job is needed.

    .venv/bin/python bench/speed.py                       # everything, full size (tens of minutes)
    .venv/bin/python bench/speed.py --scale 0.02 --repeats 1 --skip seed   # a quick check
    .venv/bin/python bench/speed.py --workloads mlp --jit --batch_size 1024
    .venv/bin/python bench/speed.py --pipeline_args "--read_batch_rows 8192" --markdown /tmp/speed.md

--jit turns on jit_compile for the pipeline and the limit both (the seed recipe
is eager by definition). --pipeline_args adds flags to the pipeline only.
Output tables are markdown, ready for the README; raw runs go to <work>/speed.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import shlex
import sys
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from measure import (
    publish,
    BENCH_DIR,
    CLI,
    DEFAULT_WORK,
    BenchError,
    Stats,
    machine,
    make_cnn,
    make_mlp,
    markdown,
    remove,
    repeat,
    run_process,
    summary_rows,
    tensor_chunk,
    verdict,
    write_parquet,
)

ROW_GROUPS = 6  # per 1x input file; the 3x file keeps the row-group size, so it has 3x as many
TARGETS = {  # name: (target, at most?)
    "pipeline/limit wall": (1.3, True),
    "seed/pipeline wall": (2.5, False),
    "pipeline RSS 3x/1x": (1.2, True),
}


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    rows: int
    shape: tuple[int, ...]
    make_model: Callable[[str], str]


WORKLOADS = {
    "mlp": Workload("mlp", 300_000, (128,), lambda path: make_mlp(path, 128, (256, 256), 10)),
    "cnn": Workload("cnn", 30_000, (32, 32, 3), make_cnn),
}
VARIANTS = ("pipeline", "limit", "seed")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="mlp,cnn", help="comma-separated: mlp, cnn")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every workload's rows (0.02: quick check)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each command; the median is reported")
    parser.add_argument("--repeats_3x", type=int, default=1, help="runs of the pipeline at 3x the rows")
    parser.add_argument("--batch_size", type=int, default=256, help="for all three (256 is the job's default)")
    parser.add_argument("--jit", action="store_true", help="jit_compile for the pipeline and the limit")
    parser.add_argument(
        "--pipeline_args", default="", help='extra flags for the pipeline, e.g. "--read_batch_rows 8192"'
    )
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: seed, rss3x, startup")
    parser.add_argument("--work", default=DEFAULT_WORK, help="data, models, outputs and logs (reused across runs)")
    parser.add_argument("--markdown", help="also write the tables to this file")
    args = parser.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = set(args.workloads) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s) {', '.join(sorted(unknown))}; choose from {', '.join(WORKLOADS)}")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    if args.skip - {"seed", "rss3x", "startup"}:
        parser.error("--skip takes seed, rss3x, startup")
    return args


class Bench:
    """One workload's files and commands."""

    def __init__(self, workload: Workload, args: argparse.Namespace):
        self.w = workload
        self.args = args
        self.rows = max(1, round(workload.rows * args.scale))
        self.row_group_rows = math.ceil(self.rows / ROW_GROUPS)
        work = args.work
        self.model = workload.make_model(os.path.join(work, f"{workload.name}.keras"))
        self.out = os.path.join(work, "out", workload.name)
        self.logs = os.path.join(work, "logs", workload.name)
        os.makedirs(self.out, exist_ok=True)

    def data(self, rows: int) -> str:
        path = os.path.join(self.args.work, f"{self.w.name}-{rows}-rg{self.row_group_rows}.parquet")
        return write_parquet(path, rows, self.row_group_rows, tensor_chunk(self.w.shape))

    def pipeline_argv(self, data: str, output: str, program: list[str]) -> list[str]:
        argv = program + [
            "--runner=DirectRunner",
            f"--input={data}",
            f"--output={output}",
            f"--model={self.model}",
            "--feature_columns=x",
            "--keep_columns=id",
            "--target=sum",
            f"--batch_size={self.args.batch_size}",
        ]
        if self.args.jit:
            argv.append("--jit_compile")
        return argv + shlex.split(self.args.pipeline_args)

    def argv(self, variant: str, data: str) -> list[str]:
        common = [
            f"--input={data}",
            f"--model={self.model}",
            "--feature_column=x",
            f"--batch_size={self.args.batch_size}",
        ]
        if variant == "pipeline":
            return self.pipeline_argv(data, self.output(variant), [CLI])
        if variant == "limit":
            jit = ["--jit"] if self.args.jit else []
            return [
                sys.executable,
                os.path.join(BENCH_DIR, "limit.py"),
                *common,
                f"--output={self.output(variant)}",
            ] + jit
        return [sys.executable, os.path.join(BENCH_DIR, "seed_recipe.py"), *common, f"--output={self.output(variant)}"]

    def output(self, variant: str) -> str:
        return os.path.join(self.out, variant + (".parquet" if variant == "limit" else ""))

    def clear(self, variant: str) -> Callable[[], None]:
        return lambda: remove(self.output(variant) + "*")

    def output_files(self, variant: str) -> list[str]:
        """What a variant wrote: the limit's one file, or a prefix's shards (not its rejected rows)."""
        if variant == "limit":
            return [self.output(variant)]
        return sorted(glob.glob(self.output(variant) + "-?????-of-?????.parquet"))


def run_workload(bench: Bench, args) -> dict:
    """Every measurement of one workload: {part: Stats} plus start-up figures."""
    variants = [v for v in VARIANTS if not (v == "seed" and "seed" in args.skip)]
    data = bench.data(bench.rows)
    results: dict = {v: Stats([]) for v in variants}
    for i in range(args.repeats):  # in turns: p, l, s, p, l, s, ...
        for v in variants:
            print(f"  {bench.w.name} {v} run {i + 1}/{args.repeats} ...", file=sys.stderr, flush=True)
            bench.clear(v)()
            results[v].runs.append(run_process(bench.argv(v, data), f"{bench.logs}/{v}-{i}.log"))
    check_outputs(bench, results)
    if "rss3x" not in args.skip:
        data3 = bench.data(3 * bench.rows)
        print(f"  {bench.w.name} pipeline at 3x rows ...", file=sys.stderr, flush=True)
        out3 = os.path.join(bench.out, "pipeline3x")
        results["pipeline 3x"] = repeat(
            bench.pipeline_argv(data3, out3, [CLI]),
            args.repeats_3x,
            f"{bench.logs}/pipeline3x",
            before=lambda: remove(out3 + "*"),
        )
        got = summary_rows(results["pipeline 3x"].runs[-1].text())
        if got != (3 * bench.rows, 3 * bench.rows, 0):
            raise BenchError(f"{bench.w.name} pipeline 3x: rows in/out/rejected {got}, expected {3 * bench.rows} each")
    if "startup" not in args.skip:
        results["startup"] = startup(bench, data, args.repeats)
    return results


def startup(bench: Bench, data: str, times: int) -> dict:
    """Median seconds from spawning the CLI to (a) its imports done, (b) its first batch computed."""
    argv = bench.pipeline_argv(
        data, os.path.join(bench.out, "startup"), [sys.executable, f"{BENCH_DIR}/first_batch.py"]
    )
    imported, first = [], []
    for i in range(times):
        print(f"  {bench.w.name} start-up run {i + 1}/{times} ...", file=sys.stderr, flush=True)
        run = run_process(argv, f"{bench.logs}/startup-{i}.log")
        lines = [line.split() for line in run.text().splitlines() if line.startswith("BENCH ")]
        if not lines:
            raise BenchError(f"start-up probe printed no BENCH line; see {run.log}")
        fields = dict(zip(lines[-1][1::2], lines[-1][2::2]))
        imported.append(float(fields["imported"]) - run.started)
        first.append(float(fields["first_batch"]) - run.started)
    return {"imports": float(np.median(imported)), "first_batch": float(np.median(first))}


def check_outputs(bench: Bench, results: dict) -> None:
    """Every variant wrote every row, and they agree on the gradients of the first ids."""
    text = results["pipeline"].runs[-1].text()
    got = summary_rows(text)
    if got != (bench.rows, bench.rows, 0):
        raise BenchError(f"{bench.w.name} pipeline: rows in/out/rejected {got}, expected {bench.rows}, {bench.rows}, 0")
    reference = None
    for variant in results:
        files = bench.output_files(variant)
        rows = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
        if rows != bench.rows:
            raise BenchError(f"{bench.w.name} {variant}: {rows} output rows, expected {bench.rows}")
        grads = first_gradients(files, 64)
        if reference is None:
            reference = grads
            continue
        scale = np.abs(reference).max() or 1.0
        diff = np.abs(grads - reference).max() / scale
        if diff > 1e-3:
            raise BenchError(f"{bench.w.name} {variant}: gradients differ from the pipeline's by {diff:.2e} (relative)")


def first_gradients(files: list[str], n: int) -> np.ndarray:
    """Gradients of ids 0..n-1 as (n, values), whichever layout the variant wrote."""
    parts = [pq.read_table(f, columns=["id", "gradient"], filters=[("id", "<", n)]) for f in files]
    parts = [p for p in parts if p.num_rows]
    table = pa.concat_tables(parts).sort_by("id")
    column = table.column("gradient").combine_chunks()
    storage = getattr(column, "storage", column)
    return np.asarray(storage.flatten().to_numpy(zero_copy_only=False)).reshape(table.num_rows, -1)


def tables(all_results: dict, rows_by_name: dict, args) -> str:
    """The runs table and the figures-against-targets table, in markdown."""
    rows = []
    for name, results in all_results.items():
        for part, stats in results.items():
            if not isinstance(stats, Stats):
                continue
            n = rows_by_name[name] * (3 if part == "pipeline 3x" else 1)
            wall, cpu, rss = f"{stats.wall:.1f}", f"{stats.cpu:.1f}", f"{stats.rss_mib:,.0f}"
            rows.append([name, part, f"{n:,}", wall, stats.spread, cpu, rss, f"{n / stats.wall:,.0f}"])
    runs = markdown(["workload", "run", "rows", "wall s", "wall min-max", "CPU s", "peak RSS MiB", "rows/s"], rows)

    names = list(all_results)
    ratio_rows = []

    def ratio(results, a, b, attr):
        if a not in results or b not in results:
            return float("nan")
        return getattr(results[a], attr) / getattr(results[b], attr)

    figures = {
        "pipeline/limit wall": lambda r: ratio(r, "pipeline", "limit", "wall"),
        "pipeline/limit CPU": lambda r: ratio(r, "pipeline", "limit", "cpu"),
        "seed/pipeline wall": lambda r: ratio(r, "seed", "pipeline", "wall"),
        "seed/pipeline CPU": lambda r: ratio(r, "seed", "pipeline", "cpu"),
        "pipeline RSS 3x/1x": lambda r: ratio(r, "pipeline 3x", "pipeline", "rss_mib"),
    }
    for label, f in figures.items():
        values = [f(all_results[n]) for n in names]
        if all(math.isnan(v) for v in values):
            continue  # a part left out with --skip
        target, at_most = TARGETS.get(label, (None, True))
        goal = "" if target is None else f"{'≤' if at_most else '≥'} {target}"
        met = "" if target is None else ", ".join(f"{n}: {verdict(v, target, at_most)}" for n, v in zip(names, values))
        ratio_rows.append([label, *[f"{v:.2f}" if not math.isnan(v) else "-" for v in values], goal, met])
    for key, label in (("imports", "start-up: imports done, s"), ("first_batch", "start-up: first batch, s")):
        values = [all_results[n].get("startup", {}).get(key) for n in names]
        if all(v is None for v in values):
            continue
        ratio_rows.append([label, *[f"{v:.1f}" if v is not None else "-" for v in values], "small", ""])
    ratios = markdown(["figure", *names, "target", "met?"], ratio_rows)
    flags = f"batch_size {args.batch_size}, jit_compile {'on' if args.jit else 'off'}"
    if args.pipeline_args:
        flags += f", pipeline args `{args.pipeline_args}`"
    header = f"Medians of {args.repeats} run(s), scale {args.scale:g}, {flags}; {machine()}."
    return f"{header}\n\n{runs}\n\n{ratios}\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    os.makedirs(args.work, exist_ok=True)
    all_results, rows = {}, {}
    try:
        for name in args.workloads:
            print(f"{name}: preparing data and model ...", file=sys.stderr, flush=True)
            bench = Bench(WORKLOADS[name], args)
            rows[name] = bench.rows
            all_results[name] = run_workload(bench, args)
    except BenchError as err:
        print(f"speed.py: {err}", file=sys.stderr)
        return 1
    text = tables(all_results, rows, args)
    publish(text, args.markdown)
    dump = {
        name: {
            part: (value if not isinstance(value, Stats) else [dataclasses.asdict(r) for r in value.runs])
            for part, value in results.items()
        }
        for name, results in all_results.items()
    }
    with open(os.path.join(args.work, "speed.json"), "w") as fh:
        json.dump({"args": vars(args) | {"skip": sorted(args.skip)}, "rows": rows, "results": dump}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
