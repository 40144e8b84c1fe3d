"""The job on the PortableRunner, the way Flink runs Python: a job service and an external SDK worker pool.

Both are Beam's own servers, started as separate processes on loopback; the job
is submitted over gRPC and its bundles run in worker processes the pool starts.
"""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import yaml

from pipeline.run import run
from tests.conftest import (
    assert_close,
    by_key,
    eager_gradients,
    read_output,
    save,
    tensor_column,
    write_parquet,
)

ROWS = 240
START_TIMEOUT = 60
FLINK_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs/flink.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, log: pathlib.Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on port {port} after {START_TIMEOUT} s: {log.read_text()[-2000:]}")


@pytest.fixture
def portable_services(tmp_path):
    """(job service port, worker pool port); both servers and every worker they started are killed afterwards.

    The pool starts workers with the `python` on PATH, so this interpreter's bin
    folder goes first. Each server leads its own process group, which its
    workers join, so one signal to the group ends them all.
    """
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    port_file = tmp_path / "job_service.port"
    pool_port = _free_port()
    commands = {
        "job_service": ["apache_beam.runners.portability.local_job_service_main", "--port", "0"]
        + ["--port_file", str(port_file)],
        "worker_pool": ["apache_beam.runners.worker.worker_pool_main", "--service_port", str(pool_port)],
    }
    processes = []
    try:
        for name, command in commands.items():
            log = tmp_path / f"{name}.log"
            with open(log, "w") as out:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", *command],
                        env=env,
                        cwd=tmp_path,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        job_service, pool = processes
        deadline = time.monotonic() + START_TIMEOUT
        while not (port_file.exists() and port_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.2)
        job_port = int(port_file.read_text())
        _wait_for_port(job_port, job_service, tmp_path / "job_service.log")
        _wait_for_port(pool_port, pool, tmp_path / "worker_pool.log")
        yield job_port, pool_port, pool.pid
    finally:
        for process in processes:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait(timeout=30)


def test_flink_config_on_the_portable_runner_with_external_worker_pool_matches_eager_gradients(
    tmp_path, portable_services
):
    """configs/flink.yaml's job, its runner swapped for the job service here (Flink's own cannot run offline)."""
    job_port, pool_port, pool_pid = portable_services
    settings = yaml.safe_load(FLINK_CONFIG.read_text())
    assert settings["runner"] == "FlinkRunner" and settings["environment_type"] == "EXTERNAL"
    image = keras.Input((3, 2), name="image")
    model = keras.Model(image, keras.layers.Dense(2)(keras.layers.Dense(4, activation="tanh")(image)))
    x = np.random.default_rng(21).normal(size=(ROWS, 3, 2)).astype(np.float32)
    for i in range(3):
        part = slice(i * ROWS // 3, (i + 1) * ROWS // 3)
        write_parquet(tmp_path / f"in/{i}.parquet", {"id": np.arange(ROWS)[part], "image": x[part]}, row_group_size=40)
    summary = run(
        ["--config", str(FLINK_CONFIG), "--runner", "PortableRunner", "--job_endpoint", f"localhost:{job_port}"]
        + ["--environment_config", f"localhost:{pool_port}", "--batch_size", "32"]
        + ["--input", str(tmp_path / "in/*.parquet"), "--output", str(tmp_path / "out/g")]
        + ["--model", save(model, tmp_path)]
    )

    # Counters travel back through the job service's metrics API.
    c = summary.counters
    assert c["rows_in"] == c["rows_out"] == ROWS and c["rows_rejected"] == 0
    assert c["batches"] >= ROWS // 32 and c["model_loads"] >= 1
    low_pid, high_pid = summary.load_pids
    assert os.getpid() not in (low_pid, high_pid) and pool_pid not in (low_pid, high_pid)  # loaded in pool workers
    out = by_key(read_output(tmp_path / "out/g"))
    assert out.column("id").to_pylist() == list(range(ROWS))
    assert_close(tensor_column(out, "gradient"), eager_gradients(model, x), rtol=1e-4, atol=1e-6)


def test_rejected_rows_survive_on_the_portable_runner_with_equal_shard_counts(tmp_path, portable_services):
    """Two outputs of two shards each, bad rows present: both finalize, neither deletes the other's files."""
    job_port, pool_port, _ = portable_services
    x = keras.Input((3,), name="x")
    model = keras.Model(x, keras.layers.Dense(1, activation="tanh")(x))
    values = np.random.default_rng(4).normal(size=(60, 3)).astype(np.float32)
    values[[5, 41], 0] = np.nan
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(60), "x": values}, row_group_size=20)
    summary = run(
        ["--runner", "PortableRunner", "--job_endpoint", f"localhost:{job_port}", "--environment_type", "EXTERNAL"]
        + ["--environment_config", f"localhost:{pool_port}", "--num_shards", "2", "--batch_size", "16"]
        + ["--input", str(tmp_path / "in/*.parquet"), "--output", str(tmp_path / "out/g"), "--keep_columns", "id"]
        + ["--model", save(model, tmp_path)]
    )
    assert len(summary.outputs) == len(summary.rejected) == 2
    assert sorted(read_output(tmp_path / "out/g_rejected").column("id").to_pylist()) == [5, 41]
    out = by_key(read_output(tmp_path / "out/g"))
    good = [i for i in range(60) if i not in (5, 41)]
    assert out.column("id").to_pylist() == good
    assert_close(tensor_column(out, "gradient"), eager_gradients(model, values[good]), rtol=1e-5)
    assert (summary.rows_in, summary.rows_out, summary.rows_rejected) == (60, 58, 2)
