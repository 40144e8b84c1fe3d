"""Assemble the job's graph from options, run it, print the summary.

Everything that can be checked before data is read is checked here first
(files, columns, model, spec), so a wrong option costs one line of error, not a
failed job.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import traceback
from typing import Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import StandardOptions, TestOptions, WorkerOptions

from pipeline.options import (
    DASK_RUNNERS,
    GradientOptions,
    OptionsError,
    check_prefix,
    check_required,
    check_values,
    flag_error,
    given_settings,
    all_options_parser,
    help_text,
    mapping_args,
    parse,
    parse_map,
    row_columns,
    spec_from,
    split_list,
)
from pipeline import PROCESS_STARTED, startup
from pipeline.progress import Progress
from transforms import FAILURE_TAG, METRICS, op_error_line
from transforms.aggregates import AggregatesFn, AggregateSpec, to_json
from transforms.compute import REJECTED, RESULTS, ComputeGradients
from transforms.contract import REJECTED_SUFFIX, report_path, summary_path
from transforms.counters import COUNTERS, MODEL_LOAD_PID
from transforms.input_means import InputMeans
from transforms.gradients import SpecError
from transforms.plan import Fault, JobPlan
from transforms.model import ModelError, ProcessModel
from pipeline.outputs import StagedOutputs, check_inputs_untouched, check_no_clash
from transforms.parquet import (
    InputError,
    InputFiles,
    ReadParquetBatches,
    check_same_columns,
    check_writable,
    match_files,
    open_parquet,
    read_footers,
    read_schemas,
    write_parquet,
)
from transforms.tensors import FeedError, check_columns, exact_column

LOG = logging.getLogger("beam_gradients")
OUTPUT, REJECTED_OPTION = "--output", "--rejected"
SUMMARY = "summary"  # the staged file's name: `<output>-summary.json` (transforms/contract.py)
# Errors that mean "an option or an input is wrong": one line, no traceback.
USER_ERRORS = (OptionsError, SpecError, FeedError, ModelError, InputError)


class RowsUnaccounted(RuntimeError):
    """The written files hold fewer (or more) rows than the input files: some were lost on the way."""


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
    report_seconds: float = 0.0  # of the wall time: the demo's report page, written after the job

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
        job_seconds = self.wall_seconds - self.startup_seconds - self.report_seconds
        rate = self.rows_in / job_seconds if job_seconds > 0 else 0.0
        lines.append(f"rows: {self.rows_in} in, {self.rows_out} out, {self.rows_rejected} rejected")
        if self.reasons:
            more = f"; and {self.other_reasons} other reason(s)" if self.other_reasons else ""
            lines.append(f"rejected: {_reason_counts(self.reasons)}{more}")
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
            + (f", report {self.report_seconds:.1f} s" if self.report_seconds else ""),
            "output: " + (", ".join(self.outputs) or "(none)"),
            "rejected rows: " + (", ".join(self.rejected) or "(none)"),
        ]
        if self.summary:
            lines.append(f"summary: {self.summary}")
        return "\n".join(lines)


def _reason_counts(reasons: list[tuple[str, int]]) -> str:
    """`7 x column 'x' holds a null value; 3 x ...`"""
    return "; ".join(f"{count} x {reason}" for reason, count in reasons)


def top_reasons(files: Sequence[str], top: int = 3) -> tuple[list[tuple[str, int]], int]:
    """The `top` most frequent reasons in rejected-row shards, with their counts, and how many other reasons there are.

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
    common = counts.most_common(top)
    return common, len(counts) - len(common)


def as_given(paths: Sequence[str], prefix: str) -> list[str]:
    """Paths spelled like the prefix the user gave: relative to the working folder where it was relative."""
    if "://" in prefix or os.path.isabs(prefix):
        return list(paths)
    return [os.path.relpath(p) if os.path.isabs(p) else p for p in paths]


# ---------------------------------------------------------------- Ctrl-C

INTERRUPTED = threading.Event()  # set by the first SIGINT the command line receives


def _on_interrupt(signum, frame):
    INTERRUPTED.set()
    # Local workers outside this terminal's process group get no Ctrl-C of their own, and a runner would wait for
    # their bundles before the KeyboardInterrupt reaches us: ask them to end now (end_worker_processes makes sure).
    end_worker_processes(grace=0)
    signal.default_int_handler(signum, frame)  # raises KeyboardInterrupt in the main thread


@contextlib.contextmanager
def catching_interrupts():
    """While the command runs, a Ctrl-C is remembered (INTERRUPTED), however a runner wraps the KeyboardInterrupt."""
    INTERRUPTED.clear()
    main_thread = threading.current_thread() is threading.main_thread()
    if not main_thread or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield  # Ctrl-C is ignored or handled by the caller (a test runner, an embedding program): left as it is
        return
    signal.signal(signal.SIGINT, _on_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def uninterrupted():
    """Ctrl-C is ignored inside (the commit: milliseconds of moves that must not stop half-way)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def was_interrupted(err: BaseException) -> bool:
    """A Ctrl-C: a KeyboardInterrupt anywhere in the chain, or one that a runner turned into another error."""
    seen = []
    while err is not None and err not in seen:
        if isinstance(err, KeyboardInterrupt):
            return True
        seen.append(err)
        err = err.__cause__ or err.__context__
    return INTERRUPTED.is_set()


def _descendants(root: int) -> list[int]:
    """Every living process below `root` (children, grandchildren, ...), from /proc; [] where there is no /proc."""
    parents = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    for name in names:
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if fields[0] != "Z":  # a zombie has ended already
                parents[int(name)] = int(fields[1])
    found, frontier = [], [root]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        found += children
        frontier += children
    return found


def end_worker_processes(grace: float = 3.0) -> None:
    """End the processes this one started (the local runner's workers): SIGTERM, then SIGKILL after `grace` seconds."""
    pids = _descendants(os.getpid())
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        if not grace:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            for pid in pids:
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(pid, os.WNOHANG)  # reap our own children; others' are reaped by their parent
            alive = set(_descendants(os.getpid())) & set(pids)
            if not alive:
                return
            time.sleep(0.05)
        pids = list(alive)


def runner_name(options) -> str:
    """--runner in lower case, without a module path ('' when not given)."""
    return str(options.view_as(StandardOptions).runner or "").rsplit(".", 1)[-1].lower()


def check_reachable(options) -> None:
    """A Dask scheduler named by the options answers: said at once, before any model is loaded."""
    if runner_name(options) in DASK_RUNNERS:
        from pipeline.dask_runner import DaskOptions, check_scheduler

        check_scheduler(options.view_as(DaskOptions).address)


def resolve_runner(options):
    """DirectRunner -> Beam's FnApiRunner, the engine DirectRunner itself ends on for batch jobs.

    Naming it directly skips DirectRunner's first try, Prism, which downloads a
    binary at run time and so fails (slowly, or not at all) on machines offline.
    Multi-processing (--direct_num_workers, --direct_running_mode) works the same.
    DaskRunner (by any name, Beam's module path included) -> ours, whose
    translation loses no rows (pipeline/dask_runner.py).
    """
    if runner_name(options) in DASK_RUNNERS:
        from pipeline.dask_runner import DaskRunner

        return DaskRunner()
    if not is_local(options):
        return None  # Beam resolves every other runner by name
    workers = options.view_as(WorkerOptions)
    if not options.view_as(GradientOptions).debug and workers.default_sdk_harness_log_level is None:
        # Local worker processes print to this terminal: a failed bundle's stack is for --debug only.
        workers.default_sdk_harness_log_level = "CRITICAL"
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)


@contextlib.contextmanager
def stderr_to_log(prefix: str):
    """Send this process's stderr (file descriptor 2, which C++ libraries and child processes write to) to a log.

    The log is kept, and named in the error, only when the block fails.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    log = tempfile.NamedTemporaryFile("w+b", prefix=prefix, suffix=".log", delete=False)
    os.dup2(log.fileno(), 2)
    try:
        yield
    except BaseException as err:
        if was_interrupted(err):  # a Ctrl-C is no failure to look into: no log to keep
            os.unlink(log.name)
        else:
            err.add_note(f"worker output: {log.name}")
        raise
    else:
        os.unlink(log.name)
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        log.close()


@contextlib.contextmanager
def quiet_native_start(debug: bool):
    """Without --debug, TensorFlow's C++ start-up lines (oneDNN, absl's "before InitializeLog") stay off the terminal.

    They are printed by C++ straight to file descriptor 2 as TensorFlow loads,
    whatever TF_CPP_MIN_LOG_LEVEL says, so TensorFlow is imported (and the model
    planned) with that descriptor sent to a log. Python errors are raised, not
    printed, so the job's own one-line errors are unaffected.
    """
    if debug or "tensorflow" in sys.modules:
        yield
        return
    with stderr_to_log("beam-gradients-start-"):
        import tensorflow  # noqa: F401

        yield


@contextlib.contextmanager
def local_worker_output(options):
    """Without --debug, the DirectRunner's worker processes write their stderr to a log file, not the terminal.

    Beam's SDK workers print every failed bundle's whole stack to stderr
    themselves (not through logging), and they inherit ours; the job's one
    line says what failed. The log is kept, and named, only when the job fails.
    """
    if options.view_as(GradientOptions).debug or not is_local(options):
        yield
        return
    with stderr_to_log("beam-gradients-workers-"):
        yield


def is_local(options) -> bool:
    """The DirectRunner (in-process or multi-process): workers on this machine."""
    return runner_name(options) in ("", "directrunner", "direct")


def is_dry_run(options) -> bool:
    """--dry_run: Dataflow builds and checks the whole job and submits nothing.

    Only DataflowRunner honours it; any other runner would run the job, so it is
    refused there rather than reported as a dry run that was not one.
    """
    value = options.view_as(TestOptions).dry_run
    if not value:
        return False
    if str(value).lower() != "true":  # Beam dry-runs on any value, "False" included
        raise OptionsError(f"--dry_run takes True only, not {value!r}; leave it out to run the job")
    if runner_name(options) not in ("dataflowrunner", "dataflow"):
        raise OptionsError("--dry_run works with --runner DataflowRunner only; other runners would run the job")
    return True


def plan_job(job: GradientOptions) -> tuple[JobPlan, object, InputFiles, int]:
    """Check every option against the files and the model; nothing is computed yet.

    Also counts the input's rows from the footers: the number every run must account for.
    The files are checked before TensorFlow is imported (for the spec and the model), so
    an input that matches nothing or a column that is not there answers at once.
    """
    inputs = match_files(job.input)
    footers = read_footers(inputs.paths)
    schemas = read_schemas(inputs.paths, footers)
    schema = schemas[0]

    def columns(value: str | None) -> list[str]:
        return [exact_column(schema, name) for name in split_list(value, strip=False)]

    input_map = {
        name: "+".join(exact_column(schema, c) for c in value.split("+"))
        for name, value in parse_map(job.input_map).items()
    }
    keys = columns(job.keep_columns)
    if job.group_column:  # kept in the output so the aggregates (and any reader) can group by it
        group = exact_column(schema, job.group_column)
        keys += [group] if group not in keys else []
    feature_columns = columns(job.feature_columns)
    mapped = [c for value in input_map.values() for c in value.split("+")]
    check_columns(schema, feature_columns + mapped, "feature", inputs.paths[0])  # as planning would, only sooner
    with quiet_native_start(job.debug):
        return _plan_with_model(job, inputs, footers, schemas, input_map, keys, feature_columns)


def _plan_with_model(job, inputs, footers, schemas, input_map, keys, feature_columns):
    """plan_job's part that needs TensorFlow: the spec, the row columns it reads, the model."""
    schema = schemas[0]
    rows = {field: exact_column(schema, c) if c else c for field, c in row_columns(job).items()}
    try:
        spec = spec_from(job)
        spec.check_used(given_settings(job))
        plan, loaded = JobPlan.build(
            schema,
            inputs.paths[0],
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
    check_same_columns(inputs.paths, schemas, plan.read_columns)
    return plan, loaded, inputs, sum(meta.num_rows for meta in footers)


def build(
    pipeline: beam.Pipeline,
    job: GradientOptions,
    plan: JobPlan,
    files: Sequence[str],
    prefixes: dict,
    progress=None,
) -> None:
    """Read -> compute -> write results, rejected rows and the aggregates (to `prefixes`, the staging names)."""
    batches = pipeline | "ReadParquet" >> ReadParquetBatches(
        files, plan.read_columns, job.read_batch_rows, plan.key_columns
    )
    means = None
    if plan.means:  # a first pass: the dataset's mean inputs (a `mean` baseline), read again rather than held
        feeds = [plan.feeds[i] for i in plan.means]
        columns = list(dict.fromkeys(c for f in feeds for c in f.columns))
        means = beam.pvalue.AsSingleton(
            pipeline
            | "Means/Read" >> ReadParquetBatches(files, columns, job.read_batch_rows, count=False)
            | "Means/Combine" >> beam.CombineGlobally(InputMeans(feeds))
        )
    computed = batches | "Gradients" >> ComputeGradients(plan, means, progress)
    shards = job.num_shards or 0
    computed[RESULTS] | "WriteGradients" >> write_parquet(prefixes[OUTPUT], plan.layout.schema, shards)
    computed[REJECTED] | "WriteRejected" >> write_parquet(prefixes[REJECTED_OPTION], plan.rejected_schema, shards)
    spec = AggregateSpec.from_layout(plan.layout, plan.key_columns, job.group_column, job.top_rows)
    (
        computed[RESULTS]
        | "Aggregate" >> beam.CombineGlobally(AggregatesFn(spec))
        | "SummaryJson" >> beam.Map(to_json)
        | "WriteSummary" >> beam.io.WriteToText(prefixes[SUMMARY], shard_name_template="", num_shards=1)
    )


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
    return run_options(parse(argv), argv, fault, started=time.monotonic())




def run_options(
    options, argv: Sequence[str] = (), fault: Fault | None = None, started: float | None = None, progress_every=None
) -> Summary:
    """`started`: when the wall time starts (the process's start for the command line)."""
    started = time.monotonic() if started is None else started
    job = options.view_as(GradientOptions)
    check_values(job)  # before the demo's model or any model: TensorFlow is imported only after these
    if job.demo:
        from pipeline.demo import demo_options

        with quiet_native_start(job.debug):  # the demo's model is made with Keras
            defaults = demo_options()
        options = parse([a for a in argv if a != "--demo"], defaults=defaults)
        job = options.view_as(GradientOptions)
    check_required(job)
    dry_run = is_dry_run(options)
    check_reachable(options)
    prefixes = output_prefixes(job)
    check_no_clash(prefixes)
    plan, loaded, inputs, rows_in = plan_job(job)
    plan.fault = fault
    check_inputs_untouched(
        prefixes,
        {"--input": inputs.paths + inputs.empty, "--model": [job.model], "--config": [job.config]},
        [(OUTPUT, summary_path(job.output)), (OUTPUT, report_path(job.output))],
    )
    if not dry_run:  # a dry run writes nothing, and may be built where the output is out of reach
        for option, prefix in prefixes.items():
            check_writable(prefix, option)
    staged = StagedOutputs(prefixes, files={SUMMARY: summary_path(job.output)})
    progress = Progress(rows_in, is_local(options) and not job.quiet and not dry_run, **_every(progress_every))
    pipeline = beam.Pipeline(runner=resolve_runner(options), options=options)
    build(pipeline, job, plan, inputs.paths, staged.staging, progress.files)
    if dry_run:
        result = pipeline.run()
        return Summary(0, 0, 0, None, None, time.monotonic() - started, [], [], result=result, dry_run=True)
    startup = time.monotonic() - started
    try:
        with progress, local_worker_output(options):
            result = pipeline.run()
            result.wait_until_finish()
        written = staged.count_rows()
        rows_out, rows_rejected = written[OUTPUT], written[REJECTED_OPTION]
        if rows_in != rows_out + rows_rejected:
            missing = rows_in - rows_out - rows_rejected
            raise RowsUnaccounted(
                f"{abs(missing)} row(s) unaccounted for: the input files hold {rows_in}, the job wrote "
                f"{rows_out} out and {rows_rejected} rejected; nothing was moved into place "
                f"(an earlier output under {job.output!r} is left as it was)"
            )
        counters, pids = read_counters(result)
        marker = {"rows_in": rows_in, "rows_out": rows_out, "rows_rejected": rows_rejected, "skipped": inputs.empty}
        with uninterrupted():
            placed = staged.commit(marker)
    except BaseException:
        with uninterrupted():  # a second Ctrl-C must not leave staging folders behind
            staged.discard()
        raise
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
        summary=summary_path(job.output),
        reasons=reasons,
        other_reasons=other_reasons,
    )


def _every(seconds: float | None) -> dict:
    return {} if seconds is None else {"every": seconds}


EXIT_OK, EXIT_FAILED, EXIT_OPTIONS, EXIT_TOO_MANY_REJECTED, EXIT_UNACCOUNTED = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
INTERRUPTED_LINE = (
    "interrupted: the job was stopped before it finished; nothing was committed, and an earlier output under "
    "the same prefix is left as it was"
)


def main(argv: Sequence[str] | None = None, fault: Fault | None = None, progress_every: float | None = None) -> int:
    """The console entry point: `beam-gradients` and `python -m pipeline`. Exit codes: see the README.

    `fault` is for tests only (see JobPlan.fault); `progress_every` sets the seconds between progress lines.
    """
    process = argv is None  # the process's own command line (a caller passing argv goes on living after)
    if process:
        startup.quick_start()
    code = _main(argv, fault, progress_every)
    if process:
        startup.quick_exit()
    return code


def _main(argv: Sequence[str] | None, fault: Fault | None, progress_every: float | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:  # `beam-gradients report OUTPUT_PREFIX`: the HTML page (pipeline/report.py)
        from pipeline.report import main as report_main

        return report_main(argv[1:])
    command_help, influence = help_text, argv[:1] == ["influence"]
    if influence:  # `beam-gradients influence ...`: the influence job (pipeline/influence.py)
        from pipeline.influence import run_options as run_influence
        from pipeline.options import influence_help_text as command_help

        argv = argv[1:]
    if "-h" in argv or "--help" in argv:
        print(command_help())
        return EXIT_OK
    debug = "--debug" in argv
    report = None
    try:
        with catching_interrupts():
            options = parse(argv)
            job = options.view_as(GradientOptions)
            debug = job.debug  # a config file may turn it on too
            _quiet_logs(debug)
            if influence:
                check_prefix(job.output, "--output", "influence")
                summary = run_influence(options, argv)
            else:
                summary = run_options(options, argv, fault, started=PROCESS_STARTED, progress_every=progress_every)
                if job.demo and not summary.dry_run:
                    from pipeline.report import write_demo_report

                    before = time.monotonic()
                    report = write_demo_report(summary)
                    summary.report_seconds = time.monotonic() - before
                # the process's wall time, to the line that prints it (the demo's report included)
                summary.wall_seconds = time.monotonic() - PROCESS_STARTED
    except USER_ERRORS as err:
        return _fail(f"error: {err}", EXIT_OPTIONS, debug)
    except RowsUnaccounted as err:
        return _fail(f"error: {err}", EXIT_UNACCOUNTED, debug)
    except KeyboardInterrupt:
        return _interrupted(debug)
    except Exception as err:  # the job itself failed; keep the cause, not the runner's stack
        if was_interrupted(err):  # a runner may hand a Ctrl-C on as its own error
            return _interrupted(debug)
        notes = "; ".join(getattr(err, "__notes__", ()))
        hint = "" if debug else f" ({notes + '; ' if notes else ''}rerun with --debug for the traceback)"
        return _fail(f"the job failed: {failure_line(err)}{hint}", EXIT_FAILED, debug)
    print(summary)
    if report:
        print(f"report: {report}")
    limit = None if influence else job.max_rejected_fraction
    if limit is not None and not summary.dry_run and summary.rejected_fraction > limit:
        print(
            f"beam-gradients: error: {summary.rejected_fraction:.1%} of rows were rejected "
            f"({summary.rows_rejected} of {summary.rows_in}), above --max_rejected_fraction {limit}; "
            "the output was written",
            file=sys.stderr,
        )
        return EXIT_TOO_MANY_REJECTED
    return EXIT_OK


def _interrupted(debug: bool) -> int:
    """Ctrl-C: the staging folders are gone already (run_options removes them); end the workers, say so, exit 130."""
    with uninterrupted():
        end_worker_processes()
    return _fail(INTERRUPTED_LINE, EXIT_INTERRUPTED, debug)


def _fail(line: str, code: int, debug: bool) -> int:
    """Print one line (after the traceback with --debug) and return the exit code."""
    if debug:
        traceback.print_exc()
    print(f"beam-gradients: {line}", file=sys.stderr)
    return code


def _quiet_logs(debug: bool) -> None:
    """Beam logs a failed bundle's whole stack at ERROR; without --debug the one line we print is enough."""
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not debug:
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)


def failure_line(err: BaseException) -> str:
    """The one line that says why a job failed.

    A worker's failure reaches us as text inside the runner's own exceptions
    (in-process, subprocess or remote alike), so look for our tagged line in
    every exception of the chain first; else the root cause's last line.
    """
    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    for link in chain:
        found = re.findall(re.escape(FAILURE_TAG) + r"((?:(?!" + re.escape(FAILURE_TAG) + r").)*)", str(link))
        if found:  # the innermost; runners append "[while running 'step']"
            return re.sub(r"\s*\[while running [^\]]*\]\s*$", "", found[-1]).strip()
    root = chain[-1]
    text = [line.strip() for line in str(root).strip().splitlines() if line.strip()]
    if isinstance(root, Exception) and type(root).__module__.startswith("tensorflow"):
        return op_error_line(root)
    return f"{type(root).__name__}: {text[0] if text else ''}"
