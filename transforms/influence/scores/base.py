"""What every influence score answers, one checkpoint at a time; checkpoints add up with their weights.

A score is an inner product between a query's features and a training row's
features, each made from that row's projected weight gradient φ (and, for
TRAK, the checkpoint's state: the inverse damped Gram matrix of the training
projections). With several checkpoints, the features are concatenated, the
query's scaled by the checkpoint's weight, so one matrix product per block of
training rows scores every checkpoint at once.
"""

from __future__ import annotations

import numpy as np


class Score:
    """One way of scoring a training row against a query. Subclasses override what differs."""

    name = ""
    needs_gram = False  # True: the training projections' Gram matrix is accumulated in a first pass
    has_self_influence = True
    dtype = np.float32  # the features' precision, and the scoring product's

    def train_features(self, phi: np.ndarray, state: np.ndarray | None) -> np.ndarray:
        """(rows, k) training projections -> (rows, k) features."""
        return phi

    def query_features(self, phi: np.ndarray, state: np.ndarray | None) -> np.ndarray:
        """(queries, k) query projections -> (queries, k) features."""
        return phi

    def self_influence(self, phi: np.ndarray, state: np.ndarray | None) -> np.ndarray:
        """(rows, k) training projections -> (rows,) each row's score against itself, in float64."""
        train = self.train_features(phi, state).astype(np.float64)
        return np.einsum("ij,ij->i", self.query_features(phi, state).astype(np.float64), train)
