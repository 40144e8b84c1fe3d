"""The Python API and the command line build one graph (transforms/graph.py): the same settings give the same bytes.

For every baseline (a `mean` baseline's first pass and a `column:` baseline's row
input included), every method, every target and every `wrt`, the same small
Parquet file and saved model go through `beam-gradients` (in-process, on the
DirectRunner) and through `ComputeGradients` in a pipeline of the test's own,
whose results are written with the job's own Parquet sink. The result shards
must be byte for byte the same: the values, the row order and grouping, the
schema and every metadata key (no timestamp is written). Rejected rows are
compared by key, stage and reason only: their `source_file` is the file's path
for the command line and `(pipeline)` for rows that came from a PCollection.
The gradients themselves are checked against an eager tape in tests/test_api.py
and the methods' tests; here the point is that the two ways agree.
"""

import glob

import apache_beam as beam
import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.runners.portability.fn_api_runner import FnApiRunner

from pipeline.cli import main
from tests.conftest import save, write_parquet
from transforms.api import ComputeGradients
from transforms.gradients.methods.baselines import BASELINES
from transforms.gradients.spec import METHODS, TARGETS, WRT
from transforms.io.write import write_parquet as parquet_sink

ROWS, CLASSES, BAD = 12, 3, 5  # row BAD holds a NaN: rejected by both
ARGUMENT = {None: None, "number": "0.5", "name": "b", "sigma": "1", "id": "0"}  # a baseline's example argument, by what it takes
TARGET_SETTINGS = {
    "class": {"class_column": "cls"},
    "loss": {"loss": "sparse_categorical_crossentropy", "label_column": "cls"},
    "top_k": {"k": 2},
}
FEW = {"steps": 4, "samples": 3}  # integrated gradients' steps, the noise methods' samples: enough to differ, fast


def _baseline(kind) -> str:
    argument = ARGUMENT[BASELINES[kind].takes]
    return f"{kind}:{argument}" if argument else kind


def _settings(method, **more) -> dict:
    settings = {"method": method, **more}
    if method == "integrated_gradients":
        settings["steps"] = FEW["steps"]
    elif method in ("smoothgrad", "vargrad", "squaregrad"):
        settings["samples"] = FEW["samples"]
    return settings


WRT_SETTINGS = {"layer": {"layer": "hidden"}}
# Answers this tiny dense model cannot take; each runs through the command line in its own test instead.
ELSEWHERE = {
    "method=grad_cam": "needs a convolution (tests/test_grad_cam.py)",
    "method=grad_cam_pp": "needs a convolution (tests/test_grad_cam.py)",
    "baseline=token": "needs an embedding at wrt layer (tests/test_layer_job.py)",
}
CASES = {
    **{f"method={m}": _settings(m) for m in METHODS},
    **{f"baseline={b}": _settings("integrated_gradients", baseline=_baseline(b)) for b in BASELINES},
    **{f"target={t}": _settings("gradient", target=t, **TARGET_SETTINGS.get(t, {})) for t in TARGETS},
    **{f"wrt={w}": _settings("gradient", wrt=w, **WRT_SETTINGS.get(w, {})) for w in WRT},
}
CASES = {name: settings for name, settings in CASES.items() if name not in ELSEWHERE}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """One small file (ids, an image-like input, a baseline column, a class) and a tiny saved classifier."""
    folder = tmp_path_factory.mktemp("api_vs_cli")
    rng = np.random.default_rng(11)
    x = rng.normal(size=(ROWS, 3, 3)).astype(np.float32)
    x[BAD, 1, 1] = np.nan
    columns = {
        "id": np.arange(ROWS),
        "x": x,
        "b": rng.normal(size=(ROWS, 3, 3)).astype(np.float32),
        "cls": rng.integers(0, CLASSES, size=ROWS),
    }
    path = write_parquet(folder / "in/0.parquet", columns)
    x_in = keras.Input((3, 3), name="x")
    hidden = keras.layers.Dense(4, activation="tanh", name="hidden")(keras.layers.Flatten()(x_in))
    model = save(keras.Model(x_in, keras.layers.Dense(CLASSES)(hidden)), folder)
    return folder, path, model


def _flags(settings: dict) -> list[str]:
    return [arg for name, value in settings.items() for arg in (f"--{name}", str(value))]


def _one_shard(prefix: str) -> str:
    (shard,) = glob.glob(f"{prefix}-*-of-*.parquet")
    return shard


def _rejected(path: str) -> list[tuple]:
    table = pq.read_table(path)
    return sorted(zip(*(table.column(c).to_pylist() for c in ("id", "stage", "reason"))))


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_api_and_the_command_line_write_the_same_bytes(data, case, tmp_path):
    folder, path, model = data
    settings = CASES[case]
    common = {"feature_columns": "x", "keep_columns": "id", "batch_size": 5}
    cli = str(tmp_path / "cli/g")
    code = main(["--runner", "DirectRunner", "--input", path, "--output", cli, "--model", model, "--quiet"]
                + _flags(common) + _flags(settings))
    assert code == 0

    table = pq.read_table(path)
    transform = ComputeGradients(model, schema=table.schema, feature_columns=["x"], key_columns=["id"], batch_size=5,
                                 **settings)
    api = str(tmp_path / "api/g")
    with beam.Pipeline(runner=FnApiRunner()) as p:
        out = p | beam.Create([table]) | transform
        out.results | "Results" >> parquet_sink(api, transform.output_schema)
        out.rejected | "Rejected" >> parquet_sink(api + "_rejected", transform.plan.rejected_schema)

    cli_shard, api_shard = _one_shard(cli), _one_shard(api)
    written = pq.read_table(cli_shard)
    assert written.num_rows == ROWS - 1 and BAD not in written.column("id").to_pylist()
    with open(cli_shard, "rb") as a, open(api_shard, "rb") as b:
        assert a.read() == b.read(), f"{case}: the API's output differs from the command line's"
    assert _rejected(_one_shard(cli + "_rejected")) == _rejected(_one_shard(api + "_rejected"))
    assert [r[0] for r in _rejected(_one_shard(api + "_rejected"))] == [BAD]


def test_every_registered_answer_has_a_case():
    """A new method, target, wrt or baseline fails here until it is compared too (or named, with its test, in ELSEWHERE)."""
    named = set(CASES) | set(ELSEWHERE)
    assert {c.split("=", 1)[1] for c in named if c.startswith("method=")} == set(METHODS)
    assert {c.split("=", 1)[1] for c in named if c.startswith("target=")} == set(TARGETS)
    assert {c.split("=", 1)[1] for c in named if c.startswith("wrt=")} == set(WRT)
    assert {c.split("=", 1)[1] for c in named if c.startswith("baseline=")} == set(BASELINES)


def test_a_seeded_method_without_key_columns_is_refused_through_the_api(data):
    """Rows in a PCollection have no place in a file: their noise could only be seeded by their keys."""
    folder, path, model = data
    schema = pq.read_schema(path)
    with pytest.raises(ValueError, match="give key_columns"):
        ComputeGradients(model, schema=schema, feature_columns=["x"], method="smoothgrad")
