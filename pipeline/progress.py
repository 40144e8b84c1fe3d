"""One progress line on the terminal every few seconds while a local job runs: rows done of all, rows/s, time left.

The total is known before the job starts (from the Parquet footers); the rows
done come from the workers (transforms/progress.py). Off when stderr is not a
terminal (a log file or a pipe gets no progress lines) and with --quiet.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time

from transforms.progress import ProgressFiles

EVERY = 3.0  # seconds between lines


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"


def progress_line(done: int, total: int, elapsed: float) -> str:
    """`progress: 1,200 of 3,000 rows (40%), 600 rows/s, about 3 s left`."""
    done = min(done, total)
    rate = done / elapsed if elapsed > 0 else 0.0
    share = f" ({done / total:.0%})" if total else ""
    left = f", about {_duration((total - done) / rate)} left" if rate > 0 and done < total else ""
    return f"progress: {done:,} of {total:,} rows{share}, {rate:,.0f} rows/s{left}"


class Progress:
    """A thread printing progress lines to the terminal while the job runs; a context manager.

    The terminal is taken (duplicated) on construction, before the local
    runner's worker output is sent to a log file, so lines still reach it.
    `files` is None when progress is off; then nothing happens.
    """

    def __init__(self, total: int, enabled: bool, every: float = EVERY):
        self.total = total
        self.every = every
        self.files = None
        if enabled and os.isatty(2):
            self._folder = tempfile.mkdtemp(prefix="beam-gradients-progress-")
            self.files = ProgressFiles(self._folder)
            self._terminal = os.dup(2)
        self._stop = threading.Event()

    def __enter__(self):
        if self.files is not None:
            self._started = time.monotonic()
            self._thread = threading.Thread(target=self._loop, name="beam-gradients-progress", daemon=True)
            self._thread.start()
        return self

    def _loop(self):
        while not self._stop.wait(self.every):
            line = progress_line(self.files.rows_done(), self.total, time.monotonic() - self._started)
            os.write(self._terminal, (line + "\n").encode())

    def __exit__(self, *exc):
        if self.files is not None:
            self._stop.set()
            self._thread.join()
            os.close(self._terminal)
            shutil.rmtree(self._folder, ignore_errors=True)
        return False
