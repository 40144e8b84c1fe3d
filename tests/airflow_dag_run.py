"""Run by tests/test_airflow_dag.py in a fresh process: Airflow reads its settings from the environment once.

Loads dags/ into a DagBag (any import error fails), then runs the DAG for one logical date with
dag.test() and the given run conf, and fails unless the run succeeded.
"""

import json
import sys

import pendulum
from airflow.dag_processing.dagbag import DagBag
from airflow.utils.state import DagRunState


def main(dags_folder: str, dag_id: str, day: str, conf: str) -> int:
    bag = DagBag(dag_folder=dags_folder)
    if bag.import_errors:
        print(f"import errors: {bag.import_errors}", file=sys.stderr)
        return 3
    run = bag.get_dag(dag_id).test(logical_date=pendulum.parse(day), run_conf=json.loads(conf))
    print(f"dag run state: {run.state}")
    return 0 if run.state == DagRunState.SUCCESS else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
