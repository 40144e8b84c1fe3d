"""Influence scores, pure numpy: one class per score in its own file, and the registry the CLI's choices come from.

Scores of one block of training rows against every query, over checkpoints c with weights w_c:

    score(q, t) = Σ_c w_c ⟨query_features_c(φ_q^c), train_features_c(φ_t^c)⟩

>>> phi = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
>>> tracin = SCORES["tracin"]
>>> (train_matrix(tracin, [phi], [None]) @ query_matrix(tracin, [phi], [None], [1.0]).T).tolist()
[[1.0, 0.0], [0.0, 4.0]]
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from transforms.influence.scores.base import Score
from transforms.influence.scores.cosine import Cosine
from transforms.influence.scores.tracin import TracIn
from transforms.influence.scores.trak import Trak, damped_inverse

SCORES: dict[str, Score] = {s.name: s for s in (TracIn(), Cosine(), Trak())}

__all__ = ["SCORES", "Score", "damped_inverse", "gram", "query_matrix", "train_matrix", "self_influence"]


def gram(phi: np.ndarray) -> np.ndarray:
    """ΦᵀΦ of one block, multiplied and summed in float64: a float32 product lost the small eigenvalues that a
    small damping leaves (TRAK's scores off by 3e-3 of their largest at λ = 0.001, and a positive definite matrix
    refused as singular at 1e-5), and a million rows add up without losing digits."""
    phi = np.asarray(phi, np.float64)
    return phi.T @ phi


def _concat(parts: list[np.ndarray]) -> np.ndarray:
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def query_matrix(score: Score, phis: Sequence[np.ndarray], states: Sequence, weights: Sequence[float]) -> np.ndarray:
    """(queries, Σk) in the score's dtype: each checkpoint's query features times its weight, side by side."""
    return _concat(
        [np.asarray(w * score.query_features(np.asarray(p, np.float32), s), score.dtype) for p, s, w in zip(phis, states, weights)]
    )


def train_matrix(score: Score, phis: Sequence[np.ndarray], states: Sequence) -> np.ndarray:
    """(rows, Σk) in the score's dtype: each checkpoint's training features side by side (no copy for one float32
    checkpoint of a float32 score)."""
    return _concat([np.asarray(score.train_features(np.asarray(p, np.float32), s), score.dtype) for p, s in zip(phis, states)])


def self_influence(score: Score, phis: Sequence[np.ndarray], states: Sequence, weights: Sequence[float]) -> np.ndarray:
    """(rows,) float64: Σ_c w_c × the row's score against itself at checkpoint c."""
    return sum(w * score.self_influence(np.asarray(p, np.float32), s) for p, s, w in zip(phis, states, weights))
