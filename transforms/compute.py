"""The DoFn: rebatch Arrow record batches, pad, call the engine, emit results and rejected rows.

Record batches arrive in whatever sizes the files hold. Their good rows are
copied once into per-input numpy buffers of exactly `batch_size` rows; a full
buffer goes to the engine. The last short batch of a bundle is padded with
zeros so the compiled function never retraces, and the padding is cut off
before any row is written. Bad rows never cost their batch: they leave for the
rejected-rows output with their reason, and their neighbours go on.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindows

from transforms import BatchFailed, op_error_line
from transforms.coders import ArrowTable  # registers the Arrow coders the ParDos' type hints select
from transforms.counters import Counters
from transforms.io.read import UnreadableRows
from transforms.io.schema import rejected_table
from transforms.breadcrumbs import Breadcrumbs, Span
from transforms.progress import ProgressFiles
from transforms.feeds.row_seeds import RowSeedFeed
from transforms.feeds.columns import Reasons, decode, merge_reasons

if TYPE_CHECKING:  # planning and the engine need TensorFlow; this module is imported before any model is
    from transforms.gradients import GradientEngine
    from transforms.feeds.plan import JobPlan

REJECTED = "rejected"
RESULTS = "results"
# Output tables are gathered up to about this size before they go to the sink,
# so output row groups are not one model batch each.
OUTPUT_ROWS = 65536
OUTPUT_BYTES = 64 << 20


class _GradientsFn(beam.DoFn):
    """(source file, record batch) -> output tables, and rejected-row tables tagged REJECTED."""

    def __init__(self, plan: JobPlan, progress: ProgressFiles | None = None, breadcrumbs: Breadcrumbs | None = None):
        self._plan = plan
        self._progress = progress
        self._breadcrumbs = breadcrumbs
        self._counters = Counters()

    def setup(self):
        plan = self._plan
        if self._breadcrumbs is not None:
            self._breadcrumbs.arm()
        self._loaded = plan.engine.acquire()
        self._engine: GradientEngine = self._loaded.value
        size = plan.batch_size
        self._inputs = [np.zeros((size, *f.shape), f.dtype) for f in plan.feeds]
        self._extras = [np.zeros((size, *f.shape), f.dtype) for f in plan.extras]
        self._dataset: list[np.ndarray] = []

    def start_bundle(self):
        if self._loaded.take_new_load():
            self._counters.model_loaded()
        self._counters.inc("bundles")
        self._filled = 0
        self._keys: list[pa.Table] = []
        self._sources: list[tuple[str, int, int, int]] = []  # (file, rows, first and last row there) per piece
        self._out: list[pa.Table] = []
        self._out_rows = self._out_bytes = 0
        self._first = True

    def process(self, element, means=None):
        if means is not None:  # the dataset's mean inputs, the same for every batch (a `mean` baseline)
            self._dataset = list(means)
        source, batch, first_row = element.source, element.batch, element.first_row
        plan = self._plan
        if self._first:
            self._first = False
            if plan.fault is not None:
                plan.fault.bundle_started(source, batch)
        if isinstance(batch, UnreadableRows):
            self._done(batch.rows)
            yield from self._reject_unreadable(batch, source)
            return
        decoded = [decode(f, batch) for f in plan.feeds]
        decoded += [self._decode_extra(f, batch, source, first_row) for f in plan.extras]
        reasons = merge_reasons(decoded)
        keys = (
            pa.Table.from_batches([batch.select(plan.key_columns)]) if plan.key_columns else _rows_only(batch.num_rows)
        )
        values = [d.values for d in decoded]  # the model's inputs, then the row inputs
        positions = np.arange(first_row, first_row + batch.num_rows)  # in the file, for error messages
        bad = reasons.bad
        if bad.any():
            bad_rows, good_rows = np.flatnonzero(bad), np.flatnonzero(~bad)
            self._done(len(bad_rows))  # rejected rows are done; the good ones count once computed
            yield from self._reject(keys.take(bad_rows), reasons, bad, source)
            values = [v[good_rows] for v in values]
            keys = keys.take(good_rows)
            positions = positions[good_rows]
        yield from self._fill(values, keys, source, positions)

    def _decode_extra(self, feed, batch, source: str, first_row: int):
        """A row input: the row's seed (computed), or a column's values; a class index outside the classes is bad."""
        if isinstance(feed, RowSeedFeed):
            return feed.decode(batch, source, first_row)
        decoded = decode(feed, batch)
        row_input = next(r for r in self._engine.row_inputs if r.name == feed.input)
        if row_input.classes is not None:
            values = decoded.values.reshape(len(decoded.values), -1)
            outside = (values < 0) | (values >= row_input.classes)
            bad = outside.any(axis=1)
            if bad.any():  # each bad row's reason names its own value (the first one outside, per row)
                first = values[bad, outside[bad].argmax(axis=1)]
                for value in np.unique(first):
                    rows = np.zeros(len(bad), bool)
                    rows[np.flatnonzero(bad)[first == value]] = True
                    decoded.reasons.add(
                        rows,
                        "decode",
                        f"column {feed.columns[0]!r} holds class {value:g}, outside the model's "
                        f"{row_input.classes} classes 0..{row_input.classes - 1}",
                    )
        return decoded

    def finish_bundle(self):
        outputs = list(self._run()) if self._filled else []
        outputs += list(self._flush(force=True))
        if self._progress is not None:
            self._progress.add(0, force=True)
        for output in outputs:
            if isinstance(output, beam.pvalue.TaggedOutput):
                yield beam.pvalue.TaggedOutput(output.tag, GlobalWindows.windowed_value(output.value))
            else:
                yield GlobalWindows.windowed_value(output)

    def _fill(self, values, keys: pa.Table, source: str, positions: np.ndarray):
        """Copy rows into the batch buffers; run the engine each time they are full."""
        size, start, rows = self._plan.batch_size, 0, keys.num_rows
        while start < rows:
            take = min(size - self._filled, rows - start)
            stop, end = self._filled + take, start + take
            for buffer, v in zip(self._inputs + self._extras, values):
                buffer[self._filled : stop] = v[start:end]
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
            for buffer in self._inputs + self._extras:
                buffer[rows:] = 0
            self._counters.inc("padded_rows", padding)
        try:
            with self._breadcrumbs.computing(self._spans()) if self._breadcrumbs else contextlib.nullcontext():
                result = self._engine(self._inputs, self._extras, self._dataset)
        except Exception as err:  # the model itself failed: one line that keeps the cause, the op and the rows
            raise BatchFailed(f"{op_error_line(err)}, in a batch of {self._where()}") from err
        self._counters.inc("batches")
        self._done(rows)
        if self._loaded.device.startswith("/GPU"):
            self._counters.inc("gpu_batches")
        self._counters.inc("none_gradients", rows * len(self._engine.unconnected))
        keys = pa.concat_tables(self._keys)
        table = plan.layout.table(keys, result, rows)
        reasons = _non_finite(result, rows)
        non_finite = reasons.bad
        if non_finite.any():
            sources = np.repeat([s[0] for s in self._sources], [s[1] for s in self._sources])
            for source in np.unique(sources[non_finite]):
                mask = non_finite & (sources == source)
                yield from self._reject(keys.filter(pa.array(mask)), reasons, mask, str(source))
            table = table.filter(pa.array(~non_finite))
        self._filled, self._keys, self._sources = 0, [], []
        self._counters.inc("rows_out", table.num_rows)
        self._out.append(table)
        self._out_rows += table.num_rows
        self._out_bytes += table.nbytes
        yield from self._flush(force=False)

    def _done(self, rows: int) -> None:
        """Tell the launcher's progress line: `rows` more are computed (or rejected)."""
        if self._progress is not None and rows:
            self._progress.add(rows)

    def _spans(self) -> list[Span]:
        """The rows of the current batch, by file: the lowest and highest row it takes from each."""
        spans: dict[str, list[int]] = {}
        for source, _, first, last in self._sources:
            low, high = spans.get(source, (first, last))
            spans[source] = [min(low, first), max(high, last)]
        return [Span(source, low, high) for source, (low, high) in spans.items()]

    def _where(self) -> str:
        """The rows of the current batch, by file: 'rows 256-511 of data/a.parquet'."""
        return "; ".join(f"rows {s.first}-{s.last} of {s.source}" for s in self._spans())

    def _flush(self, force: bool):
        if self._out and (force or self._out_rows >= OUTPUT_ROWS or self._out_bytes >= OUTPUT_BYTES):
            table = pa.concat_tables(self._out)
            self._out, self._out_rows, self._out_bytes = [], 0, 0
            if self._plan.fault is not None:
                table = self._plan.fault.output(table)
            if table is not None:
                yield table

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
        self._counters.inc("rows_rejected", keys.num_rows)
        table = rejected_table(self._plan.rejected_schema, keys, reasons.stage[mask], reasons.text[mask], source)
        yield beam.pvalue.TaggedOutput(REJECTED, table)


def _rows_only(rows: int) -> pa.Table:
    """Without --keep_columns: a placeholder column, since Arrow loses the row count of a table with none."""
    return pa.table({"__rows": pa.nulls(rows)})


def _non_finite(result: dict[str, np.ndarray], rows: int) -> Reasons:
    """Per row: the first value the engine returned (written or not) that is NaN or infinite, named."""
    reasons = Reasons(rows)
    for name, values in result.items():
        if np.issubdtype(values.dtype, np.floating):
            values = values[:rows]  # padding rows are never written
            with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum only means: look row by row
                total = values.sum(dtype=np.result_type(values.dtype, np.float32))
            if np.isfinite(total):
                continue  # a finite sum holds no NaN or infinity: the usual batch, in one pass
            bad = ~np.isfinite(values.reshape(rows, -1)).all(axis=1)
            reasons.add(bad, "compute", f"the computed {name} is NaN or infinite for this row")
    return reasons


class ComputeGradients(beam.PTransform):
    """(source file, record batch) -> tagged outputs RESULTS and REJECTED, both pyarrow Tables.

    `means`: where the plan needs the dataset's mean inputs (`plan.means`), a
    singleton side input of them, as `InputMeans` computes them.
    `progress`: where local workers tell the launcher how many rows they have taken (None: nowhere).
    `breadcrumbs`: where workers say which rows they compute, for the launcher to name if they die (None: nowhere).
    """

    def __init__(
        self, plan: JobPlan, means=None, progress: ProgressFiles | None = None, breadcrumbs: Breadcrumbs | None = None
    ):
        super().__init__()
        self._plan = plan
        self._means = means
        self._progress = progress
        self._breadcrumbs = breadcrumbs

    def expand(self, batches):
        side = [self._means] if self._means is not None else []
        fn = _GradientsFn(self._plan, self._progress, self._breadcrumbs)
        fn = beam.ParDo(fn, *side).with_output_types(ArrowTable)
        return batches | fn.with_outputs(REJECTED, main=RESULTS)
