"""The method's contract: how the gradients at some points become the attribution written."""

from __future__ import annotations

from typing import Callable, NamedTuple

import tensorflow as tf

from transforms.gradients.forward import Forward
from transforms.gradients.outputs import Output
from transforms.gradients.registry import Answer

# (points, row extras) -> (per head, per differentiated tensor: per-example gradients; the forward pass at the points).
# The engine binds the target and the wrt answer into it. Points have the batch's shape, or a multiple of its rows
# (extras then tiled the same way): a method that evaluates many points per row calls it on chunks of them.
Differentiate = Callable[[list[tf.Tensor], dict[str, tf.Tensor]], tuple[list[list[tf.Tensor]], Forward]]

class Attribution(NamedTuple):
    """What a method returns for one batch."""

    gradients: list[list[tf.Tensor]]  # per head, per differentiated tensor, [batch, ...]
    # The forward pass at the inputs themselves, where the method made one (else the engine makes it).
    forward: Forward | None
    columns: dict[str, tf.Tensor] = {}  # the method's own declared outputs, by name

class Method(Answer):
    """How: turns one batch of inputs into the points where the target is differentiated, and combines the results.

    A subclass sets `name` (its registry key, the `method` spec value) and
    implements `attribute`. It declares any columns of its own (a completeness
    gap) in `declare`, and returns them in `Attribution.columns`. A wrapper
    (noise samples) holds another method and calls its `attribute` on noisy
    inputs. Memory is the method's to bound: points beyond the batch are
    evaluated in chunks inside the one compiled function.
    """

    def declare(self, heads: list[str | None]) -> list[Output]:
        return []

    def attribute(
        self, differentiate: Differentiate, inputs: list[tf.Tensor], extras: dict[str, tf.Tensor]
    ) -> Attribution:
        raise NotImplementedError
