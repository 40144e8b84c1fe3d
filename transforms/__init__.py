"""Reusable Beam pieces for per-example gradients; import these to embed the job in another pipeline."""

import re

__version__ = "0.1.0"
# Namespace of every Beam metric the job reports.
METRICS = "beam_gradients"


def error_line(err: BaseException) -> str:
    """An error's first line, printable, for a one-line message: decoders quote the bytes they choked on."""
    text = str(err).strip()
    line = "".join(ch for ch in (text.splitlines()[0] if text else "") if ch.isprintable()).strip(" :")
    return line or type(err).__name__


# A failure inside a worker reaches the launcher as text inside the runner's own error;
# the launcher finds its one line by this tag, whatever the runner wrapped around it.
FAILURE_TAG = "beam-gradients failure: "


class BatchFailed(RuntimeError):
    """The model failed on a batch; the message is one line naming the cause, the op and the rows."""

    def __init__(self, line: str):
        # once: Beam re-raises a step's error as type(e)(e.args[0] + " [while running 'step']")
        super().__init__(line if line.startswith(FAILURE_TAG) else FAILURE_TAG + line)


def op_error_line(err: BaseException) -> str:
    """One line for an error raised while the model ran: TensorFlow's own cause and the op at fault.

    TensorFlow's messages wrap the cause ("indices[196] = 50 is not in [0, 10)")
    in "Graph execution error", a "Detected at node" stack and a `[[{{node X}}]]` line.
    """
    text = getattr(err, "message", None) or str(err)
    node = re.search(r"\{\{node ([^}]+)\}\}", text)
    noise = ("Graph execution error", "Detected at node", "<stack traces", "File ", "[[", "[Op:")
    causes = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith(noise)]
    cause = "".join(ch for ch in (causes[0] if causes else type(err).__name__) if ch.isprintable())
    return f"{type(err).__name__}: {cause}" + (f" (op {node.group(1)})" if node else "")
