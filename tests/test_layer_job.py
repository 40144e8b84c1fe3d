"""`--wrt layer` through the whole job (issue 19): token columns fed as ints, bad rows rejected, outputs equal to
rounding across batch sizes and runners."""

import json

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.run import main
from tests.conftest import (
    IG_DELTA_SCALE, assert_close, assert_tables_rounding_equal, by_key, read_output, run_on, save, tensor_column, write_parquet,
)
from transforms.gradients import GradientEngine, GradientSpec, from_keras

RNG = np.random.default_rng(190)
VOCAB, LENGTH, ROWS = 25, 7, 36
MULTI = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]


def _text_model():
    ids = keras.Input((LENGTH,), dtype="int32", name="tokens")
    emb = keras.layers.Embedding(VOCAB, 5, mask_zero=True, name="emb")(ids)
    pooled = keras.layers.GlobalAveragePooling1D()(emb)
    return keras.Model(ids, keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(6, activation="tanh")(pooled)))


def _token_rows(tmp_path, ragged=None, oov=None):
    ids = RNG.integers(1, VOCAB, size=(ROWS, LENGTH)).astype(np.int32)
    for i in range(ROWS):
        ids[i, LENGTH - i % 3 :] = 0
    if oov is not None:
        ids[oov, 1] = VOCAB + 4
    lists = [list(row) for row in ids]
    if ragged is not None:
        lists[ragged] = lists[ragged][:-2]
    half = ROWS // 2
    for f, part in enumerate((slice(0, half), slice(half, ROWS))):
        column = pa.array(lists[part], pa.list_(pa.int32()))
        write_parquet(tmp_path / f"in/{f}.parquet", {"id": np.arange(ROWS)[part], "tokens": column}, row_group_size=5)
    return ids


def test_token_attributions_through_the_job_with_bad_rows_rejected_alike_across_batch_sizes(tmp_path):
    model = _text_model()
    ids = _token_rows(tmp_path, ragged=4, oov=9)
    path = save(model, tmp_path)
    common = ["--wrt", "layer", "--layer", "emb", "--method", "integrated_gradients", "--steps", "8",
              "--baseline", "token:0", "--target", "predicted", "--emit", "predictions"]
    runs = {"batch8": ["--batch_size", "8"], "batch5": ["--batch_size", "5"], "multi": ["--batch_size", "8", *MULTI]}
    outputs = {}
    for name, extra in runs.items():
        summary = run_on(tmp_path, path, *common, *extra, features="tokens", output=f"{name}/g")
        assert (summary.rows_out, summary.rows_rejected) == (ROWS - 2, 2)
        outputs[name] = by_key(read_output(tmp_path / f"{name}/g"))
    out = outputs["batch8"]
    assert out.schema.names[:6] == ["id", "gradient__emb", "token_scores__emb", "mask__emb", "tokens__emb", "ig_delta"]
    assert tensor_column(out, "tokens__emb").tolist() == ids[out.column("id").to_numpy()].tolist()
    assert out.schema.field("mask__emb").type == pa.fixed_shape_tensor(pa.int8(), [LENGTH])
    for name, table in outputs.items():  # other batch sizes and runners: equal to rounding
        assert_tables_rounding_equal(table, out, IG_DELTA_SCALE)
    good = out.column("id").to_numpy()
    assert 4 not in good and 9 not in good
    engine = GradientEngine(from_keras(model), GradientSpec(wrt="layer", layer="emb", method="integrated_gradients",
                                                            steps=8, baseline="token:0", target="predicted"), len(good))
    want = engine([ids[good]])
    assert_close(tensor_column(out, "gradient__emb"), want["gradient__emb"], rtol=1e-5, atol=1e-7)
    assert_close(tensor_column(out, "token_scores__emb"), want["token_scores__emb"], rtol=1e-5, atol=1e-7)
    assert tensor_column(out, "mask__emb").tolist() == (ids[good] != 0).astype(int).tolist()
    rejected = pq.read_table(str(tmp_path / "batch8/g_rejected-00000-of-00001.parquet")).sort_by("id")
    assert rejected.column("id").to_pylist() == [4, 9]
    reasons = rejected.column("reason").to_pylist()
    assert reasons[0] == "column 'tokens' has 5 values; model input 'tokens' needs 7 (shape (7,))"
    assert reasons[1] == f"column 'tokens' holds token id {VOCAB + 4}, outside the vocabulary 0..{VOCAB - 1} of embedding 'emb'"
    spec = json.loads(out.schema.metadata[b"beam_gradients.spec"])
    assert (spec["wrt"], spec["layer"]) == ("layer", "emb")


def _cli_error(capsys, *args) -> str:
    code = main(["--runner", "DirectRunner", *map(str, args)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    return err[-1]


def test_bad_layer_and_integer_inputs_fail_in_one_line(tmp_path, capsys):
    path = save(_text_model(), tmp_path)
    _token_rows(tmp_path)
    base = ["--input", tmp_path / "in/*.parquet", "--output", tmp_path / "o/g", "--model", path,
            "--feature_columns", "tokens"]
    line = _cli_error(capsys, *base, "--wrt", "layer", "--layer", "embedding")
    assert "--layer 'embedding' is not a layer of the model" in line and "emb, global_average_pooling1d" in line
    line = _cli_error(capsys, *base)
    assert "--wrt layer --layer <name>" in line and "(its embedding layers: emb)" in line
    line = _cli_error(capsys, *base, "--layer", "emb")
    assert "--layer" in line and "not used" in line
    # --vocab names token ids; at a layer with no tokens column it named nothing, and was taken without a word
    pooling = keras.models.load_model(path).layers[2].name  # (6,) features, no positions: no tokens column
    line = _cli_error(capsys, *base, "--wrt", "layer", "--layer", pooling, "--vocab", tmp_path / "v.txt")
    assert f"--vocab '{tmp_path / 'v.txt'}' names token ids, but this job writes none" in line


def test_token_aggregates_per_id_and_per_group_with_a_vocabulary(tmp_path):
    model = _text_model()
    ids = _token_rows(tmp_path)
    labels = np.arange(ROWS) % 2
    for f, part in enumerate((slice(0, ROWS // 2), slice(ROWS // 2, ROWS))):  # add a label column to each file
        table = pq.read_table(str(tmp_path / f"in/{f}.parquet")).append_column("label", pa.array(labels[part]))
        pq.write_table(table, str(tmp_path / f"in/{f}.parquet"), row_group_size=5)
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]"] + [f"w{i}" for i in range(1, VOCAB)]) + "\n")
    extra = ["--wrt", "layer", "--layer", "emb", "--method", "gradient_x_input", "--batch_size", "8",
             "--group_column", "label", "--vocab", tmp_path / "vocab.txt", *MULTI]
    run_on(tmp_path, save(model, tmp_path), *extra, features="tokens")
    out = by_key(read_output(tmp_path / "out/g"))
    summary = json.loads((tmp_path / "out/g-summary.json").read_text())
    block = summary["tokens"]["token_scores__emb"]
    assert block["tokens_column"] == "tokens__emb"
    scores, mask = tensor_column(out, "token_scores__emb"), tensor_column(out, "mask__emb") != 0
    tokens, label = tensor_column(out, "tokens__emb"), out.column("label").to_numpy()

    def expected(rows):
        real = mask & rows[:, None]
        return [{"id": int(i), "count": int((tokens[real] == i).sum()), "mean": float(scores[real][tokens[real] == i].mean()),
                 "token": f"w{i}"} for i in np.unique(tokens[real])]

    for got, want in ((block["tokens"], expected(np.ones(len(out), bool))),
                      (block["groups"]["1"], expected(label == 1))):
        assert [(e["id"], e["count"], e["token"]) for e in got] == [(e["id"], e["count"], e["token"]) for e in want]
        assert_close([e["mean"] for e in got], [e["mean"] for e in want], rtol=1e-5, atol=1e-9)
    assert 0 not in [e["id"] for e in block["tokens"]]  # padding is not a token here


def test_the_layers_docs_python_examples_run_as_written(tmp_path):
    """docs/layers.md's examples (a text model with token scores, Grad-CAM) run in a fresh folder."""
    import os
    import pathlib
    import re
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    blocks = re.findall(r"```python\n(.*?)```", (root / "docs/layers.md").read_text(), re.S)
    assert len(blocks) == 2
    for block in blocks:
        ran = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                             env=dict(os.environ, PYTHONPATH=str(root)))
        assert ran.returncode == 0, block + ran.stderr[-3000:]
    assert "(20, 16, 16)" in ran.stdout
