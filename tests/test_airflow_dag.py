"""The Airflow DAG, run by Airflow itself: dag.test() of one day on the DirectRunner, then the same day again.

Airflow runs in a subprocess (tests/airflow_dag_run.py) with its own AIRFLOW_HOME and sqlite DB, and the
operator starts our job with this venv's Python; the output partition is checked here.
"""

import ast
import json
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests.projections import write_projections
from tests.conftest import assert_close, by_key, eager_gradients, read_output, tensor_column, write_parquet

ROOT = pathlib.Path(__file__).resolve().parents[1]
DAY, OTHER_DAY = "2024-05-02", "2024-05-01"
ROWS = 20  # per file, two files a day
IMAGE_SHAPE = (8, 8, 1)


def make_model(path: str) -> None:
    """A small untrained two-headed image model whose heads both have gradients (the demo's `classes` is a
    softmax, whose sum has none)."""
    keras.utils.set_random_seed(0)
    image = keras.Input(IMAGE_SHAPE, name="image")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="tanh")(image))
    classes = keras.layers.Dense(3, name="classes")(features)
    brightness = keras.layers.Dense(1, name="brightness")(features)
    keras.Model(image, [classes, brightness]).save(path)


@pytest.fixture(scope="module")
def airflow_env(tmp_path_factory):
    """A fresh AIRFLOW_HOME with a migrated sqlite DB, only our dags/ folder, no example DAGs."""
    home = tmp_path_factory.mktemp("airflow-home")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home}/airflow.db",
    }
    airflow = pathlib.Path(sys.executable).parent / "airflow"
    done = subprocess.run([str(airflow), "db", "migrate"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return env


def run_day(env, day, conf, dag_id="beam_gradients"):
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests/airflow_dag_run.py"), str(ROOT / "dags"), dag_id, day, conf],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    log = done.stdout + done.stderr
    assert done.returncode == 0 and "dag run state: success" in log, log[-6000:]
    return log


def test_dag_runs_one_day_into_its_partition_and_a_rerun_replaces_it(tmp_path, airflow_env):
    make_model(str(tmp_path / "model.keras"))
    rng = np.random.default_rng(5)
    images = {}
    for day, first_id in ((OTHER_DAY, 0), (DAY, 1000)):
        for f in range(2):
            ids = np.arange(first_id + f * ROWS, first_id + (f + 1) * ROWS)
            x = rng.random((ROWS, *IMAGE_SHAPE), dtype=np.float32)
            if day == DAY and f == 1:
                x[3, 0, 0, 0] = np.nan  # one row the job must reject, into the rejected tree
            images.update(zip(ids.tolist(), x))
            write_parquet(tmp_path / f"in/dt={day}/part-{f}.parquet", {"id": ids, "image": x})
    # The model comes from an Airflow Variable (set the way a deployment may: the environment),
    # the rest from the run's params; keep_columns and the runner from the DAG's defaults.
    env = {**airflow_env, "AIRFLOW_VAR_BEAM_GRADIENTS_MODEL": str(tmp_path / "model.keras")}
    conf = (
        f'{{"input_base": "{tmp_path}/in", "output_base": "{tmp_path}/out", '
        '"feature_columns": ["image"], "target": "per_output", "emit": "norm"}'
    )

    log = run_day(env, DAY, conf)
    assert "--runner=DirectRunner" in log and "--labels=airflow-version=v3-3-2" in log
    assert "rows: 40 in, 39 out, 1 rejected" in log
    partition = tmp_path / f"out/dt={DAY}"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"dt={DAY}"]  # only the run's day
    assert sorted(p.name for p in partition.iterdir()) == [
        "_rejected-00000-of-00001.parquet",  # in the day's folder, which its marker vouches for; '_': readers skip it
        "gradients-00000-of-00001.parquet",
        "gradients-summary.json",  # the aggregates, beside the shards
        "gradients_SUCCESS",
    ]
    assert f"{partition}/gradients: 40 in, 39 out, 1 rejected" in log  # the `complete` task read the marker
    rejected = read_output(tmp_path / f"out/dt={DAY}/_rejected")
    assert rejected.column("id").to_pylist() == [1000 + ROWS + 3]
    # A partition reader, as docs/scale.md says to open it: the shards of every day, one schema, the day as a column
    # (the marker and the summary are not Parquet: without exclude_invalid_files pyarrow stops on them)
    import pyarrow.dataset as ds

    days = ds.dataset(tmp_path / "out", format="parquet", partitioning="hive", exclude_invalid_files=True).to_table()
    assert days.num_rows == 2 * ROWS - 1 and days.schema.names[-1] == "dt" and "reason" not in days.schema.names

    out = by_key(read_output(partition / "gradients"))
    ids = out.column("id").to_pylist()
    assert ids == sorted(set(range(1000, 1000 + 2 * ROWS)) - {1000 + ROWS + 3})
    model = keras.models.load_model(tmp_path / "model.keras")
    x = np.stack([images[i] for i in ids])
    for index, head in enumerate(["classes", "brightness"]):
        expected = eager_gradients(model, x, lambda outputs, i=index: outputs[i])
        assert np.abs(expected).max() > 1e-3
        assert_close(tensor_column(out, f"gradient__{head}"), expected, rtol=1e-4, atol=1e-6)
        norms = np.linalg.norm(expected.reshape(len(ids), -1), axis=1)
        assert_close(out.column(f"norm__gradient__{head}").to_numpy(), norms, rtol=1e-4, atol=1e-6)

    # A rerun of the day: a shard left from an earlier run with two shards must go, nothing doubles.
    (partition / "gradients-00001-of-00002.parquet").write_bytes(
        (partition / "gradients-00000-of-00001.parquet").read_bytes()
    )
    first = (partition / "gradients-00000-of-00001.parquet").stat().st_mtime_ns
    run_day(env, DAY, conf)
    assert sorted(p.name for p in partition.iterdir()) == [
        "_rejected-00000-of-00001.parquet",  # in the day's folder, which its marker vouches for; '_': readers skip it
        "gradients-00000-of-00001.parquet",
        "gradients-summary.json",  # the aggregates, beside the shards
        "gradients_SUCCESS",
    ]
    assert (partition / "gradients-00000-of-00001.parquet").stat().st_mtime_ns != first  # written anew
    again = by_key(read_output(partition / "gradients"))
    assert again.column("id").to_pylist() == ids
    for head in ("classes", "brightness"):
        assert_close(tensor_column(again, f"gradient__{head}"), tensor_column(out, f"gradient__{head}"))
    assert read_output(tmp_path / f"out/dt={DAY}/_rejected").num_rows == 1


def test_an_airflow_variable_selects_dataflow(airflow_env):
    """Airflow's own `tasks render`: what the operator would get on Dataflow (which cannot be reached offline)."""
    env = {
        **airflow_env,
        "AIRFLOW_VAR_BEAM_GRADIENTS_RUNNER": "DataflowRunner",
        "AIRFLOW_VAR_BEAM_GRADIENTS_PROJECT": "proj",
    }
    airflow = pathlib.Path(sys.executable).parent / "airflow"
    done = subprocess.run(
        [str(airflow), "tasks", "render", "beam_gradients", "gradients", "2024-05-03"],  # a day with no run yet
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    fields = dict(re.findall(r"^# property: (\w+)\n# -+\n(.*)$", done.stdout, re.M))
    assert fields["runner"] == "DataflowRunner"
    assert ast.literal_eval(fields["dataflow_config"]) == {
        "project_id": "proj",
        "location": "us-central1",
        "job_name": "beam-gradients-20240503",
    }
    options = ast.literal_eval(fields["pipeline_options"])
    assert options["input"] == "/data/examples/dt=2024-05-03/*.parquet"
    assert options["output"] == "/data/gradients/dt=2024-05-03/gradients"
    assert options["batch_size"] is None  # left out: the job's own default


def test_the_influence_dag_runs_the_influence_job_and_checks_its_marker(tmp_path, airflow_env):
    """Triggered with a run config: top-k proponents and self influence against brute force, then the marker."""
    rng = np.random.default_rng(9)
    train, query = rng.normal(size=(50, 16)).astype(np.float32), rng.normal(size=(4, 16)).astype(np.float32)
    write_projections(tmp_path / "train/p", {"id": np.arange(50)}, train)
    write_projections(tmp_path / "query/p", {"qid": np.arange(4)}, query)
    conf = json.dumps(
        {
            "train": f"{tmp_path}/train/*.parquet",
            "query": f"{tmp_path}/query/*.parquet",
            "output": f"{tmp_path}/out/influence",
            "top_k": 3,
            "self_influence": True,
        }
    )
    log = run_day(airflow_env, DAY, conf, dag_id="beam_gradients_influence")
    assert f"{tmp_path}/out/influence: 24 rows for 4 queries x 50 training rows" in log  # the complete task
    table = read_output(tmp_path / "out/influence").to_pylist()
    best = {r["qid"]: r["train__id"] for r in table if r["kind"] == "proponent" and r["rank"] == 1}
    assert best == {q: int(np.argmax(train @ query[q])) for q in range(4)}
    self_influence = by_key(read_output(tmp_path / "out/influence_self_influence"), "train__id")
    assert_close(self_influence.column("self_influence").to_numpy(), (train.astype(np.float64) ** 2).sum(axis=1), rtol=1e-4)
