"""Of what the gradient is taken: one class per answer, one file each; TARGETS lists them (the CLI's choices)."""

from transforms.gradients.registry import Registry
from transforms.gradients.targets.base import Target
from transforms.gradients.targets.loss import Loss
from transforms.gradients.targets.per_output import PerOutput
from transforms.gradients.targets.sum import Sum

TARGETS = Registry("target", [Sum, PerOutput, Loss])

__all__ = ["TARGETS", "Target", "Sum", "PerOutput", "Loss"]
