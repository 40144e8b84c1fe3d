"""The runtime-install checks (tests/runtime_checks.py) under pytest too, so the test venv runs them as well.

.ci/run runs them first in a venv holding only the runtime install; here they run
beside packages (pandas among them) that the runtime install lacks, and
`check_no_pandas_imported` proves in a fresh interpreter that the job imports none of it.
"""

import pytest

import runtime_checks


@pytest.mark.parametrize("check", runtime_checks.CHECKS, ids=lambda c: c.__name__)
def test_runtime_check(check, tmp_path):
    check(str(tmp_path))


def test_no_pandas_imported():
    runtime_checks.check_no_pandas_imported()
