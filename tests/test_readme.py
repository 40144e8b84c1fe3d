"""The README is true: its two commands; its main command, the demo, run for real once (its integrated
gradients checked against an eager computation, its maps lit on the shapes, its planted mislabeled rows
first by self influence, its page written); its worked example run as written (each command, and its
Python) and checked against an eager computation; and it stays a front page. The pages under docs/ are
checked by tests/test_docs.py."""

import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.demo import demo_rows
from tests.conftest import assert_close, eager_gradients
from tests.test_docs import code_blocks, commands, links

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXECUTABLES = pathlib.Path(sys.executable).parent  # the venv's `beam-gradients`, as the README's first command made it


def _commands():
    return [line.strip() for line in README.splitlines() if line.startswith("python3 -m venv .venv")]


def test_readme_has_the_two_commands_and_ci_runs_the_second():
    demo, tests = _commands()
    assert demo.endswith("beam-gradients --demo")
    assert tests.endswith("python -m pytest tests")
    ci = (ROOT / ".ci/run").read_text().splitlines()
    assert tests in ci


def test_readme_is_a_front_page_that_links_every_page_of_the_docs():
    assert len(README.splitlines()) <= 300
    linked = {target.split("#")[0] for target in links(README)}
    pages = {f"docs/{page.name}" for page in (ROOT / "docs").glob("*.md")} | {"docs/options.md", "bench/README.md"}
    assert pages <= linked, sorted(pages - linked)


def _eager_integrated_gradients(model, images, classes, steps):
    """IG of the given class of each row (the `classes` head), trapezoid rule (the engine's default ig_rule) from a
    zero baseline over `steps` points, one tape per point."""
    alphas = np.linspace(0.0, 1.0, steps)
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[[0, -1]] /= 2
    rows = []
    for image, label in zip(images, classes):
        grads = eager_gradients(model, alphas[:, None, None, None].astype(np.float32) * image,
                                lambda outputs, c=int(label): outputs[0][:, c])
        rows.append(image * np.tensordot(weights, grads, axes=1))
    return np.stack(rows)


def _by_id(table, column):
    """A column of an output, in id order (the demo's ids are 0..N-1)."""
    ids = table.column("id" if "id" in table.column_names else "train__id").to_numpy()
    values = table.column(column).combine_chunks()
    values = values.to_numpy_ndarray() if hasattr(values, "to_numpy_ndarray") else values.to_numpy()
    return values[np.argsort(ids)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The README's first command's `beam-gradients --demo`, run once, in a subprocess, in a fresh folder."""
    folder = tmp_path_factory.mktemp("readme")
    script = _commands()[0].rsplit("&&", 1)[1].split()  # `.venv/bin/beam-gradients --demo`
    executable = EXECUTABLES / os.path.basename(script[0])
    done = subprocess.run([str(executable), *script[1:]], cwd=folder, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return folder, done.stdout


def test_the_demo_prints_its_summary_and_writes_its_outputs_and_page(demo):
    folder, stdout = demo
    assert "rows: 3000 in, 3000 out, 0 rejected" in stdout
    for line in ("output: demo/out/gradients-00000-of-00001.parquet",
                 "weight projections: demo/out/projections-00000-of-00001.parquet",
                 "influence: demo/out/neighbours-00000-of-00001.parquet",
                 "self influence: demo/out/self_influence-00000-of-00001.parquet",
                 "report: demo/out/gradients-report.html"):
        assert line in stdout.splitlines()
    wall = re.search(r"^wall time: ([\d.]+) s: start-up ([\d.]+) s .*job ([\d.]+) s .*demo model and data ([\d.]+) s, "
                     r"projections ([\d.]+) s, influence ([\d.]+) s, report ([\d.]+) s$", stdout, re.M)
    assert wall, stdout
    total, *parts = map(float, wall.groups())
    assert abs(total - sum(parts)) <= 0.05 * 7 + 1e-9  # the parts add up to the wall time, to the printed rounding
    page = (folder / "demo/out/gradients-report.html").read_text()
    assert page.count("data:image/png;base64,") >= 4
    assert "Influence neighbours" in page and "Self-influence" in page
    # Nothing that gives the answer away is in the job's input: the true shape, the mask, the flipped flag.
    data = pq.read_table(folder / "demo/data/part-00000.parquet")
    assert data.column_names == ["id", "image", "label"]
    rows = demo_rows()
    assert_close(data.column("image").combine_chunks().to_numpy_ndarray(), rows["images"][:1000], rtol=0, atol=0)
    assert (data.column("label").to_numpy() == rows["labels"][:1000]).all()
    assert rows["flipped"].sum() == 30 and (rows["labels"] != rows["shapes"]).sum() == 30


def test_the_demos_attributions_are_integrated_gradients_of_the_labelled_class(demo):
    """The output's rows against an eager per-row computation: the model's own, by GradientTape, point by point."""
    folder, _ = demo
    rows = demo_rows()
    out = pq.read_table(folder / "demo/out/gradients-00000-of-00001.parquet")
    assert out.column_names == ["id", "label", "gradient", "ig_delta", "prediction__classes", "prediction__brightness",
                                "norm__gradient"]
    model = keras.models.load_model(folder / "demo/model.keras")
    picked = np.r_[0:4, np.flatnonzero(rows["flipped"])[:2]]  # flipped rows too: of the label, not the shape
    expected = _eager_integrated_gradients(model, rows["images"][picked], rows["labels"][picked], 32)
    assert np.abs(expected).max() > 1e-2
    assert_close(_by_id(out, "gradient")[picked], expected, rtol=1e-4, atol=1e-6)
    predictions = model(rows["images"][picked], training=False)
    assert_close(_by_id(out, "prediction__classes")[picked], predictions[0].numpy(), rtol=1e-5, atol=1e-6)


def test_the_demos_attributions_light_up_on_the_shapes(demo):
    """Mean |attribution| inside each row's shape is larger than outside it, on every row, from the output."""
    folder, _ = demo
    masks = demo_rows()["masks"]
    magnitude = np.abs(_by_id(pq.read_table(folder / "demo/out/gradients-00000-of-00001.parquet"), "gradient"))[..., 0]
    inside = (magnitude * masks).sum(axis=(1, 2)) / masks.sum(axis=(1, 2))
    outside = (magnitude * ~masks).sum(axis=(1, 2)) / (~masks).sum(axis=(1, 2))
    assert (inside > outside).all(), np.flatnonzero(inside <= outside)
    assert np.median(inside / outside) > 5


def test_the_planted_mislabeled_rows_lead_the_self_influence_ranking(demo):
    """Self influence, read from its output: the 30 flipped rows rank in the top 5% of 3,000 (they are the top 30)."""
    folder, _ = demo
    flipped = demo_rows()["flipped"]
    scores = _by_id(pq.read_table(folder / "demo/out/self_influence-00000-of-00001.parquet"), "self_influence")
    assert scores.shape == (3000,)
    ranks = np.argsort(np.argsort(-scores, kind="stable"), kind="stable")  # 0 is the largest
    assert ranks[flipped].max() < 0.05 * len(scores), sorted(ranks[flipped])


def test_readme_worked_example_runs_as_written(demo):
    """The worked example's commands and Python, as written, in the folder where the demo ran; its attributions
    checked against an eager computation, its completeness gaps against the closed form."""
    tmp_path, _ = demo
    blocks = code_blocks(README)
    example = [cmd for lang, text in blocks if lang == "" for cmd in commands(text) if "demo/out/ig" in cmd]
    assert [argv[1] if len(argv) > 1 and not argv[1].startswith("-") else "run" for argv in example] == ["run", "report"]
    for argv in example:
        ran = subprocess.run([str(EXECUTABLES / argv[0]), *argv[1:]], cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
        assert ran.returncode == 0, " ".join(argv) + ran.stderr[-3000:]
    python = [text for lang, text in blocks if lang == "python"]
    assert len(python) == 1
    ran = subprocess.run([sys.executable, "-c", python[0]], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert ran.returncode == 0, python[0] + ran.stderr[-3000:]
    shape, per_class, gap = ran.stdout.splitlines()
    assert shape == "(3000, 16, 16, 1)"

    ig = pq.read_table(tmp_path / "demo/out/ig-00000-of-00001.parquet")
    # The columns the README names, in its order.
    assert ig.column_names == ["id", "gradient", "ig_delta", "predicted_class", "norm__gradient"]
    predicted = ig.column("predicted_class").to_numpy()
    assert per_class == str(np.bincount(predicted))
    assert float(gap) == float(np.abs(ig.column("ig_delta").to_numpy()).max())
    rows = demo_rows()
    model = keras.models.load_model(tmp_path / "demo/model.keras")
    picked = np.r_[0:6, np.flatnonzero(rows["flipped"])[:2]]
    images = rows["images"][picked]
    classes = _by_id(ig, "predicted_class")[picked]
    steps = int(re.search(r"--steps (\d+)", README).group(1))
    expected = _eager_integrated_gradients(model, images, classes, steps)
    assert np.abs(expected).max() > 1e-2
    assert_close(_by_id(ig, "gradient")[picked], expected, rtol=1e-4, atol=1e-6)
    # The trained model predicts the true shape, not the flipped label.
    assert (classes == rows["shapes"][picked]).all()
    # Completeness, closed form: the attributions sum to f(x) - f(0) up to the trapezoid rule's error.
    n = len(picked)
    scores = model(images, training=False)[0].numpy()
    zero = model(np.zeros_like(images), training=False)[0].numpy()
    gaps = expected.reshape(n, -1).sum(axis=1) - (scores[np.arange(n), classes] - zero[np.arange(n), classes])
    assert_close(_by_id(ig, "ig_delta")[picked], gaps, rtol=1e-3, atol=1e-5)
    report = (tmp_path / "demo/out/ig-report.html").read_text()
    assert "Integrated-gradients completeness gap" in report and "Classes: predicted_class" in report


def test_options_after_demo_override_its_own_and_drop_those_they_leave_unused():
    """`--demo --method gradient` runs the plain gradient without the demo's --steps (refused otherwise)."""
    from pipeline.demo import MAIN_OPTIONS, demo_options

    assert demo_options([]) == MAIN_OPTIONS
    plain = demo_options(["--method", "gradient"])
    assert plain == [o for o in MAIN_OPTIONS if not o.startswith("--steps=")]
    predicted = demo_options(["--target=predicted"])
    assert predicted == [o for o in MAIN_OPTIONS if not o.startswith("--class_column=")]
    assert demo_options(["--method", "no_such_method"]) == MAIN_OPTIONS  # the job's own check names it
