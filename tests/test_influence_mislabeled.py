"""The use influence exists for: self influence ranks mislabeled training rows high.

A small classifier is trained on blobs where 10% of the labels were flipped.
Each row's loss gradient with respect to the weights is projected, and the
influence job's self influence (TracIn: ‖φ‖²) should rank the flipped rows
first: ROC AUC at least 0.8.

Two sources of projections: the main job with `--wrt weights --weight_output
projection`, and an eager reference made here (one GradientTape per row, a
seeded Gaussian projection) written to the same contract.
"""

from __future__ import annotations

import glob

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf

from pipeline.run import main
from tests.conftest import save, write_parquet
from tests.projections import write_projections

ROWS, FEATURES, CLASSES, FLIPPED = 600, 8, 3, 0.1
DIM = 256


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """The probability that a positive row scores above a negative one (ties count half): Mann-Whitney U."""
    ranks = np.empty(len(scores))
    order = np.argsort(scores, kind="stable")
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores):  # average ranks over ties
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    n_pos, n_neg = positive.sum(), (~positive).sum()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def mislabeled_data(tmp_path):
    """(model path, x, labels, flipped mask): a classifier trained on labels of which 10% are wrong."""
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3.0, size=(CLASSES, FEATURES))
    truth = rng.integers(0, CLASSES, ROWS)
    x = (centers[truth] + rng.normal(size=(ROWS, FEATURES))).astype(np.float32)
    flipped = np.zeros(ROWS, bool)
    flipped[rng.choice(ROWS, int(ROWS * FLIPPED), replace=False)] = True
    labels = truth.copy()
    labels[flipped] = (truth[flipped] + rng.integers(1, CLASSES, flipped.sum())) % CLASSES
    model = keras.Sequential(
        [keras.Input((FEATURES,), name="x"), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(CLASSES, activation="softmax")]
    )
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy")  # the main job's --loss name
    model.fit(x, labels, epochs=20, batch_size=32, verbose=0)
    write_parquet(tmp_path / "data/part-0.parquet", {"id": np.arange(ROWS), "x": x, "label": labels.astype(np.int64)})
    return save(model, tmp_path), model, x, labels, flipped


def eager_projections(model, x, labels, seed=0) -> np.ndarray:
    """The article's recipe one row at a time, then a seeded Gaussian projection scaled by 1/√k (E⟨Pg,Pg'⟩ = ⟨g,g'⟩)."""
    loss = keras.losses.SparseCategoricalCrossentropy()
    rows = []
    for xi, yi in zip(x, labels):
        with tf.GradientTape() as tape:
            value = loss(yi[None], model(xi[None], training=False))
        rows.append(np.concatenate([g.numpy().ravel() for g in tape.gradient(value, model.trainable_variables)]))
    gradients = np.stack(rows)
    projection = np.random.default_rng(seed).normal(size=(gradients.shape[1], DIM)) / np.sqrt(DIM)
    return (gradients @ projection).astype(np.float32)


def self_influence_auc(tmp_path, train_glob, flipped) -> float:
    status = main(
        ["influence", "--runner=DirectRunner", "--train", str(train_glob), "--query", str(train_glob)]
        + ["--output", str(tmp_path / "influence/out"), "--self_influence", "--top_k", "3", "--keep_columns", "id"]
    )
    assert status == 0
    files = glob.glob(str(tmp_path / "influence/out_self_influence-?????-of-?????.parquet"))
    table = pa.concat_tables([pq.read_table(f) for f in files]).sort_by("train__id")
    assert table.column("train__id").to_pylist() == list(range(ROWS))
    return roc_auc(table.column("self_influence").to_numpy(), flipped)


def test_self_influence_of_eager_projections_finds_flipped_labels(tmp_path):
    """The influence half, on projections made here to the contract: the threshold is reachable."""
    _, model, x, labels, flipped = mislabeled_data(tmp_path)
    phi = eager_projections(model, x, labels)
    write_projections(tmp_path / "projections/p", {"id": np.arange(ROWS)}, phi, files=2, dim=DIM)
    auc = self_influence_auc(tmp_path, tmp_path / "projections/*.parquet", flipped)
    assert auc >= 0.8, auc


def test_self_influence_of_the_main_jobs_projections_finds_flipped_labels(tmp_path):
    """End to end: main job with weight projections, then influence; the README's worked example."""
    path, _, _, _, flipped = mislabeled_data(tmp_path)
    status = main(
        ["--runner=DirectRunner", "--input", str(tmp_path / "data/*.parquet"), "--output", str(tmp_path / "g/out")]
        + ["--model", path, "--feature_columns", "x", "--keep_columns", "id", "--target", "loss"]
        + ["--loss", "sparse_categorical_crossentropy", "--label_column", "label"]
        + ["--wrt", "weights", "--weight_output", "projection", "--projection_dim", str(DIM)]
    )
    assert status == 0
    auc = self_influence_auc(tmp_path, tmp_path / "g/out-?????-of-?????.parquet", flipped)
    print(f"self-influence ROC AUC for flipped labels: {auc:.3f}")  # the README's worked example quotes it
    assert auc >= 0.8, auc
