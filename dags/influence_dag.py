"""Influence on demand: which training rows made these predictions (`beam-gradients influence`), then a check.

Triggered with a run config (no schedule): `train` and `query` are outputs of the main job with
`--weight_output projection` (globs; several checkpoints comma-separated, paired in order), and
`output` the prefix to write (every param but runner, project and region is an option in docs/options.md). Every
other setting is the run's param, else the Airflow Variable `beam_gradients_influence_<name>`, else the
default below. The job is `python -m pipeline.influence`
with the Airflow worker's own Python; the `complete` task then requires the output's `_SUCCESS`
marker and logs its counts.
"""

from __future__ import annotations

import sys

import pendulum
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.sdk import DAG, Param, task

DEFAULTS = {
    "runner": "DirectRunner",
    "train": None,
    "query": None,
    "output": None,
    "keep_columns": None,  # the job's default: every integer or string column is a key
    "score": None,
    "top_k": None,
    "checkpoint_weights": None,
    "self_influence": None,  # true: also write <output>_self_influence
    "project": None,
    "region": "us-central1",
    "config": None,
}


def setting(name: str) -> str:
    """Jinja for one setting: the run's param, else its Variable, else the default (None: not passed)."""
    return "{{ params.%s or var.value.get('beam_gradients_influence_%s', %r) }}" % (name, name, DEFAULTS[name])


with DAG(
    dag_id="beam_gradients_influence",
    description="Top-k influential training rows per query row, from the main job's weight projections",
    schedule=None,
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    render_template_as_native_obj=True,
    params={name: Param(None, type=["null", "string", "integer", "boolean", "array"]) for name in DEFAULTS},
    doc_md=__doc__,
    tags=["beam", "gradients", "influence"],
) as dag:
    influence = BeamRunPythonPipelineOperator(
        task_id="influence",
        py_interpreter=sys.executable,
        py_options=["-m"],
        py_file="pipeline.influence",
        runner=setting("runner"),
        pipeline_options={
            name: setting(name)
            for name in DEFAULTS
            if name not in ("runner", "project", "region")  # the operator's own arguments, not the job's
        },
        dataflow_config={
            "project_id": setting("project"),
            "location": setting("region"),
            "job_name": "beam-gradients-influence-{{ ts_nodash | lower }}",
        },
    )

    @task(task_id="complete")
    def complete(output: str) -> dict:
        """The influence output is complete only with its _SUCCESS marker; its counts go to the log and XCom."""
        from pipeline.outputs import require_marker

        marker = require_marker(output)
        print(f"{output}: {marker['rows_out']} rows for {marker['query_rows']} queries x {marker['train_rows']} training rows")
        return {key: marker[key] for key in ("rows_out", "query_rows", "train_rows")}

    influence >> complete(setting("output"))
