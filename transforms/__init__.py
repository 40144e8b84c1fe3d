"""Reusable Beam pieces for per-example gradients; import these to embed the job in another pipeline."""

__version__ = "0.1.0"
# Namespace of every Beam metric the job reports.
METRICS = "beam_gradients"


def error_line(err: BaseException) -> str:
    """An error's first line, printable, for a one-line message: decoders quote the bytes they choked on."""
    text = str(err).strip()
    line = "".join(ch for ch in (text.splitlines()[0] if text else "") if ch.isprintable()).strip(" :")
    return line or type(err).__name__
