"""The target's contract: of what the gradient is taken."""

from __future__ import annotations

from typing import ClassVar

import tensorflow as tf

from transforms.gradients.errors import SpecError
from transforms.gradients.forward import Forward
from transforms.gradients.outputs import Output, RowInput
from transforms.gradients.registry import Answer
from transforms.gradients.settings import Setting

class Target(Answer):
    """Of what: per example, one scalar per head, read from a forward pass.

    A subclass sets `name` (its registry key, the `target` spec value) and
    implements `__call__`. It may name several heads (one gradient column each,
    suffixed `__<head>`), ask for row inputs beyond the model's (a class index
    column), and declare columns of its own (the class indices of top k),
    computed by `columns`. Each example's scalar must depend on that example's
    inputs only: one backward pass over the batch sum then gives every
    example's own gradient.
    """

    takes_output_name: ClassVar[bool] = True  # `output_name` narrows the model's outputs to that one
    declares = (Setting("output_name", str, None, "The model output the target reads (a multi-output model's head)."),)
    # Whether `choose` picks something (a class) from the outputs at the inputs, held fixed at every point a
    # method evaluates (the path of integrated gradients, noisy samples): the engine then makes a forward pass
    # at the inputs first and adds what `choose` returns to the row's extras.
    chooses: ClassVar[bool] = False

    def __init__(self, model, spec):
        super().__init__(model, spec)
        names = model.output_names
        if spec.output_name is not None and spec.output_name not in names:
            raise SpecError(
                "{output_name} {value!r} is not an output of the model; its outputs are: {outputs}",
                value=spec.output_name,
                outputs=", ".join(names),
            )
        self.selected = [names.index(spec.output_name)] if spec.output_name else list(range(len(names)))

    @classmethod
    def check_spec(cls, spec):
        if spec.output_name is not None and not cls.takes_output_name:
            raise SpecError("{target} %s does not take {output_name}" % cls.name)

    def choose(self, outputs: list[tf.Tensor]) -> dict[str, tf.Tensor]:
        """Row extras chosen from the model's outputs at the inputs (the predicted class); see `chooses`."""
        return {}

    @property
    def heads(self) -> list[str | None]:
        """One entry per scalar per row; None: a single scalar, columns get no suffix."""
        return [None]

    @property
    def row_inputs(self) -> list[RowInput]:
        return []

    def declare(self) -> list[Output]:
        return []

    def columns(self, forward: Forward) -> dict[str, tf.Tensor]:
        return {}

    def __call__(self, forward: Forward) -> list[tf.Tensor]:
        """One float32 [batch] tensor per head."""
        raise NotImplementedError

    def describe(self, head: str | None) -> str:
        """What one head differentiates, in words, for error messages."""
        raise NotImplementedError


class ClassScore(Target):
    """Of one class's score in a classifier's output of shape (classes,): which class, a subclass says."""

    def __init__(self, model, spec):
        super().__init__(model, spec)
        if len(self.selected) != 1:
            raise SpecError(
                "{target} %s needs one output; this model has {count} ({outputs}): pick one with {output_name}"
                % self.name,
                count=len(model.outputs),
                outputs=", ".join(model.output_names),
            )
        self.output = model.outputs[self.selected[0]]
        if len(self.output.shape) != 1:
            raise SpecError(
                "{target} %s needs an output of shape (classes,); output {output!r} has shape {shape}" % self.name,
                output=self.output.name,
                shape=self.output.shape,
            )
        self.classes = self.output.shape[0]
        if self.classes is not None and self.classes < 2:  # the one class of argmax, of a class column, of top k
            raise SpecError(
                "{target} %s needs a classifier's scores, 2 or more; output {output!r} has one number (a sigmoid's "
                "probability?): {target} sum takes its gradient" % self.name,
                output=self.output.name,
            )

    def scores(self, outputs: list[tf.Tensor]) -> tf.Tensor:
        """[batch, classes] float32."""
        return tf.cast(outputs[self.selected[0]], tf.float32)

    def score(self, forward: Forward, classes: tf.Tensor) -> tf.Tensor:
        """[batch]: each row's score of its class (indices clipped into range: the caller rejects rows outside)."""
        classes = tf.clip_by_value(tf.cast(classes, tf.int32), 0, self.classes - 1)
        return tf.gather(self.scores(forward.outputs), classes, axis=1, batch_dims=1)
