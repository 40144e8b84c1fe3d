"""The names `pipeline.run` has always offered, now in modules by role; kept so callers' imports keep working.

`run()` (the whole job from Python) is pipeline/jobs/main.py's, `main()` (the
command line) pipeline/cli.py's, runner resolution pipeline/runners.py's.
"""

from pipeline.cli import (  # noqa: F401
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OPTIONS,
    EXIT_TOO_MANY_REJECTED,
    EXIT_UNACCOUNTED,
    EXIT_WORKER_DIED,
    INTERRUPTED_LINE,
    USER_ERRORS,
    failure_line,
    main,
)
from pipeline.interrupts import _descendants, end_worker_processes  # noqa: F401
from pipeline.jobs.main import Summary, plan_job, run, run_options, top_reasons  # noqa: F401
from pipeline.runners import check_reachable, is_dry_run, is_local, resolve_runner  # noqa: F401
from pipeline.staged import RowsUnaccounted  # noqa: F401

if __name__ == "__main__":  # `python -m pipeline.run ...`: the same as `beam-gradients ...`
    import sys

    sys.exit(main())
