"""Which trainable variables are differentiated: all of them, some layers by name, or a regex over variable paths."""

from __future__ import annotations

import re
from typing import Sequence

from transforms.gradients.errors import SpecError
from transforms.gradients.model_function import Weight


class Selection:
    """The selected variables, in the model's order, and what a later job needs to compare outputs."""

    def __init__(self, weights: Sequence[Weight]):
        self.weights = list(weights)
        self.paths = [w.path for w in self.weights]
        self.layers = list(dict.fromkeys(w.layer for w in self.weights))
        self.sizes = [int(w.variable.shape.num_elements()) for w in self.weights]
        self.parameters = sum(self.sizes)


def select(weights: Sequence[Weight], choice: str | None) -> Selection:
    """`choice`: None (every trainable variable), layer names (comma-separated), or else a regular expression
    searched in each variable's path (`dense_2/.*`)."""
    if not weights:
        raise SpecError("the model has no trainable variable, so no weight gradient exists")
    if choice is None:
        return Selection(weights)
    layers = list(dict.fromkeys(w.layer for w in weights))
    names = [n.strip() for n in choice.split(",") if n.strip()]
    if names and all(n in layers for n in names):
        chosen = [w for w in weights if w.layer in names]
    else:
        try:
            pattern = re.compile(choice)
        except re.error as err:
            raise SpecError(
                "{weights} {value!r} is neither layer names ({layers}) nor a valid regular expression ({err})",
                value=choice,
                layers=", ".join(layers),
                err=str(err),
            ) from err
        chosen = [w for w in weights if pattern.search(w.path)]
    if not chosen:
        raise SpecError(
            "{weights} {value!r} matches no trainable variable; give layer names ({layers}) "
            "or a regular expression over variable paths ({paths})",
            value=choice,
            layers=", ".join(layers),
            paths=", ".join(w.path for w in weights[:6]) + (", ..." if len(weights) > 6 else ""),
        )
    return Selection(chosen)
