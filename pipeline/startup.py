"""Fixed costs of the command line's own process that no job needs (issue 18: start-up and exit time).

Only the process that `beam-gradients` (or `python -m pipeline`) starts calls
these: they change process-wide state (the garbage collector, sys.modules)
that a program embedding the job keeps for itself.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import sys
import types

PYPLOT = "matplotlib.pyplot"


class _Deferred(types.ModuleType):
    """Stands in sys.modules for a module imported but not used yet; the first attribute read imports the real one."""

    def __getattr__(self, name):
        return getattr(_real(self.__name__), name)


def _real(name: str) -> types.ModuleType:
    if isinstance(sys.modules.get(name), _Deferred):
        del sys.modules[name]
    return importlib.import_module(name)


def quick_start() -> None:
    """Before TensorFlow is imported.

    Keras imports matplotlib.pyplot at its own import (for plotting helpers a job never
    calls): a few tenths of a second. It gets a stand-in that imports pyplot on first
    use, so the demo's report and any model code still get the real one.
    What the imports made so far lives as long as the process: frozen, it is left out
    of every later full garbage collection (five while TensorFlow imports, each walking
    Beam's quarter million objects again).
    """
    if PYPLOT not in sys.modules and importlib.util.find_spec("matplotlib") is not None:
        sys.modules[PYPLOT] = _Deferred(PYPLOT)
    gc.freeze()


def quick_exit() -> None:
    """After the summary is printed, everything written, committed and closed.

    The interpreter's last garbage collections at exit walk every object TensorFlow,
    Keras and Beam made (about a second of a short job's wall time); frozen, they are
    left out. atexit handlers, thread joins and stream flushes still run as usual.
    """
    gc.freeze()
