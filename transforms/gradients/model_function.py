"""A model reduced to what the engine needs: its inputs, outputs and a call (Keras or SavedModel)."""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import tensorflow as tf

from transforms.gradients.errors import SpecError


class TensorInfo(NamedTuple):
    """One model input or output, or a row's extra input, per example (no batch dimension)."""

    name: str
    shape: tuple[int, ...]
    dtype: tf.DType


class Weight(NamedTuple):
    """One trainable variable `call` reads: its path (`dense/kernel`), the model layer that owns it, the variable."""

    path: str
    layer: str
    variable: tf.Variable


class ModelFunction:
    """`call` takes a list of batched tensors in `inputs` order and returns a list in `outputs` order.

    It runs the model in inference mode. `weights` are its trainable variables, in the model's order;
    `layers` its top-level Keras layers by name (none for a SavedModel), for fast paths that read a layer's kind.
    """

    def __init__(
        self,
        inputs: Sequence[TensorInfo],
        outputs: Sequence[TensorInfo],
        call: Callable,
        keep=None,
        weights: Sequence[Weight] = (),
        layers: dict | None = None,
    ):
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.call = call
        self.weights = list(weights)
        self.layers = dict(layers or {})
        # The inputs a method attributes (by index): the floating-point ones; a split at a layer: its activation.
        self.attributed = [i for i, t in enumerate(self.inputs) if t.dtype.is_floating]
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
        raise SpecError(
            "a model tensor has an unknown dimension in {shape}; fixed shapes are needed", shape=tuple(shape)
        )
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

    layers = {layer.name: layer for layer in model.layers}
    return ModelFunction(inputs, outputs, call, keep=model, weights=_keras_weights(model), layers=layers)


def _keras_weights(model) -> list[Weight]:
    """The trainable variables, each with the top-level layer that owns it (nested layers count as their parent)."""
    owner = {id(v): layer.name for layer in model.layers for v in layer.trainable_variables}
    return [Weight(v.path, owner.get(id(v), v.path.split("/")[0]), v) for v in model.trainable_variables]


def from_saved_model(loaded, signature: str = "serving_default") -> ModelFunction:
    """Describe a TensorFlow SavedModel through one of its signatures (Keras 3 cannot load them)."""
    if signature not in loaded.signatures:
        raise SpecError(
            "the SavedModel has no signature {signature!r}; it has {found}",
            signature=signature,
            found=", ".join(loaded.signatures) or "none",
        )
    fn = loaded.signatures[signature]
    in_specs = fn.structured_input_signature[1]
    inputs = [TensorInfo(name, _per_example(s.shape), s.dtype) for name, s in in_specs.items()]
    out_specs = fn.structured_outputs
    outputs = [TensorInfo(name, _per_example(s.shape), s.dtype) for name, s in sorted(out_specs.items())]

    def call(tensors):
        result = fn(**{t.name: x for t, x in zip(inputs, tensors)})
        return [result[t.name] for t in outputs]

    variables = getattr(loaded, "trainable_variables", [])
    weights = [Weight(v.name.removesuffix(":0"), v.name.split("/")[0], v) for v in variables]
    return ModelFunction(inputs, outputs, call, keep=loaded, weights=weights)
