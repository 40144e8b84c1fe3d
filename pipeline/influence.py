"""`python -m pipeline.influence ...`, as Airflow's Beam operator runs a module: `beam-gradients influence ...`.

The job itself is pipeline/jobs/influence.py; its names stay importable from here.
"""

from pipeline.jobs.influence import *  # noqa: F401,F403
from pipeline.jobs.influence import run_options  # noqa: F401

if __name__ == "__main__":
    import sys

    from pipeline.cli import main

    sys.exit(main(["influence", *sys.argv[1:]]))
