"""A job's run between its graph and its committed output: run, reconcile the rows, commit or discard.

Both jobs (main and influence) write into staging names, count what they wrote
from the Parquet footers, check the counts add up, and only then move the files
into place with a `_SUCCESS` marker (pipeline/outputs.py). Any failure, a
Ctrl-C included, removes the staging files and leaves an earlier output as it was.
"""

from __future__ import annotations

import contextlib
from typing import Callable

from pipeline.crashes import WorkerDied, mark_committed
from pipeline.interrupts import uninterrupted
from pipeline.outputs import StagedOutputs


class RowsUnaccounted(RuntimeError):
    """The written files hold fewer (or more) rows than the input files: some were lost on the way."""


def run_staged(
    pipeline,
    staged: StagedOutputs,
    reconcile: Callable[[dict[str, int]], dict],
    running: contextlib.AbstractContextManager | None = None,
) -> tuple[object, dict[str, int], dict[str, list[str]]]:
    """Run `pipeline` (inside `running`), count the rows written, commit; (result, rows by output, placed files).

    `reconcile(rows)` checks the counts (raising RowsUnaccounted) and returns the marker's contents.
    """
    result = None
    try:
        with running or contextlib.nullcontext():
            result = pipeline.run()
            result.wait_until_finish()
        rows = staged.count_rows()
        marker = reconcile(rows)
        with uninterrupted():  # moves that must not stop half-way (a rename is a copy and a delete on an object store)
            placed = staged.commit(marker)
            mark_committed()
    except BaseException as err:
        if isinstance(err, WorkerDied) and result is not None:  # a job service or cluster would go on with it
            with contextlib.suppress(Exception):
                result.cancel()
        with uninterrupted():  # a second Ctrl-C must not leave staging folders behind
            staged.discard()
        raise
    return result, rows, placed
