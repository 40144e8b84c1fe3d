"""gs:// input, model and output, against a real GCS emulator on loopback, with no credentials at all.

The job reads and writes through Beam's GCS filesystem (google-cloud-storage)
and fetches the model through gcsfs; both honour STORAGE_EMULATOR_HOST and
connect anonymously when no credentials exist.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.internal.gcp import auth

from pipeline.outputs import read_marker
from tests.conftest import assert_close, by_key, eager_gradients, run_job, save, tensor_column, write_parquet

BUCKET = "test-bucket"
ROWS = 90


@pytest.fixture
def gcs_emulator(tmp_path, monkeypatch):
    """A gcp-storage-emulator (in memory, bucket made) and the environment every client needs to use it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = tmp_path / "emulator.log"
    with open(log, "w") as out:
        emulator = subprocess.Popen(
            [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1", "--port", str(port)]
            + ["--in-memory", "--default-bucket", BUCKET],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while "All services started" not in log.read_text():
            assert emulator.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        # No credentials anywhere: no key file, an empty gcloud folder, no metadata-server probe.
        monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
        monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
        monkeypatch.setenv("NO_GCE_CHECK", "true")
        # gcsfs's experimental bucket-type probe speaks gRPC, which the emulator lacks (a 60 s hang).
        monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
        # Beam looks for default credentials with retries (about 30 s) before it connects anonymously;
        # there are none here, so start from that conclusion.
        monkeypatch.setattr(auth._Credentials, "_credentials_init", True)
        monkeypatch.setattr(auth._Credentials, "_credentials", None)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(emulator.pid, signal.SIGKILL)
        emulator.wait(timeout=30)


def test_gs_input_model_and_output_through_the_emulator(tmp_path, gcs_emulator):
    from gcsfs.core import GCSFileSystem  # the plain client; imported once the environment is set

    fs = GCSFileSystem(token="anon", endpoint_url=gcs_emulator, skip_instance_cache=True)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(1)])
    x = np.random.default_rng(31).normal(size=(ROWS, 5)).astype(np.float32)
    x[7, 2] = np.nan  # one row the job must reject, written to gs:// too
    for i in range(2):
        part = slice(i * ROWS // 2, (i + 1) * ROWS // 2)
        local = write_parquet(tmp_path / f"in/{i}.parquet", {"id": np.arange(ROWS)[part], "x": x[part]})
        fs.put(local, f"{BUCKET}/data/part-{i}.parquet")
    fs.put(save(model, tmp_path), f"{BUCKET}/models/model.keras")

    summary = run_job(
        *["--input", f"gs://{BUCKET}/data/*.parquet", "--model", f"gs://{BUCKET}/models/model.keras"],
        *["--output", f"gs://{BUCKET}/out/g", "--feature_columns", "x", "--keep_columns", "id"],
    )

    assert summary.counters["rows_in"] == ROWS and summary.counters["rows_rejected"] == 1
    assert summary.outputs == [f"gs://{BUCKET}/out/g-00000-of-00001.parquet"]
    fs.invalidate_cache()
    written = fs.glob(f"{BUCKET}/out/g-?????-of-?????.parquet")
    assert written == [f"{BUCKET}/out/g-00000-of-00001.parquet"]  # temp files renamed into place, none left
    assert sorted(fs.find(f"{BUCKET}/out")) == [  # the staging objects moved or removed, the marker written last
        f"{BUCKET}/out/g-00000-of-00001.parquet",
        f"{BUCKET}/out/g_SUCCESS",
        f"{BUCKET}/out/g_rejected-00000-of-00001.parquet",
    ]
    assert read_marker(f"gs://{BUCKET}/out/g")["rows_out"] == ROWS - 1
    with fs.open(written[0], "rb") as fh:
        out = by_key(pq.read_table(fh))
    with fs.open(written[0], "rb") as fh:
        metadata = pq.read_schema(fh).metadata
    with fs.open(f"{BUCKET}/out/g_rejected-00000-of-00001.parquet", "rb") as fh:
        rejected = pq.read_table(fh)
    assert rejected.column("id").to_pylist() == [7]
    good = np.delete(np.arange(ROWS), 7)
    assert out.column("id").to_pylist() == good.tolist()
    assert_close(tensor_column(out, "gradient"), eager_gradients(model, x[good]), rtol=1e-4, atol=1e-6)
    assert metadata[b"beam_gradients.model_path"] == f"gs://{BUCKET}/models/model.keras".encode()
