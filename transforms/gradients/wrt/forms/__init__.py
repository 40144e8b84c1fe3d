"""What a row's weight gradient is written as: one class per form, one file each; FORMS lists them (CLI choices)."""

from transforms.gradients.registry import Registry
from transforms.gradients.wrt.forms.base import WeightForm
from transforms.gradients.wrt.forms.full import LARGE_ROW, Full
from transforms.gradients.wrt.forms.norm import Norm
from transforms.gradients.wrt.forms.projection import CONSTRUCTION, DTYPES, Projection

FORMS = Registry("weight_output", [Norm, Projection, Full])

__all__ = ["FORMS", "WeightForm", "Norm", "Projection", "Full", "CONSTRUCTION", "DTYPES", "LARGE_ROW"]
