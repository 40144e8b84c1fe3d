"""The main job's whole graph as one PTransform: the command line and the Python API both apply it.

Why one: the graph used to be assembled twice (by the job and by the API), and
the API's copy had lost the `mean` baseline's first pass. Everything a plan can
ask of the graph (a first pass over the data, the row inputs, the writes) is
decided here, from the plan, once.

Applied to a pipeline with `files`, it reads those Parquet files; applied to a
PCollection of `SourceBatch` (the API's rows), it computes those. Either way it
returns the tagged outputs RESULTS and REJECTED (pyarrow Tables), and, where
`writes` is given, also writes them and the dataset-wide aggregates.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import apache_beam as beam

from transforms.aggregates import AggregatesFn, AggregateSpec, to_json
from transforms.compute import REJECTED, RESULTS, ComputeGradients
from transforms.input_means import InputMeans
from transforms.io.read import ReadParquetBatches
from transforms.io.write import write_parquet
from transforms.feeds.plan import JobPlan
from transforms.breadcrumbs import Breadcrumbs
from transforms.progress import ProgressFiles


@dataclasses.dataclass(frozen=True)
class Writes:
    """Where the graph writes its outputs (prefixes: while a job runs, its staging names) and how."""

    results: str
    rejected: str
    summary: str  # the aggregates' JSON file, written whole
    num_shards: int = 0  # 0: the runner decides
    group_column: str | None = None  # the aggregates are also computed per value of this column
    top_rows: int = 20  # rows the aggregates list by norm and by loss
    vocabulary: tuple[str | None, ...] | None = None  # token id -> string, naming the token aggregates' ids


class GradientsGraph(beam.PTransform):
    """Read (or take) rows -> the first pass the plan needs -> compute -> results and rejected rows (-> writes).

    `files`: the Parquet files to read when applied to a pipeline (PBegin); `read_batch_rows` bounds
    a read's record batches. `progress`: where local workers tell the launcher how many rows they took;
    `breadcrumbs`: where workers say which rows they compute (transforms/breadcrumbs.py).
    """

    def __init__(
        self,
        plan: JobPlan,
        *,
        files: Sequence[str] = (),
        read_batch_rows: int | None = None,
        writes: Writes | None = None,
        progress: ProgressFiles | None = None,
        breadcrumbs: Breadcrumbs | None = None,
    ):
        super().__init__()
        self._plan = plan
        self._files = list(files)
        self._read_rows = read_batch_rows
        self._writes = writes
        self._progress = progress
        self._breadcrumbs = breadcrumbs

    def expand(self, source):
        plan = self._plan
        reads_files = isinstance(source, beam.pvalue.PBegin)
        if reads_files:
            batches = source | "ReadParquet" >> ReadParquetBatches(
                self._files, plan.read_columns, self._read_rows, plan.key_columns
            )
        else:
            batches = source
        means = None
        if plan.means:  # a first pass: the dataset's mean inputs (a `mean` baseline)
            feeds = [plan.feeds[i] for i in plan.means]
            if reads_files:  # the files are read again rather than held
                columns = list(dict.fromkeys(c for f in feeds for c in f.columns))
                first = source | "Means/Read" >> ReadParquetBatches(self._files, columns, self._read_rows, count=False)
            else:
                first = batches
            means = beam.pvalue.AsSingleton(first | "Means/Combine" >> beam.CombineGlobally(InputMeans(feeds)))
        computed = batches | "Gradients" >> ComputeGradients(plan, means, self._progress, self._breadcrumbs)
        if self._writes is not None:
            self._write(computed)
        return computed

    def _write(self, computed) -> None:
        plan, to = self._plan, self._writes
        computed[RESULTS] | "WriteGradients" >> write_parquet(to.results, plan.layout.schema, to.num_shards)
        computed[REJECTED] | "WriteRejected" >> write_parquet(to.rejected, plan.rejected_schema, to.num_shards)
        spec = AggregateSpec.from_layout(plan.layout, plan.key_columns, to.group_column, to.top_rows, to.vocabulary)
        (
            computed[RESULTS]
            | "Aggregate" >> beam.CombineGlobally(AggregatesFn(spec))
            | "SummaryJson" >> beam.Map(to_json)
            | "WriteSummary" >> beam.io.WriteToText(to.summary, shard_name_template="", num_shards=1)
        )
