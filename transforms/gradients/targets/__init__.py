"""Of what the gradient is taken: one class per answer, one file each; TARGETS lists them (the CLI's choices)."""

from transforms.gradients.registry import Registry
from transforms.gradients.targets.base import ClassScore, Target
from transforms.gradients.targets.class_column import ClassColumn
from transforms.gradients.targets.loss import Loss
from transforms.gradients.targets.per_output import PerOutput
from transforms.gradients.targets.predicted import Predicted
from transforms.gradients.targets.sum import Sum
from transforms.gradients.targets.top_k import TopK

TARGETS = Registry("target", [Sum, PerOutput, Loss, ClassColumn, Predicted, TopK])

__all__ = ["TARGETS", "Target", "ClassScore", "Sum", "PerOutput", "Loss", "ClassColumn", "Predicted", "TopK"]
