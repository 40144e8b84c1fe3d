"""`vargrad`: the variance of the gradients over noisy samples (Adebayo et al. 2018)."""

from __future__ import annotations

from transforms.gradients.methods.noise import NoiseTunnel
from transforms.gradients.ops import Variance


class VarGrad(NoiseTunnel):
    name = "vargrad"
    statistic = Variance
