"""The wrt contract: with respect to what the target is differentiated, and in what form it is written."""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from transforms.gradients.forward import Forward
from transforms.gradients.model_function import ModelFunction
from transforms.gradients.outputs import Output
from transforms.gradients.registry import Answer
from transforms.gradients.targets.base import Target

# (points, row extras) -> the forward pass at the points, the target's scalars set.
ForwardFn = Callable[[list[tf.Tensor], dict[str, tf.Tensor]], Forward]

class Wrt(Answer):
    """With respect to what: the tensors differentiated, and the columns their per-example gradients become.

    A subclass sets `name` (its registry key, the `wrt` spec value) and
    implements the three steps. `differentiate` runs the forward pass itself
    (so it can split a batch into micro-batches, or vectorize per example) and
    returns per head a list of per-example gradients. `columns` turns the
    method's combined gradients (per head) into the declared columns: it
    applies the spec's per-example `clip_norm` first, then any reduction (a
    norm, a projection).
    """

    def __init__(self, model: ModelFunction, spec, target: Target):
        super().__init__(model, spec)
        self.target = target
        self.unconnected: set[tuple[str, str | None]] = set()  # (tensor, head) pairs written as zeros

    @classmethod
    def function(cls, model: ModelFunction, spec) -> ModelFunction:
        """The function the target and method see: the model itself; a layer's answer, the model split there."""
        return model

    def attributed_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The per-row shape written for an attributed tensor of `shape`; the engine sets the method's here."""
        return tuple(shape)

    def enter(self, inputs: list[tf.Tensor]) -> list[tf.Tensor]:
        """The model's inputs -> the points of `function` (the same, unless it is split at a layer)."""
        return inputs

    def declare(self) -> list[Output]:
        raise NotImplementedError

    def differentiate(
        self, forward_fn: ForwardFn, points: list[tf.Tensor], extras: dict[str, tf.Tensor]
    ) -> tuple[list[list[tf.Tensor]], Forward]:
        raise NotImplementedError

    def columns(self, gradients: list[list[tf.Tensor]]) -> dict[str, tf.Tensor]:
        raise NotImplementedError

    def provenance(self) -> dict | None:
        """What a later job must find equal to compare two outputs (the variables, the projection); None for inputs."""
        return None
