"""`grad_cam`: a convolution layer's feature maps weighted by their mean gradient, summed, ReLU'd, resized to the input.

As xplique 2.0.2's `GradCAM` (Selvaraju et al. 2016): the layer is `layer`, or by default the
last layer that has `filters`; per feature map k, the weight is the mean over the
map's positions of d(target)/d(map_k); the map is relu(sum_k weight_k * map_k), resized to the
input's height and width by `tf.image.resize` (`RESIZE`, the method xplique uses). It is
written as `gradient` with the input's spatial shape (height, width): no channel axis.
"""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.errors import SpecError
from transforms.gradients.methods.base import Attribution, Method
from transforms.gradients.wrt.layer_split import LayerSplit, find_layer, keras_model

RESIZE = "bicubic"  # as xplique 2.0.2 (tf.image.resize, BICUBIC): a smooth map, which may dip below 0 near edges


class GradCAM(Method):
    name = "grad_cam"
    settings = ("layer",)

    @classmethod
    def check_spec(cls, spec):
        if spec.samples is not None:
            raise SpecError("{samples} does not apply to {method} %s: its map is not a gradient to average" % cls.name)
        if spec.wrt != "inputs":
            raise SpecError("{method} %s maps a layer onto the input image: it needs {wrt} inputs, not {value!r}"
                            % cls.name, value=spec.wrt)

    def __init__(self, model, spec):
        super().__init__(model, spec)
        images = [i for i in model.attributed if len(model.inputs[i].shape) == 3]
        if len(model.attributed) != 1 or not images:
            raise SpecError(
                "{method} %s needs a model with one floating-point image input (height, width, channels); "
                "this one has %s" % (self.name, ", ".join(f"{t.name} {t.shape}" for t in model.inputs))
            )
        self.input = images[0]
        self.split = LayerSplit(model, self._layer(model, spec.layer, self.name))
        if len(self.split.inputs[0].shape) != 3:
            raise SpecError("{method} %s needs {layer} to output feature maps (height, width, filters); "
                            "{value!r} outputs %s" % (self.name, self.split.inputs[0].shape), value=self.split.layer.name)

    @staticmethod
    def _layer(model, name, method):
        """The named layer, or the model's last layer with filters (a convolution), in a nested backbone too."""
        if name is not None:
            return find_layer(model, name)
        keras = keras_model(model)
        found = list(_with_filters(keras)) if keras is not None else []
        if not found:
            raise SpecError("{method} %s found no layer with filters (a convolution); name one with {layer}" % method)
        return found[-1]

    def attributed_shape(self, shape):
        return tuple(shape[:2])

    @staticmethod
    def weights(gradients: tf.Tensor, maps: tf.Tensor) -> tf.Tensor:
        """[batch, 1, 1, filters]: each feature map's weight."""
        return tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)

    def attribute(self, differentiate, inputs, extras, evaluate):
        maps, _ = self.split.head(inputs)
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(maps)
            forward = evaluate([maps, *inputs], extras, self.split)
            totals = [tf.reduce_sum(s) for s in forward.scalars]
        size = self.model.inputs[self.input].shape[:2]
        cams = []
        for total in totals:
            gradients = tape.gradient(total, maps, unconnected_gradients=tf.UnconnectedGradients.ZERO)
            cam = tf.nn.relu(tf.reduce_sum(maps * self.weights(gradients, maps), axis=-1))
            cams.append([tf.image.resize(cam[..., None], size, method=RESIZE)[..., 0]])
        return Attribution(cams, forward)


def _with_filters(model):
    """The layers with filters (convolutions) in the order the model calls them, inside sub-models too (a backbone
    from keras.applications): a sub-model's `layers` are in its graph's order, where a recursive flattening is not."""
    for layer in model.layers:
        if hasattr(layer, "filters"):
            yield layer
        elif hasattr(layer, "layers"):
            yield from _with_filters(layer)
