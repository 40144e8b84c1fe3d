"""Reusable Beam pieces for per-example gradients; import these to embed the job in another pipeline."""

__version__ = "0.1.0"
# Namespace of every Beam metric the job reports.
METRICS = "beam_gradients"
