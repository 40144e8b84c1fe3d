"""Our parser accepts exactly what Airflow's Beam operator passes: its real argv, recorded from a real run."""

import json
import os
import sys
import tempfile

# Importing Airflow makes its home folder (default ~/airflow); keep it out of the user's home.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="airflow-home-"))

import pytest  # noqa: E402
from airflow.providers.apache.beam.hooks.beam import beam_options_to_args  # noqa: E402
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator  # noqa: E402
from airflow.version import version as airflow_version  # noqa: E402
from apache_beam.options.pipeline_options import GoogleCloudOptions, StandardOptions  # noqa: E402

from pipeline.options import GradientOptions, OptionsError, parse, parse_map, split_list  # noqa: E402

# A stand-in pipeline file: writes its argv to the file its --record flag names.
RECORD_ARGV = """import json, sys
record = [a for a in sys.argv if a.startswith("--record=")][0].split("=", 1)[1]
open(record, "w").write(json.dumps(sys.argv[1:]))
"""


def operator_argv(tmp_path, pipeline_options: dict) -> list[str]:
    """The operator's own execute() on the DirectRunner; the 'pipeline' it starts records its argv."""
    script = tmp_path / "record_argv.py"
    script.write_text(RECORD_ARGV)
    record = tmp_path / "argv.json"
    BeamRunPythonPipelineOperator(
        task_id="gradients",
        py_interpreter=sys.executable,
        py_file=str(script),
        py_options=[],
        pipeline_options={"record": str(record), **pipeline_options},
    ).execute(context={})
    return [a for a in json.loads(record.read_text()) if not a.startswith("--record=")]


def test_the_operator_argv_is_accepted_and_means_what_the_dag_said(tmp_path):
    argv = operator_argv(
        tmp_path,
        {
            "input": "/data/dt=2024-05-02/*.parquet",
            "output": "/out/dt=2024-05-02/gradients",
            "featureColumns": ["a", "b"],  # camelCase, rewritten to feature_columns; a list, one flag per item
            "keepColumns": "id",
            "inputMap": {"x": "a+b"},  # a dict: passed as JSON
            "batchSize": 7,
            "trustModelCode": True,  # a bare flag
            "jitCompile": False,  # left out
            "emit": ["norm", "predictions"],
            "labels": {"team": "ml"},
            "rejected": None,  # left out
        },
    )
    label = "airflow-version=v" + airflow_version.replace(".", "-").replace("+", "-")
    assert label == "airflow-version=v3-3-2"
    assert argv == [
        "--runner=DirectRunner",
        "--input=/data/dt=2024-05-02/*.parquet",
        "--output=/out/dt=2024-05-02/gradients",
        "--feature_columns=a",
        "--feature_columns=b",
        "--keep_columns=id",
        '--input_map={"x": "a+b"}',
        "--batch_size=7",
        "--trust_model_code",
        "--emit=norm",
        "--emit=predictions",
        "--labels=team=ml",
        f"--labels={label}",
    ]
    options = parse(argv)
    job = options.view_as(GradientOptions)
    assert split_list(job.feature_columns) == ["a", "b"]  # both, not only the last
    assert split_list(job.emit) == ["norm", "predictions"]
    assert parse_map(job.input_map) == {"x": "a+b"}
    assert (job.keep_columns, job.batch_size, job.trust_model_code, job.jit_compile) == ("id", 7, True, False)
    assert job.rejected is None
    assert options.view_as(GoogleCloudOptions).labels == ["team=ml", label]
    assert options.view_as(StandardOptions).runner == "DirectRunner"


def test_the_options_the_operator_adds_for_dataflow_are_accepted():
    """Dataflow's extra options, through the provider's own function (a Dataflow run cannot start offline)."""
    argv = beam_options_to_args(
        {
            "job_name": "beam-gradients-20240502-1a2b3c4d",
            "project": "my-project",
            "region": "us-central1",
            "service_account_email": "jobs@my-project.iam.gserviceaccount.com",
            "impersonate_service_account": "a@my-project.iam.gserviceaccount.com",
            "labels": ["airflow-version=v3-3-2"],
        }
    )
    cloud = parse(["--runner=DataflowRunner", *argv]).view_as(GoogleCloudOptions)
    assert (cloud.job_name, cloud.project, cloud.region) == (
        "beam-gradients-20240502-1a2b3c4d",
        "my-project",
        "us-central1",
    )
    assert cloud.labels == ["airflow-version=v3-3-2"]


def test_a_list_on_the_command_line_replaces_the_config_files_list(tmp_path):
    config = tmp_path / "job.yaml"
    config.write_text("keep_columns: [id, day]\nemit: [norm]\n")
    job = parse(["--config", str(config), "--keep_columns", "a", "--keep_columns=b"]).view_as(GradientOptions)
    assert (job.keep_columns, job.emit) == ("a,b", "norm")
    with pytest.raises(OptionsError, match="--input_map: not a valid JSON object"):
        parse_map('{"x": ')
