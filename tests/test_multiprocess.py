"""The model is loaded once per worker process, not once per bundle or thread."""

import os
import pickle
import threading

import keras
import numpy as np

from tests.conftest import assert_close, by_key, read_output, run_on, save, tensor_column, write_parquet
from transforms.compute import EngineRecipe
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
