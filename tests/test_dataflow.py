"""configs/dataflow-gpu.yaml builds the full Dataflow job offline (--dry_run): GPU, image and our steps are in it.

Beam's DataflowRunner translates the whole pipeline and builds the Job, then
stops before anything is uploaded or submitted. It attaches the job's
environment (worker pool, service options, experiments) only while staging to
GCS, so the test attaches it with Beam's own `apiclient.Environment`, exactly as
`create_job_description` does, minus the uploads.
"""

import json
import pathlib

import keras
import numpy as np
import pytest
import yaml
from apache_beam.portability import common_urns
from apache_beam.portability.api import beam_runner_api_pb2
from apache_beam.runners.dataflow.internal import apiclient

from pipeline.options import OptionsError
from pipeline.run import run
from tests.conftest import run_on, save, write_parquet

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs/dataflow-gpu.yaml"
STEPS = ("ReadParquet", "Gradients", "WriteGradients", "WriteRejected")


def test_dataflow_gpu_config_dry_run_builds_the_job_with_gpu_image_and_steps(tmp_path, capsys):
    settings = yaml.safe_load(CONFIG.read_text())
    image = keras.Input((2, 2), name="image")
    model = keras.Model(image, keras.layers.Dense(1)(keras.layers.Flatten()(image)))
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(5), "image": np.ones((5, 2, 2), np.float32)})
    earlier = tmp_path / "out/g-00000-of-00001.parquet"  # a previous run's shard: a dry run must keep it
    write_parquet(earlier, {"id": np.arange(2)})
    summary = run(
        ["--config", str(CONFIG), "--dry_run=True", "--project", "test-project"]
        + ["--temp_location", "gs://test-bucket/tmp", "--input", str(tmp_path / "in/*.parquet")]
        + ["--output", str(tmp_path / "out/g"), "--model", save(model, tmp_path)]
    )

    assert summary.dry_run and summary.counters is None and earlier.exists()
    assert str(summary).startswith("dry run: the job was built and checked")
    job = summary.result.job
    job.proto.environment = apiclient.Environment(
        packages=[],
        options=job.options,
        environment_version=apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,
        proto_pipeline_staged_url="gs://test-bucket/tmp/staging/pipeline.pb",
        proto_pipeline=job.proto_pipeline,
    ).proto
    description = json.loads(job.json())  # what Dataflow's CreateJob request carries
    environment = description["environment"]
    assert description["type"] == "JOB_TYPE_BATCH" and description["name"].startswith("beamapp-")  # a name per run
    assert environment["serviceOptions"] == ["worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"]
    assert "no_use_multiple_sdk_containers" in environment["experiments"]
    assert "use_multiple_sdk_containers" not in environment["experiments"]
    (pool,) = environment["workerPools"]
    assert pool["machineType"] == "n1-standard-4"
    assert pool["workerHarnessContainerImage"] == settings["sdk_container_image"]
    assert {i["containerImage"] for i in pool["sdkHarnessContainerImages"]} == {settings["sdk_container_image"]}
    options = environment["sdkPipelineOptions"]["options"]
    assert options["feature_columns"] == "image" and options["model"].endswith("model.keras")

    # The portable pipeline the workers run: our steps, every one in our image.
    components = job.proto_pipeline.components
    (root,) = job.proto_pipeline.root_transform_ids
    (graph,) = components.transforms[root].subtransforms  # the job's graph, one PTransform (transforms/graph.py)
    top = {components.transforms[t].unique_name.removeprefix("Job/") for t in components.transforms[graph].subtransforms}
    assert set(STEPS) <= top
    for environment_id in {t.environment_id for t in components.transforms.values() if t.environment_id}:
        env = components.environments[environment_id]
        assert env.urn == common_urns.environments.DOCKER.urn
        payload = beam_runner_api_pb2.DockerPayload.FromString(env.payload)
        assert payload.container_image == settings["sdk_container_image"]


def test_dry_run_on_a_runner_that_would_run_the_job_is_refused(tmp_path):
    """Only Dataflow honours --dry_run; elsewhere the job would run and write, so it is an option error."""
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(3), "x": np.ones((3, 2), np.float32)})
    path = save(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), tmp_path)
    with pytest.raises(OptionsError, match="--dry_run works with --runner DataflowRunner only"):
        run_on(tmp_path, path, "--dry_run=True")
    assert not (tmp_path / "out").exists()
    with pytest.raises(OptionsError, match="--dry_run takes True only, not 'False'"):
        run_on(tmp_path, path, "--dry_run=False", "--runner", "DataflowRunner")  # Beam would dry-run on it
