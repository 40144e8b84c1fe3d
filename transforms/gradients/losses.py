"""Per-example losses: a Keras loss name, or a function the user named (`module.path:function`)."""

from __future__ import annotations

import importlib
import re
from typing import Callable

import tensorflow as tf

from transforms.gradients.choices import KERAS_LOSSES
from transforms.gradients.errors import SpecError
from transforms.gradients.model_function import ModelFunction
from transforms.gradients.outputs import RowInput

_DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def check_loss_name(name: str) -> None:
    if name not in KERAS_LOSSES and ":" not in name:
        raise SpecError(
            "unknown {loss} {value!r}: use one of {choices} or module.path:function",
            value=name,
            choices=", ".join(KERAS_LOSSES),
        )


def resolve_loss(name: str) -> Callable:
    """The loss function. Only the module the user named is imported; nothing is evaluated."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        if not _DOTTED.fullmatch(module_name) or not attr.isidentifier():
            raise SpecError("{loss} {value!r}: give a Keras loss name or module.path:function", value=name)
        try:
            fn = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as err:
            raise SpecError(
                "{loss} {value!r}: cannot import {attr!r} from {module!r} ({err})",
                value=name,
                attr=attr,
                module=module_name,
                err=str(err),
            ) from err
        if not callable(fn):
            raise SpecError("{loss} {value!r} is not a function", value=name)
        return fn
    import keras

    return keras.losses.get(name)


class PerExampleLoss:
    """One loss per example between the row's label and one model output.

    That output is the model's only one, or the one `output_name` names (a model with
    several heads, say class logits and a regression, has a loss per head).
    """

    def __init__(self, name: str, model: ModelFunction, output_name: str | None = None):
        if output_name is None and len(model.outputs) != 1:
            raise SpecError(
                "a {loss} needs one output; this model has {count} ({outputs}): pick one with {output_name}",
                count=len(model.outputs),
                outputs=", ".join(model.output_names),
            )
        if output_name is not None and output_name not in model.output_names:
            raise SpecError(
                "{output_name} {value!r} is not an output of the model; its outputs are: {outputs}",
                value=output_name,
                outputs=", ".join(model.output_names),
            )
        self.name = name
        self._fn = resolve_loss(name)
        self.index = model.output_names.index(output_name) if output_name is not None else 0
        out = model.outputs[self.index]
        if name != "sparse_categorical_crossentropy":
            self.label = RowInput("label", out.shape, tf.float32, column="label_column", needed_by="loss")
            return
        classes = out.shape[-1] if len(out.shape) else 1
        if classes is not None and classes < 2:
            raise SpecError(
                "{loss} sparse_categorical_crossentropy takes class indices against 2 or more scores; output {output!r} "
                "has shape {shape} (one probability: use binary_crossentropy)",
                output=out.name, shape=out.shape,
            )
        # a class index outside 0..classes-1 is that row's fault: the caller rejects it (Keras fails the batch)
        self.label = RowInput("label", out.shape[:-1], tf.float32, column="label_column", needed_by="loss",
                              classes=classes)

    def __call__(self, outputs: list[tf.Tensor], label: tf.Tensor) -> tf.Tensor:
        prediction = outputs[self.index]
        if prediction.shape.rank == 1:  # one number per example: losses reduce the last axis, so add one
            prediction, label = prediction[:, None], label[:, None]
        loss = tf.cast(self._fn(label, prediction), tf.float32)
        if loss.shape.rank == 0:
            raise SpecError(
                "{loss} {value!r} reduced the batch to one number; it must return one loss per example",
                value=self.name,
            )
        if loss.shape.rank > 1:
            loss = tf.reduce_sum(tf.reshape(loss, (tf.shape(loss)[0], -1)), axis=1)
        return loss
