"""The demo's steps after its main job: the weight projections, the influence job and the report.

Apart from `pipeline/demo.py` (which makes the demo's data, model and options, and which the main
job imports) so that the steps, which run the jobs, import no job that imports them.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from pipeline.demo import influence_options, projection_options


def run_after(summary) -> list[str]:
    """The demo's steps after the main job, in this process: the projections, the influence job, the report.

    Each step's seconds go into the main job's summary (`demo_seconds`); returns the lines to print after it.
    The report is of the main job's output (the user's `--output`, where given), with its inputs.
    """
    from pipeline.jobs.influence import run_options as run_influence
    from pipeline.jobs.main import run_options as run_main
    from pipeline.options import parse
    from pipeline.report import write_demo_report

    def timed(name: str, step: Callable[[], object]):
        started = time.monotonic()
        done = step()
        summary.demo_seconds[name] = time.monotonic() - started
        return done

    projected = timed("projections", lambda: run_main(parse(projection_options()), projection_options()))
    influence = timed("influence", lambda: run_influence(parse(influence_options()), influence_options()))
    report = timed("report", lambda: write_demo_report(summary.output))
    return [
        "weight projections: " + ", ".join(projected.outputs),
        "influence: " + ", ".join(_relative(f) for f in influence.outputs["influence"]),
        "self influence: " + ", ".join(_relative(f) for f in influence.outputs["self_influence"]),
        f"report: {report}",
    ]


def _relative(path: str) -> str:
    """A local path below the working folder as the demo's other paths are printed, relative to it."""
    relative = os.path.relpath(path) if "://" not in path else path
    return path if relative.startswith("..") else relative
