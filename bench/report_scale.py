"""The report over a large output: its wall time and peak RSS at two sizes, against a plain read of the same columns.

Why written directly, not by the job: a million rows through a model take longer than the
report does. The output is written in the job's format: Parquet shards with the declared
columns (`beam_gradients.columns`), the spec and model metadata, a `<output>-summary.json`
made by the job's own combiner (transforms/aggregates.py, fed the same tables) and a
`_SUCCESS` marker listing every shard with its rows and bytes. Columns: a key, an 8x8x1
image gradient, the loss, a weight norm (its own ranking) and a predicted class.

Measured as whole processes (bench/measure.py): **report** is `beam-gradients report PREFIX`;
**read** (the limit) reads the columns the report's streamed pass reads, once, batch by batch,
with pyarrow. Bounded memory shows as the report's peak RSS staying flat from the smaller
output to the larger one (the whole gradient column of the larger is printed beside it).

    .venv/bin/python bench/report_scale.py              # 250,000 and 1,000,000 rows
    .venv/bin/python bench/report_scale.py --rows 20000  # a quick look
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.measure import CLI, DEFAULT_WORK, machine, markdown, run_process  # noqa: E402

SHAPE = (8, 8, 1)
BATCH = 65_536  # rows per row group and per combiner input, as the job's shards hold them
SHARDS = 8

# Reads what the report's streamed output pass reads, once, and nothing else: the floor of any streamed pass.
READ = """
import sys, pyarrow.parquet as pq, glob
rows = 0
for path in sorted(glob.glob(sys.argv[1] + "-*-of-*.parquet")):
    for batch in pq.ParquetFile(path).iter_batches(batch_size=65536, columns=["id", "gradient", "weight_norm", "predicted_class"]):
        rows += batch.num_rows
print(rows)
"""


def _table(start: int, stop: int, metadata: dict) -> pa.Table:
    from transforms.io.arrow import to_tensor_array

    rng = np.random.default_rng(start)
    n = stop - start
    scale = np.exp(rng.normal(0, 1, (n, 1, 1, 1))).astype(np.float32)  # norms over about two decades
    gradient = (rng.normal(size=(n, *SHAPE)) * 1e-3 * scale).astype(np.float32)
    table = pa.table({
        "id": np.arange(start, stop, dtype=np.int64),
        "gradient": to_tensor_array(gradient),
        "loss": rng.gamma(2.0, 0.3, n).astype(np.float32),
        "weight_norm": np.abs(rng.standard_cauchy(n)).astype(np.float32),
        "predicted_class": rng.integers(0, 10, n).astype(np.int64),
    })
    return table.replace_schema_metadata(metadata)


def write_output(prefix: str, rows: int) -> None:
    """`rows` rows in the job's format: shards, their metadata, the summary (the job's combiner) and the marker."""
    from pipeline.outputs import shard_entries
    from transforms.aggregates import AggregatesFn, AggregateSpec, GradientBlock, to_json
    from transforms.contract import column_entry, columns_metadata, metadata_key, summary_path
    from transforms.gradients.declared import SETTINGS

    kinds = {"id": "key", "gradient": "gradient", "loss": "loss", "weight_norm": "weight_norm", "predicted_class": "class"}
    spec = {s.name: (list(s.default) if isinstance(s.default, tuple) else s.default) for s in SETTINGS if s.kind != "job"}
    spec.update(target="loss", loss="sparse_categorical_crossentropy", label_column="label", emit=["loss", "predictions"],
                wrt="both", weight_output=["norm"])
    metadata = {
        **columns_metadata(column_entry(c, k, output=c if k == "gradient" else None) for c, k in kinds.items()),
        metadata_key("spec"): json.dumps(spec, sort_keys=True),
        metadata_key("model_path"): "bench/work/report_scale/model.keras",
        metadata_key("model_sha256"): "0" * 64,
        metadata_key("batch_size"): str(BATCH),
    }
    fn = AggregatesFn(AggregateSpec((GradientBlock("gradient", ("gradient",), SHAPE),), ("id",), None, "loss", 20))
    acc = fn.create_accumulator()
    folder, name = os.path.split(prefix)
    os.makedirs(folder, exist_ok=True)
    for old in glob.glob(prefix + "-*-of-*.parquet") + glob.glob(prefix + "_SUCCESS"):
        os.remove(old)
    bounds = np.linspace(0, rows, SHARDS + 1).astype(int)
    paths = []
    for i in range(SHARDS):
        path = f"{prefix}-{i:05d}-of-{SHARDS:05d}.parquet"
        writer = None
        for start in range(bounds[i], bounds[i + 1], BATCH):
            table = _table(start, min(start + BATCH, bounds[i + 1]), metadata)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table, row_group_size=BATCH)
            acc = fn.add_input(acc, table)
        if writer is not None:
            writer.close()
            paths.append(path)
    with open(summary_path(prefix), "w") as fh:
        fh.write(to_json(fn.extract_output(acc)))
    entries = shard_entries(paths)
    marker = {
        "files": {"summary": os.path.basename(summary_path(prefix))},
        "finished": "2026-01-01T00:00:00Z",
        "outputs": {"--output": sorted(entries)},
        "rows_in": rows, "rows_out": rows, "rows_rejected": 0,
        "shards": entries, "skipped": [], "version": "bench",
    }
    with open(prefix + "_SUCCESS", "w") as fh:
        json.dump(marker, fh, indent=2, sort_keys=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="250000,1000000", help="Output sizes, comma-separated (default 250000,1000000).")
    parser.add_argument("--work", default=os.path.join(DEFAULT_WORK, "report_scale"), help="Where the outputs go.")
    parser.add_argument("--keep", action="store_true", help="Keep the outputs (they are removed after measuring).")
    args = parser.parse_args()
    cli = CLI if os.path.exists(CLI) else None
    lines = []
    for rows in [int(r) for r in args.rows.split(",")]:
        prefix = os.path.join(args.work, f"rows{rows}", "g")
        write_output(prefix, rows)
        gradient_mib = rows * int(np.prod(SHAPE)) * 4 / 2**20
        on_disk = sum(os.path.getsize(p) for p in glob.glob(prefix + "-*-of-*.parquet")) / 2**20
        report = [cli] if cli else [sys.executable, "-m", "pipeline"]
        measured = run_process([*report, "report", prefix], os.path.join(args.work, f"report-{rows}.log"))
        read = run_process([sys.executable, "-c", READ, prefix], os.path.join(args.work, f"read-{rows}.log"))
        if int(read.text().split()[-1]) != rows:
            raise SystemExit(f"the read pass saw {read.text().split()[-1]} rows, not {rows}")
        page = os.path.getsize(prefix + "-report.html") / 2**20
        lines.append((f"{rows:,}", f"{on_disk:.0f}", f"{gradient_mib:.0f}", f"{measured.wall:.1f}", f"{read.wall:.1f}",
                      f"{measured.wall / read.wall:.1f}", f"{measured.rss_mib:.0f}", f"{read.rss_mib:.0f}", f"{page:.1f}"))
        if not args.keep:
            for path in glob.glob(prefix + "*"):
                os.remove(path)
    print(machine())
    print(markdown(["rows", "output MiB", "gradient column MiB", "report s", "read s", "report/read", "report peak RSS MiB",
                    "read peak RSS MiB", "page MiB"], lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
