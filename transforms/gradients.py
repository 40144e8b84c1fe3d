"""The engine: per-example gradients of a model, one compiled function per batch shape.

Pure TensorFlow/Keras, no Beam and nothing else of the project, so it can be
tested and reused on its own. A `GradientSpec` says *what* is differentiated;
`GradientEngine` turns a model and a spec into one `tf.function` with a fixed
input signature, called once per padded batch of numpy arrays.

Why one backward pass serves a whole batch: the model is called with
`training=False`, so example i's outputs depend on example i's inputs only, and
d(sum over the batch)/d(x_i) is example i's own gradient.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import re
from typing import Callable, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

TARGETS = ("sum", "per_output", "loss")
UNCONNECTED_MODES = ("zeros", "error")
EMITS = ("predictions", "loss", "norm")
# Loss names accepted by --loss; anything else must be `module.path:function`.
KERAS_LOSSES = (
    "mse",
    "mae",
    "binary_crossentropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "huber",
)


class SpecError(ValueError):
    """A gradient spec or model that cannot work together; the message says why."""


class TensorInfo(NamedTuple):
    """One model input or output, per example (no batch dimension)."""

    name: str
    shape: tuple[int, ...]
    dtype: tf.DType


class GradientKey(NamedTuple):
    """Which gradient: of `output` (None for the sum or the loss) w.r.t. `input`."""

    input: str
    output: str | None


@dataclasses.dataclass(frozen=True)
class GradientSpec:
    """What to differentiate. Plain values, so it travels to workers and into metadata."""

    target: str = "sum"
    loss: str | None = None
    clip_norm: float | None = None
    unconnected: str = "zeros"
    emit: tuple[str, ...] = ()
    jit_compile: bool = False

    def __post_init__(self):
        if self.target not in TARGETS:
            raise SpecError(f"--target must be one of {', '.join(TARGETS)}, not {self.target!r}")
        if self.target == "loss" and not self.loss:
            raise SpecError("--target loss needs --loss (a Keras loss name or module.path:function)")
        if self.loss and self.loss not in KERAS_LOSSES and ":" not in self.loss:
            raise SpecError(
                f"unknown --loss {self.loss!r}: use one of {', '.join(KERAS_LOSSES)} or module.path:function"
            )
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise SpecError(f"--clip_norm must be above 0, not {self.clip_norm}")
        if self.unconnected not in UNCONNECTED_MODES:
            raise SpecError(f"--unconnected must be one of {', '.join(UNCONNECTED_MODES)}, not {self.unconnected!r}")
        unknown = sorted(set(self.emit) - set(EMITS))
        if unknown:
            raise SpecError(f"--emit takes {', '.join(EMITS)}; unknown: {', '.join(unknown)}")
        if "loss" in self.emit and self.target != "loss" and not self.loss:
            raise SpecError("--emit loss needs --loss and --label_column")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)


_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def resolve_loss(name: str) -> Callable:
    """A per-example loss function: a Keras loss name, or a function the user named.

    Only the module the user named is imported; nothing is evaluated.
    """
    if ":" in name:
        module_name, _, attr = name.partition(":")
        if not _DOTTED.fullmatch(module_name) or not attr.isidentifier():
            raise SpecError(f"--loss {name!r}: give a Keras loss name or module.path:function")
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise SpecError(f"--loss {name!r}: cannot import {attr!r} from {module_name!r} ({err})") from err
        if not callable(fn):
            raise SpecError(f"--loss {name!r} is not a function")
        return fn
    import keras

    return keras.losses.get(name)


class ModelFunction:
    """A model reduced to what the engine needs: its inputs, outputs and a call.

    `call` takes a list of batched tensors in `inputs` order and returns a list
    in `outputs` order, in inference mode.
    """

    def __init__(self, inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], call: Callable, keep=None):
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.call = call
        self._keep = keep  # the object `call` needs alive (a loaded SavedModel)

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]


def _per_example(shape) -> tuple[int, ...]:
    dims = tuple(shape)[1:]
    if any(d is None for d in dims):
        raise SpecError(f"a model tensor has an unknown dimension in {tuple(shape)}; fixed shapes are needed")
    return tuple(int(d) for d in dims)


def from_keras(model) -> ModelFunction:
    """Describe a built Keras model (Functional or Sequential)."""
    if not getattr(model, "built", False) or not getattr(model, "inputs", None):
        raise SpecError("the Keras model is not built: it needs known inputs (an Input layer or a build call)")
    import keras

    inputs = [TensorInfo(t.name, _per_example(t.shape), tf.as_dtype(t.dtype)) for t in model.inputs]
    out_struct = getattr(model, "_outputs_struct", None)
    if isinstance(out_struct, dict):  # outputs named by their keys, in flattening order
        names = ["__".join(map(str, path)) for path, _ in keras.tree.flatten_with_path(out_struct)]
    else:
        names = getattr(model, "output_names", None) or [t._keras_history[0].name for t in model.outputs]
    outputs = [TensorInfo(name, _per_example(t.shape), tf.as_dtype(t.dtype)) for name, t in zip(names, model.outputs)]

    # Call with the structure the model was built with (a dict of inputs stays a dict).
    struct = getattr(model, "_inputs_struct", None)

    def call(tensors):
        if struct is not None:
            args = keras.tree.pack_sequence_as(struct, tensors)
        else:
            args = tensors if len(tensors) > 1 else tensors[0]
        return keras.tree.flatten(model(args, training=False))

    return ModelFunction(inputs, outputs, call, keep=model)


def from_saved_model(loaded, signature: str = "serving_default") -> ModelFunction:
    """Describe a TensorFlow SavedModel through one of its signatures (Keras 3 cannot load them)."""
    if signature not in loaded.signatures:
        raise SpecError(
            f"the SavedModel has no signature {signature!r}; it has {', '.join(loaded.signatures) or 'none'}"
        )
    fn = loaded.signatures[signature]
    in_specs = fn.structured_input_signature[1]
    inputs = [TensorInfo(name, _per_example(s.shape), s.dtype) for name, s in in_specs.items()]
    out_specs = fn.structured_outputs
    outputs = [TensorInfo(name, _per_example(s.shape), s.dtype) for name, s in sorted(out_specs.items())]

    def call(tensors):
        result = fn(**{t.name: x for t, x in zip(inputs, tensors)})
        return [result[t.name] for t in outputs]

    return ModelFunction(inputs, outputs, call, keep=loaded)


def _example_norm(tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    """L2 norm per example over every element of every tensor given."""
    squares = [tf.reduce_sum(tf.reshape(tf.square(t), (tf.shape(t)[0], -1)), axis=1) for t in tensors]
    return tf.sqrt(tf.add_n(squares))


class GradientEngine:
    """One compiled gradient function for a model, a spec and a batch size.

    Call it with numpy arrays of exactly `batch_size` rows (pad the last batch:
    a fixed signature means the function is traced once and never again).
    """

    def __init__(self, model: ModelFunction, spec: GradientSpec, batch_size: int, device: str | None = None):
        if batch_size < 1:
            raise SpecError(f"--batch_size must be 1 or more, not {batch_size}")
        self.model = model
        self.spec = spec
        self.batch_size = batch_size
        self.device = device
        self.watched = [t for t in model.inputs if t.dtype.is_floating]
        if not self.watched:
            raise SpecError("the model has no floating-point input, so no input gradient exists")
        if spec.target == "per_output":
            outputs: list[str | None] = model.output_names
        else:
            outputs = [None]
        self.gradient_keys = [GradientKey(t.name, o) for o in outputs for t in self.watched]
        self.label = None
        self._loss_fn = None
        if spec.loss:
            if len(model.outputs) != 1:
                raise SpecError(
                    f"a loss needs a single-output model; this one has {len(model.outputs)} "
                    f"({', '.join(model.output_names)})"
                )
            out = model.outputs[0]
            shape = out.shape[:-1] if spec.loss == "sparse_categorical_crossentropy" else out.shape
            self.label = TensorInfo("label", shape, tf.float32)
            self._loss_fn = resolve_loss(spec.loss)
        self.unconnected: set[GradientKey] = set()
        signature = [tf.TensorSpec((batch_size, *t.shape), t.dtype, name=t.name) for t in model.inputs]
        if self.label is not None:
            signature.append(tf.TensorSpec((batch_size, *self.label.shape), tf.float32, name="label"))
        # autograph off: the Python loops here run once, at trace time, by design.
        self._fn = tf.function(self._compute, input_signature=signature, jit_compile=spec.jit_compile, autograph=False)
        self._concrete = None  # called directly: skips tf.function's per-call signature lookup

    def trace(self) -> "GradientEngine":
        """Trace now: finds unconnected inputs (and fails in `error` mode) before any data."""
        if self._concrete is None:
            with tf.device(self.device) if self.device else contextlib.nullcontext():
                self._concrete = self._fn.get_concrete_function()
        return self

    def _per_example_loss(self, outputs, label):
        prediction = outputs[0]
        if prediction.shape.rank == 1:  # one number per example: losses reduce the last axis, so add one
            prediction, label = prediction[:, None], label[:, None]
        loss = self._loss_fn(label, prediction)
        loss = tf.cast(loss, tf.float32)
        if loss.shape.rank == 0:
            raise SpecError(
                f"--loss {self.spec.loss!r} reduced the batch to one number; it must return one loss per example"
            )
        if loss.shape.rank > 1:
            loss = tf.reduce_sum(tf.reshape(loss, (tf.shape(loss)[0], -1)), axis=1)
        return loss

    def _compute(self, *args):
        n = len(self.model.inputs)
        inputs = list(args[:n])
        label = args[n] if self.label is not None else None
        watched = [inputs[i] for i, t in enumerate(self.model.inputs) if t.dtype.is_floating]
        with tf.GradientTape(persistent=self.spec.target == "per_output") as tape:
            tape.watch(watched)
            outputs = self.model.call(inputs)
            loss = self._per_example_loss(outputs, label) if self._loss_fn is not None else None
            if self.spec.target == "sum":
                targets = [tf.add_n([tf.reduce_sum(tf.cast(o, tf.float32)) for o in outputs])]
            elif self.spec.target == "per_output":
                targets = [tf.reduce_sum(tf.cast(o, tf.float32)) for o in outputs]
            else:
                targets = [tf.reduce_sum(loss)]
        gradients = []
        for target in targets:
            grads = tape.gradient(target, watched, unconnected_gradients=tf.UnconnectedGradients.NONE)
            key_offset = len(gradients)
            grads = [
                self._connected(g, x, self.gradient_keys[key_offset + j])
                for j, (g, x) in enumerate(zip(grads, watched))
            ]
            if self.spec.clip_norm is not None:
                # Per example: the norm of example i's own gradient, never the batch's.
                norm = _example_norm(grads)
                scale = self.spec.clip_norm / tf.maximum(norm, self.spec.clip_norm)
                grads = [g * tf.reshape(scale, (-1,) + (1,) * (len(g.shape) - 1)) for g in grads]
            gradients.extend(grads)
        result = {"gradients": gradients}
        if "predictions" in self.spec.emit:
            result["predictions"] = [tf.cast(o, tf.float32) for o in outputs]
        if loss is not None:  # always: a row whose loss is not finite is rejected, emitted or not
            result["loss"] = loss
        if "norm" in self.spec.emit:
            result["norms"] = [_example_norm([g]) for g in gradients]
        return result

    def _connected(self, gradient, x, key: GradientKey):
        """A None gradient (the target ignores this input) becomes zeros, or an error."""
        if gradient is not None:
            return tf.cast(gradient, tf.float32)
        if self.spec.unconnected == "error":
            if key.output:
                of = f"output {key.output!r}"
            else:
                of = "the loss" if self.spec.target == "loss" else "the sum of the model's outputs"
            raise SpecError(
                f"model input {key.input!r} has no gradient: {of} does not depend on it "
                "(use --unconnected zeros to write zeros instead)"
            )
        self.unconnected.add(key)
        return tf.zeros(tf.shape(x), tf.float32)

    def __call__(self, inputs: Sequence[np.ndarray], label: np.ndarray | None = None) -> dict:
        """Gradients for one full batch: a dict of numpy arrays, lists in key order."""
        args = list(inputs) + ([label] if self.label is not None else [])
        self.trace()
        with tf.device(self.device) if self.device else contextlib.nullcontext():
            result = self._concrete(*args)
        return tf.nest.map_structure(lambda t: t.numpy(), result)
