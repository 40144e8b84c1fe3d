"""Checks that run in the runtime install alone (the README's first command), with no test package.

Why: the test venv brings pandas and much else in through Airflow's providers, so a
runtime import of a package outside `install_requires` passed every test and failed
the README's first command on a fresh machine. These checks import only what
`pip install -e .` installs (no pytest), run the real jobs on DirectRunner, and
compare what they write with an independent computation: an eager per-row
`GradientTape`, or a closed form.

    .venv/bin/python tests/runtime_checks.py     # prints "N passed, N failed"; exit 1 if any failed

In the test venv, tests/test_runtime_checks.py runs the same checks under pytest.
"""

from __future__ import annotations

import glob
import os
import subprocess
import sys
import tempfile
import time
import traceback

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from pipeline.reader import read_arrays  # noqa: E402
from pipeline.run import main, run  # noqa: E402
from transforms.io.arrow import to_tensor_array  # noqa: E402

SHAPE = (4, 3)  # a small "image": the gradient columns are fixed_shape_tensor<float32>[4, 3]
ROWS = 40


def _data(folder: str, bad_row: int | None = None) -> tuple[str, np.ndarray]:
    """Two Parquet files of ROWS rows: `id` and `x`; `bad_row` gets a NaN (a row to reject)."""
    x = np.random.default_rng(0).normal(size=(ROWS, *SHAPE)).astype(np.float32)
    if bad_row is not None:
        x[bad_row, 0, 0] = np.nan
    os.makedirs(folder, exist_ok=True)
    half = ROWS // 2
    for f, part in enumerate((slice(0, half), slice(half, ROWS))):
        ids = np.arange(ROWS, dtype=np.int64)[part]
        pq.write_table(pa.table({"id": ids, "x": to_tensor_array(x[part])}), os.path.join(folder, f"part-{f}.parquet"))
    return os.path.join(folder, "*.parquet"), x


def _linear_model(folder: str) -> tuple[str, keras.Model]:
    """y = <x, w> + b: every gradient has a closed form."""
    keras.utils.set_random_seed(0)
    x = keras.Input(SHAPE, name="x")
    model = keras.Model(x, keras.layers.Dense(1, name="dense")(keras.layers.Flatten()(x)))
    path = os.path.join(folder, "linear.keras")
    model.save(path)
    return path, model


def _quadratic_model(folder: str) -> tuple[str, keras.Model]:
    """y = sum((x W)^2): homogeneous of degree 2, so integrated gradients from zeros is x * grad / 2 exactly."""
    keras.utils.set_random_seed(1)
    x = keras.Input(SHAPE, name="x")
    h = keras.layers.Dense(3, use_bias=False, name="dense")(keras.layers.Flatten()(x))
    model = keras.Model(x, keras.layers.Multiply(name="square")([h, h]))
    path = os.path.join(folder, "quadratic.keras")
    model.save(path)
    return path, model


def _eager(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """The reference: one GradientTape per row, d(sum of outputs)/dx."""
    rows = []
    for row in x:
        xi = tf.constant(row[None])
        with tf.GradientTape() as tape:
            tape.watch(xi)
            y = tf.reduce_sum(model(xi, training=False))
        rows.append(tape.gradient(y, xi).numpy()[0])
    return np.stack(rows)


def _job(tmp: str, name: str, pattern: str, model: str, *flags: str) -> dict[str, np.ndarray]:
    output = os.path.join(tmp, "out", name)
    summary = run(
        ["--runner=DirectRunner", f"--input={pattern}", f"--output={output}", f"--model={model}", "--keep_columns=id",
         "--quiet", *flags]
    )
    assert summary.rows_in == summary.rows_out + summary.rows_rejected, summary
    arrays = read_arrays(output)
    order = np.argsort(arrays["id"])
    return {name: values[order] for name, values in arrays.items()}


def _close(actual, expected, rtol=1e-4, atol=1e-5, what=""):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def check_tensor_output_against_eager_tape(tmp: str) -> None:
    """A tensor-shaped gradient column (the output type whose writer imported pandas), read back by read_arrays."""
    pattern, x = _data(os.path.join(tmp, "data"))
    path, model = _quadratic_model(tmp)
    out = _job(tmp, "sum", pattern, path, "--emit=norm,predictions")
    assert out["gradient"].shape == (ROWS, *SHAPE), out["gradient"].shape
    expected = _eager(model, x)
    _close(out["gradient"], expected, what="gradient vs eager tape")
    _close(out["norm__gradient"], np.linalg.norm(expected.reshape(ROWS, -1), axis=1), what="norm")


def check_every_method_against_closed_forms(tmp: str) -> None:
    """Each method on models whose answer is known: linear (constant gradient) and quadratic (homogeneous)."""
    pattern, x = _data(os.path.join(tmp, "data"))
    linear, lin = _linear_model(tmp)
    quadratic, quad = _quadratic_model(tmp)
    w = lin.get_layer("dense").kernel.numpy().reshape(SHAPE)
    g = _eager(quad, x)
    _close(_job(tmp, "gxi", pattern, quadratic, "--method=gradient_x_input")["gradient"], g * x, what="gradient_x_input")
    ig = _job(tmp, "ig", pattern, quadratic, "--method=integrated_gradients", "--steps=4")
    _close(ig["gradient"], g * x / 2, what="integrated_gradients (x * grad / 2 for degree 2)")
    assert np.abs(ig["ig_delta"]).max() < 1e-3, ig["ig_delta"]
    noise = ["--samples=5", "--noise=0.3"]
    _close(_job(tmp, "sg", pattern, linear, "--method=smoothgrad", *noise)["gradient"], np.broadcast_to(w, x.shape),
           what="smoothgrad of a linear model")
    _close(_job(tmp, "vg", pattern, linear, "--method=vargrad", *noise)["gradient"], np.zeros_like(x), what="vargrad")
    _close(_job(tmp, "sq", pattern, linear, "--method=squaregrad", *noise)["gradient"], np.broadcast_to(w * w, x.shape),
           what="squaregrad")


def check_weight_norms_and_projections(tmp: str) -> None:
    """--wrt weights on y = <x, w> + b: the row's weight gradient is (x, 1), its norm sqrt(|x|^2 + 1)."""
    pattern, x = _data(os.path.join(tmp, "data"))
    linear, _ = _linear_model(tmp)
    out = _job(tmp, "w", pattern, linear, "--wrt=weights", "--weight_output=norm,projection,full", "--projection_dim=512")
    flat = x.reshape(ROWS, -1)
    _close(out["weight_norm"], np.sqrt((flat**2).sum(1) + 1), what="weight_norm")
    _close(out["weight_gradient__dense/kernel"].reshape(ROWS, -1), flat, what="full kernel gradient")
    _close(out["weight_gradient__dense/bias"].reshape(ROWS), np.ones(ROWS), what="full bias gradient")
    projected = (out["weight_projection"].astype(np.float64) ** 2).sum(1)
    # A count sketch of 13 numbers into 512 buckets: norms are exact unless two coordinates collide.
    _close(np.median(projected / ((flat**2).sum(1) + 1)), 1.0, rtol=0.05, what="projected norms")


def check_influence_against_brute_force(tmp: str) -> None:
    """Influence (TracIn) of the rows on themselves: top proponents and self influence vs numpy on the projections."""
    pattern, _ = _data(os.path.join(tmp, "data"))
    linear, _ = _linear_model(tmp)
    out = _job(tmp, "proj", pattern, linear, "--wrt=weights", "--weight_output=projection", "--projection_dim=64")
    phi = out["weight_projection"].astype(np.float64)
    prefix = os.path.join(tmp, "out", "proj")
    influence = os.path.join(tmp, "out", "influence")
    code = main(["influence", "--runner=DirectRunner", f"--train={prefix}-*.parquet", f"--query={prefix}-*.parquet",
                 f"--output={influence}", "--keep_columns=id", "--top_k=1", "--kinds=proponent", "--self_influence"])
    assert code == 0, code
    top = read_arrays(influence)
    scores = phi @ phi.T
    for query, train in zip(top["id"], top["train__id"]):
        assert scores[query, train] >= scores[query].max() * (1 - 1e-5), (query, train)
    self_influence = read_arrays(influence + "_self_influence")
    order = np.argsort(self_influence["train__id"])
    _close(self_influence["self_influence"][order], np.diag(scores), rtol=1e-4, what="self influence")


def check_report_counts(tmp: str) -> None:
    """The report over an output with one rejected row: a page with its figures, and the counts the job wrote."""
    pattern, _ = _data(os.path.join(tmp, "data"), bad_row=7)
    quadratic, _ = _quadratic_model(tmp)
    _job(tmp, "r", pattern, quadratic, "--emit=norm")
    prefix = os.path.join(tmp, "out", "r")
    page = os.path.join(tmp, "page.html")
    assert main(["report", prefix, "--input", pattern, "--output", page]) == 0
    text = open(page, encoding="utf-8").read()
    assert 'data-count="1"' in text, "the page does not count the one rejected row"
    assert "data:image/png;base64," in text, "the page has no figure"


def check_no_pandas_imported() -> None:
    """A whole job runs in a fresh interpreter where pandas cannot be imported, even where it is installed.

    Keras and Beam import pandas when they find it and do without it otherwise, so
    the test venv hides it (a finder first on sys.meta_path that says it is not
    there, as in the runtime install) rather than looking for it in sys.modules.
    """
    with tempfile.TemporaryDirectory() as tmp:
        pattern, _ = _data(os.path.join(tmp, "data"))
        path, _ = _quadratic_model(tmp)
        script = (
            "import sys\n"
            "class NoPandas:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] == 'pandas': raise ModuleNotFoundError(\"No module named 'pandas'\", name=name)\n"
            "sys.meta_path.insert(0, NoPandas())\n"
            "from pipeline.run import run; from pipeline.reader import read_arrays\n"
            f"run(['--runner=DirectRunner', '--input={pattern}', '--output={tmp}/out/g', '--model={path}', '--quiet',"
            " '--wrt=both', '--weight_output=norm,projection', '--emit=predictions,norm'])\n"
            f"assert read_arrays('{tmp}/out/g')['weight_projection'].shape == ({ROWS}, 2048)\n"
        )
        done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]


CHECKS = [
    check_tensor_output_against_eager_tape,
    check_every_method_against_closed_forms,
    check_weight_norms_and_projections,
    check_influence_against_brute_force,
    check_report_counts,
]


def main_checks() -> int:
    failed = 0
    for check in [*CHECKS, check_no_pandas_imported]:
        started = time.monotonic()
        try:
            if check is check_no_pandas_imported:
                check()
            else:
                with tempfile.TemporaryDirectory() as tmp:
                    check(tmp)
            print(f"PASS {check.__name__} ({time.monotonic() - started:.1f} s)", flush=True)
        except Exception:
            failed += 1
            print(f"FAIL {check.__name__}", flush=True)
            traceback.print_exc()
    total = len(CHECKS) + 1
    print(f"{total - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main_checks())
