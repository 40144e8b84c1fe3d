"""Ctrl-C: remembered however a runner wraps it, kept out of a commit, and the local workers ended with it.

Its own module because the command line, the runners' log redirection and the
staged commit all need it, and none of them should import the others for it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

INTERRUPTED = threading.Event()  # set by the first SIGINT the command line receives


def _on_interrupt(signum, frame):
    if INTERRUPTED.is_set():  # the same Ctrl-C again (the terminal's, then the one the command line passed on)
        return
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


# A scheduler stopping the job: it waits for the block's end (SIGHUP where the platform has one).
DEFERRED = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None)


@contextlib.contextmanager
def uninterrupted():
    """Inside (the commit: moves that must not stop half-way), Ctrl-C is ignored and a SIGTERM or SIGHUP waits:
    it is raised again at the end. A SIGTERM in the middle of a commit used to leave neither the earlier output
    nor the new one (its marker removed, half its shards moved)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    for sig in DEFERRED:
        if signal.getsignal(sig) not in (signal.SIG_IGN, None):  # None: a handler set outside Python, left alone
            previous[sig] = signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum in dict.fromkeys(pending):
            signal.raise_signal(signum)


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

