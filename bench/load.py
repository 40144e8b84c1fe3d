"""Load benchmark (issue 3, "Load"): 1,000,000 tabular rows through the job, clean and with 1% bad rows.

The tabular path: an MLP (16 inputs, Dense 64-64-1) fed from 16 scalar float32
columns stacked with `--feature_columns f000,...,f015`, as the README's tabular
example. Inputs are one Parquet file each, 100,000-row row groups (at full size),
made once under the work dir and reused. It measures, as whole CLI processes
(median of --repeats):
  small  --rows / 10 clean rows: the baseline for peak RSS
  clean  --rows clean rows
  bad    the same --rows with every 100th row bad (1%: alternately a NaN and a null)
and checks:
  peak RSS, clean / small  <= 1.3   (rows x10 must not grow memory: the job streams)
  bad / clean, wall and RSS          (the rejected-rows path should cost little)
  rows in = rows out + rows rejected, from the job's summary line and from the
  output files' footers, and rejected = exactly the rows made bad.

    .venv/bin/python bench/load.py                        # 1M rows, 3 repeats (several minutes)
    .venv/bin/python bench/load.py --rows 50000 --repeats 1   # a quick check
    .venv/bin/python bench/load.py --pipeline_args "--batch_size 1024"
"""

from __future__ import annotations

import argparse
import math
import os
import shlex
import sys

from measure import (
    publish,
    CLI,
    DEFAULT_WORK,
    BenchError,
    expected_bad,
    feature_names,
    machine,
    make_mlp,
    markdown,
    parquet_rows,
    remove,
    repeat,
    scalar_chunk,
    summary_rows,
    verdict,
    write_parquet,
)

FEATURES = 16
RSS_GROWTH = 1.3  # peak RSS at 10x the rows, at most
BAD_COST = 1.1  # our reading of "costs little": the bad run within 10% of the clean one


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the clean and bad runs")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each; the median is reported")
    parser.add_argument("--pipeline_args", default="", help="extra flags for the job")
    parser.add_argument("--work", default=DEFAULT_WORK, help="data, model, outputs and logs (reused across runs)")
    parser.add_argument("--markdown", help="also write the tables to this file")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    work, rows = args.work, args.rows
    small = max(1, rows // 10)
    model = make_mlp(os.path.join(work, f"tabular{FEATURES}.keras"), FEATURES, (64, 64), 1)
    columns = feature_names(FEATURES)
    group = max(1, math.ceil(rows / 10))  # the same row-group size in every file: 1 group small, 10 large

    def data(n: int, bad: bool) -> str:
        path = os.path.join(work, f"tabular{FEATURES}-{n}-rg{group}{'-bad' if bad else ''}.parquet")
        return write_parquet(path, n, group, scalar_chunk(FEATURES, bad))

    print("preparing data and model ...", file=sys.stderr, flush=True)
    cases = {"small": (small, data(small, False)), "clean": (rows, data(rows, False)), "bad": (rows, data(rows, True))}
    results = {}
    for name, (n, path) in cases.items():
        output = os.path.join(work, "out", "load", name)
        argv = [
            CLI,
            "--runner=DirectRunner",
            f"--input={path}",
            f"--output={output}",
            f"--model={model}",
            f"--feature_columns={','.join(columns)}",
            "--keep_columns=id",
            "--target=sum",
        ] + shlex.split(args.pipeline_args)
        print(f"  {name}: {n:,} rows x {args.repeats} ...", file=sys.stderr, flush=True)
        try:
            stats = repeat(argv, args.repeats, os.path.join(work, "logs", "load", name), lambda: remove(output + "*"))
            check_rows(name, n, stats.runs[-1].text(), output, bad=name == "bad")
        except BenchError as err:
            print(f"load.py: {err}", file=sys.stderr)
            return 1
        results[name] = (n, stats)

    table = markdown(
        ["run", "rows", "bad rows", "wall s", "wall min-max", "CPU s", "peak RSS MiB", "rows/s"],
        [
            [
                name,
                f"{n:,}",
                f"{expected_bad(n) if name == 'bad' else 0:,}",
                f"{s.wall:.1f}",
                s.spread,
                f"{s.cpu:.1f}",
                f"{s.rss_mib:,.0f}",
                f"{n / s.wall:,.0f}",
            ]
            for name, (n, s) in results.items()
        ],
    )
    clean, bad, base = results["clean"][1], results["bad"][1], results["small"][1]
    growth = clean.rss_mib / base.rss_mib
    figures = [
        [f"peak RSS, {rows:,} / {small:,} rows", f"{growth:.2f}", f"≤ {RSS_GROWTH}", verdict(growth, RSS_GROWTH, True)],
        [
            "wall, 1% bad / clean",
            f"{bad.wall / clean.wall:.2f}",
            f"≤ {BAD_COST}",
            verdict(bad.wall / clean.wall, BAD_COST, True),
        ],
        [
            "peak RSS, 1% bad / clean",
            f"{bad.rss_mib / clean.rss_mib:.2f}",
            f"≤ {BAD_COST}",
            verdict(bad.rss_mib / clean.rss_mib, BAD_COST, True),
        ],
        ["rows in = out + rejected", "yes", "always", "met"],  # check_rows raised otherwise
    ]
    header = f"Medians of {args.repeats} run(s), {FEATURES} scalar feature columns"
    if args.pipeline_args:
        header += f", job args `{args.pipeline_args}`"
    text = f"{header}; {machine()}.\n\n{table}\n\n{markdown(['figure', 'value', 'target', 'met?'], figures)}\n"
    publish(text, args.markdown)
    return 0


def check_rows(name: str, rows: int, log: str, output: str, bad: bool) -> None:
    """The summary balances, matches the files written, and rejects exactly the rows made bad."""
    rows_in, rows_out, rejected = summary_rows(log)
    want_rejected = expected_bad(rows) if bad else 0
    written = parquet_rows(output + "-?????-of-?????.parquet")
    written_rejected = parquet_rows(output + "_rejected-?????-of-?????.parquet")
    if (rows_in, rows_out, rejected) != (rows, rows - want_rejected, want_rejected):
        raise BenchError(
            f"{name}: summary says {rows_in} in, {rows_out} out, {rejected} rejected; "
            f"expected {rows} in, {rows - want_rejected} out, {want_rejected} rejected"
        )
    if (written, written_rejected) != (rows_out, rejected):
        raise BenchError(
            f"{name}: files hold {written} output and {written_rejected} rejected rows; "
            f"the summary says {rows_out} and {rejected}"
        )


if __name__ == "__main__":
    sys.exit(main())
