"""<output>-summary.json: the combiner's aggregates equal numpy over the whole output, on every local runner."""

import json

import keras
import numpy as np
import pytest

from pipeline.reader import read_arrays, read_summary
from pipeline.run import run
from tests.conftest import save, write_parquet
from transforms.aggregates import HISTOGRAM_EDGES
from transforms.feeds.plan import Fault
from transforms.sketch import QuantileSketch


def _tabular(tmp_path):
    """Three scalar features, a label to group by, one bad row (a null feature) that is rejected."""
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(1)])
    rng = np.random.default_rng(5)
    for f in range(3):
        n = 200
        a = rng.normal(size=n).astype(np.float32)
        write_parquet(
            tmp_path / f"in/{f}.parquet",
            {
                "id": np.arange(f * n, (f + 1) * n),
                "label": rng.integers(0, 3, size=n),
                "a": [None if (f, i) == (1, 7) else float(v) for i, v in enumerate(a)],
                "b": rng.normal(size=n).astype(np.float32) * 3,
                "c": rng.normal(size=n).astype(np.float32),
                "y": rng.normal(size=n).astype(np.float32),
            },
            row_group_size=40,
        )
    return save(model, tmp_path)


def _expected(output, features, groups=None):
    g = np.stack([output[f"gradient__{f}"].astype(np.float64) for f in features], axis=1)
    norms = np.sqrt((g**2).sum(axis=1))
    counts = np.bincount(np.searchsorted(np.asarray(HISTOGRAM_EDGES), norms, side="right"), minlength=len(HISTOGRAM_EDGES) + 1)
    expected = {"mean_abs": np.abs(g).mean(0), "mean": g.mean(0), "count": len(g), "hist": counts, "norms": norms}
    if groups is not None:
        expected["groups"] = {
            str(v): (np.abs(g[groups == v]).mean(0), g[groups == v].mean(0), int((groups == v).sum())) for v in np.unique(groups)
        }
    return expected


@pytest.mark.parametrize("mode", ["in_process", "multi_processing"])
def test_aggregates_equal_numpy_over_the_whole_output_with_groups(tmp_path, mode):
    model = _tabular(tmp_path)
    extra = ["--direct_num_workers=2", "--direct_running_mode=multi_processing"] if mode != "in_process" else []
    summary = run(
        [
            "--runner=DirectRunner", f"--input={tmp_path}/in/*.parquet", f"--output={tmp_path}/out/g", f"--model={model}",
            "--feature_columns=a,b,c", "--keep_columns=id", "--group_column=label", "--target=loss",
            "--label_column=y", "--loss=mse", "--emit=loss", "--top_rows=5", "--batch_size=32", *extra,
        ]
    )
    assert (summary.rows_in, summary.rows_out, summary.rows_rejected) == (600, 599, 1)
    result = read_summary(str(tmp_path / "out/g"))
    output = read_arrays(str(tmp_path / "out/g"))
    # The group column is kept in the output, like a key column.
    assert "label" in output and result["group_column"] == "label" and result["rows"] == 599
    block = result["gradients"]["gradient"]
    assert block["features"] == ["a", "b", "c"] and block["columns"] == ["gradient__a", "gradient__b", "gradient__c"]
    expected = _expected(output, "abc", output["label"])
    assert block["count"] == expected["count"] == 599
    np.testing.assert_allclose(block["mean_abs"], expected["mean_abs"], rtol=1e-9)
    np.testing.assert_allclose(block["mean"], expected["mean"], rtol=1e-9, atol=1e-15)
    assert block["norm_histogram"] == expected["hist"].tolist()
    # The norms' and the loss's quantile sketches (merged across workers) agree with numpy within their accuracy.
    for sketch, values in ((block["norm_sketch"], expected["norms"]), (result["loss_sketch"], output["loss"].astype(np.float64))):
        made = QuantileSketch.from_json(sketch)
        assert made.count == len(values) == 599 and made.maximum == values.max() and made.minimum == values.min()
        for q in (0.0, 0.1, 0.5, 0.9, 1.0):
            exact = np.quantile(values, q, method="lower")
            assert abs(made.quantile(q) - exact) <= made.relative_accuracy * abs(exact) + 1e-12, q
        assert made.histogram(30)[1].sum() == 599
    assert sorted(block["groups"]) == ["0", "1", "2"]
    for name, (mean_abs, mean, count) in expected["groups"].items():
        assert block["groups"][name]["count"] == count
        np.testing.assert_allclose(block["groups"][name]["mean_abs"], mean_abs, rtol=1e-9)
        np.testing.assert_allclose(block["groups"][name]["mean"], mean, rtol=1e-9, atol=1e-15)
    # Top rows by norm and by loss, with their keys, as numpy ranks them.
    order = np.argsort(-expected["norms"], kind="stable")[:5]
    assert [t["keys"]["id"] for t in block["top_by_norm"]] == output["id"][order].tolist()
    np.testing.assert_allclose([t["norm"] for t in block["top_by_norm"]], expected["norms"][order], rtol=1e-12)
    order = np.argsort(-output["loss"].astype(np.float64), kind="stable")[:5]
    assert [t["keys"]["id"] for t in result["top_by_loss"]] == output["id"][order].tolist()
    # The summary is committed with the output: the marker names it.
    marker = json.loads((tmp_path / "out/g_SUCCESS").read_text())
    assert marker["files"]["summary"] == "g-summary.json"  # named relative to the marker's folder


def test_image_aggregates_per_element_and_a_failed_run_leaves_the_earlier_summary(tmp_path):
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 3), keras.layers.Flatten(), keras.layers.Dense(1)])
    rng = np.random.default_rng(1)
    write_parquet(tmp_path / "in/0.parquet", {"id": np.arange(50), "img": rng.random((50, 4, 4, 1), dtype=np.float32)})
    path = save(model, tmp_path)
    args = ["--runner=DirectRunner", f"--input={tmp_path}/in/*.parquet", f"--output={tmp_path}/out/g", f"--model={path}",
            "--feature_columns=img", "--keep_columns=id", "--batch_size=16"]
    run(args)
    result = read_summary(str(tmp_path / "out/g"))
    g = read_arrays(str(tmp_path / "out/g"))["gradient"].astype(np.float64)
    block = result["gradients"]["gradient"]
    assert block["shape"] == [4, 4, 1] and block["features"] is None and block["groups"] is None
    np.testing.assert_allclose(block["mean_abs"], np.abs(g).mean(0), rtol=1e-9)
    np.testing.assert_allclose(block["mean"], g.mean(0), rtol=1e-9, atol=1e-15)
    before = (tmp_path / "out/g-summary.json").read_text()
    with pytest.raises(Exception, match="every bundle fails"):
        run([*args, "--batch_size=8"], fault=_FailEveryBundle())
    assert (tmp_path / "out/g-summary.json").read_text() == before  # the failed run's summary never moved into place
    assert json.loads(before)["rows"] == 50


class _FailEveryBundle(Fault):
    def bundle_started(self, source, batch):
        raise RuntimeError("every bundle fails")
