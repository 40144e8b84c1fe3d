"""Trust boundaries: only code the user named runs, and credentials never leave the process."""

import functools
import http.server
import logging
import pickle
import threading

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from pipeline.run import main
from tests.conftest import assert_close, by_key, eager_gradients, read_output, run_on, save, tensor_column

ROWS = 40


class _LeavesAMark:
    """Unpickling this writes a file: it stands for any code a pickle could run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def model_and_data(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, activation="tanh"), keras.layers.Dense(1)])
    rng = np.random.default_rng(21)
    x = rng.normal(size=(ROWS, 3)).astype(np.float32)
    y = rng.normal(size=ROWS).astype(np.float32)
    marker = tmp_path / "unpickled.txt"
    table = pa.table({"id": np.arange(ROWS), "x": pa.array(list(x), pa.list_(pa.float32())), "y": y})
    # A pickle in the file's metadata, where a careless reader might load it.
    table = table.replace_schema_metadata({b"payload": pickle.dumps(_LeavesAMark(str(marker)))})
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in/data.parquet")
    return model, x, y, marker


def test_a_custom_loss_is_imported_only_when_named_and_nothing_is_evaluated(
    tmp_path, model_and_data, monkeypatch, capsys
):
    model, x, y, marker = model_and_data
    imported = tmp_path / "imported.txt"
    monkeypatch.setenv("LOSS_IMPORT_MARK", str(imported))
    path = save(model, tmp_path)
    loss = ["--target", "loss", "--label_column", "y", "--loss"]

    run_on(tmp_path, path, *loss, "mse")
    assert not imported.exists()  # no module was imported that the user did not name

    run_on(tmp_path, path, *loss, "tests.marked_loss:squared_error")
    assert imported.read_text() == "imported"
    out = by_key(read_output(tmp_path / "out/g"))
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        per_example = tf.square(y[:, None] - model(xt))  # each row's own loss; rows are independent
    assert_close(tensor_column(out, "gradient"), tape.gradient(per_example, xt).numpy(), rtol=1e-4)
    assert not marker.exists()  # the pickle in the input's metadata was never loaded

    evil = tmp_path / "evaluated.txt"
    code = main(
        ["--runner=DirectRunner", "--input", str(tmp_path / "in/*.parquet"), "--output", str(tmp_path / "o/g")]
        + ["--model", path, "--feature_columns", "x", *loss, f"__import__('os').system('touch {evil}'):f"]
    )
    assert code == 2 and not evil.exists()
    assert "give a Keras loss name or module.path:function" in capsys.readouterr().err


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # the server's access log is the server's, not the job's
        pass


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on loopback, serving tmp_path: where a signed model URL points."""
    handler = functools.partial(_QuietHandler, directory=str(tmp_path))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_credentials_in_a_model_url_never_reach_logs_errors_or_metadata(
    tmp_path, model_and_data, http_server, caplog, capsys
):
    model, x, _, _ = model_and_data
    save(model, tmp_path)
    password, token = "s3cr3t-password", "t0k3n-value"
    url = f"http://alice:{password}@{http_server}/model.keras?X-Goog-Signature={token}"
    caplog.set_level(logging.INFO)  # what --debug shows
    args = ["--runner=DirectRunner", "--input", str(tmp_path / "in/*.parquet"), "--output", str(tmp_path / "out/g")]
    args += ["--feature_columns", "x", "--keep_columns", "id"]

    assert main([*args, "--debug", "--model", url]) == 0
    assert main([*args, "--model", url.replace("model.keras", "gone.keras")]) == 2

    out = read_output(tmp_path / "out/g")
    assert_close(tensor_column(by_key(out), "gradient"), eager_gradients(model, x), rtol=1e-5)
    schema = pq.read_schema(sorted((tmp_path / "out").glob("g-0*"))[0])
    assert schema.metadata[b"beam_gradients.model_path"].decode() == f"http://{http_server}/model.keras"
    printed = "".join(capsys.readouterr())
    assert f"model not found: http://{http_server}/gone.keras" in printed
    assert "beam-gradients computes on" in caplog.text  # the debug log was captured
    seen = caplog.text + printed + str(schema.metadata)
    assert password not in seen and token not in seen
