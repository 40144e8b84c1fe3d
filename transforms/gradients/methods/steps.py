"""The step rules of integrated gradients: where on the path from baseline to input, and with what weight.

As captum's `approximation_methods`: each rule gives `steps` points alpha in [0, 1]
and weights summing to 1, so that sum(w * f(alpha)) approximates the integral of
f over [0, 1]. Riemann rules are exact for a constant f (a linear model), the
trapezoid for a linear f, Gauss-Legendre for a polynomial of degree 2 * steps - 1.
"""

from __future__ import annotations

import numpy as np

from transforms.gradients.errors import SpecError


def _riemann(offset: float):
    def rule(steps: int) -> tuple[np.ndarray, np.ndarray]:
        return (np.arange(steps) + offset) / steps, np.full(steps, 1.0 / steps)

    return rule


def _trapezoid(steps: int) -> tuple[np.ndarray, np.ndarray]:
    if steps == 1:  # one point cannot hold both ends: the midpoint
        return np.array([0.5]), np.array([1.0])
    alphas = np.linspace(0.0, 1.0, steps)
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[[0, -1]] /= 2
    return alphas, weights


def _gauss_legendre(steps: int) -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.legendre.leggauss(steps)  # on [-1, 1]; weights sum to 2
    return (nodes + 1) / 2, weights / 2


RULES = {
    "riemann_left": _riemann(0.0),
    "riemann_right": _riemann(1.0),
    "riemann_middle": _riemann(0.5),
    "riemann_trapezoid": _trapezoid,
    "gauss_legendre": _gauss_legendre,
}


def check_rule(name: str) -> None:
    if name not in RULES:
        raise SpecError("{ig_rule} must be one of {choices}, not {value!r}", choices=", ".join(RULES), value=name)


def alphas_and_weights(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 arrays of `steps` path positions in [0, 1] and their weights (summing to 1)."""
    check_rule(rule)
    alphas, weights = RULES[rule](steps)
    return alphas.astype(np.float32), weights.astype(np.float32)
