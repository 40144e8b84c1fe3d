"""Real saved models in every format the job takes, local and through fsspec, with safe_mode kept on."""

import concurrent.futures
import hashlib
import multiprocessing
import os

import fsspec
import keras
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.run import main
from tests.conftest import assert_close, by_key, eager_gradients, read_output, run_on, tensor_column, write_parquet
from transforms.feeds.plan import EngineRecipe
from transforms.gradients import GradientSpec
from transforms.model import ModelError, ProcessModel, content_sha256

ROWS = 70


@pytest.fixture
def data(tmp_path):
    x = np.random.default_rng(11).normal(size=(ROWS, 4)).astype(np.float32)
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(ROWS), "x": x})
    return x


def _model():
    return keras.Sequential(
        [keras.Input((4,), name="x"), keras.layers.Dense(3, activation="sigmoid"), keras.layers.Dense(1)]
    )


def _job(tmp_path, model_path, *extra):
    return run_on(tmp_path, model_path, "--batch_size", 16, *extra)


@pytest.mark.parametrize("name", ["model.keras", "model.h5"])
def test_keras_and_h5_files(tmp_path, data, name):
    model = _model()
    path = str(tmp_path / name)
    model.save(path)
    _job(tmp_path, path)
    out = by_key(read_output(tmp_path / "out/g"))
    assert_close(tensor_column(out, "gradient"), eager_gradients(model, data, lambda y: y))
    meta = pq.read_schema(next((tmp_path / "out").glob("g-*.parquet"))).metadata
    with open(path, "rb") as fh:
        assert meta[b"beam_gradients.model_sha256"].decode() == hashlib.sha256(fh.read()).hexdigest()
    assert meta[b"beam_gradients.model_path"].decode() == path


def test_saved_model_directory(tmp_path, data):
    model = _model()
    model.export(str(tmp_path / "saved"), verbose=False)
    _job(tmp_path, tmp_path / "saved")
    out = by_key(read_output(tmp_path / "out/g"))
    assert_close(tensor_column(out, "gradient"), eager_gradients(model, data, lambda y: y))
    meta = pq.read_schema(next((tmp_path / "out").glob("g-*.parquet"))).metadata
    assert meta[b"beam_gradients.model_sha256"].decode() == content_sha256(str(tmp_path / "saved"))


def test_a_model_at_an_fsspec_url_is_copied_once_and_used(tmp_path, data):
    model = _model()
    model.save(tmp_path / "model.keras")
    fs = fsspec.filesystem("memory")
    with open(tmp_path / "model.keras", "rb") as src, fs.open("/bucket/model.keras", "wb") as dst:
        dst.write(src.read())
    _job(tmp_path, "memory://bucket/model.keras")
    out = by_key(read_output(tmp_path / "out/g"))
    assert_close(tensor_column(out, "gradient"), eager_gradients(model, data, lambda y: y))


def _lambda_model(marker):
    # A Python lambda is saved as bytecode, and runs while Keras rebuilds the model on load.
    side_effect = lambda x: (open(marker, "w").write("ran"), x * 2.0)[1]  # noqa: E731
    return keras.Sequential([keras.Input((4,), name="x"), keras.layers.Lambda(side_effect), keras.layers.Dense(1)])


def test_a_lambda_model_is_refused_without_running_its_code(tmp_path, data, capsys):
    marker = tmp_path / "marker.txt"
    model = _lambda_model(str(marker))
    model.save(tmp_path / "lambda.keras")
    os.remove(marker)  # saving traced the function once; from here on it must not run
    with pytest.raises(ModelError, match="--trust_model_code"):
        _job(tmp_path, tmp_path / "lambda.keras")
    assert not marker.exists()
    code = main(
        [
            "--runner=DirectRunner",
            "--input",
            str(tmp_path / "in/*.parquet"),
            "--output",
            str(tmp_path / "o"),
            "--model",
            str(tmp_path / "lambda.keras"),
            "--feature_columns",
            "x",
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "lambda.keras" in err[0] and "safe_mode" in err[0]
    assert not marker.exists()

    _job(tmp_path, tmp_path / "lambda.keras", "--trust_model_code")  # the user vouches for it
    assert marker.exists()  # so the code did run this time: the refusal above was what kept it out
    out = by_key(read_output(tmp_path / "out/g"))
    assert_close(
        tensor_column(out, "gradient"), np.broadcast_to(2.0 * model.layers[-1].kernel.numpy()[:, 0], (ROWS, 4))
    )


def test_missing_and_corrupt_models_are_named(tmp_path, data):
    with pytest.raises(ModelError, match="model not found: .*nowhere.keras"):
        _job(tmp_path, tmp_path / "nowhere.keras")
    (tmp_path / "broken.keras").write_bytes(b"not a zip file")
    with pytest.raises(ModelError, match="broken.keras exists but is not a Keras model: a .keras file is a zip archive"):
        _job(tmp_path, tmp_path / "broken.keras")


def test_a_model_replaced_at_the_same_path_is_never_served_stale(tmp_path, data):
    first, second = _model(), _model()
    path = str(tmp_path / "model.keras")
    first.save(path)
    _job(tmp_path, path)
    second.save(path)  # retrained, same path, same long-lived process
    _job(tmp_path, path)
    out = by_key(read_output(tmp_path / "out/g"))
    assert_close(tensor_column(out, "gradient"), eager_gradients(second, data, lambda y: y))


def _acquire_in_child(recipe):
    recipe.acquire()


def test_a_worker_refuses_a_model_that_changed_after_launch(tmp_path):
    path = str(tmp_path / "model.keras")
    _model().save(path)
    recipe = EngineRecipe(ProcessModel(path), GradientSpec(), batch_size=4)
    _model().save(path)  # changed between launch and the worker's load
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        with pytest.raises(ModelError, match="changed after the job started"):
            pool.submit(_acquire_in_child, recipe).result(timeout=240)
