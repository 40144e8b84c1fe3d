"""The main job: plan from options, apply the graph (transforms/graph.py), run it staged, summarize.

Everything that can be checked before data is read is checked here first
(files, columns, model, spec), so a wrong option costs one line of error, not a
failed job.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import re
import time
from typing import Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter

from pipeline.crashes import WorkerWatch
from pipeline.options import (
    DASK_RUNNERS,
    GradientOptions,
    OptionsError,
    check_required,
    check_values,
    flag_error,
    given_settings,
    all_options_parser,
    mapping_args,
    parse,
    parse_map,
    row_columns,
    spec_from,
    split_list,
)
from pipeline.outputs import StagedOutputs, check_inputs_untouched, check_no_clash, check_pattern_untouched
from pipeline.progress import Progress
from pipeline.reader import read_summary
from pipeline.runners import (
    check_reachable,
    is_dry_run,
    is_local,
    local_worker_output,
    quiet_native_start,
    resolve_runner,
    runner_name,
)
from pipeline.staged import RowsUnaccounted, run_staged
from transforms import METRICS
from transforms.contract import REJECTED_SUFFIX, report_path, summary_path
from transforms.errors import SettingError
from transforms.counters import COUNTERS, MODEL_LOAD_PID
from transforms.gradients import SpecError
from transforms.graph import GradientsGraph, Writes
from transforms.model import ProcessModel
from transforms.io.files import (
    InputFiles,
    check_same_columns,
    check_writable,
    match_files,
    open_parquet,
    read_footers,
    read_schemas,
)
from transforms.feeds.plan import Fault, JobPlan
from transforms.feeds.columns import check_columns, exact_column, exact_columns, exact_input_map
from transforms.vocabulary import read_vocabulary

OUTPUT, REJECTED_OPTION = "--output", "--rejected"
SUMMARY = "summary"  # the staged file's name: `<output>-summary.json` (transforms/contract.py)


@dataclasses.dataclass
class Summary:
    """What a finished job did. Row counts come from Parquet footers, so they need no runner's metrics."""

    rows_in: int
    rows_out: int
    rows_rejected: int
    counters: dict[str, int] | None  # None where the runner reports no metrics
    load_pids: tuple[int, int] | None  # lowest and highest pid that loaded the model
    wall_seconds: float  # the whole process's, from the command line (or from the call to run())
    outputs: list[str]
    rejected: list[str]
    skipped: list[str] = dataclasses.field(default_factory=list)  # zero-byte input files
    startup_seconds: float = 0.0  # of the wall time: imports, model load and planning, before any row is read
    summary: str | None = None  # the aggregates file written
    result: object = None  # the runner's PipelineResult; a Dataflow dry run's holds the job it built (.job)
    dry_run: bool = False
    reasons: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # the most frequent rejection reasons
    other_reasons: int = 0  # how many more distinct reasons the rejected rows hold
    output: str = ""  # the --output prefix
    demo_seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # of the wall time: the demo's own steps
    notes: list[str] = dataclasses.field(default_factory=list)  # what the numbers suggest (`flat_note`)

    @property
    def rejected_fraction(self) -> float:
        return self.rows_rejected / self.rows_in if self.rows_in else 0.0

    def __str__(self) -> str:
        if self.dry_run:
            return f"dry run: the job was built and checked in {self.wall_seconds:.1f} s, not run; nothing was written"
        lines = []
        if self.rows_in and not self.rows_out:
            why = f"{_reason_counts(self.reasons[:1])}; " if self.reasons else ""
            lines.append(f"EVERY ROW WAS REJECTED ({self.rows_rejected}): {why}see the reasons in the rejected rows")
        job_seconds = self.wall_seconds - self.startup_seconds - sum(self.demo_seconds.values())
        rate = self.rows_in / job_seconds if job_seconds > 0 else 0.0
        lines.append(f"rows: {self.rows_in} in, {self.rows_out} out, {self.rows_rejected} rejected")
        if self.reasons:
            more = f"; and {self.other_reasons} other reason(s)" if self.other_reasons else ""
            lines.append(f"rejected: {_reason_counts(self.reasons)}{more}")
        lines += self.notes
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} empty (0-byte) input file(s): {', '.join(self.skipped[:3])}")
        c = self.counters
        if c is None:  # say so rather than print zeros that look like an empty job
            lines.append("batches: the runner reported no counters; see its own job page")
        else:
            lines.append(
                f"batches: {c['batches']} ({c['padded_rows']} padded rows, {c['gpu_batches']} on GPU); "
                f"None gradients: {c['none_gradients']}; model loads: {c['model_loads']}"
            )
        lines += [
            f"wall time: {self.wall_seconds:.1f} s: start-up {self.startup_seconds:.1f} s (imports, model, planning), "
            f"job {job_seconds:.1f} s ({rate:,.0f} rows/s)"
            + "".join(f", {name} {seconds:.1f} s" for name, seconds in self.demo_seconds.items()),
            "output: " + (", ".join(self.outputs) or "(none)"),
            "rejected rows: " + (", ".join(self.rejected) or "(none)"),
        ]
        if self.summary:
            lines.append(f"summary: {self.summary}")
        return "\n".join(lines)


# Every row's gradient norm below this: the target hardly moves with the inputs.
FLAT_NORM = 1e-6


def flat_note(aggregates: dict | None, target: str) -> str | None:
    """A line where every row's gradient is near zero under a target that sums outputs: a softmax's outputs always
    sum to 1, so `--target sum` of a classifier differentiates a constant (zeros, correctly). None otherwise."""
    if not aggregates or target not in ("sum", "per_output"):
        return None
    norms = [g["top_by_norm"][0]["norm"] for g in aggregates.get("gradients", {}).values() if g.get("top_by_norm")]
    if not norms or max(norms) >= FLAT_NORM:
        return None
    return (
        f"note: every row's gradient is near zero (the largest norm is {max(norms):.1e}): --target {target} adds the "
        "outputs, which may not change with the inputs (a softmax's always sum to 1); --target predicted or class "
        "differentiates one class's score"
    )


def keyless_note(rows_rejected: int, keyed: bool) -> str | None:
    """A line where rejected rows carry no key column: their file and reason alone cannot tell which rows they were."""
    if not rows_rejected or keyed:
        return None
    return (
        "note: the rejected rows carry no key column, so they cannot be told apart: give --keep_columns (an id "
        "column) to find them in the input"
    )


def _reason_counts(reasons: list[tuple[str, int]]) -> str:
    """`7 x column 'x' holds a null value; 3 x ...`"""
    return "; ".join(f"{count} x {reason}" for reason, count in reasons)


NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def top_reasons(files: Sequence[str], top: int = 3) -> tuple[list[tuple[str, int]], int]:
    """The `top` most frequent reasons in rejected-row shards, with their counts, and how many other reasons there are;
    reasons alike but for their numbers (195 classes outside the model's) count as one, shown by the most frequent.

    Reads the `reason` column only, a record batch at a time. Never fails the job: unreadable shards count nothing.
    """
    counts: collections.Counter = collections.Counter()
    for path in files:
        try:
            for batch in open_parquet(path).iter_batches(batch_size=65536, columns=["reason"]):
                for item in batch.column(0).value_counts().to_pylist():
                    counts[str(item["values"])] += item["counts"]
        except Exception:  # noqa: BLE001  (the summary line is a courtesy; the rows are in the files)
            continue
    groups: dict[str, collections.Counter] = {}  # reasons alike but for their numbers (a class, a length, a row)
    for reason, count in counts.items():
        groups.setdefault(NUMBER.sub("#", reason), collections.Counter())[reason] = count
    merged = []
    for alike in groups.values():
        example, _ = alike.most_common(1)[0]
        others = len(alike) - 1
        merged.append((example + (f" (and {others} more like it with other numbers)" if others else ""), sum(alike.values())))
    merged.sort(key=lambda item: -item[1])
    return merged[:top], len(merged) - len(merged[:top])


def as_given(paths: Sequence[str], prefix: str) -> list[str]:
    """Paths spelled like the prefix the user gave: relative to the working folder where it was relative."""
    if "://" in prefix or os.path.isabs(prefix):
        return list(paths)
    return [os.path.relpath(p) if os.path.isabs(p) else p for p in paths]


def plan_job(job: GradientOptions) -> tuple[JobPlan, object, InputFiles, int]:
    """Check every option against the files and the model; nothing is computed yet.

    Also counts the input's rows from the footers: the number every run must account for.
    The files are checked before TensorFlow is imported (for the spec and the model), so
    an input that matches nothing or a column that is not there answers at once.
    """
    inputs = match_files(job.input)
    footers = read_footers(inputs.paths)
    schemas = read_schemas(inputs.paths, footers)
    ref = next((i for i, footer in enumerate(footers) if footer.num_rows), 0)  # an empty file may type a column null
    schema = schemas[ref]

    input_map = exact_input_map(schema, parse_map(job.input_map))
    keys = exact_columns(schema, job.keep_columns)
    if job.group_column:  # kept in the output so the aggregates (and any reader) can group by it
        group = exact_column(schema, job.group_column)
        keys += [group] if group not in keys else []
    feature_columns = exact_columns(schema, job.feature_columns)
    mapped = [c for value in input_map.values() for c in value.split("+")]
    check_columns(schema, feature_columns + mapped, "feature", inputs.paths[ref])  # as planning would, only sooner
    with quiet_native_start(job.debug):
        return _plan_with_model(job, inputs, footers, schemas, ref, input_map, keys, feature_columns)


def _plan_with_model(job, inputs, footers, schemas, ref, input_map, keys, feature_columns):
    """plan_job's part that needs TensorFlow: the spec, the row columns it reads, the model; planned on file `ref`."""
    schema = schemas[ref]
    rows = {field: exact_column(schema, c) if c else c for field, c in row_columns(job).items()}
    try:
        spec = spec_from(job)
        spec.check_used(given_settings(job))
        plan, loaded = JobPlan.build(
            schema,
            inputs.paths[ref],
            ProcessModel(job.model, job.trust_model_code),
            spec,
            job.batch_size,
            feature_columns=feature_columns,
            input_map=input_map,
            row_columns=rows,
            key_columns=keys,
        )
    except SpecError as err:
        raise flag_error(err) from None
    if job.vocab and not any(c.kind == "tokens" for c in plan.layout.columns):  # it names nothing: said, not ignored
        raise OptionsError(
            f"--vocab {job.vocab!r} names token ids, but this job writes none: a tokens__<layer> column needs "
            "--wrt layer at a layer of positions x features whose tokens one integer model input holds"
        )
    check_same_columns(inputs.paths, schemas, plan.read_columns, [f.num_rows for f in footers], ref)
    return plan, loaded, inputs, sum(meta.num_rows for meta in footers)


def output_prefixes(job: GradientOptions) -> dict[str, str]:
    """Every output prefix of the job, by the option that names it."""
    return {OUTPUT: job.output, REJECTED_OPTION: job.rejected or f"{job.output}{REJECTED_SUFFIX}"}


def read_counters(result) -> tuple[dict[str, int] | None, tuple[int, int] | None]:
    """The job's counters, summed over steps, and the range of pids that loaded the model.

    (None, None) where the runner has no metrics API or returns none of ours, so
    the summary says so instead of reporting zeros.
    """
    try:
        metrics = result.metrics().query(MetricsFilter().with_namespace(METRICS))
    except NotImplementedError:
        return None, None
    if not metrics["counters"]:
        return None, None
    counters = dict.fromkeys(COUNTERS, 0)
    for counter in metrics["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        counters[counter.key.metric.name] = counters.get(counter.key.metric.name, 0) + (value or 0)
    pids = None
    for dist in metrics["distributions"]:
        value = dist.committed or dist.attempted
        if dist.key.metric.name == MODEL_LOAD_PID and value and value.count:
            low, high = (value.min, value.max) if pids is None else (min(pids[0], value.min), max(pids[1], value.max))
            pids = (low, high)
    return counters, pids


def run(argv: Sequence[str] = (), fault: Fault | None = None, **options) -> Summary:
    """Parse, check, build, run; the summary of what happened. `fault` is for tests (see JobPlan.fault).

    Options come as an argv list, as keyword arguments, or both (keywords after the list):

    >>> run(input="data/*.parquet", output="out/grads", model="model.keras",
    ...     runner="DirectRunner", keep_columns=["id"], emit=["norm"])  # doctest: +SKIP
    """
    argv = list(argv) + mapping_args(options, all_options_parser(), "run()")
    parsed = parse(argv)
    summary = run_options(parsed, argv, fault, started=time.monotonic())
    check_rejected(summary, parsed.view_as(GradientOptions).max_rejected_fraction)
    return summary


class TooManyRejected(SettingError):
    """More rows rejected than `max_rejected_fraction` allows; everything was written, and `summary` says what."""


def check_rejected(summary: Summary, limit: float | None) -> None:
    """TooManyRejected where a finished job rejected more than `limit` of its rows (the command line exits 3)."""
    if limit is None or summary.dry_run or summary.rejected_fraction <= limit:
        return
    error = TooManyRejected(
        "{share} of rows were rejected ({rejected} of {rows}), above {max_rejected_fraction} {limit}; the output was "
        "written", share=f"{summary.rejected_fraction:.1%}", rejected=summary.rows_rejected, rows=summary.rows_in,
        limit=limit,
    )
    error.summary = summary
    raise error


def run_options(
    options, argv: Sequence[str] = (), fault: Fault | None = None, started: float | None = None, progress_every=None
) -> Summary:
    """`started`: when the wall time starts (the process's start for the command line)."""
    started = time.monotonic() if started is None else started
    job = options.view_as(GradientOptions)
    check_values(job)  # before the demo's model or any model: TensorFlow is imported only after these
    made = 0.0
    if job.demo:
        from pipeline.demo import demo_options, make_files

        with quiet_native_start(job.debug):  # the demo's model is made (trained) with Keras
            made = make_files()
        argv = [a for a in argv if a != "--demo"]
        options = parse(argv, defaults=demo_options(argv))
        job = options.view_as(GradientOptions)
    check_required(job)
    dry_run = is_dry_run(options)
    check_reachable(options)
    prefixes = output_prefixes(job)
    check_no_clash(prefixes)
    written = [(OUTPUT, summary_path(job.output)), (OUTPUT, report_path(job.output))]
    check_pattern_untouched(prefixes, {"--input": job.input}, written)  # before reading: a rerun would read ours
    plan, loaded, inputs, rows_in = plan_job(job)
    plan.fault = fault
    check_inputs_untouched(
        prefixes, {"--input": inputs.paths + inputs.empty, "--model": [job.model], "--config": [job.config]}, written
    )
    if not dry_run:  # a dry run writes nothing, and may be built where the output is out of reach
        for option, prefix in prefixes.items():
            check_writable(prefix, option)
    staged = StagedOutputs(prefixes, files={SUMMARY: summary_path(job.output)})
    progress = Progress(rows_in, is_local(options) and not job.quiet and not dry_run, **_every(progress_every))
    watch = WorkerWatch(staged, retries=runner_name(options) in DASK_RUNNERS)
    try:
        return _run_watched(
            options, job, plan, loaded, inputs, rows_in, prefixes, staged, progress, watch, dry_run, started, made
        )
    finally:
        watch.close()


def _run_watched(options, job, plan, loaded, inputs, rows_in, prefixes, staged, progress, watch, dry_run, started, made):
    """run_options' part from the graph on, with `watch` naming a worker that dies (pipeline/crashes.py);
    `made`: the seconds the demo spent making its model and data, apart from the job's start-up."""
    pipeline = beam.Pipeline(runner=resolve_runner(options), options=options)
    writes = Writes(
        staged.staging[OUTPUT],
        staged.staging[REJECTED_OPTION],
        staged.staging[SUMMARY],
        job.num_shards or 0,
        job.group_column,
        job.top_rows,
        read_vocabulary(job.vocab) if job.vocab else None,
    )
    pipeline | "Job" >> GradientsGraph(
        plan,
        files=inputs.paths,
        read_batch_rows=job.read_batch_rows,
        writes=writes,
        progress=progress.files,
        breadcrumbs=watch.breadcrumbs,
    )
    if dry_run:
        result = pipeline.run()
        return Summary(0, 0, 0, None, None, time.monotonic() - started, [], [], result=result, dry_run=True)
    startup = time.monotonic() - started - made

    def reconcile(written: dict[str, int]) -> dict:
        rows_out, rows_rejected = written[OUTPUT], written[REJECTED_OPTION]
        if rows_in != rows_out + rows_rejected:
            missing = rows_in - rows_out - rows_rejected
            raise RowsUnaccounted(
                f"{abs(missing)} row(s) unaccounted for: the input files hold {rows_in}, the job wrote "
                f"{rows_out} out and {rows_rejected} rejected; nothing was moved into place "
                f"(an earlier output under {job.output!r} is left as it was)"
            )
        return {"rows_in": rows_in, "rows_out": rows_out, "rows_rejected": rows_rejected, "skipped": inputs.empty}

    @contextlib.contextmanager
    def running():
        with progress, local_worker_output(options), watch:
            yield

    result, written, placed = run_staged(pipeline, staged, reconcile, running())
    rows_out, rows_rejected = written[OUTPUT], written[REJECTED_OPTION]
    counters, pids = read_counters(result)
    reasons, other_reasons = top_reasons(placed[REJECTED_OPTION]) if rows_rejected else ([], 0)
    del loaded  # kept alive until here so an in-process runner reuses the launcher's model
    return Summary(
        rows_in,
        rows_out,
        rows_rejected,
        counters,
        pids,
        time.monotonic() - started,
        as_given(placed[OUTPUT], job.output),
        as_given(placed[REJECTED_OPTION], prefixes[REJECTED_OPTION]),
        skipped=inputs.empty,
        result=result,
        startup_seconds=startup,
        output=job.output,
        demo_seconds={"demo model and data": made} if made >= 0.05 else {},
        summary=summary_path(job.output),
        reasons=reasons,
        other_reasons=other_reasons,
        notes=[
            n
            for n in (
                flat_note(_aggregates(job.output) if rows_out else None, job.target),
                keyless_note(rows_rejected, bool(split_list(job.keep_columns))),  # a group column alone is no key
            )
            if n
        ],
    )


def _aggregates(prefix: str) -> dict | None:
    """The job's summary file, for the notes under its summary; None where it cannot be read (a note is a
    courtesy: it never fails a job that has written everything)."""
    try:
        return read_summary(prefix)
    except Exception:  # noqa: BLE001
        return None


def _every(seconds: float | None) -> dict:
    return {} if seconds is None else {"every": seconds}


