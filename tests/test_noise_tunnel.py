"""NoiseTunnel wraps any method: `samples` given to a non-noise method is SmoothGrad over it (captum's NoiseTunnel(IG))."""

import re

import keras
import numpy as np
import pyarrow.parquet as pq
import pytest
import tensorflow as tf

from tests.conftest import assert_close
from transforms.gradients import GradientEngine, GradientSpec, SpecError, from_keras
from transforms.gradients.methods.steps import alphas_and_weights
from transforms.gradients.ops import seeded_normal

RNG = np.random.default_rng(7)
ROWS = 5
X = RNG.normal(size=(ROWS, 3)).astype(np.float32)
SEEDS = np.arange(200, 200 + ROWS, dtype=np.int64)


def _classifier():
    keras.utils.set_random_seed(4)
    x = keras.Input((3,), name="x")
    return keras.Model(x, keras.layers.Dense(4)(keras.layers.Dense(8, activation="tanh")(x)))


def _run(model, spec):
    return GradientEngine(from_keras(model), spec, batch_size=ROWS)([X], [SEEDS])


def _eager_ig(model, x, rule, steps):
    """IG from a zero baseline of f = sum(outputs), by the rule's alphas and weights, and its completeness gap."""
    alphas, weights = alphas_and_weights(rule, steps)
    total = np.zeros_like(x, dtype=np.float64)
    for alpha, weight in zip(alphas, weights):
        point = tf.constant(alpha * x)
        with tf.GradientTape() as tape:
            tape.watch(point)
            value = tf.reduce_sum(model(point, training=False))
        total += weight * tape.gradient(value, point).numpy()
    attribution = total * x
    f = lambda v: tf.reduce_sum(model(tf.constant(v, tf.float32), training=False), axis=1).numpy()
    delta = attribution.sum(axis=1) - (f(x) - f(np.zeros_like(x)))
    return attribution, delta


@pytest.mark.parametrize("rule", ["riemann_trapezoid", "gauss_legendre"])
def test_smoothgrad_over_integrated_gradients_is_the_mean_of_eager_ig_at_the_seeded_noisy_points(rule):
    model = _classifier()
    samples, noise, seed, steps = 4, 0.3, 5, 6
    spec = GradientSpec(method="integrated_gradients", ig_rule=rule, steps=steps, samples=samples, noise=noise,
                        seed=seed, chunk=3)
    result = _run(model, spec)
    scale = noise * (X.max(axis=1) - X.min(axis=1))[:, None]
    attributions, deltas = [], []
    for s in range(samples):
        z = seeded_normal(seed, 0, tf.constant(SEEDS), tf.constant([s]), (3,)).numpy()
        a, d = _eager_ig(model, (X + scale * z).astype(np.float32), rule, steps)
        attributions.append(a)
        deltas.append(d)
    assert_close(result["gradient"], np.mean(attributions, axis=0), rtol=1e-4, atol=1e-5)
    assert "ig_delta" in result
    assert_close(result["ig_delta"], np.mean(deltas, axis=0), rtol=1e-3, atol=1e-5)


def test_gradient_with_samples_is_smoothgrad_to_the_byte():
    model = _classifier()
    settings = dict(samples=5, noise=0.4, seed=3)
    wrapped = _run(model, GradientSpec(method="gradient", **settings))
    smooth = _run(model, GradientSpec(method="smoothgrad", **settings))
    assert wrapped.keys() == smooth.keys()
    for name in smooth:
        assert wrapped[name].tobytes() == smooth[name].tobytes(), name


def test_samples_is_recorded_as_used():
    assert GradientSpec(method="smoothgrad").samples == 50
    assert GradientSpec(method="gradient").samples is None
    assert '"samples": null' in GradientSpec(method="integrated_gradients").to_json()
    assert GradientSpec(method="smoothgrad") == GradientSpec(method="smoothgrad", samples=50)


def test_samples_reads_noise_and_seed_and_without_it_they_are_refused():
    for method in ("gradient", "gradient_x_input", "integrated_gradients"):
        GradientSpec(method=method, samples=3).check_used(["samples", "noise", "seed", "chunk"])
        for setting in ("noise", "seed"):
            with pytest.raises(SpecError, match=rf"^{setting} is not used with .*method {method}.*or samples with any method\)$"):
                GradientSpec(method=method).check_used([setting])


def test_samples_with_wrt_weights_is_refused():
    with pytest.raises(SpecError, match=r"^samples with method gradient is SmoothGrad over it.*needs wrt inputs"):
        GradientSpec(method="gradient", samples=3, wrt="weights")
    with pytest.raises(SpecError, match=r"^samples must be 1 or more, not 0$"):
        GradientSpec(method="integrated_gradients", samples=0)


def test_cli_smoothgrad_over_integrated_gradients_writes_the_gradient_and_ig_delta(tmp_path):
    from pipeline.run import main
    from tests.conftest import save, write_parquet

    model = _classifier()
    write_parquet(tmp_path / "in/a.parquet", {"id": np.arange(ROWS), "x": X})
    argv = ["--runner=DirectRunner", "--input", str(tmp_path / "in/*.parquet"), "--model", save(model, tmp_path),
            "--output", str(tmp_path / "out/g"), "--feature_columns=x", "--keep_columns=id", "--quiet",
            "--method", "integrated_gradients", "--samples", "3", "--noise", "0.1", "--steps", "4"]
    assert main(argv) == 0
    table = pq.read_table(sorted(tmp_path.glob("out/**/*.parquet"))[0])
    assert {"gradient", "ig_delta"} <= set(table.column_names)
    assert table.num_rows == ROWS
    assert np.isfinite(np.asarray(table.column("ig_delta"))).all()
