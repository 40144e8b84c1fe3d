"""Settings the chosen target, method or wrt do not read are refused, and sizes that cannot fit are bounded.

Each answer (target, method, wrt, weight form) declares the settings it reads
(`settings`); a given setting that none of the chosen answers reads is one line,
exit 2, naming it and what would read it, before any row is read.
"""

from __future__ import annotations

import re

import keras
import numpy as np
import pytest

from conftest import save, write_parquet
from pipeline.run import main

ROWS = 8


@pytest.fixture
def job(tmp_path):
    keras.utils.set_random_seed(3)
    x = keras.Input((4,), name="x")
    model = keras.Model(x, keras.layers.Dense(3, activation="softmax")(keras.layers.Dense(5, activation="tanh")(x)))
    rng = np.random.default_rng(3)
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(ROWS), "x": rng.normal(size=(ROWS, 4)).astype(np.float32),
                                              "label": rng.integers(0, 3, ROWS)})
    return ["--runner=DirectRunner", "--input", str(tmp_path / "in/*.parquet"), "--model", save(model, tmp_path),
            "--output", str(tmp_path / "out/g"), "--feature_columns=x", "--keep_columns=id", "--quiet"]


@pytest.mark.parametrize(
    "extra, setting, reader",
    [
        (["--method=gradient", "--steps=10"], "--steps", "--method integrated_gradients"),
        (["--method=integrated_gradients", "--noise=0.3"], "--noise", "--method smoothgrad"),
        (["--method=smoothgrad", "--ig_rule=gauss_legendre"], "--ig_rule", "--method integrated_gradients"),
        (["--wrt=inputs", "--weight_output=full"], "--weight_output", "--wrt weights"),
        (["--wrt=weights", "--weight_output=norm", "--projection_dim=64"], "--projection_dim", "--weight_output projection"),
        (["--wrt=weights", "--allow_large_rows"], "--allow_large_rows", "--weight_output full"),
        (["--target=sum", "--class_column=label"], "--class_column", "--target class"),
        (["--target=predicted", "--k=2"], "--k", "--target top_k"),
        (["--target=sum", "--loss=mse", "--label_column=label"], "--loss", "--target loss"),
    ],
)
def test_a_setting_nothing_chosen_reads_is_refused_naming_it_and_its_reader(job, tmp_path, capsys, extra, setting, reader):
    assert main(job + extra) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert re.search(rf"{re.escape(setting)} is not used with .*; leave it out \(it is read by .*{re.escape(reader)}", err[0]), err
    assert not list(tmp_path.glob("out/**/*"))


def test_the_same_settings_run_where_something_reads_them(job, tmp_path):
    """The refusals above are about use, not the values: where a chosen answer reads them, they run."""
    assert main(job + ["--method=integrated_gradients", "--steps=4", "--ig_rule=gauss_legendre"]) == 0
    assert main(job + ["--target=top_k", "--k=2", "--method=smoothgrad", "--samples=2", "--seed=4"]) == 0
    # --samples with another method is SmoothGrad over it: it reads --noise and --seed then.
    assert main(job + ["--method=integrated_gradients", "--samples=2", "--noise=0.3", "--seed=4", "--steps=3"]) == 0
    assert main(job + ["--target=loss", "--loss=sparse_categorical_crossentropy", "--label_column=label", "--wrt=weights",
                       "--weight_output=norm,projection", "--projection_dim=64", "--projection_seed=2"]) == 0


@pytest.mark.parametrize("dim", [3_000_000_000, 2_000_000_000, 100_000_000])
def test_a_projection_whose_buffers_cannot_fit_the_memory_budget_is_one_line(job, capsys, dim):
    """3e9 overflowed int32 in TensorFlow (exit 1), 2e9 ran out of memory after 49 s: both are refused at once."""
    args = job + ["--target=loss", "--loss=sparse_categorical_crossentropy", "--label_column=label", "--wrt=weights",
                  "--weight_output=projection", f"--projection_dim={dim}"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--projection_dim {dim:,} needs" in err[0] and "--weight_memory_mb" in err[0], err
    # Within the budget it is the budget that decides: a bigger one admits the same k.
    if dim == 100_000_000:
        assert "more than --weight_memory_mb 1,024 MiB" in err[0]
