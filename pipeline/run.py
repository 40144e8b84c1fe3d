"""Assemble the job's graph from options, run it, print the summary.

Everything that can be checked before data is read is checked here first
(files, columns, model, spec), so a wrong option costs one line of error, not a
failed job.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from typing import Sequence

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import StandardOptions, TestOptions

from pipeline.options import (
    GradientOptions,
    OptionsError,
    check_required,
    help_text,
    parse,
    parse_map,
    spec_from,
    split_list,
)
from transforms import METRICS
from transforms.compute import REJECTED, RESULTS, ComputeGradients, JobPlan
from transforms.gradients import SpecError
from transforms.model import ModelError, ProcessModel
from transforms.parquet import (
    InputError,
    ReadParquetBatches,
    check_same_columns,
    check_writable,
    match_files,
    output_files,
    read_schemas,
    remove_output,
    write_parquet,
)
from transforms.tensors import FeedError

LOG = logging.getLogger("beam_gradients")
# Errors that mean "an option or an input is wrong": one line, no traceback.
USER_ERRORS = (OptionsError, SpecError, FeedError, ModelError, InputError)
COUNTERS = (
    "rows_in",
    "rows_out",
    "rows_rejected",
    "batches",
    "gpu_batches",
    "padded_rows",
    "none_gradients",
    "model_loads",
    "bundles",
)


@dataclasses.dataclass
class Summary:
    counters: dict[str, int] | None  # None where the runner reports no metrics
    load_pids: tuple[int, int] | None  # lowest and highest pid that loaded the model
    wall_seconds: float
    outputs: list[str]
    rejected: list[str]
    result: object = None  # the runner's PipelineResult; a Dataflow dry run's holds the job it built (.job)
    dry_run: bool = False

    def __str__(self) -> str:
        if self.dry_run:
            return f"dry run: the job was built and checked in {self.wall_seconds:.1f} s, not run; nothing was written"
        if self.counters is None:  # say so rather than print zeros that look like an empty job
            return "\n".join(
                [
                    "rows: the runner reported no counters; see its own job page",
                    f"wall time: {self.wall_seconds:.1f} s",
                    "output: " + (", ".join(self.outputs) or "(none)"),
                    "rejected rows: " + (", ".join(self.rejected) or "(none)"),
                ]
            )
        c = self.counters
        rate = c["rows_in"] / self.wall_seconds if self.wall_seconds else 0.0
        lines = [
            f"rows: {c['rows_in']} in, {c['rows_out']} out, {c['rows_rejected']} rejected",
            f"batches: {c['batches']} ({c['padded_rows']} padded rows, {c['gpu_batches']} on GPU); "
            f"None gradients: {c['none_gradients']}; model loads: {c['model_loads']}",
            f"wall time: {self.wall_seconds:.1f} s ({rate:,.0f} rows/s)",
            "output: " + (", ".join(self.outputs) or "(none)"),
            "rejected rows: " + (", ".join(self.rejected) or "(none)"),
        ]
        if c["rows_in"] != c["rows_out"] + c["rows_rejected"]:
            lines.insert(1, "WARNING: rows in != rows out + rows rejected; some rows are unaccounted for")
        return "\n".join(lines)


def runner_name(options) -> str:
    """--runner in lower case, without a module path ('' when not given)."""
    return str(options.view_as(StandardOptions).runner or "").rsplit(".", 1)[-1].lower()


def resolve_runner(options):
    """DirectRunner -> Beam's FnApiRunner, the engine DirectRunner itself ends on for batch jobs.

    Naming it directly skips DirectRunner's first try, Prism, which downloads a
    binary at run time and so fails (slowly, or not at all) on machines offline.
    Multi-processing (--direct_num_workers, --direct_running_mode) works the same.
    """
    if runner_name(options) not in ("", "directrunner", "direct"):
        return None  # Beam resolves every other runner by name
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    info = fn_runner.ExtendedProvisionInfo(beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded))
    return fn_runner.FnApiRunner(provision_info=info)


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


def plan_job(job: GradientOptions) -> tuple[JobPlan, object, list[str]]:
    """Check every option against the files and the model; nothing is computed yet."""
    files = match_files(job.input)
    schemas = read_schemas(files)
    plan, loaded = JobPlan.build(
        schemas[0],
        files[0],
        ProcessModel(job.model, job.trust_model_code),
        spec_from(job),
        job.batch_size,
        feature_columns=split_list(job.feature_columns),
        input_map=parse_map(job.input_map),
        label_column=job.label_column,
        key_columns=split_list(job.keep_columns),
    )
    check_same_columns(files, schemas, plan.read_columns)
    return plan, loaded, files


def build(pipeline: beam.Pipeline, job: GradientOptions, plan: JobPlan, files: Sequence[str]) -> None:
    """Read -> compute -> write results and rejected rows."""
    batches = pipeline | "ReadParquet" >> ReadParquetBatches(
        files, plan.read_columns, job.read_batch_rows, plan.key_columns
    )
    computed = batches | "Gradients" >> ComputeGradients(plan)
    computed[RESULTS] | "WriteGradients" >> write_parquet(job.output, plan.layout.schema)
    computed[REJECTED] | "WriteRejected" >> write_parquet(rejected_prefix(job), plan.rejected_schema)


def rejected_prefix(job: GradientOptions) -> str:
    return job.rejected or f"{job.output}-rejected"


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
        if dist.key.metric.name == "model_load_pid" and value and value.count:
            low, high = (value.min, value.max) if pids is None else (min(pids[0], value.min), max(pids[1], value.max))
            pids = (low, high)
    return counters, pids


def run(argv: Sequence[str]) -> Summary:
    """Parse, check, build, run; the summary of what happened."""
    return run_options(parse(argv), argv)


def run_options(options, argv: Sequence[str] = ()) -> Summary:
    job = options.view_as(GradientOptions)
    if job.demo:
        from pipeline.demo import demo_options

        options = parse([a for a in argv if a != "--demo"], defaults=demo_options())
        job = options.view_as(GradientOptions)
    check_required(job)
    dry_run = is_dry_run(options)
    started = time.monotonic()
    plan, loaded, files = plan_job(job)
    if not dry_run:  # a dry run writes nothing, and may be built where the output is out of reach
        check_writable(job.output, "--output")
        check_writable(rejected_prefix(job), "--rejected")
    pipeline = beam.Pipeline(runner=resolve_runner(options), options=options)
    build(pipeline, job, plan, files)
    if not dry_run:
        remove_output(job.output)
        remove_output(rejected_prefix(job))
    result = pipeline.run()
    if dry_run:
        return Summary(None, None, time.monotonic() - started, [], [], result=result, dry_run=True)
    result.wait_until_finish()
    del loaded  # kept alive until here so an in-process runner reuses the launcher's model
    counters, pids = read_counters(result)
    return Summary(
        counters,
        pids,
        time.monotonic() - started,
        output_files(job.output),
        output_files(rejected_prefix(job)),
        result=result,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point: `beam-gradients` and `python -m pipeline`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command_help, command_run = help_text, run_options
    if argv[:1] == ["influence"]:  # `beam-gradients influence ...`: the influence job (pipeline/influence.py)
        from pipeline.influence import run_options as command_run
        from pipeline.options import influence_help_text as command_help

        argv = argv[1:]
    if "-h" in argv or "--help" in argv:
        print(command_help())
        return 0
    debug = "--debug" in argv
    try:
        options = parse(argv)
        debug = options.view_as(GradientOptions).debug  # a config file may turn it on too
        logging.basicConfig(
            level=logging.INFO if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
        )
        summary = command_run(options, argv)
    except USER_ERRORS as err:
        if debug:
            raise
        print(f"beam-gradients: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # the job itself failed; keep the cause, not the runner's stack
        if debug:
            raise
        print(
            f"beam-gradients: the job failed: {_root_cause(err)} (rerun with --debug for the traceback)",
            file=sys.stderr,
        )
        return 1
    print(summary)
    return 0


def _root_cause(err: BaseException) -> str:
    while err.__cause__ is not None or err.__context__ is not None:
        err = err.__cause__ or err.__context__
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[-1] if text else ''}"
