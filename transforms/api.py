"""The job's compute step as a PTransform for your own pipeline, as you would apply RunInference.

>>> import apache_beam as beam, pyarrow as pa
>>> from transforms.api import ComputeGradients
>>> schema = pa.schema([("id", pa.int64()), ("x", pa.list_(pa.float32()))])
>>> with beam.Pipeline() as p:                                       # doctest: +SKIP
...     rows = p | beam.Create([{"id": 1, "x": [0.1, 0.2, 0.3]}])
...     out = rows | ComputeGradients("model.keras", schema=schema, key_columns=["id"])
...     out.results | beam.Map(lambda t: print(t.to_pylist()))       # pyarrow Tables
...     out.rejected | beam.Map(print)                               # key columns, stage, reason

Elements are dicts (one row each, with the schema's column names), Arrow
record batches or Arrow tables. The model is loaded and every column checked
when the transform is built, so a wrong option fails at once; on workers the
model is loaded once per process.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindows

from transforms.compute import REJECTED, RESULTS
from transforms.graph import GradientsGraph
from transforms.gradients.settings import split_list
from transforms.job_settings import BATCH_SIZE
from transforms.model import ProcessModel
from transforms.io.read import SourceBatch
from transforms.feeds.columns import exact_column, exact_columns, exact_input_map
from transforms.feeds.plan import JobPlan
from transforms.feeds.row_seeds import RowSeedFeed

SOURCE = "(pipeline)"  # the source_file of rejected rows that came from a PCollection
ROWS_PER_BATCH = 1024  # dicts are gathered into Arrow batches of up to this many rows


class _ToSourceBatches(beam.DoFn):
    """dict rows (batched), record batches or tables -> SourceBatch, as the job's own read yields."""

    def __init__(self, schema: pa.Schema):
        self._schema = schema

    def process(self, element):
        if isinstance(element, pa.Table):
            for batch in element.to_batches():
                yield SourceBatch(SOURCE, batch)
        elif isinstance(element, pa.RecordBatch):
            yield SourceBatch(SOURCE, element)
        else:  # a list of dicts, from BatchElements
            rows = [{name: _plain(row.get(name)) for name in self._schema.names} for row in element]
            yield SourceBatch(SOURCE, pa.RecordBatch.from_pylist(rows, self._schema))


def _plain(value):
    """A numpy value as Arrow takes it: arrays flattened to lists (the feed reshapes them to the input's shape)."""
    if isinstance(value, np.ndarray):
        return value.ravel().tolist()
    return value


class ComputeGradients(beam.PTransform):
    """PCollection of dicts, record batches or tables -> tagged outputs `results` and `rejected` (pyarrow Tables).

    `schema` is the Arrow schema of the rows (for files: `pyarrow.parquet.read_schema(path)`). The other
    arguments are the job's options of the same names (docs/options.md; `key_columns` is the command line's
    `--keep_columns`, and either name is taken); further gradient settings (`baseline`, `wrt`, `steps`,
    `samples`, `noise`, `seed`, `k`, ...) pass through to GradientSpec, and one that nothing reads is refused, as
    on the command line. A list may be given as a comma-separated string; `input_map` is a dict.
    The graph is the job's own (transforms/graph.py): a `mean` baseline's first pass runs over the
    same PCollection, and a `column:<name>` baseline reads that column of each row. Rows are batched across
    elements, so the input must be in the global window (the default).
    """

    def __init__(
        self,
        model: str,
        *,
        schema: pa.Schema,
        feature_columns: Sequence[str] | str = (),
        input_map: dict[str, str] | None = None,
        key_columns: Sequence[str] | str = (),
        keep_columns: Sequence[str] | str = (),
        target: str = "sum",
        method: str = "gradient",
        loss: str | None = None,
        label_column: str | None = None,
        class_column: str | None = None,
        clip_norm: float | None = None,
        emit: Sequence[str] | str = (),
        unconnected: str = "zeros",
        batch_size: int = BATCH_SIZE.default,
        trust_model_code: bool = False,
        **spec_options,
    ):
        from transforms.gradients.methods.baselines import baseline_column
        from transforms.gradients.spec import spec_from_kwargs

        super().__init__()
        spec = spec_from_kwargs(
            caller="ComputeGradients",
            caller_keywords=[*inspect.signature(ComputeGradients.__init__).parameters][2:-1],
            target=target,
            method=method,
            loss=loss,
            clip_norm=clip_norm,
            unconnected=unconnected,
            emit=tuple(split_list(emit)),
            **spec_options,
        )
        if key_columns and keep_columns:
            raise TypeError("give key_columns or keep_columns (the same setting), not both")
        if isinstance(input_map, str):
            raise TypeError(f"input_map takes a dict of model input -> column, not the string {input_map!r}")
        BATCH_SIZE.check(batch_size)
        explicit = {"loss": loss, "label_column": label_column, "class_column": class_column, "clip_norm": clip_norm}

        # as the command line does: a setting given that nothing chosen reads (steps with method gradient)
        spec.check_used([*spec_options, *(n for n, v in explicit.items() if v is not None), *(["emit"] if emit else [])])
        self.plan, self._loaded = JobPlan.build(
            schema,
            SOURCE,
            ProcessModel(model, trust_model_code),
            spec,
            batch_size,
            # column names as the command line takes them: exactly, else trimmed (`"id, label"`)
            feature_columns=exact_columns(schema, feature_columns),
            input_map=exact_input_map(schema, input_map or {}),
            row_columns={
                "label_column": label_column and exact_column(schema, label_column),
                "class_column": class_column and exact_column(schema, class_column),
                "baseline_column": baseline_column(spec.baseline),
            },
            key_columns=exact_columns(schema, key_columns or keep_columns),
        )
        if any(isinstance(f, RowSeedFeed) and not f.columns for f in self.plan.extras):
            raise ValueError(
                f"method {spec.method!r} seeds each row's noise from its key columns; give key_columns "
                "(rows in a PCollection have no position in a file to seed them by)"
            )
        self._schema = pa.schema([schema.field(c) for c in self.plan.read_columns])

    @property
    def output_schema(self) -> pa.Schema:
        """The schema of the `results` tables."""
        return self.plan.layout.schema

    def expand(self, rows):
        if not isinstance(rows.windowing.windowfn, GlobalWindows):
            raise ValueError(
                f"ComputeGradients batches rows across elements, so it takes the global window only, not "
                f"{type(rows.windowing.windowfn).__name__}: apply beam.WindowInto(GlobalWindows()) before it, and "
                "window its results after"
            )
        batches = (
            rows
            | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=ROWS_PER_BATCH)
            | "ToArrow" >> beam.FlatMap(_flatten_batches)
            | "AsSourceBatches" >> beam.ParDo(_ToSourceBatches(self._schema)).with_output_types(SourceBatch)
        )
        return batches | "Compute" >> GradientsGraph(self.plan)


def _flatten_batches(elements: list):
    """BatchElements' lists -> one list of dicts, and each Arrow element on its own."""
    dicts = [e for e in elements if isinstance(e, dict)]
    if dicts:
        yield dicts
    yield from (e for e in elements if not isinstance(e, dict))


__all__ = ["ComputeGradients", "RESULTS", "REJECTED"]
