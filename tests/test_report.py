"""`beam-gradients report`: a self-contained page whose figures decode and whose numbers are the output's."""

import base64
import collections
import html
import io
import json
import os
import re
import shutil
import subprocess

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.reader import read_arrays
from pipeline.report import main as report_main
from pipeline.report import write_report
from pipeline.run import run
from tests.conftest import save, write_parquet
from transforms.contract import column_entry, columns_metadata
from transforms.io.arrow import to_tensor_array


def images(page: str) -> list[Image.Image]:
    """Every <img> of the page, decoded: each must be an embedded PNG."""
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    decoded = []
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:40]
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        image.load()
        assert image.size[0] > 10 and image.size[1] > 10
        decoded.append(image)
    return decoded


def charts(page: str, kind: str) -> list:
    return [json.loads(html.unescape(v)) for v in re.findall(rf'data-chart="{kind}" data-values=\'([^\']*)\'', page)]


@pytest.fixture(scope="module")
def image_job(tmp_path_factory):
    """A small CNN over 6x6 images with a label for the loss; three rows with a null image are rejected."""
    tmp = tmp_path_factory.mktemp("image")
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((6, 6, 1)), keras.layers.Conv2D(3, 3, activation="tanh"), keras.layers.Flatten(), keras.layers.Dense(1)])
    rng = np.random.default_rng(2)
    n = 80
    images_ = rng.random((n, 6, 6, 1), dtype=np.float32)
    column = pa.array([None if i in (4, 9, 33) else row.ravel().tolist() for i, row in enumerate(images_)], pa.list_(pa.float32()))
    write_parquet(tmp / "in/0.parquet", {"id": np.arange(n), "img": column, "y": rng.normal(size=n).astype(np.float32)})
    path = save(model, tmp)
    run(["--runner=DirectRunner", f"--input={tmp}/in", f"--output={tmp}/out/g", f"--model={path}", "--feature_columns=img",
         "--keep_columns=id", "--target=loss", "--label_column=y", "--loss=mse", "--emit=loss,norm", "--batch_size=16"])
    return tmp, images_


def test_image_report_shows_saliency_for_the_top_rows_with_their_inputs(image_job, tmp_path):
    tmp, inputs = image_job
    path = write_report(str(tmp / "out/g"), str(tmp / "in/*.parquet"), str(tmp_path / "r.html"), top=4, sample=3)
    page = open(path).read()
    assert "http://" not in page and "https://" not in page  # nothing to fetch
    assert len(images(page)) >= 5
    output = read_arrays(str(tmp / "out/g"))
    norms = np.sqrt((output["gradient"].astype(np.float64) ** 2).reshape(len(output["id"]), -1).sum(1))
    top = output["id"][np.argsort(-norms, kind="stable")[:4]].tolist()
    grids = charts(page, "saliency")
    assert grids[0] == [f"id={i}" for i in top]  # top rows by norm, as numpy ranks them
    loss = output["id"][np.argsort(-output["loss"].astype(np.float64), kind="stable")[:4]].tolist()
    assert grids[1] == [f"id={i}" for i in loss]
    assert len(grids[2]) == 3  # the seeded sample
    assert grids[2] == charts(write_report(str(tmp / "out/g"), str(tmp / "in/*.parquet"), str(tmp_path / "again.html"), top=4, sample=3) and open(tmp_path / "again.html").read(), "saliency")[2]
    assert "overlay" in page or "input" in page
    # Rejected rows: the reason and the count.
    assert 'data-count="3"' in page and "column &#x27;img&#x27; is null" in page
    # The numbers on the page, against numpy over the output: the Run table's counts, the histograms' bins and
    # quantiles (within the sketch's relative accuracy), the largest norms and losses.
    run_table = dict(re.findall(r"<tr><td>([^<]*)</td><td>([^<]*)</td></tr>", re.findall(r'<table class="meta">.*?</table>', page)[0]))
    rejected = read_arrays(str(tmp / "out/g_rejected"), require_complete=False)
    assert (run_table["rows in"], run_table["rows out"], run_table["rows rejected"]) == ("80", str(len(output["id"])), str(len(rejected["stage"])))
    assert run_table["taken"] == "Gradients, of the loss (mse, label y)"
    assert {"loss", "label_column", "target", "method"} <= set(run_table) and not {"steps", "noise", "samples", "k", "projection"} & set(run_table)
    for chart, values in (("norm-histogram", norms), ("loss-histogram", output["loss"].astype(np.float64))):
        drawn = charts(page, chart)[0]
        assert sum(drawn["counts"]) == len(values) == 77 and len(drawn["edges"]) == len(drawn["counts"]) + 1
        assert drawn["edges"][0] == pytest.approx(values.min()) and drawn["edges"][-1] == pytest.approx(values.max())
        for q, got in drawn["quantiles"].items():
            exact = np.quantile(values, float(q), method="lower")
            assert abs(got - exact) <= 1e-3 * abs(exact) * (1 + 1e-6), (chart, q)
        # the ends as numpy has them: the job's float32 norms can round a hair inside the float64 ones taken here
        edges = np.array(drawn["edges"])
        edges[[0, -1]] = values.min(), values.max()
        assert sum(np.histogram(values, edges)[0]) == 77
    largest = re.findall(r'<table class="top-by-norm">.*?</table>', page)[0]
    assert [int(i) for i in re.findall(r"<td>id=(\d+)</td>", largest)] == top  # --top 4: four rows in every list
    shown = [float(v) for v in re.findall(r"<tr><td>([0-9.e+-]+)</td>", largest)]
    np.testing.assert_allclose(shown, np.sort(norms)[::-1][:4], rtol=1e-3)
    losses = re.findall(r'<table class="top-by-loss">.*?</table>', page)[0]
    assert [int(i) for i in re.findall(r"<td>id=(\d+)</td>", losses)] == loss
    assert "Gradients: gradient" in page and "mean |gradient|" in page and "attribution" not in page


def test_a_summary_written_before_the_sketch_is_still_drawn(image_job, tmp_path):
    """Summaries of older jobs have only the fixed log-bin histogram: the page draws that, every row in a bin."""
    tmp, _ = image_job
    shutil.copytree(tmp / "out", tmp_path / "out")
    summary = json.loads((tmp_path / "out/g-summary.json").read_text())
    summary.pop("loss_sketch")
    for entry in summary["gradients"].values():
        entry.pop("norm_sketch")
    (tmp_path / "out/g-summary.json").write_text(json.dumps(summary))
    page = open(write_report(str(tmp_path / "out/g"), output=str(tmp_path / "r.html"))).read()
    images(page)
    drawn = charts(page, "norm-histogram")[0]
    assert sum(drawn["counts"]) == 77 and drawn["edges"] is None and not charts(page, "loss-histogram")


def test_the_inputs_are_drawn_from_the_input_files(image_job, tmp_path, monkeypatch):
    """The input panel shows the input row of the same key (joined by key, streaming)."""
    from pipeline.report import figures

    tmp, inputs = image_job
    drawn = []
    real = figures.saliency_grid
    monkeypatch.setattr(figures, "saliency_grid", lambda rows, title, **kw: drawn.extend(rows) or real(rows, title, **kw))
    write_report(str(tmp / "out/g"), str(tmp / "in/*.parquet"), str(tmp_path / "r.html"), top=3, sample=2)
    assert drawn
    for row in drawn:
        key = int(row["label"].split("=")[1])
        np.testing.assert_array_equal(row["input"], inputs[key].astype(np.float64))


def test_tabular_report_bars_equal_numpy_per_output_and_group(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="tanh"), keras.layers.Dense(2)])
    rng = np.random.default_rng(4)
    n = 150
    write_parquet(tmp_path / "in/0.parquet", {"id": np.arange(n), "group": rng.choice(["a", "b"], n),
                  "age": rng.normal(size=n), "income": rng.normal(size=n) * 5, "score": rng.normal(size=n)})
    path = save(model, tmp_path)
    run(["--runner=DirectRunner", f"--input={tmp_path}/in/", f"--output={tmp_path}/out/g", f"--model={path}",
         "--feature_columns=age,income,score", "--keep_columns=id", "--group_column=group"])
    page = open(write_report(str(tmp_path / "out/g"))).read()
    images(page)
    output = read_arrays(str(tmp_path / "out/g"))
    g = np.stack([output[f"gradient__{f}"].astype(np.float64) for f in ("age", "income", "score")], axis=1)
    bars = charts(page, "feature-importance")
    assert [b["group"] for b in bars] == [None, "a", "b"]
    assert bars[0]["features"] == ["age", "income", "score"]
    np.testing.assert_allclose(bars[0]["mean_abs"], np.abs(g).mean(0), rtol=1e-9)
    for b in bars[1:]:
        np.testing.assert_allclose(b["mean_abs"], np.abs(g[output["group"] == b["group"]]).mean(0), rtol=1e-9)
    assert 'data-count="0"' in page  # no row rejected, and the page says so


def _write(path, columns, metadata=None, kinds=None):
    """A synthetic output; `kinds` declares its columns' kinds as the jobs do (beam_gradients.columns)."""
    table = pa.table(columns)
    metadata = dict(metadata or {})
    if kinds:
        metadata.update(columns_metadata(column_entry(c, kinds[c]) for c in table.column_names))
    if metadata:
        table = table.replace_schema_metadata(metadata)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path)


def test_sections_for_weight_norms_ig_gaps_influence_and_self_influence(tmp_path):
    """Synthetic outputs with the columns of the weight, methods and influence jobs: each gets its section."""
    rng = np.random.default_rng(0)
    n = 40
    weight = rng.random(n)
    delta = rng.normal(size=n) * 1e-3
    _write(str(tmp_path / "w/g-00000-of-00001.parquet"), {
        "id": np.arange(n), "gradient": to_tensor_array(rng.normal(size=(n, 4)).astype(np.float32)),
        "ig_delta": delta.astype(np.float32), "weight_norm": weight.astype(np.float32),
        "ig_delta__dog": (delta * 2).astype(np.float32), "weight_norm__dense": weight.astype(np.float32),
        "predicted_class": np.arange(n) % 3, "top_k_classes": to_tensor_array((np.arange(2 * n).reshape(n, 2) % 5).astype(np.int64)),
    }, {b"beam_gradients.weights": b'{"variables": ["dense/kernel"], "parameters": 12, "projection": null}'},
        {"id": "key", "gradient": "gradient", "ig_delta": "ig_delta", "weight_norm": "weight_norm", "ig_delta__dog": "ig_delta",
         "weight_norm__dense": "weight_norm", "predicted_class": "class", "top_k_classes": "class"})
    page = open(write_report(str(tmp_path / "w/g"))).read()
    assert "No g_SUCCESS marker" in page.replace(str(tmp_path / "w") + "/", "")  # incomplete: said so
    ranked = re.findall(r'<table class="weight-norm">.*?</table>', page)[0]
    ids = [int(i) for i in re.findall(r"<td>id=(\d+)</td>", ranked)]
    assert ids == np.argsort(-weight.astype(np.float32), kind="stable")[:6].tolist()  # --top 6, the default
    # A weight norm is never negative: named as itself, not |weight_norm|; a signed gap is named |ig_delta|.
    assert "<th>weight_norm</th>" in ranked and "|weight_norm|" not in page and "<th>|ig_delta|</th>" in page
    for chart, values in (("weight-norm-histogram", weight), ("ig-delta-histogram", np.abs(delta))):
        drawn = charts(page, chart)[0]
        assert sum(drawn["counts"]) == n and drawn["axis"] == ("log" if values.max() / values.min() > 100 else "linear")
        median = np.quantile(values.astype(np.float32).astype(np.float64), 0.5, method="lower")
        assert abs(drawn["quantiles"]["0.5"] - median) <= 1e-3 * median
    gaps = re.findall(r'<table class="ig-delta">.*?</table>', page)[0]
    assert [int(i) for i in re.findall(r"<td>id=(\d+)</td>", gaps)][:3] == np.argsort(-np.abs(delta.astype(np.float32)), kind="stable")[:3].tolist()
    assert "dense/kernel" in page
    assert '<table class="ig-delta--dog">' in page and "weight-norm--dense" not in page  # per head, not per layer
    assert charts(page, "classes") == [{"0": 14, "1": 13, "2": 13}, {"0": 8, "2": 8, "4": 8, "1": 8, "3": 8}]
    images(page)

    # Influence: query keys, rank, kind, train__ keys, score; self-influence beside it.
    rows = [(q, r, kind, t, s) for q in (1, 2) for kind in ("proponent", "opponent") for r, (t, s) in
            enumerate([(q * 10 + r, (1 if kind == "proponent" else -1) / (r + 1)) for r in range(3)], 1)]
    _write(str(tmp_path / "i/inf-00000-of-00001.parquet"), {
        "qid": [r[0] for r in rows], "rank": [r[1] for r in rows], "kind": [r[2] for r in rows],
        "train__id": [r[3] for r in rows], "score": [r[4] for r in rows]},
        kinds={"qid": "key", "rank": "rank", "kind": "influence_kind", "train__id": "train_key", "score": "score"})
    selfs = rng.random(30)
    _write(str(tmp_path / "i/inf_self_influence-00000-of-00001.parquet"), {"train__id": np.arange(30), "self_influence": selfs},
           kinds={"train__id": "train_key", "self_influence": "self_influence"})
    page = open(write_report(str(tmp_path / "i/inf"), top=2)).read()
    assert page.count("<h3>query qid=") == 2
    table = re.findall(r"<h3>query qid=1</h3><table class=\"influence\">.*?</table>", page)[0]
    assert re.findall(r"<td>(proponent|opponent)</td><td>(\d)</td>", table) == [("proponent", "1"), ("proponent", "2"), ("opponent", "1"), ("opponent", "2")]
    ranked = re.findall(r'<table class="self-influence">.*?</table>', page)[0]
    assert [int(i) for i in re.findall(r"<td>train__id=(\d+)</td>", ranked)] == np.argsort(-selfs)[:2].tolist()  # --top 2


def test_integrated_gradients_pages_say_attribution_and_show_signed_maps_on_a_diverging_scale(tmp_path):
    model = keras.Sequential([keras.Input((5, 5, 1)), keras.layers.Conv2D(2, 3, activation="tanh"), keras.layers.Flatten(), keras.layers.Dense(3)])
    rng = np.random.default_rng(6)
    n = 30
    write_parquet(tmp_path / "in/0.parquet", {"id": np.arange(n), "img": rng.random((n, 5, 5, 1), dtype=np.float32),
                                              "label": rng.integers(0, 3, n)})
    run(["--runner=DirectRunner", f"--input={tmp_path}/in", f"--output={tmp_path}/out/g", f"--model={save(model, tmp_path)}",
         "--feature_columns=img", "--keep_columns=id", "--target=class", "--class_column=label",
         "--method=integrated_gradients", "--steps=4", "--batch_size=16"])
    page = open(write_report(str(tmp_path / "out/g"), str(tmp_path / "in/*.parquet"), str(tmp_path / "r.html"), top=3, sample=2)).read()
    images(page)
    assert "<h2>Integrated gradients, 4 steps: gradient</h2>" in page
    assert "Integrated gradients, 4 steps, of the labelled class (label)" in page
    assert "mean |attribution|" in page and "|gradient|" not in page and "top 3 rows by attribution norm" in page
    assert "diverging colour scale centred at 0" in page and "sequential colour scale" in page  # said in the captions
    run_table = re.findall(r'<table class="meta">.*?</table>', page)[0]
    assert "<td>steps</td><td>4</td>" in run_table and "<td>class_column</td><td>label</td>" in run_table
    assert not {"noise", "samples", "seed", "k", "projection", "weights"} & set(re.findall(r"<tr><td>([^<]*)</td>", run_table))
    output = read_arrays(str(tmp_path / "out/g"))
    mean = np.asarray(json.load(open(tmp_path / "out/g-summary.json"))["gradients"]["gradient"]["mean"])
    np.testing.assert_allclose(mean, output["gradient"].astype(np.float64).mean(0), rtol=1e-9, atol=1e-15)
    assert charts(page, "saliency")[0] == [f"id={i}" for i in output["id"][np.argsort(
        -np.sqrt((output["gradient"].astype(np.float64) ** 2).reshape(n, -1).sum(1)), kind="stable")[:3]]]
    assert "<details><summary>Raw metadata</summary>" in page


def test_every_heat_map_has_a_colour_bar_diverging_and_symmetric_where_signed():
    from pipeline.report import figures

    plt = figures._matplotlib()
    values = np.array([[-1.0, 0.5], [0.25, 0.0]])
    for signed, cmap in ((True, figures.DIVERGING), (False, figures.SEQUENTIAL)):
        fig, ax = plt.subplots()
        figures.draw_map(fig, ax, figures.heat(values, signed), signed)
        shown = ax.get_images()[0]
        assert len(fig.axes) == 2 and shown.get_cmap().name == cmap  # the map and its colour bar
        low, high = shown.get_clim()
        assert (low, high) == ((-1.0, 1.0) if signed else (0.0, 1.0))
        plt.close(fig)


def test_another_datasets_input_is_one_line_naming_its_column_file_and_row(image_job, tmp_path, capsys):
    """--input of other rows (token lists where the job read 6x6 images): one line, not numpy's reshape error."""
    tmp, _ = image_job
    tokens = pa.array([list(range(10))] * 80, pa.list_(pa.int32()))
    write_parquet(tmp_path / "text.parquet", {"id": np.arange(80), "tokens": tokens})
    status = report_main([str(tmp / "out/g"), "--input", str(tmp_path / "text.parquet"), "--output", str(tmp_path / "r.html")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert f"column 'tokens' of {tmp_path / 'text.parquet'} holds 10 numbers in the row id=" in err, err
    assert "do not make the (6, 6, 1) of 'gradient'" in err and not (tmp_path / "r.html").exists(), err


def test_report_command_line_and_an_absent_output(tmp_path, capsys):
    assert report_main([str(tmp_path / "nothing/g")]) == 2
    assert "no output shards" in capsys.readouterr().err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium; .ci/run installs it)")
def test_the_page_renders_in_headless_chromium_without_errors(image_job, tmp_path):
    tmp, _ = image_job
    path = write_report(str(tmp / "out/g"), str(tmp / "in/*.parquet"), str(tmp_path / "r.html"))
    shot = tmp_path / "shot.png"
    common = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
              "--host-resolver-rules=MAP * ~NOTFOUND"]  # no network: a fetch would fail and log
    done = subprocess.run([*common, "--window-size=1100,2400", f"--screenshot={shot}", f"file://{path}"],
                          capture_output=True, text=True, timeout=120)
    console = [line for line in done.stderr.splitlines() if "CONSOLE" in line or "Failed to load" in line or "net::ERR" in line]
    assert done.returncode == 0 and not console, done.stderr[-2000:]
    image = Image.open(shot)
    pixels = np.asarray(image.convert("L"))
    assert image.size == (1100, 2400) and pixels.std() > 10  # drawn, not blank
    dom = subprocess.run([*common, "--dump-dom", f"file://{path}"], capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") == open(path).read().count("<img") and "Rejected rows" in dom
