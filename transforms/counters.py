"""The job's Beam metrics, declared once: DoFns count through `Counters`, the summary reads the same names."""

from __future__ import annotations

import os

from apache_beam.metrics import Metrics

from transforms import METRICS

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
# A distribution: its min and max are the lowest and highest pid that loaded the model.
MODEL_LOAD_PID = "model_load_pid"


class Counters:
    """The job's counters, for a DoFn to hold: `counters.inc("rows_out", n)`. A name not in COUNTERS is a KeyError."""

    def __init__(self):
        self._counters = {name: Metrics.counter(METRICS, name) for name in COUNTERS}
        self._load_pid = Metrics.distribution(METRICS, MODEL_LOAD_PID)

    def inc(self, name: str, n: int = 1) -> None:
        self._counters[name].inc(n)

    def model_loaded(self) -> None:
        """This process loaded the model: one more load, and its pid."""
        self.inc("model_loads")
        self._load_pid.update(os.getpid())
