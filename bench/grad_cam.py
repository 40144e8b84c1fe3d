"""Grad-CAM and Grad-CAM++ (issue 19): the job against xplique 2.0.2's script, both as whole processes.

The CNN of bench/speed.py (32x32x3, Conv2D 16 and 32, Dense 10) over `--rows` rows, target the
predicted class, the default layer (the last with `filters`) on both sides, batch 64:
  job      beam-gradients --runner DirectRunner --method grad_cam(_pp) --target predicted
  xplique  bench/xplique_explain.py in bench/.xplique-venv (bash bench/xplique_venv.sh makes it):
           read the Parquet, explain every row, write Parquet, as an xplique user would
Agreement: the largest difference of the two maps over the largest magnitude, on every row.

    .venv/bin/python bench/grad_cam.py --rows 10000 --markdown /tmp/grad_cam.md
"""

from __future__ import annotations

import argparse
import os
import sys

from measure import BENCH_DIR, CLI, DEFAULT_WORK, machine, markdown, publish
from methods import XPLIQUE_PYTHON, agreement, run_variants

METHODS = ("grad_cam", "grad_cam_pp")


def argv(variant: str, method: str, args, data: str, model: str, output: str) -> list[str]:
    if variant == "job":
        return [CLI, "--runner=DirectRunner", f"--input={data}", f"--output={output}", f"--model={model}",
                "--feature_columns=x", "--keep_columns=id", "--target=predicted", f"--method={method}",
                f"--batch_size={args.batch_size}"]
    return [XPLIQUE_PYTHON, os.path.join(BENCH_DIR, "xplique_explain.py"), f"--input={data}", f"--output={output}",
            f"--model={model}", f"--method={method}", f"--batch_size={args.batch_size}"]


def main(argv_=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", default=DEFAULT_WORK)
    parser.add_argument("--markdown")
    args = parser.parse_args(argv_)
    results, written = run_variants("grad_cam", METHODS, ("job", "xplique"), args, argv)
    rows, figures = [], []
    for (method, variant), stats in results.items():
        ratio = stats.wall / results[(method, "job")].wall
        rows.append([method, variant, f"{args.rows:,}", f"{stats.wall:.1f}", f"{stats.cpu:.1f}", f"{stats.rss_mib:,.0f}",
                     f"{ratio:.2f}"])
    for method in METHODS:
        figures.append([f"{method}: xplique/job wall", f"{results[(method, 'xplique')].wall / results[(method, 'job')].wall:.2f}", "> 1"])
        gap = agreement(written[(method, "job")], written[(method, "xplique")], args.rows)
        figures.append([f"{method}: max |job - xplique| / max |xplique|", f"{gap:.1e}", "small"])
    header = f"{args.rows:,} rows, batch {args.batch_size}, median of {args.repeats}; {machine()}."
    text = (f"{header}\n\n{markdown(['method', 'run', 'rows', 'wall s', 'CPU s', 'peak RSS MiB', 'wall / job'], rows)}"
            f"\n\n{markdown(['figure', 'value', 'goal'], figures)}\n")
    publish(text, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
