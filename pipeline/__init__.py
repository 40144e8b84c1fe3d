"""The beam-gradients job: options, graph assembly and the command line."""

import os
import time



def _process_started() -> float:
    """When this process started, on the time.monotonic() clock (Linux: from /proc); else now."""
    try:
        with open("/proc/self/stat") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, after the command name
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        age = uptime - ticks / os.sysconf("SC_CLK_TCK")
        return time.monotonic() - age if 0 <= age < 3600 else time.monotonic()
    except (OSError, ValueError, IndexError):
        return time.monotonic()


# The wall time the command line's summary prints starts here: the process's own start.
PROCESS_STARTED = _process_started()

# Quiets TensorFlow's C++ warnings in the job's output; --debug turns Python
# logging up. Workers inherit this environment.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
