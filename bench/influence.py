"""Influence benchmark (issue 12): `beam-gradients influence` against the in-memory limit, as whole processes.

Synthetic projections (`id` + `weight_projection` fixed_shape_tensor[dim], with the
contract's metadata) of N training rows and Q queries, made once under the work dir:
  job    the CLI, `beam-gradients influence --runner DirectRunner --score tracin`, Parquet to Parquet
  limit  bench/influence_limit.py: the whole training table in numpy, blocked matmul + argpartition
Both run in the same invocation, one after the other, in fresh processes; the
table gives wall time, CPU time, peak RSS, the job/limit ratio (goal <= 1.5), and
the job's peak RSS at 3x the training rows (goal: flat). The job's and the limit's
proponents are compared, so the two are known to compute the same thing.

    .venv/bin/python bench/influence.py                                  # 1,000,000 x 1,000 at dim 2048, float16
    .venv/bin/python bench/influence.py --rows 200000 --repeats 1        # smaller
    .venv/bin/python bench/influence.py --rows 20000 --queries 100 --dim 256 --no_triple   # a quick check
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from measure import (
    publish,
    BENCH_DIR,
    CLI,
    DEFAULT_WORK,
    BenchError,
    machine,
    markdown,
    remove,
    repeat,
    verdict,
    write_parquet,
)

ROW_GROUP_ROWS = 16384


def projection_chunk(dim: int, dtype: str, seed: int):
    """Rows `id` and `weight_projection`, the same for the same ids, with the contract's schema metadata."""
    weights = {"variables": ["dense/kernel"], "parameters": 1, "projection": {"seed": 0, "dim": dim, "dtype": dtype,
                                                                          "construction": "bench-synthetic"}}
    metadata = {b"beam_gradients.model_sha256": b"0" * 64, b"beam_gradients.weights": json.dumps(weights).encode()}
    value = pa.float16() if dtype == "float16" else pa.float32()

    def chunk(start: int, stop: int) -> pa.Table:
        rng = np.random.default_rng([seed, start])
        phi = rng.standard_normal((stop - start, dim), dtype=np.float32).astype(dtype)
        storage = pa.FixedSizeListArray.from_arrays(pa.array(phi.reshape(-1), value), dim)
        tensor = pa.ExtensionArray.from_storage(pa.fixed_shape_tensor(value, [dim]), storage)
        table = pa.table({"id": np.arange(start, stop, dtype=np.int64), "weight_projection": tensor})
        return table.replace_schema_metadata(metadata)

    return chunk


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="training rows")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    parser.add_argument("--top_k", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no_triple", action="store_true", help="skip the job at 3x the rows")
    parser.add_argument("--job_args", default="", help="extra flags for the job")
    parser.add_argument("--work", default=os.path.join(DEFAULT_WORK, "influence"))
    parser.add_argument("--markdown", help="also write the table here")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    data = lambda name, rows, seed: write_parquet(  # noqa: E731
        os.path.join(args.work, f"{name}-{rows}-{args.dim}-{args.dtype}.parquet"),
        rows,
        ROW_GROUP_ROWS,
        projection_chunk(args.dim, args.dtype, seed),
    )
    print("preparing data ...", file=sys.stderr, flush=True)
    query = data("query", args.queries, 1)
    sizes = [args.rows] + ([] if args.no_triple else [3 * args.rows])
    trains = {rows: data("train", rows, 0) for rows in sizes}
    logs = os.path.join(args.work, "logs")
    out = os.path.join(args.work, "out")
    results = {}
    try:
        limit_top = os.path.join(out, "limit-top.npy")
        os.makedirs(out, exist_ok=True)
        for rows in sizes:
            job = [CLI, "influence", "--runner", "DirectRunner", "--train", trains[rows], "--query", query]
            job += ["--output", f"{out}/job-{rows}", "--top_k", str(args.top_k), "--kinds", "proponent,opponent"]
            job += args.job_args.split()
            print(f"job: {rows} rows ...", file=sys.stderr, flush=True)
            results[("job", rows)] = repeat(job, args.repeats, f"{logs}/job-{rows}", lambda r=rows: remove(f"{out}/job-{r}-*"))
            if rows == args.rows:
                limit = [sys.executable, os.path.join(BENCH_DIR, "influence_limit.py"), "--train", trains[rows]]
                limit += ["--query", query, "--top_k", str(args.top_k), "--output", limit_top]
                print(f"limit: {rows} rows ...", file=sys.stderr, flush=True)
                results[("limit", rows)] = repeat(limit, args.repeats, f"{logs}/limit-{rows}")
        agreement = compare(f"{out}/job-{args.rows}", limit_top, args.top_k)
    except BenchError as err:
        print(f"influence.py: {err}", file=sys.stderr)
        return 1
    text = table(results, args, agreement)
    publish(text, args.markdown)
    return 0


def compare(prefix: str, limit_top: str, k: int) -> float:
    """The share of (query, rank) proponents where the job and the limit name the same training row."""
    table = pa.concat_tables([pq.read_table(f) for f in sorted(glob.glob(prefix + "-?????-of-?????.parquet"))])
    table = table.filter(pa.compute.equal(table.column("kind"), "proponent"))
    table = table.sort_by([("id", "ascending"), ("rank", "ascending")])
    job = table.column("train__id").to_numpy().reshape(-1, k)
    limit = np.load(limit_top)
    if job.shape != limit.shape:
        raise BenchError(f"the job wrote {job.shape} proponents, the limit {limit.shape}")
    return float((job == limit).mean())


def table(results, args, agreement: float) -> str:
    limit = results[("limit", args.rows)]
    rows = []
    for (name, n), stats in results.items():
        ratio = stats.wall / limit.wall
        rows.append([name, f"{n:,}", f"{stats.wall:.1f}", stats.spread, f"{stats.cpu:.1f}", f"{stats.rss_mib:,.0f}",
                     f"{ratio:.2f}x" if n == args.rows else ""])
    job = results[("job", args.rows)]
    lines = [
        f"{args.rows:,} training rows x {args.queries:,} queries, projection dim {args.dim} ({args.dtype}), "
        f"top {args.top_k} proponents and opponents, score tracin; {machine()}",
        "",
        markdown(["run", "training rows", "wall s", "spread", "CPU s", "peak RSS MiB", "wall / limit"], rows),
        "",
        f"job / limit wall time: {job.wall / limit.wall:.2f} (goal <= 1.5: {verdict(job.wall / limit.wall, 1.5, True)})",
        f"proponents the job and the limit agree on: {agreement:.4f} of (query, rank) pairs "
        "(the rest: float32 rounding between near-equal scores)",
    ]
    if ("job", 3 * args.rows) in results:
        growth = results[("job", 3 * args.rows)].rss_mib / job.rss_mib
        lines.append(f"job peak RSS at 3x the training rows / at 1x: {growth:.2f} (goal: flat, <= 1.2: "
                     f"{verdict(growth, 1.2, True)})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
