"""Per-example gradients, once a day: one Beam job per logical date, one output partition per day.

A run for day D reads `<input_base>/dt=D/*.parquet` and writes `<output_base>/dt=D/gradients-*.parquet`
(rejected rows as `<output_base>/dt=D/_rejected-*.parquet`: in the partition, where its marker can vouch for
them, and named with `_` so the dataset readers of Spark, Hive and pyarrow skip them and see one schema; the
marker and the summary beside them are not Parquet: docs/scale.md shows how to point such a reader at the shards).
The job stages its shards and moves them into place only when complete, replacing the earlier run's
shards of that day, then writes `<output_base>/dt=D/gradients_SUCCESS`: rerunning or clearing a day
replaces that day's partition instead of adding to it, a failed rerun leaves the earlier one, and
days never touch each other. The `complete` task after the job checks the marker and logs its counts;
downstream DAGs wait for that marker (a FileSensor or GCSObjectExistenceSensor on it).

Every setting is the run's param if given (trigger with config), else the Airflow Variable
`beam_gradients_<name>`, else the default below, so a deployment is configured without editing this
file; the job's options and their defaults are in docs/options.md (tests/test_settings_agree.py
checks that every param here is one of them). The job runs on the DirectRunner unless `runner` says
DataflowRunner; then `project`/`region` go to Dataflow and `config` names a YAML file of the job's options (staging, worker image, GPUs).
The job is `python -m pipeline` with the Airflow worker's own Python, where beam-gradients is installed.
"""

from __future__ import annotations

import sys

import pendulum
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.sdk import DAG, Param, task

DEFAULTS = {
    "runner": "DirectRunner",
    "input_base": "/data/examples",
    "output_base": "/data/gradients",
    "model": "/models/model.keras",
    "feature_columns": None,  # None: the job's own default (docs/options.md), here the model's input names
    "keep_columns": "id",
    "target": None,
    "class_column": None,  # for target class
    "method": None,
    "steps": None,  # integrated_gradients
    "samples": None,  # smoothgrad, vargrad, squaregrad; another method: SmoothGrad over it
    "emit": None,
    "batch_size": None,
    "project": None,
    "region": "us-central1",
    "config": None,
}
DAY = "dt={{ ds }}"


def setting(name: str) -> str:
    """Jinja for one setting: the run's param, else its Variable, else the default (None: not passed)."""
    return "{{ params.%s or var.value.get('beam_gradients_%s', %r) }}" % (name, name, DEFAULTS[name])


with DAG(
    dag_id="beam_gradients",
    description="Per-example gradients of a Keras model over one day's Parquet partition",
    schedule="@daily",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    # Native rendering keeps None as None (the operator then leaves the flag out) and lists as lists.
    render_template_as_native_obj=True,
    params={name: Param(None, type=["null", "string", "integer", "array"]) for name in DEFAULTS},
    doc_md=__doc__,
    tags=["beam", "gradients"],
) as dag:
    gradients = BeamRunPythonPipelineOperator(
        task_id="gradients",
        py_interpreter=sys.executable,
        py_options=["-m"],
        py_file="pipeline",
        runner=setting("runner"),
        pipeline_options={
            "input": setting("input_base") + f"/{DAY}/*.parquet",
            "output": setting("output_base") + f"/{DAY}/gradients",
            "rejected": setting("output_base") + f"/{DAY}/_rejected",
            "model": setting("model"),
            "feature_columns": setting("feature_columns"),
            "keep_columns": setting("keep_columns"),
            "target": setting("target"),
            "class_column": setting("class_column"),
            "method": setting("method"),
            "steps": setting("steps"),
            "samples": setting("samples"),
            "emit": setting("emit"),
            "batch_size": setting("batch_size"),
            "config": setting("config"),
        },
        dataflow_config={
            "project_id": setting("project"),
            "location": setting("region"),
            "job_name": "beam-gradients-{{ ds_nodash }}",
        },
    )

    @task(task_id="complete")
    def complete(output: str) -> dict:
        """The partition is complete only with its _SUCCESS marker; its counts go to the task log and XCom."""
        from pipeline.outputs import require_marker

        marker = require_marker(output)
        print(f"{output}: {marker['rows_in']} in, {marker['rows_out']} out, {marker['rows_rejected']} rejected")
        return {key: marker[key] for key in ("rows_in", "rows_out", "rows_rejected")}

    gradients >> complete(setting("output_base") + f"/{DAY}/gradients")
