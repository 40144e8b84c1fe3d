"""Which rows a worker process is computing, left in a file before each batch, for whoever sees that process die.

Why files: a worker killed by a signal (a native crash, the out-of-memory
killer) says nothing on its way out, and a runner reports its loss, if at all,
as its own error without the rows. Before each batch's compute a worker
writes `<folder>/<pid>-<thread>.batch` (the batch's files and row ranges) and
removes it after, so a breadcrumb left by a dead process names the batch it
died on. A fatal signal it can catch (SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL,
SIGTERM) is also written down by `faulthandler` in `<folder>/<pid>.<signal>`,
naming the thread; SIGKILL leaves no such file. The launcher (or the command
line's own supervisor) reads them: pipeline/crashes.py.
Used where the workers share the launcher's disk (local, portable on
loopback, a Dask cluster on this machine); elsewhere the folder is absent and
nothing is written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import json
import os
import re
import signal
import threading

BATCH = ".batch"
# What faulthandler writes first for the fatal signals it catches, and the signal's name.
FATAL = {
    "Segmentation fault": "SIGSEGV",
    "Aborted": "SIGABRT",
    "Bus error": "SIGBUS",
    "Floating-point exception": "SIGFPE",
    "Illegal instruction": "SIGILL",
}
CRASH = "crash"  # <pid>.crash: faulthandler's dump on a fatal signal
CAUGHT = ("SIGTERM",)  # also written down, each in <pid>.<name>, where nobody else handles them

_armed: dict[str, list] = {}  # folder -> the files faulthandler writes to (kept open for the process's life)
_lock = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Span:
    """Rows `first`..`last` (0-based, in the file) of `source`."""

    source: str
    first: int
    last: int

    def __str__(self) -> str:
        return f"rows {self.first}-{self.last} of file {self.source}"


@dataclasses.dataclass(frozen=True)
class Death:
    """A worker process that died while computing `spans`, by `signal` (a name, e.g. 'SIGSEGV')."""

    pid: int
    signal: str
    spans: tuple[Span, ...]


class Breadcrumbs:
    """Picklable handle on the folder: `computing(spans)` around a batch's compute, `deaths()` in the launcher.

    `launcher_pid`: the process that reads them; it writes breadcrumbs too (an in-process runner) but arms no
    faulthandler of its own (its embedding program's, a test runner's, stays), since its own supervisor, if any,
    learns its signal from its exit status.
    """

    def __init__(self, folder: str, launcher_pid: int | None = None):
        self.folder = folder
        self.launcher_pid = os.getpid() if launcher_pid is None else launcher_pid

    def arm(self) -> None:
        """Once per worker process: fatal signals are written down in this folder (faulthandler)."""
        pid = os.getpid()
        if pid == self.launcher_pid or not os.path.isdir(self.folder):
            return
        with _lock:
            if self.folder in _armed:
                return
            try:
                crash = open(os.path.join(self.folder, f"{pid}.{CRASH}"), "w")
                files = [crash]
                faulthandler.enable(file=crash, all_threads=False)
                for name in CAUGHT:
                    number = getattr(signal, name)
                    if signal.getsignal(number) is signal.SIG_DFL:  # chain=True: it still ends the process
                        files.append(open(os.path.join(self.folder, f"{pid}.{name}"), "w"))
                        faulthandler.register(number, file=files[-1], all_threads=False, chain=True)
            except (OSError, RuntimeError, ValueError):
                return
            _armed[self.folder] = files

    @contextlib.contextmanager
    def computing(self, spans: list[Span]):
        """While the block runs, a breadcrumb says this thread of this process computes `spans`."""
        path = os.path.join(self.folder, f"{os.getpid()}-{threading.get_ident()}{BATCH}")
        written = False
        try:
            with open(path + ".tmp", "w") as fh:
                json.dump([dataclasses.astuple(s) for s in spans], fh)
            os.replace(path + ".tmp", path)
            written = True
        except OSError:  # no such folder here (a remote worker): nothing to tell
            pass
        try:
            yield
        finally:  # a Python error is no death: only a process that is gone leaves its breadcrumb
            if written:
                with contextlib.suppress(OSError):
                    os.unlink(path)

    def deaths(self, exit_signals: dict[int, str] | None = None) -> list[Death]:
        """Processes that left a breadcrumb and are gone. `exit_signals`: signals already known, by pid."""
        by_pid: dict[int, dict[int, tuple[Span, ...]]] = {}
        try:
            names = os.listdir(self.folder)
        except OSError:
            return []
        for name in names:
            match = re.fullmatch(r"(\d+)-(\d+)" + re.escape(BATCH), name)
            if not match:
                continue
            try:
                with open(os.path.join(self.folder, name)) as fh:
                    spans = tuple(Span(*item) for item in json.load(fh))
            except (OSError, ValueError, TypeError):
                continue
            by_pid.setdefault(int(match.group(1)), {})[int(match.group(2))] = spans
        found = []
        for pid, threads in sorted(by_pid.items()):
            known = (exit_signals or {}).get(pid)
            if known is None and (pid == os.getpid() or _alive(pid)):
                continue
            name, thread = known or _reaped_signal(pid), None
            if name is None:
                name, thread = self._written_signal(pid)
            spans = threads.get(thread) or tuple(s for _, ss in sorted(threads.items()) for s in ss)
            found.append(Death(pid, name or "SIGKILL", spans))
        return found

    def dying(self) -> list[int]:
        """Processes alive, with a breadcrumb and their fatal signal written down: on their way out (dumping core)."""
        pids = set()
        with contextlib.suppress(OSError):
            for name in os.listdir(self.folder):
                match = re.fullmatch(r"(\d+)-\d+" + re.escape(BATCH), name)
                if match and _alive(int(match.group(1))) and self._written_signal(int(match.group(1)))[0]:
                    pids.add(int(match.group(1)))
        return sorted(pids)

    def _written_signal(self, pid: int) -> tuple[str | None, int | None]:
        """(the signal faulthandler wrote down for `pid`, the thread it hit); (None, None) where none was."""
        for name in (CRASH, *CAUGHT):
            try:
                with open(os.path.join(self.folder, f"{pid}.{name}")) as fh:
                    text = fh.read()
            except OSError:
                continue
            if not text.strip():
                continue
            thread = re.search(r"(?:Current thread|Thread) 0x([0-9a-f]+)", text)
            ident = int(thread.group(1), 16) if thread else None
            if name != CRASH:
                return name, ident
            fatal = re.search(r"Fatal Python error: ([^\n]+)", text)
            cause = fatal.group(1).strip() if fatal else ""
            return next((sig for words, sig in FATAL.items() if cause.startswith(words)), "a fatal signal"), ident
        return None, None


def _alive(pid: int) -> bool:
    """The process runs (a zombie has ended already)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except OSError:
            return True
        return True


def _reaped_signal(pid: int) -> str | None:
    """Where `pid` is this process's own child that ended by a signal: its name (the child is reaped)."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        return None
    if done and os.WIFSIGNALED(status):
        return signal_name(os.WTERMSIG(status))
    return None


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"
