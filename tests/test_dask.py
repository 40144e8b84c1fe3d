"""The job on a real Dask cluster: a scheduler and two one-thread workers, separate processes on loopback."""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time

import apache_beam as beam
import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.runner import PipelineState

from pipeline.dask_runner import DaskOptions, DaskResult, DaskRunner
from pipeline.options import parse
from pipeline.run import main, resolve_runner, run
from pipeline.outputs import read_marker
from tests.conftest import assert_close, by_key, eager_gradients, read_output, save, tensor_column, write_parquet
from transforms.model import process_loads

distributed = pytest.importorskip("distributed")
ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs/dask.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """`dask scheduler` and `dask worker` processes, with this venv's python and this checkout on their path."""

    def __init__(self, log_dir: pathlib.Path):
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        self.log_dir = log_dir
        self.workers: list[subprocess.Popen] = []
        self.env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])
        port = self.address.rsplit(":", 1)[1]
        self.scheduler = self._start("scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard")

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.log_dir / f"dask-{name}.log", "w")
        command = [sys.executable, "-m", f"distributed.cli.dask_{name.split('-')[0]}", *args]
        return subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def add_workers(self, count: int) -> None:
        for _ in range(count):
            # No nanny: a worker killed stays dead, as a lost machine would.
            args = (self.address, "--nthreads", "1", "--no-nanny", "--no-dashboard", "--host", "127.0.0.1")
            self.workers.append(self._start(f"worker-{len(self.workers)}", *args, "--memory-limit", "0"))
        with distributed.Client(self.address, timeout=60) as client:
            client.wait_for_workers(len(self.workers), timeout=60)

    def on_workers(self, fn) -> dict[int, object]:
        """fn() run in every live worker process, by its pid."""
        with distributed.Client(self.address, timeout=30) as client:
            pids = client.run(os.getpid)  # functions from importable modules only: workers unpickle them
            return {pids[address]: value for address, value in client.run(fn).items()}

    def stop(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)


@contextlib.contextmanager
def cluster(tmp_path, workers: int = 2):
    c = Cluster(tmp_path)
    try:
        c.add_workers(workers)
        yield c
    finally:
        c.stop()


def _model_and_data(tmp_path, files: int, rows: int, width: int, hidden: int, row_group: int):
    model = keras.Sequential(
        [keras.Input((width,), name="x"), keras.layers.Dense(hidden, activation="tanh"), keras.layers.Dense(2)]
    )
    rng = np.random.default_rng(14)
    for i in range(files):
        x = rng.normal(size=(rows, width)).astype(np.float32)
        values = [list(map(float, row)) for row in x]
        values[3] = None  # null: rejected at decode
        values[7][1] = float("nan")  # NaN: rejected at validate
        ids = np.arange(i * rows, (i + 1) * rows)
        write_parquet(
            tmp_path / f"in/part-{i}.parquet",
            {"id": ids, "x": pa.array(values, pa.list_(pa.float32()))},
            row_group_size=row_group,
        )
    return save(model, tmp_path), model


def _job(tmp_path, model_path, output, *extra):
    return [
        f"--input={tmp_path}/in/*.parquet",
        f"--output={tmp_path}/{output}",
        f"--model={model_path}",
        "--feature_columns=x",
        "--keep_columns=id",
        "--batch_size=64",
        *map(str, extra),
    ]


def test_dask_cluster_gives_the_in_process_output_row_for_row_and_loads_once_per_worker(tmp_path):
    model_path, model = _model_and_data(tmp_path, files=3, rows=200, width=4, hidden=8, row_group=50)
    direct = run(_job(tmp_path, model_path, "direct/g", "--runner=DirectRunner"))
    with cluster(tmp_path) as c:
        # configs/dask.yaml as shipped, its paths and address overridden
        job = _job(tmp_path, model_path, "dask/g", "--config", CONFIG, "--dask_client_address", c.address)
        summary = run([*job, "--target=sum"])
        loads = c.on_workers(process_loads)

    assert summary.counters is None  # Beam's Dask result has no metrics: the summary says so
    out, rejected = by_key(read_output(tmp_path / "dask/g")), by_key(read_output(tmp_path / "dask/g_rejected"))
    assert out.equals(by_key(read_output(tmp_path / "direct/g")))  # every column, every row, bit for bit
    assert out.schema.metadata == read_output(tmp_path / "direct/g").schema.metadata
    assert rejected.equals(by_key(read_output(tmp_path / "direct/g_rejected")))
    bad = sorted(i * 200 + r for i in range(3) for r in (3, 7))
    assert rejected.column("id").to_pylist() == bad
    assert set(rejected.column("stage").to_pylist()) == {"decode", "validate"}
    assert out.num_rows + rejected.num_rows == 600 == direct.counters["rows_in"]
    assert (summary.rows_in, summary.rows_out, summary.rows_rejected) == (600, 594, 6)  # from the footers

    x = [row for f in sorted((tmp_path / "in").glob("*")) for row in pq.read_table(f).column("x").to_pylist()]
    good = [i for i in range(600) if i not in bad]
    reference = eager_gradients(model, np.array([x[i] for i in good], np.float32))
    assert_close(tensor_column(out, "gradient"), reference, rtol=1e-5)

    # Once per worker process, though the job ran as more bundles (shards) than there are workers.
    assert set(loads.values()) <= {0, 1} and sum(loads.values()) >= 1
    assert len(summary.outputs) > sum(loads.values())


def test_a_worker_killed_midway_the_job_finishes_on_the_survivor_with_every_row_once(tmp_path):
    model_path, _ = _model_and_data(tmp_path, files=8, rows=4000, width=256, hidden=512, row_group=500)
    with cluster(tmp_path) as c:
        status: dict = {}
        job = _job(tmp_path, model_path, "dask/g", "--runner=DaskRunner", "--dask_client_address", c.address)
        thread = threading.Thread(target=lambda: status.setdefault("code", main(job)))
        thread.start()
        deadline = time.monotonic() + 120
        while not (computing := [pid for pid, loads in c.on_workers(process_loads).items() if loads]):
            assert time.monotonic() < deadline and thread.is_alive(), "the job ended before a worker took work"
            time.sleep(0.2)
        victim = next(w for w in c.workers if w.pid == computing[0])
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        thread.join(timeout=300)
        assert not thread.is_alive()
        survivors = c.on_workers(process_loads)

    assert victim.pid not in survivors and list(survivors.values()) == [1]  # the survivor did the rest
    assert status["code"] == 0  # Dask reruns the lost worker's tasks on the survivor
    ids = read_output(tmp_path / "dask/g").column("id").to_pylist()
    rejected = read_output(tmp_path / "dask/g_rejected").column("id").to_pylist()
    assert len(ids) == len(set(ids))  # no duplicate keys
    assert sorted(ids + rejected) == list(range(8 * 4000))
    assert not list(tmp_path.glob("dask/.*")) and not list(tmp_path.glob("dask/beam-temp-*"))  # no temp left
    assert read_marker(str(tmp_path / "dask/g"))["rows_in"] == 8 * 4000


def test_the_job_waits_on_its_own_client_though_another_client_is_the_default_and_closes(tmp_path):
    """Beam's wait follows the process's default client: a client opened after the job's and closed while the
    job runs (the worker-kill test's polling one, hung one run in three) left it waiting forever."""
    with cluster(tmp_path, workers=1) as c:
        client = distributed.Client(c.address, timeout=30)
        futures = [client.submit(time.sleep, 3, pure=False)]
        other = distributed.Client(c.address, timeout=30)  # now the process's default client
        result = DaskResult(client, futures)
        waiting = threading.Thread(target=result.wait_until_finish, daemon=True)
        waiting.start()
        time.sleep(0.5)  # the wait has begun, on the default client's loop if it follows the default
        other.close()
        waiting.join(timeout=60)
        alive = waiting.is_alive()

    assert not alive, "the job's wait hung after another client closed"
    assert result.state == PipelineState.DONE and client.status == "closed"
    assert result.wait_until_finish() == PipelineState.DONE  # a second wait: the state, not a wait on a closed loop


def test_dask_runner_keeps_tagged_outputs_apart_and_what_finish_bundle_yields(tmp_path):
    """The three translations Beam's own DaskRunner gets wrong, in a four-step pipeline (a local cluster)."""

    class Split(beam.DoFn):
        def process(self, x):
            yield beam.pvalue.TaggedOutput("bad", x) if x % 3 == 0 else x

    class Sum(beam.DoFn):
        def start_bundle(self):
            self.total = 0

        def process(self, x):
            self.total += x

        def finish_bundle(self):
            yield beam.transforms.window.GlobalWindows.windowed_value(self.total)

    options = PipelineOptions(["--dask_npartitions=1"])
    with beam.Pipeline(runner=DaskRunner(), options=options) as p:
        xs = p | beam.Create(list(range(10)))
        split = xs | beam.ParDo(Split()).with_outputs("bad", main="good")
        split.good | "Good" >> beam.io.WriteToText(str(tmp_path / "good"))
        split.bad | "Bad" >> beam.io.WriteToText(str(tmp_path / "bad"))
        xs | beam.ParDo(Sum()) | "Total" >> beam.io.WriteToText(str(tmp_path / "total"))

    def lines(name):
        return sorted(int(v) for f in tmp_path.glob(f"{name}-*") for v in f.read_text().split())

    assert lines("good") == [1, 2, 4, 5, 7, 8] and lines("bad") == [0, 3, 6, 9] and lines("total") == [45]


def test_dask_runner_by_name_or_beam_module_path_is_ours_and_takes_beams_dask_options():
    for name in ("DaskRunner", "apache_beam.runners.dask.dask_runner.DaskRunner"):
        options = parse([f"--runner={name}", "--dask_client_address=tcp://127.0.0.1:8786", "--dask_npartitions=6"])
        assert type(resolve_runner(options)) is DaskRunner
        assert options.view_as(DaskOptions).address == "tcp://127.0.0.1:8786"
        assert options.view_as(DaskOptions).npartitions == 6


@pytest.mark.parametrize("command", [[], ["influence"]])
def test_an_address_where_no_scheduler_answers_is_one_line_within_seconds(tmp_path, command):
    """Dask's own client waits 30 s and then raises ConnectionRefusedError; both jobs say so at once, exit 2."""
    port = _free_port()  # bound and closed again: nothing listens there
    job = ["--input", str(tmp_path / "in/*.parquet"), "--model", str(tmp_path / "m.keras")] if not command else [
        "--train", str(tmp_path / "t-*.parquet"), "--query", str(tmp_path / "q-*.parquet")]
    argv = [sys.executable, "-m", "pipeline", *command, "--runner=DaskRunner", f"--dask_client_address=127.0.0.1:{port}",
            "--output", str(tmp_path / "out/g"), *job]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=pathlib.Path(__file__).parent.parent)
    took = time.monotonic() - started
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--dask_client_address 127.0.0.1:{port}: no Dask scheduler answers" in lines[0], lines
    assert took < 20, took  # not a speed claim: Dask's own connect timeout alone is 30 s


def test_a_local_dask_cluster_keeps_its_workers_start_up_lines_off_the_terminal(tmp_path):
    """Without --dask_client_address the runner starts its own worker processes, which inherit the job's stderr:
    each printed TensorFlow's C++ start-up lines (absl, oneDNN) there. They go to the workers' log, as the
    DirectRunner's do, and the terminal shows the job's own lines only."""
    model_path, model = _model_and_data(tmp_path, files=1, rows=40, width=4, hidden=8, row_group=20)
    env = dict(os.environ, PATH=os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
    ran = subprocess.run([sys.executable, "-m", "pipeline", "--runner=DaskRunner", *_job(tmp_path, model_path, "g")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr
    assert "rows: 40 in, 38 out, 2 rejected" in ran.stdout
    assert ran.stderr.strip() == ""  # absl's "before InitializeLog" and oneDNN's notice appeared once per worker
    x = pq.read_table(tmp_path / "in/part-0.parquet").column("x").to_pylist()
    good = [i for i in range(40) if i not in (3, 7)]
    out = by_key(read_output(tmp_path / "g"))
    assert out.column("id").to_pylist() == good
    assert_close(tensor_column(out, "gradient"), eager_gradients(model, np.array([x[i] for i in good], np.float32)),
                 rtol=1e-5)
