"""`smoothgrad`: the mean of the gradients over noisy samples (Smilkov et al. 2017)."""

from __future__ import annotations

from transforms.gradients.methods.noise import NoiseTunnel
from transforms.gradients.ops import Mean


class SmoothGrad(NoiseTunnel):
    name = "smoothgrad"
    statistic = Mean
