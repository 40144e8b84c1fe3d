"""A worker process that dies (a native crash, the out-of-memory killer): one line naming the signal and the rows.

Workers leave a breadcrumb before each batch's compute (transforms/breadcrumbs.py).
While a job runs, `WorkerWatch` looks for breadcrumbs of processes that are
gone, and stops the job at once with `WorkerDied` (runners would otherwise
retry the batch on the next worker, or wait for a worker that never answers);
a runner that fails first with its own error about the lost worker gets the
same line. The staged run (pipeline/staged.py) then commits nothing.

The in-process runner's worker is the command line's own process: there the
command line runs the job in a forked child and stays behind to say it
(`supervised`), from the child's exit status and breadcrumbs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

from transforms.breadcrumbs import Breadcrumbs, Death, signal_name

EXIT_WORKER_DIED = 5  # the exit code (docs/troubleshooting.md); the command line names it too
POLL = 0.2  # seconds between looks at the breadcrumbs
DYING_WAIT = 30.0  # seconds a runner's failure waits for a worker that caught a fatal signal to end
ABORT = signal.SIGUSR1  # the watcher stops the launcher's main thread with it (a real signal ends a blocking wait)
STAGING = "staging.json"  # the job's staging names, for the supervisor to remove when the job's process died
COMMITTED = "committed"  # written once the output is in place: a death after it lost nothing
WHY = {
    "SIGKILL": "killed: the out-of-memory killer, or kill -9",
    "SIGSEGV": "a native crash",
    "SIGBUS": "a native crash",
    "SIGILL": "a native crash",
    "SIGFPE": "a native crash",
    "SIGABRT": "a native abort",
    "SIGTERM": "terminated",
}
NOTHING_COMMITTED = "nothing was committed (this run wrote no _SUCCESS marker), and an earlier output is left as it was"

_supervised_folder: str | None = None  # set in the child the command line's supervisor forked


class WorkerDied(RuntimeError):
    """A worker process died by a signal while it computed a batch; the message is the one line that says so."""


def death_line(deaths: list[Death], who: str = "a worker process") -> str:
    """`a worker process died (SIGSEGV: a native crash) while computing rows 400-599 of file a.parquet; ...`"""
    death = deaths[0]
    why = WHY.get(death.signal)
    spans = " and ".join(str(s) for s in death.spans)
    more = f" ({len(deaths) - 1} more worker process(es) died too)" if len(deaths) > 1 else ""
    return (
        f"{who} died ({death.signal}{': ' + why if why else ''}) while computing {spans}{more}; "
        + NOTHING_COMMITTED
    )


def _quiet_runner_threads() -> None:
    """Once a worker has died the job ends with one line: the runner's own threads, which then find their other
    workers gone (Beam's `run_worker`: "Worker subprocess exited with return code -15"), log at debug level
    instead of printing a traceback under it."""
    previous = threading.excepthook

    def hook(args):
        if args.exc_type is SystemExit:
            return previous(args)
        name = args.thread.name if args.thread is not None else "?"
        logging.getLogger(__name__).debug("after a worker died, thread %s: %r", name, args.exc_value)

    threading.excepthook = hook


class WorkerWatch:
    """The job's breadcrumb folder and, while the job runs (a context manager), the thread that watches it.

    `staging`: the job's StagedOutputs, written down for the command line's supervisor. `retries`: the runner
    reruns a lost worker's work elsewhere (Dask), so one death alone does not stop the job.
    """

    def __init__(self, staging=None, retries: bool = False):
        self.retries = retries
        self.supervised = _supervised_folder is not None
        self.folder = _supervised_folder or tempfile.mkdtemp(prefix="beam-gradients-breadcrumbs-")
        self.breadcrumbs = Breadcrumbs(self.folder)
        self.died: str | None = None
        self._stop = threading.Event()
        self._previous = None
        if staging is not None:
            described = {"prefixes": staging.prefixes, "files": staging.files, "run_id": staging.run_id}
            with open(os.path.join(self.folder, STAGING), "w") as fh:
                json.dump(described, fh)

    def __enter__(self):
        self._main = threading.current_thread() is threading.main_thread()
        if self._main:
            self._previous = signal.signal(ABORT, self._abort)
        self._thread = threading.Thread(target=self._loop, name="beam-gradients-worker-watch", daemon=True)
        self._thread.start()
        return self

    def _loop(self):
        while not self._stop.wait(POLL):
            line = self._fatal(self.breadcrumbs.deaths())
            if line:
                self.died = line
                _quiet_runner_threads()
                if self._main:
                    signal.pthread_kill(threading.main_thread().ident, ABORT)
                return

    def _fatal(self, deaths: list[Death]) -> str | None:
        """The line to stop the job with, or None to let the runner go on.

        A runner that reruns a lost worker's work (Dask) is left to do so once: a machine lost is no crash of the
        job's; the same rows killing a second worker are (a native crash or a row too big for any worker).
        """
        if not deaths:
            return None
        if not self.retries:
            return death_line(deaths)
        again = [d for d in deaths if sum(other.spans == d.spans for other in deaths) > 1]
        return death_line(again) if again else None

    def _abort(self, signum, frame):
        if self.died and not self._stop.is_set():
            raise WorkerDied(self.died)

    def __exit__(self, kind, err, tb):
        self._stop.set()
        self._thread.join()
        if self._main:
            signal.signal(ABORT, self._previous or signal.SIG_DFL)
        if err is None or isinstance(err, WorkerDied):
            return False
        # The runner failed first, with its own words for a lost worker (or none): the breadcrumbs say more.
        # A worker that caught its fatal signal may still be on its way out (dumping core): waited for, briefly.
        deadline = time.monotonic() + DYING_WAIT
        while not (deaths := self.breadcrumbs.deaths()) and self.breadcrumbs.dying() and time.monotonic() < deadline:
            time.sleep(POLL)
        line = self.died or (death_line(deaths) if deaths else None)
        if line and not isinstance(err, KeyboardInterrupt):
            raise WorkerDied(line) from err
        return False

    def close(self) -> None:
        """Remove the folder (the supervisor removes its own)."""
        if not self.supervised:
            shutil.rmtree(self.folder, ignore_errors=True)


def mark_committed() -> None:
    """The output is in place: a death from now on lost nothing (the command line's supervisor reads this)."""
    if _supervised_folder is not None:
        with contextlib.suppress(OSError):
            open(os.path.join(_supervised_folder, COMMITTED), "w").close()


def supervised(run) -> int:
    """Run `run()` (the command) in a forked child; its exit code, or, where it died by a signal, one line and 5.

    Only the command line's own process does this, before any thread or TensorFlow exists (fork copies one
    thread). The child dies with this process (PR_SET_PDEATHSIG). SIGINT, SIGTERM and SIGHUP are passed on to
    the child (a Ctrl-C from the terminal reaches it twice: it takes the first, pipeline/interrupts.py).
    """
    global _supervised_folder
    if not hasattr(os, "fork") or threading.active_count() > 1 or not sys.platform.startswith("linux"):
        return run()
    folder = tempfile.mkdtemp(prefix="beam-gradients-breadcrumbs-")
    sys.stdout.flush()
    sys.stderr.flush()
    parent = os.getpid()
    child = os.fork()
    if child == 0:
        _die_with_parent(parent)
        _supervised_folder = folder
        return run()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    passed_on: set[int] = set()

    def pass_on(signum, frame):
        passed_on.add(signum)
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for sig, handler in previous.items():
        if handler is not signal.SIG_IGN:  # a signal ignored (a job started in the background) stays ignored
            signal.signal(sig, pass_on)
    try:
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    try:
        if not os.WIFSIGNALED(status):
            return os.waitstatus_to_exitcode(status)
        number = os.WTERMSIG(status)
        return _report_death(folder, child, signal_name(number), number in passed_on)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _report_death(folder: str, child: int, name: str, told: bool) -> int:
    """The job's process died by signal `name`: remove its staging folders, print one line; exit code 5.

    `told`: the signal came to the command line and was passed on (a scheduler stopping the job): 128 + the signal,
    as a shell reports a command it stopped.
    """
    deaths = Breadcrumbs(folder, launcher_pid=child).deaths({child: name})
    committed = os.path.exists(os.path.join(folder, COMMITTED))
    staged = os.path.join(folder, STAGING)
    if os.path.exists(staged) and not committed:
        from pipeline.outputs import StagedOutputs

        with open(staged) as fh:
            described = json.load(fh)
        StagedOutputs(described["prefixes"], described["run_id"], described["files"]).discard()
    if told:
        print(f"beam-gradients: stopped by {name}; " + ("its output was committed" if committed else NOTHING_COMMITTED),
              file=sys.stderr)
        return 128 + signal.Signals[name].value
    mine = [d for d in deaths if d.pid == child] or deaths
    if mine:
        line = death_line(mine, who="the job's process (its in-process worker)")
    else:
        why = WHY.get(name)
        where = "after its output was committed" if committed else "outside any batch's compute"
        line = f"the job's process died ({name}{': ' + why if why else ''}) {where}" + (
            "" if committed else f"; {NOTHING_COMMITTED}"
        )
    print(f"beam-gradients: the job failed: {line}", file=sys.stderr)
    return EXIT_WORKER_DIED


def _die_with_parent(parent: int) -> None:
    """Linux: this process gets SIGKILL when its parent (the supervisor) dies, so no job runs on unsupervised."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)
