"""Methods benchmark (issue 11): integrated gradients and SmoothGrad, the job against the in-memory limit and xplique.

The CNN of bench/speed.py (32x32x3, Conv2D 16 and 32, Dense 10) over `--rows`
rows (30,000 at full size), target the predicted class, batch 64, IG at 50 steps
(trapezoid, zero baseline) and SmoothGrad at 50 samples. Each run is a whole
process, timed with its CPU time and peak RSS (bench/measure.py):
  job      beam-gradients --runner DirectRunner --method ... --target predicted
  limit    bench/methods_limit.py: numpy in memory, one tf.function per batch over all its steps at once
  xplique  bench/xplique_explain.py in bench/.xplique-venv (bash bench/xplique_venv.sh makes it)
Agreement: the job's IG and gradient x input against xplique's, as the largest
difference over the largest magnitude, on every row.

    .venv/bin/python bench/methods.py --rows 1000 --markdown /tmp/methods.md
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from measure import BENCH_DIR, CLI, DEFAULT_WORK, Stats, machine, make_cnn, markdown, remove, run_process, tensor_chunk
from measure import publish, write_parquet
from speed import first_gradients

XPLIQUE_PYTHON = os.path.join(BENCH_DIR, ".xplique-venv", "bin", "python")
METHODS = {"integrated_gradients": "--steps", "smoothgrad": "--samples"}


def outputs(path: str) -> list[str]:
    import glob

    return [path] if path.endswith(".parquet") else sorted(glob.glob(path + "-?????-of-?????.parquet"))


def argv(variant: str, method: str, args, data: str, model: str, output: str) -> list[str]:
    if variant == "job":
        return [CLI, "--runner=DirectRunner", f"--input={data}", f"--output={output}", f"--model={model}",
                "--feature_columns=x", "--keep_columns=id", "--target=predicted", f"--method={method}",
                f"--batch_size={args.batch_size}"] + ([f"{METHODS[method]}={args.points}"] if method in METHODS else [])
    script, python = ("methods_limit.py", sys.executable) if variant == "limit" else ("xplique_explain.py", XPLIQUE_PYTHON)
    return [python, os.path.join(BENCH_DIR, script), f"--input={data}", f"--output={output}", f"--model={model}",
            f"--method={method}", f"--points={args.points}", f"--batch_size={args.batch_size}"]


def agreement(a: list[str], b: list[str], rows: int) -> float:
    ours, theirs = first_gradients(a, rows), first_gradients(b, rows)
    return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def run_variants(name: str, methods, variants, args, make_argv) -> tuple[dict, dict]:
    """Each method's variants as whole processes, `args.repeats` times, on the CNN benchmark's images (made once in
    `args.work`): ({(method, variant): Stats}, {(method, variant): the files the last run wrote})."""
    model = make_cnn(os.path.join(args.work, "cnn.keras"))
    data = write_parquet(os.path.join(args.work, f"cnn-{args.rows}.parquet"), args.rows, max(1, args.rows // 6),
                         tensor_chunk((32, 32, 3)))
    out_dir, logs = os.path.join(args.work, "out", name), os.path.join(args.work, "logs", name)
    os.makedirs(out_dir, exist_ok=True)
    results, written = {}, {}
    for method in methods:
        for i in range(args.repeats):
            for variant in variants:
                output = os.path.join(out_dir, f"{method}-{variant}" + ("" if variant == "job" else ".parquet"))
                remove(output + "*")
                print(f"  {method} {variant} run {i + 1}/{args.repeats} ...", file=sys.stderr, flush=True)
                run = run_process(make_argv(variant, method, args, data, model, output), f"{logs}/{method}-{variant}-{i}.log")
                results.setdefault((method, variant), Stats([])).runs.append(run)
                written[(method, variant)] = outputs(output)
    return results, written


def main(argv_=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--points", type=int, default=50, help="IG steps and SmoothGrad samples")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--skip_xplique", action="store_true")
    parser.add_argument("--work", default=DEFAULT_WORK)
    parser.add_argument("--markdown")
    args = parser.parse_args(argv_)
    variants = ["job", "limit"] + ([] if args.skip_xplique else ["xplique"])
    results, written = run_variants("methods", METHODS, variants, args, argv)
    agree = {}
    if not args.skip_xplique:
        once = argparse.Namespace(**{**vars(args), "repeats": 1})
        methods = ("integrated_gradients", "gradient_x_input")
        _, agreeing = run_variants("methods-agree", methods, ("job", "xplique"), once, argv)
        for method in methods:
            agree[method] = agreement(agreeing[(method, "job")], agreeing[(method, "xplique")], args.rows)
    rows = []
    for (method, variant), stats in results.items():
        ratio = stats.wall / results[(method, "job")].wall
        rows.append([method, variant, f"{args.rows:,}", f"{stats.wall:.1f}", f"{stats.cpu:.1f}", f"{stats.rss_mib:,.0f}",
                     f"{ratio:.2f}"])
    table = markdown(["method", "run", "rows", "wall s", "CPU s", "peak RSS MiB", "wall / job"], rows)
    figures = []
    for method in METHODS:
        job = results[(method, "job")].wall
        figures.append([f"{method}: job/limit wall", f"{job / results[(method, 'limit')].wall:.2f}", "≤ 1.3"])
        if not args.skip_xplique:
            figures.append([f"{method}: xplique/job wall", f"{results[(method, 'xplique')].wall / job:.2f}", "> 1"])
    for method, value in agree.items():
        figures.append([f"{method}: max |job - xplique| / max |xplique|", f"{value:.1e}", "small"])
    header = (f"{args.rows:,} rows, {args.points} steps/samples, batch {args.batch_size}, median of {args.repeats}; "
              f"{machine()}.")
    text = f"{header}\n\n{table}\n\n{markdown(['figure', 'value', 'goal'], figures)}\n"
    publish(text, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
