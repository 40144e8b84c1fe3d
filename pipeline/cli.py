"""The command line: `beam-gradients [run] ...`, `beam-gradients influence ...`, `beam-gradients report ...`.

One parser names the commands (`run`, the default when the first argument is a
flag; `influence`; `report`); each command's own options are parsed by its job
(pipeline/options.py) or by the report. Here too: the exit codes, the one line
a failure prints, and Ctrl-C.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
import traceback
from typing import Sequence

from pipeline import PROCESS_STARTED, startup
from pipeline.crashes import EXIT_WORKER_DIED, WorkerDied, supervised
from pipeline.interrupts import catching_interrupts, end_worker_processes, uninterrupted, was_interrupted
from pipeline.options import (
    COMMANDS,
    GradientOptions,
    InfluenceOptions,
    OptionsError,
    check_prefix,
    flag_error,
    help_text,
    parse,
)
from pipeline.staged import RowsUnaccounted
from transforms import FAILURE_TAG, op_error_line
from transforms.gradients.errors import SpecError
from transforms.model import ModelError
from transforms.io.files import InputError
from transforms.feeds.columns import FeedError

# Errors that mean "an option or an input is wrong": one line, no traceback.
USER_ERRORS = (OptionsError, SpecError, FeedError, ModelError, InputError)

EXIT_OK, EXIT_FAILED, EXIT_OPTIONS, EXIT_TOO_MANY_REJECTED, EXIT_UNACCOUNTED = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a command stopped by Ctrl-C
INTERRUPTED_LINE = (
    "interrupted: the job was stopped before it finished; nothing was committed, and an earlier output under "
    "the same prefix is left as it was"
)
RUN, INFLUENCE, REPORT = "run", "influence", "report"


def command_parser() -> argparse.ArgumentParser:
    """The commands, each taking the rest of the arguments as its own (parsed by the job or the report)."""
    parser = argparse.ArgumentParser(prog="beam-gradients", add_help=False)
    commands = parser.add_subparsers(dest="command")
    described = {usage.split()[1]: text for usage, text in COMMANDS}
    commands.add_parser(RUN, add_help=False, help="the gradients job (the default)")
    for name in (INFLUENCE, REPORT):
        commands.add_parser(name, add_help=False, help=described.get(name))
    return parser


def split_command(argv: Sequence[str]) -> tuple[str, list[str]]:
    """(command, its arguments). Without a command name first (a flag, or nothing), the command is `run`."""
    argv = list(argv)
    parser = command_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not argv or argv[0] not in commands.choices:
        return RUN, argv
    return parser.parse_known_args(argv[:1])[0].command, argv[1:]


def main(argv: Sequence[str] | None = None, fault=None, progress_every: float | None = None) -> int:
    """The console entry point: `beam-gradients` and `python -m pipeline`. Exit codes: docs/troubleshooting.md.

    `fault` is for tests only (see JobPlan.fault); `progress_every` sets the seconds between progress lines.
    Only the process's own command line (argv None) gets the start-up and exit shortcuts (pipeline/startup.py),
    and runs the command in a child it outlives, to say so in one line if the child dies (pipeline/crashes.py):
    a caller passing argv goes on living after.
    """
    if argv is not None:
        return _main(argv, fault, progress_every)
    return supervised(lambda: _process_main(fault, progress_every))


def _process_main(fault, progress_every) -> int:
    """The command line's own process (the supervised child where it forks): start-up and exit shortcuts around it."""
    startup.quick_start()
    code = _main(None, fault, progress_every)
    startup.quick_exit()
    return code


def _main(argv: Sequence[str] | None, fault, progress_every: float | None) -> int:
    command, argv = split_command(sys.argv[1:] if argv is None else argv)
    if command == REPORT:  # `beam-gradients report OUTPUT_PREFIX`: the HTML page (pipeline/report.py)
        from pipeline.report import main as report_main

        return report_main(argv)
    influence = command == INFLUENCE
    if "-h" in argv or "--help" in argv:
        if influence:
            from pipeline.options import influence_help_text

            print(influence_help_text())
        else:
            print(help_text())
        return EXIT_OK
    debug = "--debug" in argv
    demo_lines = []
    try:
        with catching_interrupts():
            options = parse(argv)
            job = options.view_as(GradientOptions)
            debug = job.debug  # a config file may turn it on too
            _quiet_logs(debug)
            if influence:  # `beam-gradients influence ...`: the influence job (pipeline/jobs/influence.py)
                from pipeline.jobs.influence import run_options as run_influence

                check_prefix(job.output, "--output", "influence")
                check_prefix(options.view_as(InfluenceOptions).self_influence_output, "--self_influence_output")
                summary = run_influence(options, argv)
            else:
                from pipeline.jobs.main import run_options

                summary = run_options(options, argv, fault, started=PROCESS_STARTED, progress_every=progress_every)
                if job.demo and not summary.dry_run:  # its projections, influence and report (pipeline/demo_steps.py)
                    from pipeline.demo_steps import run_after

                    demo_lines = run_after(summary)
                # the process's wall time, to the line that prints it (the demo's later steps included)
                summary.wall_seconds = time.monotonic() - PROCESS_STARTED
    except USER_ERRORS as err:  # an error below pipeline/ names settings; here they are flags
        return _fail(f"error: {_without_step(str(flag_error(err) if isinstance(err, SpecError) else err))}", EXIT_OPTIONS, debug)
    except RowsUnaccounted as err:
        return _fail(f"error: {err}", EXIT_UNACCOUNTED, debug)
    except KeyboardInterrupt:
        return _interrupted(debug)
    except WorkerDied as err:  # the local runner's other workers are ended; a job service's job was cancelled
        if was_interrupted(err):  # a Ctrl-C ends the local workers itself: the watcher may see that first
            return _interrupted(debug)
        with uninterrupted():
            end_worker_processes()
        return _fail(f"the job failed: {err}", EXIT_WORKER_DIED, debug)
    except Exception as err:  # the job itself failed; keep the cause, not the runner's stack
        if was_interrupted(err):  # a runner may hand a Ctrl-C on as its own error
            return _interrupted(debug)
        notes = "; ".join(getattr(err, "__notes__", ()))
        hint = "" if debug else f" ({notes + '; ' if notes else ''}rerun with --debug for the traceback)"
        return _fail(f"the job failed: {failure_line(err)}{hint}", EXIT_FAILED, debug)
    _print_lines([str(summary), *demo_lines])
    if not influence:
        from pipeline.jobs.main import TooManyRejected, check_rejected

        try:
            check_rejected(summary, job.max_rejected_fraction)
        except TooManyRejected as err:
            print(f"beam-gradients: error: {flag_error(err)}", file=sys.stderr)
            return EXIT_TOO_MANY_REJECTED
    return EXIT_OK


def _print_lines(lines: Sequence[str]) -> None:
    """The summary on stdout. Where its reader has gone (`| head`), the output is committed all the same: the
    rest is dropped, not a BrokenPipeError's traceback and exit 1 (and the rejected-rows check still runs)."""
    try:
        for line in lines:
            print(line)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own advice: no second error at exit


def _without_step(line: str) -> str:
    """A line without the "[while running 'step']" that Beam appends to an error raised in a step: the line names
    what is at fault in the user's terms, and the step's name is Beam's."""
    return re.sub(r"\s*\[while running [^\]]*\]\s*$", "", line).strip()


def _interrupted(debug: bool) -> int:
    """Ctrl-C: the staging folders are gone already (pipeline/staged.py removes them); end the workers, say so, exit 130."""
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
    """Beam logs a failed bundle's whole stack at ERROR; without --debug the one line we print is enough.

    Beam also logs through the root logger: the portable runner relays a job service's messages (its tracebacks
    after a worker died) with `logging.log`, from a thread that outlives our one line. Those records are kept
    off too.
    """
    level = logging.INFO if debug else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not debug:
        logging.getLogger("apache_beam").setLevel(logging.CRITICAL)
        logging.getLogger().addFilter(_not_from_beam)


def _not_from_beam(record: logging.LogRecord) -> bool:
    """False for a record logged by a Beam module through the root logger."""
    return f"{os.sep}apache_beam{os.sep}" not in record.pathname


def failure_line(err: BaseException) -> str:
    """The one line that says why a job failed.

    A worker's failure reaches us as text inside the runner's own exceptions
    (in-process, subprocess or remote alike), so look for our tagged line in
    every exception of the chain first; else the exception a relayed traceback ends with (`_relayed_line`), or the
    root cause's first line.
    """
    chain = []
    while err is not None and err not in chain:
        chain.append(err)
        err = err.__cause__ or err.__context__
    for link in chain:
        found = re.findall(re.escape(FAILURE_TAG) + r"((?:(?!" + re.escape(FAILURE_TAG) + r").)*)", str(link))
        if found:  # the innermost; runners append "[while running 'step']"
            return _without_step(found[-1])
    root = chain[-1]
    text = [line.strip() for line in str(root).strip().splitlines() if line.strip()]
    if isinstance(root, Exception) and type(root).__module__.startswith("tensorflow"):
        return op_error_line(root)
    return _relayed_line(str(root)) or f"{type(root).__name__}: {text[0] if text else ''}"


# The line a Python traceback ends with, `package.module.SomeError: message`, unindented.
EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception)): (.+)$")


def _relayed_line(text: str) -> str | None:
    """'SomeError: message' of the exception a traceback ends with, where a runner relays a worker process's
    failure as that traceback's text (the multi-process DirectRunner does: its first line is "Traceback (most
    recent call last):"); None for any other text."""
    if "Traceback (most recent call last):" not in text:
        return None
    for line in reversed(text.splitlines()):
        match = EXCEPTION_LINE.match(line)
        if match:
            return f"{match.group(1)}: {_without_step(match.group(2))}"
    return None
