"""The model is loaded once per worker process, not once per bundle or thread."""

import os
import pathlib
import pickle
import threading

import keras
import numpy as np
import yaml

from pipeline.run import run
from tests.conftest import (
    assert_close,
    by_key,
    eager_gradients,
    read_output,
    run_on,
    save,
    tensor_column,
    write_parquet,
)
from transforms.feeds.plan import EngineRecipe
from transforms.gradients import GradientSpec
from transforms.model import ProcessModel


def test_multi_process_direct_runner_loads_once_per_process_and_matches_in_process(tmp_path):
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(2)])
    rng = np.random.default_rng(10)
    for i in range(4):
        x = rng.normal(size=(300, 5)).astype(np.float32)
        write_parquet(
            tmp_path / f"in/{i}.parquet", {"id": np.arange(i * 300, (i + 1) * 300), "x": x}, row_group_size=50
        )
    path = save(model, tmp_path)
    single = run_on(tmp_path, path, "--batch_size", 64, output="single/g")
    multi = run_on(
        tmp_path,
        path,
        "--batch_size",
        64,
        "--direct_num_workers",
        2,
        "--direct_running_mode",
        "multi_processing",
        output="multi/g",
    )

    assert single.counters["model_loads"] == 1  # the launcher's own load, reused in-process
    loads = multi.counters["model_loads"]
    low_pid, high_pid = multi.load_pids
    assert loads == 2 and low_pid != high_pid and os.getpid() not in (low_pid, high_pid)
    assert multi.counters["bundles"] >= loads
    a, b = by_key(read_output(tmp_path / "single/g")), by_key(read_output(tmp_path / "multi/g"))
    assert a.column("id").to_pylist() == b.column("id").to_pylist() == list(range(1200))
    assert_close(tensor_column(a, "gradient"), tensor_column(b, "gradient"), rtol=1e-6)


def test_threads_of_one_process_share_one_load(tmp_path):
    """What a worker's threads do: several DoFn copies acquire the engine; it is built once."""
    path = save(keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)]), tmp_path)
    recipe = EngineRecipe(ProcessModel(path), GradientSpec(), batch_size=8)
    copies = [pickle.loads(pickle.dumps(recipe)) for _ in range(4)]  # as Beam ships a DoFn to its threads
    held = []
    threads = [threading.Thread(target=lambda c=c: held.append(c.acquire())) for c in copies]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(h) for h in held}) == 1
    assert sum(h.take_new_load() for h in held) == 1


def test_local_config_runs_multi_process_with_one_load_per_worker(tmp_path):
    """configs/local.yaml as shipped, only its paths overridden: one load per worker process, exact gradients."""
    config = pathlib.Path(__file__).resolve().parents[1] / "configs/local.yaml"
    settings = yaml.safe_load(config.read_text())
    assert settings["direct_running_mode"] == "multi_processing" and settings["runner"] == "DirectRunner"
    image = keras.Input((4, 4, 1), name="image")
    hidden = keras.layers.Dense(3, activation="tanh")(keras.layers.Flatten()(image))
    model = keras.Model(image, [keras.layers.Dense(2, name="a")(hidden), keras.layers.Dense(1, name="b")(hidden)])
    images = np.random.default_rng(11).normal(size=(400, 4, 4, 1)).astype(np.float32)
    for i in range(4):
        part = slice(i * 100, (i + 1) * 100)
        write_parquet(tmp_path / f"in/{i}.parquet", {"id": np.arange(400)[part], "image": images[part]})
    summary = run(
        ["--config", str(config), "--input", str(tmp_path / "in/*.parquet"), "--output", str(tmp_path / "out/g")]
        + ["--model", save(model, tmp_path)]
    )

    workers = settings["direct_num_workers"]
    assert workers >= 2 and summary.counters["model_loads"] == workers
    low_pid, high_pid = summary.load_pids
    assert low_pid != high_pid and os.getpid() not in (low_pid, high_pid)
    out = by_key(read_output(tmp_path / "out/g"))
    assert out.column("id").to_pylist() == list(range(400))
    for index, head in enumerate(["a", "b"]):
        expected = eager_gradients(model, images, lambda outputs, i=index: outputs[i])
        assert_close(tensor_column(out, f"gradient__{head}"), expected, rtol=1e-4, atol=1e-6)
