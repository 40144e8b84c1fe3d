"""`full`: each row's gradient of every selected variable, with the variable's shape (small models)."""

from __future__ import annotations

from transforms.gradients.errors import SpecError
from transforms.gradients.outputs import Output
from transforms.gradients.settings import Setting
from transforms.gradients.wrt.forms.base import WeightForm

LARGE_ROW = 1_000_000  # numbers per row beyond which `full` needs allow_large_rows


class Full(WeightForm):
    name = "full"
    declares = (Setting("allow_large_rows", bool, False, f"Allow {{weight_output}} full beyond {LARGE_ROW:,} numbers per row."),)

    def __init__(self, model, spec, selection):
        super().__init__(model, spec, selection)
        if selection.parameters > LARGE_ROW and not spec.allow_large_rows:
            raise SpecError(
                "{weight_output} full would write {count:,} numbers per row (more than {limit:,}); select fewer "
                "variables with {weights}, write a norm or projection instead, or pass {allow_large_rows}",
                count=selection.parameters,
                limit=LARGE_ROW,
            )

    def declare(self):
        return [
            Output(f"weight_gradient__{w.path}", "weight_gradient", tuple(w.variable.shape))
            for w in self.selection.weights
        ]

    def compute(self, gradients, prepared):
        return list(gradients)
