"""`gradient`: the plain gradient at the inputs (saliency)."""

from __future__ import annotations

from transforms.gradients.methods.base import Attribution, Method


class Gradient(Method):
    name = "gradient"

    def attribute(self, differentiate, inputs, extras, evaluate):
        gradients, forward = differentiate(inputs, extras)
        return Attribution(gradients, forward)
