"""Cosine: ⟨φ_q, φ_t⟩ / (‖φ_q‖ ‖φ_t‖), so rows with large gradients do not win every query.

A zero projection has cosine 0 with everything. A row's cosine with itself is
1, so cosine has no self influence worth writing.
"""

from __future__ import annotations

import numpy as np

from transforms.influence.scores.base import Score


def unit_rows(phi):
    """Each row divided by its L2 norm; zero rows stay zero."""
    norms = np.sqrt(np.einsum("ij,ij->i", phi, phi, dtype=np.float64))
    return (phi / np.where(norms > 0, norms, 1.0)[:, None]).astype(np.float32)


class Cosine(Score):
    name = "cosine"
    has_self_influence = False

    def train_features(self, phi, state):
        return unit_rows(phi)

    def query_features(self, phi, state):
        return unit_rows(phi)
