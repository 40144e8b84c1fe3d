"""The README is true: its two commands, its main command run for real, its option table."""

import argparse
import os
import pathlib
import re
import subprocess
import sys

import keras
import numpy as np
import pyarrow.parquet as pq

from pipeline.options import GradientOptions, InfluenceOptions
from tests.conftest import assert_close, eager_gradients

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _commands():
    return [line.strip() for line in README.splitlines() if line.startswith("python3 -m venv .venv")]


def test_readme_has_the_two_commands_and_ci_runs_the_second():
    demo, tests = _commands()
    assert demo.endswith("beam-gradients --demo")
    assert tests.endswith("python -m pytest tests")
    ci = (ROOT / ".ci/run").read_text().splitlines()
    assert tests in ci


def test_readme_main_command_runs_end_to_end(tmp_path):
    """The first command's job, in a subprocess, in a fresh folder; its gradients checked."""
    demo = _commands()[0]
    script = demo.rsplit("&&", 1)[1].split()  # `.venv/bin/beam-gradients --demo`
    executable = pathlib.Path(sys.executable).parent / os.path.basename(script[0])
    done = subprocess.run([str(executable), *script[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rows: 3000 in, 3000 out, 0 rejected" in done.stdout
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


def test_readme_option_table_lists_every_option():
    parser = argparse.ArgumentParser()
    GradientOptions._add_argparse_args(parser)
    InfluenceOptions._add_argparse_args(parser)
    options = {s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
    in_table = set(re.findall(r"^\| `(--[a-z_]+)` \|", README, re.M))
    assert in_table == options
