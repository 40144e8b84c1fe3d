"""The DoFn: rebatch Arrow record batches, pad, call the engine, emit results and rejected rows.

Record batches arrive in whatever sizes the files hold. Their good rows are
copied once into per-input numpy buffers of exactly `batch_size` rows; a full
buffer goes to the engine. The last short batch of a bundle is padded with
zeros so the compiled function never retraces, and the padding is cut off
before any row is written. Bad rows never cost their batch: they leave for the
rejected-rows output with their reason, and their neighbours go on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from transforms import METRICS, BatchFailed, __version__, op_error_line
from transforms import coders  # noqa: F401  (registers the Arrow coders the ParDos' type hints select)
from transforms.gradients import GradientEngine, GradientSpec, ModelFunction, SpecError
from transforms.model import Loaded, ProcessModel, redact
from transforms.parquet import OutputLayout, UnreadableRows, rejected_schema, rejected_table
from transforms.tensors import Feed, Reasons, check_columns, decode, merge_reasons, plan_feed, plan_input_feeds

REJECTED = "rejected"
RESULTS = "results"
# Output tables are gathered up to about this size before they go to the sink,
# so output row groups are not one model batch each.
OUTPUT_ROWS = 65536
OUTPUT_BYTES = 64 << 20
# Set to a folder, this makes the first attempt at every bundle fail (see _fail_first_attempt).
FAULT_ENV = "BEAM_GRADIENTS_FAIL_FIRST_ATTEMPT"


@dataclasses.dataclass(frozen=True)
class EngineRecipe:
    """How to build the gradient engine on a worker: once per process, shared by its threads."""

    model: ProcessModel
    spec: GradientSpec
    batch_size: int

    def build(self, model: ModelFunction, device: str) -> GradientEngine:
        return GradientEngine(model, self.spec, self.batch_size, device).trace()

    def acquire(self) -> Loaded[GradientEngine]:
        return self.model.acquire(self.build, tag=f"{self.spec.to_json()}|{self.batch_size}")


@dataclasses.dataclass
class JobPlan:
    """Everything a worker needs, decided once before any data is read. Picklable."""

    engine: EngineRecipe
    feeds: list[Feed]
    label: Feed | None
    key_columns: list[str]
    layout: OutputLayout
    rejected_schema: pa.Schema

    @property
    def batch_size(self) -> int:
        return self.engine.batch_size

    @property
    def spec(self) -> GradientSpec:
        return self.engine.spec

    @property
    def read_columns(self) -> list[str]:
        columns = [c for f in self.feeds for c in f.columns] + list(self.key_columns)
        if self.label is not None:
            columns += list(self.label.columns)
        return list(dict.fromkeys(columns))

    @classmethod
    def build(
        cls,
        schema: pa.Schema,
        source: str,
        model: ProcessModel,
        spec: GradientSpec,
        batch_size: int,
        feature_columns: Sequence[str] = (),
        input_map: dict[str, str] | None = None,
        label_column: str | None = None,
        key_columns: Sequence[str] = (),
    ) -> tuple["JobPlan", Loaded[GradientEngine]]:
        """Check options against the input schema and the model; return the plan and the loaded engine.

        The caller keeps the loaded engine alive while the job runs, so an
        in-process runner reuses it instead of loading the model again.
        """
        check_columns(schema, key_columns, "key", source)
        if spec.loss and not label_column:
            raise SpecError("--loss needs --label_column: the column holding each row's label")
        if label_column:
            check_columns(schema, [label_column], "label", source)
        recipe = EngineRecipe(model, spec, batch_size)
        loaded = recipe.acquire()  # loads the model and traces: the spec is checked against it here
        engine: GradientEngine = loaded.value
        inputs = [(t.name, t.shape, t.dtype.as_numpy_dtype) for t in engine.model.inputs]
        feeds = plan_input_feeds(schema, inputs, feature_columns, input_map or {}, source)
        label = None
        if engine.label is not None:
            label = plan_feed(schema, "label", [label_column], engine.label.shape, np.float32, source)
        predictions = [(t.name, t.shape) for t in engine.model.outputs] if "predictions" in spec.emit else []
        metadata = {
            "beam_gradients.version": __version__,
            "beam_gradients.model_path": redact(model.path),
            "beam_gradients.model_sha256": model.sha256,
            "beam_gradients.spec": spec.to_json(),
            "beam_gradients.batch_size": str(batch_size),
        }
        key_fields = [schema.field(c) for c in key_columns]
        layout = OutputLayout(
            key_fields,
            engine.gradient_keys,
            feeds,
            predictions=predictions,
            loss="loss" in spec.emit,
            norms="norm" in spec.emit,
            metadata=metadata,
        )
        plan = cls(recipe, feeds, label, list(key_columns), layout, rejected_schema(key_fields))
        return plan, loaded


class _GradientsFn(beam.DoFn):
    """(source file, record batch) -> output tables, and rejected-row tables tagged REJECTED."""

    def __init__(self, plan: JobPlan):
        self._plan = plan
        self._rows_out = Metrics.counter(METRICS, "rows_out")
        self._rows_rejected = Metrics.counter(METRICS, "rows_rejected")
        self._batches = Metrics.counter(METRICS, "batches")
        self._gpu_batches = Metrics.counter(METRICS, "gpu_batches")
        self._padded = Metrics.counter(METRICS, "padded_rows")
        self._none_gradients = Metrics.counter(METRICS, "none_gradients")
        self._model_loads = Metrics.counter(METRICS, "model_loads")
        self._bundles = Metrics.counter(METRICS, "bundles")
        self._load_pid = Metrics.distribution(METRICS, "model_load_pid")

    def setup(self):
        plan = self._plan
        self._loaded = plan.engine.acquire()
        self._engine: GradientEngine = self._loaded.value
        size = plan.batch_size
        self._inputs = [np.zeros((size, *f.shape), f.dtype) for f in plan.feeds]
        self._label = np.zeros((size, *plan.label.shape), np.float32) if plan.label is not None else None

    def start_bundle(self):
        if self._loaded.take_new_load():
            self._model_loads.inc()
            self._load_pid.update(os.getpid())
        self._bundles.inc()
        self._filled = 0
        self._keys: list[pa.Table] = []
        self._sources: list[tuple[str, int, int, int]] = []  # (file, rows, first and last row there) per piece
        self._out: list[pa.Table] = []
        self._out_rows = self._out_bytes = 0
        self._first = True

    def process(self, element):
        source, batch, first_row = element.source, element.batch, element.first_row
        plan = self._plan
        if self._first:
            self._first = False
            _fail_first_attempt(source, batch)
        if isinstance(batch, UnreadableRows):
            yield from self._reject_unreadable(batch, source)
            return
        decoded = [decode(f, batch) for f in plan.feeds]
        label = decode(plan.label, batch) if plan.label is not None else None
        reasons = merge_reasons(decoded + ([label] if label is not None else []))
        keys = (
            pa.Table.from_batches([batch.select(plan.key_columns)]) if plan.key_columns else _rows_only(batch.num_rows)
        )
        values = [d.values for d in decoded]
        label_values = label.values if label is not None else None
        bad = reasons.bad
        if bad.any():
            bad_rows, good_rows = np.flatnonzero(bad), np.flatnonzero(~bad)
            yield from self._reject(keys.take(bad_rows), reasons, bad, source)
            values = [v[good_rows] for v in values]
            label_values = label_values[good_rows] if label_values is not None else None
            keys = keys.take(good_rows)
        positions = np.arange(first_row, first_row + batch.num_rows)
        if bad.any():
            positions = positions[good_rows]
        yield from self._fill(values, label_values, keys, source, positions)

    def finish_bundle(self):
        outputs = list(self._run()) if self._filled else []
        outputs += list(self._flush(force=True))
        for output in outputs:
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))
            else:
                yield GlobalWindows.windowed_value(output)

    def _fill(self, values, label_values, keys: pa.Table, source: str, positions: np.ndarray):
        """Copy rows into the batch buffers; run the engine each time they are full."""
        size, start, rows = self._plan.batch_size, 0, keys.num_rows
        while start < rows:
            take = min(size - self._filled, rows - start)
            stop, end = self._filled + take, start + take
            for buffer, v in zip(self._inputs, values):
                buffer[self._filled : stop] = v[start:end]
            if self._label is not None:
                self._label[self._filled : stop] = label_values[start:end]
            self._keys.append(keys.slice(start, take))
            self._sources.append((source, take, int(positions[start]), int(positions[end - 1])))
            self._filled, start = stop, end
            if self._filled == size:
                yield from self._run()

    def _run(self):
        """One engine call on the buffers; padding rows are zeroed and never emitted."""
        plan, rows = self._plan, self._filled
        padding = plan.batch_size - rows
        if padding:
            for buffer in self._inputs:
                buffer[rows:] = 0
            if self._label is not None:
                self._label[rows:] = 0
            self._padded.inc(padding)
        try:
            result = self._engine(self._inputs, self._label)
        except Exception as err:  # the model itself failed: one line that keeps the cause, the op and the rows
            raise BatchFailed(f"{op_error_line(err)}, in a batch of {self._where()}") from err
        self._batches.inc()
        if self._loaded.device.startswith("/GPU"):
            self._gpu_batches.inc()
        self._none_gradients.inc(rows * len(self._engine.unconnected))
        keys = pa.concat_tables(self._keys)
        table = plan.layout.table(keys, result, rows)
        reasons = _non_finite(result, rows, bool(plan.spec.loss))
        non_finite = reasons.bad
        if non_finite.any():
            sources = np.repeat([s[0] for s in self._sources], [s[1] for s in self._sources])
            for source in np.unique(sources[non_finite]):
                mask = non_finite & (sources == source)
                yield from self._reject(keys.filter(pa.array(mask)), reasons, mask, str(source))
            table = table.filter(pa.array(~non_finite))
        self._filled, self._keys, self._sources = 0, [], []
        self._rows_out.inc(table.num_rows)
        self._out.append(table)
        self._out_rows += table.num_rows
        self._out_bytes += table.nbytes
        yield from self._flush(force=False)

    def _where(self) -> str:
        """The rows of the current batch, by file: 'rows 256-511 of data/a.parquet'."""
        spans: dict[str, list[int]] = {}
        for source, _, first, last in self._sources:
            low, high = spans.get(source, (first, last))
            spans[source] = [min(low, first), max(high, last)]
        return "; ".join(f"rows {low}-{high} of {source}" for source, (low, high) in spans.items())

    def _flush(self, force: bool):
        if self._out and (force or self._out_rows >= OUTPUT_ROWS or self._out_bytes >= OUTPUT_BYTES):
            yield pa.concat_tables(self._out)
            self._out, self._out_rows, self._out_bytes = [], 0, 0

    def _reject_unreadable(self, unread: UnreadableRows, source: str):
        keys = unread.keys
        if not self._plan.key_columns:
            keys = _rows_only(unread.rows)
        elif keys is None:  # the key columns could not be read either: null keys, the count still holds
            fields = [f for f in self._plan.rejected_schema if f.name in self._plan.key_columns]
            keys = pa.table([pa.nulls(unread.rows, f.type) for f in fields], schema=pa.schema(fields))
        reasons = Reasons(unread.rows)
        reasons.add(np.ones(unread.rows, bool), "read", unread.reason)
        yield from self._reject(keys, reasons, reasons.bad, source)

    def _reject(self, keys: pa.Table, reasons: Reasons, mask: np.ndarray, source: str):
        self._rows_rejected.inc(keys.num_rows)
        table = rejected_table(self._plan.rejected_schema, keys, reasons.stage[mask], reasons.text[mask], source)
        yield beam.pvalue.TaggedOutput(REJECTED, table)


class InjectedFault(RuntimeError):
    """A transient error asked for through FAULT_ENV."""


def _fail_first_attempt(source: str, batch) -> None:
    """With $BEAM_GRADIENTS_FAIL_FIRST_ATTEMPT=<folder>, a bundle's first attempt raises.

    This is how a test proves that a runner's retry of a failed bundle loses and
    duplicates nothing. A retry starts with the same element and finds the
    marker its first attempt left in the folder, so it goes on.
    """
    folder = os.environ.get(FAULT_ENV)
    if not folder:
        return
    content = batch.serialize() if isinstance(batch, pa.RecordBatch) else repr(batch).encode()
    marker = os.path.join(folder, hashlib.sha256(source.encode() + b"\0" + bytes(content)).hexdigest())
    try:
        open(marker, "x").close()
    except FileExistsError:
        return
    raise InjectedFault(f"injected transient fault ({FAULT_ENV}) in a bundle starting in {source}")


def _rows_only(rows: int) -> pa.Table:
    """Without --keep_columns: a placeholder column, since Arrow loses the row count of a table with none."""
    return pa.table({"__rows": pa.nulls(rows)})


def _non_finite(result: dict, rows: int, has_loss: bool) -> Reasons:
    """Per row: which value the job computed for it is NaN or infinite, whatever column it goes to."""
    reasons = Reasons(rows)
    gradient = "loss or gradient" if has_loss else "gradient"
    names = {"gradients": gradient, "loss": gradient, "norms": gradient, "predictions": "prediction"}
    for kind, value in result.items():
        for array in value if isinstance(value, list) else [value]:
            bad = ~np.isfinite(array[:rows].reshape(rows, -1)).all(axis=1)
            reasons.add(bad, "compute", f"the {names.get(kind, kind)} is NaN or infinite for this row")
    return reasons


class ComputeGradients(beam.PTransform):
    """(source file, record batch) -> tagged outputs RESULTS and REJECTED, both pyarrow Tables."""

    def __init__(self, plan: JobPlan):
        super().__init__()
        self._plan = plan

    def expand(self, batches):
        fn = beam.ParDo(_GradientsFn(self._plan)).with_output_types(pa.Table)
        return batches | fn.with_outputs(REJECTED, main=RESULTS)
