"""The quantile sketch against numpy: quantiles within its relative accuracy, merges exact, histograms add up."""

from __future__ import annotations

import json

import numpy as np
import pytest

from transforms.sketch import QuantileSketch

RNG = np.random.default_rng(3)
DATA = {
    "close": RNG.uniform(0.080, 0.087, 20_000),  # the demo's norms: fixed log bins gave two or three bars
    "wide": np.exp(RNG.normal(0, 6, 20_000)),  # many decades
    "signed": np.concatenate([RNG.normal(0, 1e-3, 10_000), [0.0] * 50]),  # attributions, zeros included
}


@pytest.mark.parametrize("name", DATA)
def test_quantiles_are_within_the_relative_accuracy_of_numpys(name):
    values = DATA[name]
    sketch = QuantileSketch().add(values)
    for q in (0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0):
        exact = np.quantile(values, q, method="lower")
        assert abs(sketch.quantile(q) - exact) <= 1e-3 * abs(exact) + 1e-12, (q, sketch.quantile(q), exact)
    assert sketch.count == len(values) and sketch.minimum == values.min() and sketch.maximum == values.max()


def test_partial_sketches_merge_into_the_sketch_of_all_values_and_survive_json():
    values = DATA["signed"]
    whole = QuantileSketch().add(values)
    parts = [QuantileSketch().add(p) for p in np.array_split(values, 7)]
    merged = QuantileSketch()
    for p in parts:
        merged.merge(QuantileSketch.from_json(json.loads(json.dumps(p.to_json()))))
    assert merged.to_json() == whole.to_json()


@pytest.mark.parametrize("name", DATA)
def test_histogram_bins_follow_the_data_and_add_up_to_the_rows(name):
    values = DATA[name]
    edges, counts, axis = QuantileSketch().add(values).histogram(bins=30)
    assert counts.sum() == len(values)
    assert axis == ("log" if name == "wide" else "linear")
    exact, _ = np.histogram(values, edges)
    # a value can land one bin off only when it lies within the accuracy of an edge
    near_an_edge = np.abs(values[:, None] - edges[None, 1:-1]) <= 2e-3 * np.abs(values[:, None]) + 1e-12
    assert np.abs(counts - exact).sum() <= 2 * near_an_edge.any(axis=1).sum()
    if name == "close":
        assert (counts > 0).sum() >= 25  # the values spread over the bars, not two or three of them


@pytest.mark.parametrize("values, most", [(DATA["close"], 0.05), (RNG.normal(0.0847, 0.0008, 3000), 0.15)])
def test_bins_narrower_than_a_few_buckets_show_no_comb(values, most):
    """Bins 1.5 buckets wide (the demo's norms) once held one or two whole buckets in turn: a comb of full and half
    bars. Buckets straddling an edge are split by range now, so the counts stay close to numpy's everywhere."""
    edges, counts, _ = QuantileSketch().add(values).histogram(bins=40)
    exact, _ = np.histogram(values, edges)
    assert counts.sum() == len(values) and np.abs(counts - exact).sum() <= most * len(values)
