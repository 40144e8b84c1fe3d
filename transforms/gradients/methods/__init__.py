"""How the gradient is taken: one class per method, one file each; METHODS lists them (the CLI's choices)."""

from transforms.gradients.methods.base import Attribution, Differentiate, Method
from transforms.gradients.methods.gradient import Gradient
from transforms.gradients.registry import Registry

METHODS = Registry("method", [Gradient])

__all__ = ["METHODS", "Method", "Attribution", "Differentiate", "Gradient"]
