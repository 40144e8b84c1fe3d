"""With respect to what the gradient is taken: one class per answer, one file each; WRT lists them (CLI choices)."""

from transforms.gradients.registry import Registry
from transforms.gradients.wrt.base import ForwardFn, Wrt
from transforms.gradients.wrt.inputs import Inputs

WRT = Registry("wrt", [Inputs])

__all__ = ["WRT", "Wrt", "ForwardFn", "Inputs"]
