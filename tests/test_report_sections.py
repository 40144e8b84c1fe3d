"""The report's class, weight-norm and influence sections: their numbers equal numpy over the output, their inputs the input's.

Real jobs over a real saved Keras model (8x8 images, a `label` column, three classes):
class-target gradients with predictions, weight-gradient norms per layer, weight
projections and the influence job over them (train and query the same rows, with
self influence), as the demo runs them. Each figure carries what it drew in
`data-values`; the tests recompute it from the output files with numpy.
"""

import glob
import re
import shutil

import keras
import numpy as np
import pytest

from pipeline.cli import main as cli
from pipeline.reader import read_arrays
from pipeline.report import influence as influence_module
from pipeline.report import weights as weights_module
from pipeline.report import write_report
from tests.conftest import run_job, save, write_parquet
from tests.test_report import charts, images

ROWS, CLASSES = 60, 3


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sections")
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    x = rng.random((ROWS, 8, 8, 1), dtype=np.float32)
    labels = rng.integers(0, CLASSES, ROWS).astype(np.int64)
    features = rng.normal(size=(ROWS, 3)).astype(np.float32)
    write_parquet(tmp / "in/0.parquet", {"id": np.arange(ROWS), "img": x, "label": labels,
                                         "a": features[:, 0], "b": features[:, 1], "c": features[:, 2]})
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(2, 3, activation="tanh", name="conv"),
                              keras.layers.Flatten(), keras.layers.Dense(CLASSES, activation="softmax", name="out")])
    path = save(model, tmp)
    tabular = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"), keras.layers.Dense(CLASSES)])
    tabular_path = save(tabular, tmp, "tabular.keras")
    common = ["--input", tmp / "in", "--keep_columns", "id", "--batch_size", "16"]
    loss = ["--target", "loss", "--label_column", "label", "--loss", "sparse_categorical_crossentropy", "--wrt", "weights"]
    run_job(*common[:2], "--output", tmp / "c/g", "--model", path, "--feature_columns", "img", "--keep_columns", "id,label",
            "--target", "class", "--class_column", "label", "--emit", "predictions", "--batch_size", "16")
    run_job(*common[:2], "--output", tmp / "t/g", "--model", tabular_path, "--feature_columns", "a,b,c", "--keep_columns",
            "id,label", "--target", "class", "--class_column", "label", "--emit", "predictions")
    run_job(*common[:2], "--output", tmp / "cg/g", "--model", path, "--feature_columns", "img", "--keep_columns", "id",
            "--group_column", "label", "--target", "class", "--class_column", "label", "--emit", "predictions")
    run_job(*common, "--output", tmp / "w/g", "--model", path, "--feature_columns", "img", *loss, "--weight_output", "norm")
    run_job(*common, "--output", tmp / "p/g", "--model", path, "--feature_columns", "img", *loss,
            "--weight_output", "projection", "--projection_dim", "16")
    assert cli(["influence", "--runner=DirectRunner", "--train", f"{tmp}/p/g-*.parquet", "--query", f"{tmp}/p/g-*.parquet",
                "--output", str(tmp / "i/inf"), "--self_influence", "--top_k", "3", "--keep_columns", "id"]) == 0
    return tmp, x, labels


def _table(page: str, cls: str) -> list[list[str]]:
    body = re.findall(rf'<table class="{cls}">.*?<tbody>(.*?)</tbody></table>', page)[0]
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(.*?)</tr>", body)]


def test_confusion_table_and_per_class_maps_equal_numpy(jobs, tmp_path):
    tmp, _, _ = jobs
    page = open(write_report(str(tmp / "c/g"), output=str(tmp_path / "c.html"))).read()
    images(page)
    out = read_arrays(str(tmp / "c/g"))
    predicted = out["prediction__out"].argmax(axis=1)
    expected = np.zeros((CLASSES, CLASSES), int)
    np.add.at(expected, (out["label"], predicted), 1)
    rows = _table(page, "confusion")
    assert [int(r[0]) for r in rows] == list(range(CLASSES))
    assert np.array_equal(np.array([[int(v) for v in r[1:-1]] for r in rows]), expected)
    assert [int(r[-1]) for r in rows] == expected.sum(axis=1).tolist()
    (means,) = charts(page, "class-means")
    assert means["classes"] == ["0", "1", "2"] and means["rows"] == np.bincount(out["label"]).tolist()
    assert means["source"] == "report"  # no --group_column: streamed here
    magnitude = np.abs(out["gradient"].astype(np.float64)).sum(axis=-1)  # |attribution| summed over the channel
    for c, drawn in zip(range(CLASSES), means["maps"]):
        np.testing.assert_allclose(drawn, magnitude[out["label"] == c].mean(axis=0), rtol=1e-9)


def test_per_class_feature_bars_equal_numpy(jobs, tmp_path):
    tmp, _, _ = jobs
    page = open(write_report(str(tmp / "t/g"), output=str(tmp_path / "t.html"))).read()
    images(page)
    out = read_arrays(str(tmp / "t/g"))
    g = np.abs(np.stack([out[f"gradient__{f}"] for f in "abc"], axis=1).astype(np.float64))
    (bars,) = charts(page, "class-means")
    assert bars["features"] == ["a", "b", "c"] and bars["classes"] == ["0", "1", "2"]
    for c, heights in enumerate(bars["mean_abs"]):
        np.testing.assert_allclose(heights, g[out["label"] == c].mean(axis=0), rtol=1e-9)


def test_class_column_not_kept_gives_no_confusion_table_but_groups_by_prediction(jobs, tmp_path):
    """The same output, with `label` declared as not kept: the page says how to keep it and groups by the prediction."""
    import pyarrow.parquet as pq

    from transforms.contract import columns_metadata, declared_columns, metadata_key

    tmp, _, _ = jobs
    (tmp_path / "o").mkdir()
    for path in (tmp / "c").glob("g-*.parquet"):
        table = pq.read_table(path)
        entries = [e for e in declared_columns(table.schema.metadata) if e["column"] != "label"]
        metadata = {**table.schema.metadata, **{k.encode(): v.encode() for k, v in columns_metadata(entries).items()}}
        pq.write_table(table.drop(["label"]).replace_schema_metadata(metadata), tmp_path / "o" / path.name)
    page = open(write_report(str(tmp_path / "o/g"), output=str(tmp_path / "o.html"))).read()
    assert metadata_key("spec")  # the spec still names label as the class column
    assert '<table class="confusion">' not in page and "name it in --keep_columns" in page
    out = read_arrays(str(tmp / "c/g"))
    (means,) = charts(page, "class-means")
    predicted = out["prediction__out"].argmax(axis=1)
    assert means["by"] == "prediction__out"
    assert means["rows"] == [int((predicted == int(c)).sum()) for c in means["classes"]]


def test_weight_norms_per_layer_quantiles_and_largest_rows_with_their_inputs(jobs, tmp_path, monkeypatch):
    tmp, x, labels = jobs
    drawn = []
    real = weights_module.strip
    monkeypatch.setattr(weights_module, "strip", lambda rows, title: drawn.extend(rows) or real(rows, title))
    page = open(write_report(str(tmp / "w/g"), str(tmp / "in/*.parquet"), str(tmp_path / "w.html"), top=4)).read()
    images(page)
    out = read_arrays(str(tmp / "w/g"))
    (stats,) = charts(page, "weight-norm-layers")
    assert list(stats) == ["weight_norm", "weight_norm__conv", "weight_norm__out"]
    for column, s in stats.items():
        values = out[column].astype(np.float64)
        assert s["rows"] == ROWS and s["min"] == values.min() and s["max"] == values.max()
        for name, q in weights_module.QUANTILES.items():  # the sketch's rank, within its 0.1% relative accuracy
            low, high = np.quantile(values, q, method="lower"), np.quantile(values, q, method="higher")
            assert low * (1 - 2e-3) <= s[name] <= high * (1 + 2e-3), (column, name)
    best = np.argsort(-out["weight_norm"].astype(np.float64), kind="stable")[:4]
    rows = _table(page, "weight-norm-top")
    assert [r[2] for r in rows] == [f"id={out['id'][i]}" for i in best]
    assert [float(r[1]) for r in rows] == pytest.approx(out["weight_norm"][best].astype(np.float64), rel=1e-3)
    assert [int(r[3]) for r in rows] == labels[out["id"][best]].tolist()  # the spec's label column, from --input
    assert [r["caption"].split()[1] for r in drawn] == [f"id={out['id'][i]}" for i in best]
    for row in drawn:
        np.testing.assert_array_equal(row["image"], x[row["keys"]["id"]].astype(np.float64))


def _brute_force(tmp):
    """TracIn scores of every query against every training row, from the projections themselves."""
    out = read_arrays(str(tmp / "p/g"))
    order = np.argsort(out["id"])
    phi = out["weight_projection"][order].astype(np.float64)
    return phi @ phi.T


def test_influence_neighbours_and_self_influence_equal_a_brute_force_ranking(jobs, tmp_path, monkeypatch):
    tmp, x, labels = jobs
    drawn = []
    real = influence_module.strip
    monkeypatch.setattr(influence_module, "strip", lambda rows, title, columns=None: drawn.append(rows) or real(rows, title, columns))
    page = open(write_report(str(tmp / "i/inf"), str(tmp / "in/*.parquet"), str(tmp_path / "i.html"), top=3)).read()
    images(page)
    scores = _brute_force(tmp)
    figures_ = charts(page, "influence-inputs")
    assert len(figures_) == influence_module.DRAWN_QUERIES
    for shown in figures_:
        q = int(shown["query"].split("=")[1])
        by_score = np.argsort(-scores[q], kind="stable")
        proponents, opponents = by_score[:3], by_score[::-1][:3]
        assert shown["rows"] == [f"id={i}" for i in proponents] + [f"id={i}" for i in opponents]
    queries = [int(q) for q in re.findall(r"<h3>query id=(\d+)</h3>", page)]
    selfs = np.diag(scores)  # TracIn's self influence, |phi|^2: the queries of largest self-influence come first
    assert queries == np.argsort(-selfs, kind="stable")[: influence_module.MAX_QUERIES].tolist()
    for q in queries:  # every query's table, drawn or not
        by_score = np.argsort(-scores[q], kind="stable")
        expected = np.r_[by_score[:3], by_score[::-1][:3]]
        cells = _table(page.split(f"<h3>query id={q}</h3>")[1], "influence")
        assert [c[3] for c in cells] == [f"id={i}" for i in expected]
        np.testing.assert_allclose([float(c[2]) for c in cells], scores[q][expected], rtol=1e-3)
    # The tiles: the query's own input (with its label from --input), then its neighbours' inputs.
    first = drawn[0]
    q = int(figures_[0]["query"].split("=")[1])
    np.testing.assert_array_equal(first[0]["image"], x[q].astype(np.float64))
    assert first[0]["caption"] == f"query id={q}\nlabel {labels[q]}"  # the projections' job's label column
    # Self influence, largest first, with each row's input and label.
    best = np.argsort(-selfs, kind="stable")[:3]  # --top 3: one meaning everywhere
    (ranked,) = charts(page, "self-influence-inputs")
    assert ranked == [f"id={i}" for i in best]
    rows = _table(page, "self-influence-labels")
    assert [int(r[3]) for r in rows] == labels[best].tolist()
    assert '<table class="self-influence">' not in page  # the same ranking once, with its labels
    assert page.count("of their neighbours are drawn, each with its score") == 1
    np.testing.assert_allclose([float(r[1]) for r in rows], selfs[best], rtol=1e-3)
    for tile, i in zip(drawn[-1], best):
        np.testing.assert_array_equal(tile["image"], x[i].astype(np.float64))


def test_influence_without_inputs_shows_keys_and_scores_only(jobs, tmp_path):
    tmp, _, _ = jobs
    page = open(write_report(str(tmp / "i/inf"), output=str(tmp_path / "i.html"), top=3)).read()
    assert not charts(page, "influence-inputs") and not charts(page, "self-influence-inputs")
    assert page.count('<table class="influence">') == influence_module.MAX_QUERIES
    assert "are drawn" not in page and page.count('<table class="self-influence">') == 1


def test_influence_over_feature_vectors_claims_no_drawn_inputs(tmp_path):
    """Inputs given but not images (a vector of 3 features): nothing is drawn, so the page must not say it is."""
    from tests.projections import write_projections

    rng = np.random.default_rng(4)
    phi = rng.normal(size=(12, 8))
    write_projections(tmp_path / "t/p", {"id": np.arange(12)}, phi)
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(12), "x": rng.normal(size=(12, 3)).astype(np.float32)})
    from pipeline.run import main

    assert main(["influence", "--runner=DirectRunner", "--train", str(tmp_path / "t/*.parquet"), "--query",
                 str(tmp_path / "t/*.parquet"), "--output", str(tmp_path / "i/inf"), "--top_k", "2"]) == 0
    page = open(write_report(str(tmp_path / "i/inf"), str(tmp_path / "in/*.parquet"), str(tmp_path / "i.html"))).read()
    assert page.count('<table class="influence">') == 12  # every query's neighbours, in words
    assert not charts(page, "influence-inputs") and "are drawn" not in page


def test_classes_beyond_the_cap_are_counted_apart(jobs, tmp_path, monkeypatch):
    """Memory is bounded by MAX_CLASSES: rows of further classes are left out of the table and the means, and counted."""
    from pipeline.report import classes as classes_module

    tmp, _, _ = jobs
    monkeypatch.setattr(classes_module, "MAX_CLASSES", 2)
    page = open(write_report(str(tmp / "c/g"), output=str(tmp_path / "c.html"))).read()
    out = read_arrays(str(tmp / "c/g"))
    first_two = list(dict.fromkeys(out["label"].tolist()))[:2]  # the first two classes read, in the output's order
    rest = int((~np.isin(out["label"], first_two)).sum())
    rows = _table(page, "confusion")
    assert sorted(int(r[0]) for r in rows) == sorted(first_two)
    assert f"{rest:,} rows of labelled classes beyond the first 2 are left out of the table" in page
    assert f"{rest:,} rows of classes beyond the first 2 are left out of the per-class means" in page
    (means,) = charts(page, "class-means")
    assert sorted(int(c) for c in means["classes"]) == sorted(first_two)


def test_per_class_means_come_from_the_jobs_summary_where_it_grouped_by_the_class_column(jobs, tmp_path, monkeypatch):
    """--group_column label: the job's combiner summed per class; the report reads no gradient for them."""
    from pipeline.report import classes as classes_module

    tmp, _, _ = jobs
    read = []
    real = classes_module.ClassPass.add
    monkeypatch.setattr(classes_module.ClassPass, "add", lambda self, table: read.extend(table.column_names) or real(self, table))
    page = open(write_report(str(tmp / "cg/g"), output=str(tmp_path / "cg.html"))).read()
    assert read and "gradient" not in read  # the pass read the class and prediction columns only
    out = read_arrays(str(tmp / "cg/g"))
    (means,) = charts(page, "class-means")
    assert means["source"] == "job" and means["classes"] == ["0", "1", "2"]
    assert means["rows"] == np.bincount(out["label"]).tolist()
    magnitude = np.abs(out["gradient"].astype(np.float64)).sum(axis=-1)
    for c, drawn in zip(range(CLASSES), means["maps"]):
        np.testing.assert_allclose(drawn, magnitude[out["label"] == c].mean(axis=0), rtol=1e-9)
    assert len(_table(page, "confusion")) == CLASSES


def test_a_rerun_without_self_influence_reports_what_its_marker_lists_not_the_old_shard_beside_it(jobs, tmp_path):
    """The rerun leaves the first run's self-influence shard (no prefix of its own to clean); the report read it
    from the folder, found no marker for it and refused the page. The complete output's marker has the say."""
    tmp, _, _ = jobs
    shutil.copytree(tmp / "i", tmp_path / "i")
    assert glob.glob(str(tmp_path / "i/inf_self_influence-*.parquet"))
    assert cli(["influence", "--runner=DirectRunner", "--train", f"{tmp}/p/g-*.parquet", "--query", f"{tmp}/p/g-*.parquet",
                "--output", str(tmp_path / "i/inf"), "--top_k", "3", "--keep_columns", "id"]) == 0
    assert glob.glob(str(tmp_path / "i/inf_self_influence-*.parquet"))  # still there, listed by no marker
    page = open(write_report(str(tmp_path / "i/inf"), output=str(tmp_path / "i.html"), top=3)).read()
    assert page.count('<table class="influence">') == influence_module.MAX_QUERIES
    assert "self-influence" not in page and "Self influence" not in page


def test_a_long_key_is_shown_cut_with_its_length_and_two_that_share_their_start_stay_two_queries(tmp_path):
    """A 5,000-character key (a document's text kept as its key) is cut to KEY_SHOWN characters wherever the page
    shows it; queries are still told apart by every character, so two keys alike in that much stay two."""
    from pipeline.report.html import KEY_SHOWN
    from pipeline.run import main
    from tests.projections import write_projections

    rng = np.random.default_rng(4)
    keys = ["d" * 5000 + "-a", "d" * 5000 + "-b"] + [f"row{i}" for i in range(10)]
    write_projections(tmp_path / "t/p", {"doc": keys}, rng.normal(size=(12, 8)))
    assert main(["influence", "--runner=DirectRunner", "--train", str(tmp_path / "t/*.parquet"), "--query",
                 str(tmp_path / "t/*.parquet"), "--output", str(tmp_path / "i/inf"), "--top_k", "2"]) == 0
    page = open(write_report(str(tmp_path / "i/inf"), output=str(tmp_path / "i.html"))).read()
    assert "d" * (KEY_SHOWN + 1) not in page
    assert page.count(f"<h3>query doc={'d' * KEY_SHOWN}… (5,002 characters)</h3>") == 2
    assert page.count('<table class="influence">') == 12  # every query its own table: none merged with another
    assert "<h3>query doc=row3</h3>" in page
