"""Which runner runs a job: resolution, local vs remote, dry runs, where local workers' output goes, Dask.

Why its own module: the main job and the influence job resolve and check
runners the same way, and neither should import the other for it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile

from apache_beam.options.pipeline_options import StandardOptions, TestOptions, WorkerOptions

from pipeline.interrupts import was_interrupted
from pipeline.options import DASK_RUNNERS, GradientOptions, OptionsError


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
    """Without --debug, the worker processes this process starts write their stderr to a log file, not the terminal.

    Beam's SDK workers print every failed bundle's whole stack to stderr
    themselves (not through logging), and they inherit ours; the job's one
    line says what failed. The log is kept, and named, only when the job fails.
    """
    if options.view_as(GradientOptions).debug or not starts_workers_here(options):
        yield
        return
    with stderr_to_log("beam-gradients-workers-"):
        yield


def is_local(options) -> bool:
    """The DirectRunner (in-process or multi-process): workers on this machine."""
    return runner_name(options) in ("", "directrunner", "direct")


def starts_workers_here(options) -> bool:
    """Worker processes this process starts, which inherit its stderr: the DirectRunner's, and those of the local
    Dask cluster DaskRunner makes without --dask_client_address (each printed TensorFlow's start-up lines)."""
    if runner_name(options) in DASK_RUNNERS:
        from pipeline.dask_runner import DaskOptions

        return not options.view_as(DaskOptions).address
    return is_local(options)


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

