"""Rows done so far, told by workers on this machine to the launcher through small files in a folder.

Why files: a running in-process or multi-process runner reports no metrics
until the job ends, but every local worker can write a file the launcher reads.
Each process keeps one count (shared by its threads) and rewrites
`<folder>/<pid>` at most twice a second; the launcher sums the files.
Used on local runners only: a remote worker's files would land on its own disk.
"""

from __future__ import annotations

import os
import threading
import time

WRITE_EVERY = 0.5  # seconds between a process's writes

_lock = threading.Lock()
_counts: dict[str, list] = {}  # folder -> [rows, time of the last write]


class ProgressFiles:
    """Picklable handle on the folder: `add(rows)` on workers (per computed batch), `rows_done()` in the launcher."""

    def __init__(self, folder: str):
        self.folder = folder

    def add(self, rows: int, force: bool = False) -> None:
        with _lock:
            state = _counts.setdefault(self.folder, [0, 0.0])
            state[0] += rows
            now = time.monotonic()
            if not force and now - state[1] < WRITE_EVERY:
                return
            state[1] = now
            count = state[0]
        path = os.path.join(self.folder, str(os.getpid()))
        try:
            with open(path + ".tmp", "w") as fh:
                fh.write(str(count))
            os.replace(path + ".tmp", path)
        except OSError:  # the launcher has finished and removed the folder: nothing to tell
            pass

    def rows_done(self) -> int:
        total = 0
        try:
            names = os.listdir(self.folder)
        except OSError:
            return 0
        for name in names:
            if name.isdigit():
                try:
                    with open(os.path.join(self.folder, name)) as fh:
                        total += int(fh.read() or 0)
                except (OSError, ValueError):
                    pass
        return total
