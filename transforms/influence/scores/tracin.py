"""TracIn: the plain inner product ⟨φ_q, φ_t⟩ (Pruthi et al. 2020); self influence ‖φ_t‖²."""

from transforms.influence.scores.base import Score


class TracIn(Score):
    name = "tracin"
