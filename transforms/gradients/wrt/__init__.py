"""With respect to what the gradient is taken: one class per answer, one file each; WRT lists them (CLI choices)."""

from transforms.gradients.registry import Registry
from transforms.gradients.wrt.base import ForwardFn, Wrt
from transforms.gradients.wrt.both import Both
from transforms.gradients.wrt.forms import FORMS
from transforms.gradients.wrt.inputs import Inputs
from transforms.gradients.wrt.layer import Layer
from transforms.gradients.wrt.weights import Weights

WRT = Registry("wrt", [Inputs, Weights, Both, Layer])

__all__ = ["WRT", "FORMS", "Wrt", "ForwardFn", "Inputs", "Weights", "Both", "Layer"]
