"""`squaregrad`: the mean of the squared gradients over noisy samples (Hooker et al. 2019)."""

from __future__ import annotations

from transforms.gradients.methods.noise import NoiseTunnel
from transforms.gradients.ops import MeanOfSquares


class SquareGrad(NoiseTunnel):
    name = "squaregrad"
    statistic = MeanOfSquares
