"""A Keras model split at one layer's output: inputs -> activation (the head) and activation -> outputs (the tail).

Why by wrapping the layer's `call`, not `keras.Model(layer.output, model.output)`:
a sub-model started at an intermediate tensor loses what the prefix passed along
beside the tensor (an `Embedding`'s `mask_zero` mask, which an LSTM or attention
layer reads), cannot start inside a nested sub-model, and cannot take the other
inputs that join the graph later (a float feature concatenated after pooling).
Running the whole model with the layer's `call` replaced keeps all of that: the
layer's `__call__` still computes its mask from its real inputs, every other
layer runs as in the model, and the ops that only fed the replaced layer are
pruned from the traced function, so the tail costs no more than a cut graph.
The replacement lives only while the model is called (at trace time), under a lock.
"""

from __future__ import annotations

import contextlib
import threading

import tensorflow as tf

from transforms.gradients.errors import SpecError
from transforms.gradients.model_function import ModelFunction, TensorInfo, _per_example

try:  # Keras 3's Layer.__call__ attaches the output's mask (to the tensor, or a global table where it cannot)
    from keras.src.backend import get_keras_mask as _keras_mask
except ImportError:  # pragma: no cover - another Keras 3 layout
    def _keras_mask(tensor):
        return getattr(tensor, "_keras_mask", None)

_LOCK = threading.RLock()  # one replacement at a time: a model is shared by a process's threads


def keras_model(model: ModelFunction):
    """The Keras model behind `model`, or None (a SavedModel)."""
    keep = model._keep
    return keep if hasattr(keep, "_flatten_layers") else None


def all_layers(keras_model) -> list:
    """Every layer, nested sub-models' layers included, in the model's order."""
    return [layer for layer in keras_model._flatten_layers(include_self=False, recursive=True)]


def find_layer(model: ModelFunction, name: str):
    """The layer called `name` anywhere in the model (nested sub-models too), or a SpecError listing the layers."""
    keras = keras_model(model)
    if keras is None:
        raise SpecError("{layer} needs a Keras model (.keras or .h5): a SavedModel has no layers to name")
    layers = all_layers(keras)
    found = [layer for layer in layers if layer.name == name]
    if len(found) != 1:
        raise SpecError(
            "{layer} {value!r} %s; the model's layers are: {layers}"
            % ("is not a layer of the model" if not found else "names %d layers" % len(found)),
            value=name,
            layers=", ".join(layer.name for layer in layers if type(layer).__name__ != "InputLayer"),
        )
    return found[0]


def embedding_consumers(model: ModelFunction) -> dict[str, list]:
    """Per model input name: the `Embedding` layers that read it directly (a token input's vocabulary)."""
    import keras

    model_ = keras_model(model)
    if model_ is None:
        return {}
    by_id = {id(t): info.name for t, info in zip(model_.inputs, model.inputs)}
    consumers: dict[str, list] = {}
    for layer in all_layers(model_):
        if not isinstance(layer, keras.layers.Embedding):
            continue
        for node in getattr(layer, "_inbound_nodes", []):
            for tensor in node.input_tensors:
                name = by_id.get(id(tensor))
                if name is not None and layer not in consumers.setdefault(name, []):
                    consumers[name].append(layer)
    return consumers


@contextlib.contextmanager
def _replaced(layer, call):
    """`layer.call` replaced by `call(original, *args, **kwargs)` inside the block."""
    original = layer.call
    own = layer.__dict__.get("call")  # a layer that set its own `call` on the instance gets it back
    object.__setattr__(layer, "call", lambda *args, **kwargs: call(original, *args, **kwargs))
    try:
        yield
    finally:
        if own is None:
            object.__delattr__(layer, "call")
        else:
            object.__setattr__(layer, "call", own)


class LayerSplit(ModelFunction):
    """The tail as a ModelFunction: inputs are [the layer's activation] + the model's inputs, attributed: [0].

    `head(inputs)` gives the activation and its padding mask (True: a real position)
    at the model's inputs; `call([activation, *inputs])` runs the model with the
    layer's output replaced by `activation`.
    """

    def __init__(self, model: ModelFunction, layer):
        self.full = model
        self.layer = layer
        try:
            shape = _per_example(layer.output.shape)
            dtype = tf.as_dtype(layer.output.dtype)
        except (AttributeError, ValueError) as err:  # called several times, or never, in the model's graph
            raise SpecError(
                "{layer} {value!r} has no single output in the model's graph (%s)" % str(err).splitlines()[0],
                value=layer.name,
            ) from err
        if not dtype.is_floating:
            raise SpecError("{layer} {value!r} outputs {dtype}, so no gradient exists there", value=layer.name,
                            dtype=dtype.name)
        activation = TensorInfo(layer.name, shape, tf.float32)
        super().__init__([activation, *model.inputs], model.outputs, self._call, keep=model._keep,
                         weights=model.weights, layers=model.layers)
        self.attributed = [0]

    def head(self, inputs: list[tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor | None]:
        """The layer's output at `inputs` (float32) and its Keras mask (None where it has none)."""
        seen = []

        def record(original, *args, **kwargs):
            out = original(*args, **kwargs)
            seen.append(out)
            return out

        with _LOCK, _replaced(self.layer, record):
            self.full.call(inputs)
        if len(seen) != 1:
            raise SpecError("{layer} {value!r} is called %d times by the model; name a layer called once"
                            % len(seen), value=self.layer.name)
        mask = _keras_mask(seen[0])
        return tf.cast(seen[0], tf.float32), mask

    def _call(self, tensors: list[tf.Tensor]) -> list[tf.Tensor]:
        activation, inputs = tensors[0], list(tensors[1:])
        dtype = self.layer.compute_dtype
        with _LOCK, _replaced(self.layer, lambda original, *args, **kwargs: tf.cast(activation, dtype)):
            return self.full.call(inputs)

    def embedding(self, token: int, like: tf.Tensor) -> tf.Tensor:
        """`token`'s embedding at every position of `like` (an Embedding layer's output), float32."""
        import keras

        if not isinstance(self.layer, keras.layers.Embedding):
            raise SpecError("{baseline} token:<id> needs {layer} to name an Embedding; {value!r} is a %s"
                            % type(self.layer).__name__, value=self.layer.name)
        if not 0 <= token < self.layer.input_dim:
            raise SpecError("{baseline} token:{value} is outside the vocabulary 0..%d of {layer} %s"
                            % (self.layer.input_dim - 1, self.layer.name), value=token)
        vector = tf.cast(tf.gather(tf.convert_to_tensor(self.layer.embeddings), token), tf.float32)
        return tf.broadcast_to(vector, tf.shape(like))
