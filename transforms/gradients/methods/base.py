"""The method's contract: how the gradients at some points become the attribution written."""

from __future__ import annotations

from typing import Callable, NamedTuple

import tensorflow as tf

from transforms.gradients.forward import Forward
from transforms.gradients.errors import SpecError
from transforms.gradients.outputs import DatasetInput, Output, RowInput
from transforms.gradients.registry import Answer
from transforms.gradients.settings import Setting

# (points, row extras) -> (per head, per differentiated tensor: per-example gradients; the forward pass at the points).
# The engine binds the target and the wrt answer into it. Points have the batch's shape, or a multiple of its rows
# (extras then tiled the same way): a method that evaluates many points per row calls it on chunks of them.
Differentiate = Callable[[list[tf.Tensor], dict[str, tf.Tensor]], tuple[list[list[tf.Tensor]], Forward]]
# (points, row extras) -> the forward pass at the points, the target's scalars set; no gradient (IG's f(baseline)).
Evaluate = Callable[[list[tf.Tensor], dict[str, tf.Tensor]], Forward]
# Points per row evaluated in one call of `differentiate` when the spec sets no `chunk`: about this many rows.
CHUNK_ROWS = 1024

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

    @property
    def row_inputs(self) -> list[RowInput]:
        """Per-row inputs the method needs beyond the model's (a baseline column, the row's noise seed)."""
        return []

    @property
    def dataset_inputs(self) -> list[DatasetInput]:
        """Values over the whole dataset the method needs (the mean input, for a `mean` baseline)."""
        return []

    def declare(self, heads: list[str | None]) -> list[Output]:
        return []

    def attribute(
        self, differentiate: Differentiate, inputs: list[tf.Tensor], extras: dict[str, tf.Tensor], evaluate: Evaluate
    ) -> Attribution:
        raise NotImplementedError


class InputAttribution(Method):
    """A method that combines gradients with the inputs themselves (paths, noise): it needs `wrt` inputs.

    Its gradients come per floating-point model input, in the model's order
    (the inputs `wrt` inputs differentiates); the others stay as they are.
    """

    declares = (  # points per model call, for a method that evaluates several per row
        Setting("chunk", int, None, "Steps or samples per row in one model call (default: about 1024 rows).", minimum=1),
    )

    def __init__(self, model, spec):
        super().__init__(model, spec)
        self.floating = [i for i, t in enumerate(model.inputs) if t.dtype.is_floating]

    @classmethod
    def check_spec(cls, spec):
        if spec.wrt != "inputs":
            raise SpecError("{method} %s attributes the inputs: it needs {wrt} inputs, not {value!r}" % cls.name,
                            value=spec.wrt)

    def differentiated(self, inputs: list[tf.Tensor]) -> list[tf.Tensor]:
        """The inputs that have gradients, as float32."""
        return [tf.cast(inputs[i], tf.float32) for i in self.floating]

    def chunk(self, inputs: list[tf.Tensor], points: int) -> int:
        """Points per row per model call: the spec's `chunk`, else about CHUNK_ROWS rows; never more than `points`."""
        batch = int(inputs[0].shape[0])
        return max(1, min(points, self.spec.chunk or CHUNK_ROWS // batch))


def fold_chunks(count: int, chunk: int, step: Callable, state):
    """`state = step(first, size, state)` over points 0..count-1, `chunk` at a time, inside the compiled function.

    Full chunks run in one tf.while_loop (one traced body whatever the count; one
    iteration at a time, so memory holds one chunk), the remainder as one shorter
    chunk after it. `first` is a scalar int32 tensor, `size` a Python int.
    """
    full, rest = divmod(count, chunk)
    if full == 1:
        state = step(tf.constant(0), chunk, state)
    elif full > 1:
        _, state = tf.while_loop(
            lambda i, _: i < full,
            lambda i, s: (i + 1, step(i * chunk, chunk, s)),
            (tf.constant(0), state),
            parallel_iterations=1,
        )
    if rest:
        state = step(tf.constant(full * chunk), rest, state)
    return state
