"""One progress line on the terminal every few seconds while a local job runs: rows done of all, rows/s, time left.

The total is known before the job starts (from the Parquet footers); the rows
done come from the workers (transforms/progress.py). Off when stderr is not a
terminal (a log file or a pipe gets no progress lines) and with --quiet.
"""

from __future__ import annotations

import collections
import math
import os
import shutil
import tempfile
import threading
import time

from transforms.progress import ProgressFiles

EVERY = 3.0  # seconds between lines
POLL = 0.25  # seconds between looks at the counts: the first line is printed as soon as rows are done
WINDOW = 30.0  # seconds of recent counts the rate is taken over, at least (half the time since the first rows if more)
SMOOTHING = 10.0  # seconds: the time constant of the exponential smoothing of that rate


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"


class RateEstimate:
    """Rows per second, steady although the counts come in jumps: a pure function of the (time, rows done) fed to it.

    Workers report every half second at most and per computed batch, so the count moves in steps; a rate from the
    last interval alone swings with every step. The rate is taken over a recent window (`window` seconds, or half
    the time since the first rows were done where that is longer, so it steadies as the job goes on), from the time
    just before the first rows (start-up, model loads and tracing are not counted), then smoothed exponentially
    (time constant `smoothing` seconds).

    >>> estimate = RateEstimate()
    >>> [round(estimate.add(t, 100 * t) or 0) for t in (0, 1, 2, 3)]
    [0, 100, 100, 100]
    """

    def __init__(self, window: float = WINDOW, smoothing: float = SMOOTHING):
        self.window = window
        self.smoothing = smoothing
        self.rate: float | None = None
        self._samples: collections.deque = collections.deque()  # (time, rows done), oldest first
        self._started: float | None = None  # the last time no row was done yet

    def add(self, now: float, done: int) -> float | None:
        """Take one reading; the smoothed rate (None until rows are done over a measurable time)."""
        if not done:  # nothing done yet: start-up; the rate starts from the last such reading
            self._started = now
            self._samples.clear()
            self._samples.append((now, 0))
            return self.rate
        if not self._samples:  # rows were done before the first reading: start here
            self._started = now
        self._samples.append((now, done))
        span = max(self.window, (now - self._started) / 2)
        while len(self._samples) > 2 and self._samples[1][0] <= now - span:  # keep one reading at or before the span
            self._samples.popleft()
        then, done_then = self._samples[0]
        if now <= then:
            return self.rate
        measured = (done - done_then) / (now - then)
        if self.rate is None:
            self.rate = measured
        else:
            weight = 1 - math.exp(-(now - self._last) / self.smoothing) if self.smoothing > 0 else 1.0
            self.rate += weight * (measured - self.rate)
        self._last = now
        return self.rate


def progress_line(done: int, total: int, elapsed: float, rate: float | None = None) -> str:
    """`progress: 1,200 of 3,000 rows (40%), 600 rows/s, about 3 s left`. `rate`: an estimate (else done / elapsed)."""
    done = min(done, total)
    if rate is None:
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
        estimate, printed, shown = RateEstimate(), self._started, 0
        while not self._stop.wait(min(POLL, self.every)):
            now, done = time.monotonic(), self.files.rows_done()
            rate = estimate.add(now, done)
            # a line every `every` seconds, and one as soon as the first rows are done
            if now - printed >= self.every or (done and not shown):
                line = progress_line(done, self.total, now - self._started, rate or 0.0)
                os.write(self._terminal, (line + "\n").encode())
                printed, shown = now, done

    def __exit__(self, *exc):
        if self.files is not None:
            self._stop.set()
            self._thread.join()
            os.close(self._terminal)
            shutil.rmtree(self._folder, ignore_errors=True)
        return False
