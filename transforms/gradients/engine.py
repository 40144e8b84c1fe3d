"""The engine: a model and a spec -> one compiled function, called once per padded batch of numpy arrays."""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import tensorflow as tf

from transforms.gradients.errors import SpecError
from transforms.gradients.forward import Forward
from transforms.gradients.losses import PerExampleLoss
from transforms.gradients.methods import build_method
from transforms.gradients.model_function import ModelFunction
from transforms.gradients.ops import example_norm
from transforms.gradients.outputs import DatasetInput, Output, RowInput
from transforms.gradients.spec import GradientSpec
from transforms.gradients.targets import TARGETS
from transforms.gradients.wrt import WRT


class GradientEngine:
    """One compiled gradient function for a model, a spec and a batch size.

    The spec's target, method and wrt answers are built here and composed in
    `_compute`: the method asks for gradients at its points, the wrt answer
    runs the forward pass (model, then target) and differentiates it, and
    turns the combined gradients into columns. `outputs` declares every value
    returned, by name, before any data.

    Call it with numpy arrays of exactly `batch_size` rows (pad the last batch:
    a fixed signature means the function is traced once and never again).

    >>> import keras, numpy as np
    >>> from transforms.gradients import from_keras
    >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    >>> engine = GradientEngine(from_keras(model), GradientSpec(), batch_size=2)
    >>> engine([np.ones((2, 3), np.float32)])["gradient"].shape
    (2, 3)
    """

    def __init__(self, model: ModelFunction, spec: GradientSpec, batch_size: int, device: str | None = None):
        if batch_size < 1:
            raise SpecError("{batch_size} must be 1 or more, not {value}", value=batch_size)
        self.model = model
        self.spec = spec
        self.batch_size = batch_size
        self.device = device
        self.loss = PerExampleLoss(spec.loss, model, spec.output_name) if spec.loss else None
        # What the target and method see: the model, or (wrt a layer) the model from that layer's output on.
        self.function = WRT[spec.wrt].function(model, spec)
        self.target = TARGETS[spec.target](self.function, spec)
        self.method = build_method(self.function, spec)
        self.wrt = WRT[spec.wrt](self.function, spec, self.target)
        self.wrt.attributed_shape = self.method.attributed_shape  # what the method writes per attributed tensor
        self.row_inputs: list[RowInput] = (
            ([self.loss.label] if self.loss else []) + self.target.row_inputs + self.method.row_inputs
        )
        # Values over the whole dataset (a mean baseline): passed once per batch, without a batch dimension.
        self.dataset_inputs: list[DatasetInput] = self.method.dataset_inputs
        self.outputs: list[Output] = self._declare()
        signature = [tf.TensorSpec((batch_size, *t.shape), t.dtype, name=t.name) for t in model.inputs]
        signature += [tf.TensorSpec((batch_size, *r.shape), r.dtype, name=r.name) for r in self.row_inputs]
        signature += [tf.TensorSpec(d.shape, tf.float32, name=d.name) for d in self.dataset_inputs]
        self._signature = signature
        self._shapes = [tuple(s.shape) for s in signature]  # checked on every call: built once
        # autograph off: the Python loops here run once, at trace time, by design.
        self._fn = tf.function(self._compute, input_signature=signature, jit_compile=spec.jit_compile, autograph=False)
        self._concrete = None  # called directly: skips tf.function's per-call signature lookup

    @property
    def unconnected(self) -> set:
        """(tensor, head) pairs the target does not depend on, written as zeros; known once traced."""
        return self.wrt.unconnected

    def _declare(self) -> list[Output]:
        gradients = self.wrt.declare()
        outputs = gradients + self.method.declare(self.target.heads)
        if "predictions" in self.spec.emit:
            outputs += [Output(f"prediction__{o.name}", "prediction", o.shape) for o in self.model.outputs]
        if self.loss is not None:  # always computed: a row whose loss is not finite is rejected, emitted or not
            outputs.append(Output("loss", "loss", (), write="loss" in self.spec.emit))
        outputs += self.target.declare()
        if "norm" in self.spec.emit:
            outputs += [Output(f"norm__{g.name}", "norm", (), of=g.name) for g in gradients if g.kind == "gradient"]
        return outputs

    def trace(self) -> "GradientEngine":
        """Trace now: finds unconnected inputs (and fails in `error` mode) before any data."""
        if self._concrete is None:
            with tf.device(self.device) if self.device else contextlib.nullcontext():
                self._concrete = self._fn.get_concrete_function()
        return self

    def _forward(self, points: list[tf.Tensor], extras: dict[str, tf.Tensor], function=None) -> Forward:
        forward = Forward((function or self.function).call(points), extras, self.loss)
        forward.scalars = self.target(forward)
        return forward

    def _differentiate(self, points, extras):
        return self.wrt.differentiate(self._forward, points, extras)

    def _compute(self, *args):
        n = len(self.model.inputs)
        inputs = self.wrt.enter(list(args[:n]))  # the points the method starts from
        extras = {r.name: x for r, x in zip(self.row_inputs, args[n : n + len(self.row_inputs)])}
        for d, x in zip(self.dataset_inputs, args[n + len(self.row_inputs) :]):  # the same for every row
            extras[d.name] = tf.broadcast_to(x[None], (self.batch_size, *d.shape))
        if self.target.chooses:  # e.g. the predicted class, chosen at the inputs and fixed for every point
            extras.update(self.target.choose(self.function.call(inputs)))
        attribution = self.method.attribute(self._differentiate, inputs, extras, self._forward)
        forward = attribution.forward or self._forward(inputs, extras)
        values = self.wrt.columns(attribution.gradients)
        values.update(attribution.columns)
        if "predictions" in self.spec.emit:
            for t, o in zip(self.model.outputs, forward.outputs):
                values[f"prediction__{t.name}"] = tf.cast(o, tf.float32)
        if self.loss is not None:
            values["loss"] = forward.loss
        values.update(self.target.columns(forward))
        for o in self.outputs:
            if o.kind == "norm":
                values[o.name] = example_norm([values[o.of]])
        return {o.name: values[o.name] for o in self.outputs}

    def __call__(
        self, inputs: Sequence[np.ndarray], extras: Sequence[np.ndarray] = (), dataset: Sequence[np.ndarray] = ()
    ) -> dict[str, np.ndarray]:
        """One full batch -> every declared output by name, [batch_size, *shape] numpy arrays, read-only.

        `extras` are the row inputs in `row_inputs` order (the label); `dataset` the
        values in `dataset_inputs` order (a mean input), computed over the whole data.
        """
        self.trace()
        if isinstance(inputs, np.ndarray):
            raise SpecError("the engine takes a list of arrays, one per model input; wrap the array: [x]")
        arguments = [*inputs, *extras, *dataset]
        if len(arguments) != len(self._shapes) or any(np.shape(a) != s for a, s in zip(arguments, self._shapes)):
            raise self._mismatch(arguments)
        with tf.device(self.device) if self.device else contextlib.nullcontext():
            result = self._concrete(*arguments)
        return {o.name: _own_array(result[o.name], arguments) for o in self.outputs}  # in declared order


    def _mismatch(self, arguments) -> SpecError:
        """Which argument does not fit the compiled signature, in words (a short last batch is the usual one)."""
        wanted = ", ".join(f"{s.name} {shape}" for s, shape in zip(self._signature, self._shapes))
        if len(arguments) != len(self._signature):
            n = len(self._signature)
            return SpecError("the engine takes {n} array{s} ({wanted}), not {got}", n=n, s="s" * (n != 1),
                             wanted=wanted, got=len(arguments))
        for a, s, want in zip(arguments, self._signature, self._shapes):
            got = np.shape(a)
            if got != want:
                short = len(got) == len(want) and got[1:] == want[1:] and got[0] < want[0]
                hint = " (pad a short batch to {batch_size} rows: the function is compiled for that many)" if short else ""
                return SpecError("{name!r} has shape {got}, not {want}" + hint, name=s.name, got=got, want=want)
        return SpecError("the arguments do not fit the compiled function: {wanted}", wanted=wanted)


def _own_array(tensor: tf.Tensor, arguments: Sequence[np.ndarray]) -> np.ndarray:
    """A returned tensor as numpy: a read-only view of its own memory, which it keeps alive, not `.numpy()`'s copy
    (a projection's 2 MiB a batch, copied into fresh pages, took a fifth of the MLP projection job's main thread:
    docs/fast-weights.md). A copy only where it shares memory with an argument, which TensorFlow may take without
    copying and the caller refills for the next batch (an output that passes an input through)."""
    array = np.asarray(tensor)
    if any(np.may_share_memory(array, a) for a in arguments):
        return array.copy()
    return array
