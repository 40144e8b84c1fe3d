"""The README is true: its two commands, its main command run for real (with its report), its worked
example run as written (each command, and its Python) and checked against an eager computation, and
it stays a front page. The pages under docs/ are checked by tests/test_docs.py."""

import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pyarrow.parquet as pq

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


def _eager_integrated_gradients(model, images, steps):
    """IG of each row's predicted class of the `classes` head, trapezoid rule from a zero baseline, tape per point."""
    alphas = np.linspace(0.0, 1.0, steps)
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[[0, -1]] /= 2
    rows = []
    for image in images:
        predicted = int(np.argmax(model(image[None], training=False)[0][0]))
        grads = eager_gradients(model, alphas[:, None, None, None].astype(np.float32) * image,
                                lambda outputs: outputs[0][:, predicted])
        rows.append(image * np.tensordot(weights, grads, axes=1))
    return np.stack(rows)


def test_readme_main_command_and_worked_example_run_end_to_end(tmp_path):
    """The first command's job, in a subprocess, in a fresh folder; its gradients checked. Then the worked
    example's commands and Python, as written, in that folder; its attributions checked."""
    demo = _commands()[0]
    script = demo.rsplit("&&", 1)[1].split()  # `.venv/bin/beam-gradients --demo`
    executable = EXECUTABLES / os.path.basename(script[0])
    done = subprocess.run([str(executable), *script[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rows: 3000 in, 3000 out, 0 rejected" in done.stdout
    assert "report: demo/out/gradients-report.html" in done.stdout  # the demo writes its report
    assert (tmp_path / "demo/out/gradients-report.html").read_text().count("data:image/png;base64,") >= 4
    out = pq.read_table(tmp_path / "demo/out/gradients-00000-of-00001.parquet")
    assert out.num_rows == 3000
    data = pq.read_table(tmp_path / "demo/data/part-00000.parquet").slice(0, 50)
    images = data.column("image").combine_chunks().to_numpy_ndarray()
    rows = {i: n for n, i in enumerate(out.column("id").to_pylist())}
    model = keras.models.load_model(tmp_path / "demo/model.keras")
    order = [rows[i] for i in data.column("id").to_pylist()]
    for index, head in enumerate(["classes", "brightness"]):
        grads = out.column(f"gradient__{head}").combine_chunks().to_numpy_ndarray()[order]
        expected = eager_gradients(model, images, lambda outputs, i=index: outputs[i])
        assert np.abs(expected).max() > 1e-3  # a demo whose gradients are all zero would show nothing
        assert_close(grads, expected, rtol=1e-4, atol=1e-6)

    # The worked example: its commands, then its Python, as written, in the folder where the demo ran.
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
    assert shape == "(3000, 8, 8, 1)"

    ig = pq.read_table(tmp_path / "demo/out/ig-00000-of-00001.parquet")
    # The columns the README names, in its order.
    assert ig.column_names == ["id", "gradient", "ig_delta", "predicted_class", "norm__gradient"]
    predicted = ig.column("predicted_class").to_numpy()
    assert per_class == str(np.bincount(predicted))
    assert float(gap) == float(np.abs(ig.column("ig_delta").to_numpy()).max())
    rows = {i: n for n, i in enumerate(ig.column("id").to_pylist())}
    order = [rows[i] for i in data.column("id").to_pylist()[:10]]
    steps = int(re.search(r"--steps (\d+)", README).group(1))
    expected = _eager_integrated_gradients(model, images[:10], steps)
    assert np.abs(expected).max() > 1e-3
    assert_close(ig.column("gradient").combine_chunks().to_numpy_ndarray()[order], expected, rtol=1e-4, atol=1e-6)
    # Completeness, closed form: the attributions sum to f(x) - f(0) up to the trapezoid rule's error.
    scores = model(images[:10], training=False)[0].numpy()
    zero = model(np.zeros_like(images[:10]), training=False)[0].numpy()
    classes = predicted[order]
    gaps = expected.reshape(10, -1).sum(axis=1) - (scores[np.arange(10), classes] - zero[np.arange(10), classes])
    assert_close(ig.column("ig_delta").to_numpy()[order], gaps, rtol=1e-3, atol=1e-5)
    report = (tmp_path / "demo/out/ig-report.html").read_text()
    assert "Integrated-gradients completeness gap" in report and "Classes: predicted_class" in report
