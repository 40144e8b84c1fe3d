"""`gradient_x_input`: the gradient times the input, element by element (a first-order attribution)."""

from __future__ import annotations

from transforms.gradients.methods.base import Attribution, InputAttribution


class GradientXInput(InputAttribution):
    name = "gradient_x_input"
    settings = ()

    def attribute(self, differentiate, inputs, extras, evaluate):
        gradients, forward = differentiate(inputs, extras)
        xs = self.differentiated(inputs)
        return Attribution([[g * x for g, x in zip(head, xs)] for head in gradients], forward)
