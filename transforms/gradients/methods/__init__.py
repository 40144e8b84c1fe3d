"""How the gradient is taken: one class per method, one file each; METHODS lists them (the CLI's choices)."""

from transforms.gradients.methods.base import Attribution, Differentiate, Evaluate, Method
from transforms.gradients.methods.gradient import Gradient
from transforms.gradients.methods.gradient_x_input import GradientXInput
from transforms.gradients.methods.integrated_gradients import IntegratedGradients
from transforms.gradients.methods.smoothgrad import SmoothGrad
from transforms.gradients.methods.squaregrad import SquareGrad
from transforms.gradients.methods.steps import RULES as IG_RULES
from transforms.gradients.methods.vargrad import VarGrad
from transforms.gradients.registry import Registry

METHODS = Registry("method", [Gradient, GradientXInput, IntegratedGradients, SmoothGrad, VarGrad, SquareGrad])

__all__ = [
    "METHODS",
    "IG_RULES",
    "Method",
    "Attribution",
    "Differentiate",
    "Evaluate",
    "Gradient",
    "GradientXInput",
    "IntegratedGradients",
    "SmoothGrad",
    "VarGrad",
    "SquareGrad",
]
