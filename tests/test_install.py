"""The installed packages agree with each other: `pip check` in the venv the tests run in.

.ci/run runs it in the runtime-only venv as well, before this venv is made.
"""

import subprocess
import sys


def test_pip_check():
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
