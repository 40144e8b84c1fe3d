"""TRAK: φ_qᵀ (ΦᵀΦ + λI)⁻¹ φ_t, with Φ every training row's projection (Park et al. 2023).

The inverse is applied to the queries once, so training rows stream through
the same inner product as TracIn. Self influence φ_tᵀ (ΦᵀΦ + λI)⁻¹ φ_t is the
row's leverage score: high for rows unlike the others.
"""

from __future__ import annotations

import numpy as np

from transforms.influence.scores.base import Score


class Trak(Score):
    name = "trak"
    needs_gram = True

    def query_features(self, phi, state):
        return (phi.astype(np.float64) @ state).astype(np.float32)  # state is symmetric


def damped_inverse(gram: np.ndarray, damping: float) -> np.ndarray:
    """(G + λI)⁻¹ by Cholesky; ValueError when G + λI is not positive definite."""
    damped = gram + damping * np.eye(len(gram))
    try:
        lower_inv = np.linalg.inv(np.linalg.cholesky(damped))
    except np.linalg.LinAlgError as err:
        raise ValueError(f"the Gram matrix plus damping {damping} is singular ({err})") from err
    return lower_inv.T @ lower_inv
