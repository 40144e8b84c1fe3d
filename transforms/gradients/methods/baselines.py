"""Where integrated gradients' paths start: `zeros`, `value:<x>`, `column:<name>`, `mean`, `blur:<sigma>`.

One small class per kind; the spec's `baseline` string is `kind` or `kind:argument`.
Each builds, per floating-point model input, a baseline of the input's shape.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import tensorflow as tf

from transforms.gradients.errors import SpecError
from transforms.gradients.outputs import DatasetInput, RowInput


def _number(argument: str, wanted: str, valid) -> float:
    """The argument as a finite float that `valid` accepts, or a SpecError saying what was `wanted`."""
    try:
        value = float(argument)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or not valid(value):
        raise SpecError("{baseline} %s, not %r" % (wanted, argument))
    return value


class Baseline:
    kind: ClassVar[str]
    takes: ClassVar[str | None] = None  # what the argument is, in words; None: no argument

    def __init__(self, model, floating: list[int], argument: str | None):
        self.model = model
        self.floating = floating
        self.argument = argument

    @classmethod
    def check(cls, argument: str | None) -> None:
        """Before any model loads: the argument is there exactly when the kind takes one."""
        if cls.takes and not argument:
            raise SpecError("{baseline} %s needs %s: %s:<%s>" % (cls.kind, cls.takes, cls.kind, cls.takes))
        if not cls.takes and argument is not None:
            raise SpecError("{baseline} %s takes no argument, not %r" % (cls.kind, argument))

    @property
    def row_inputs(self) -> list[RowInput]:
        return []

    @property
    def dataset_inputs(self) -> list[DatasetInput]:
        return []

    def __call__(self, xs: list[tf.Tensor], extras: dict[str, tf.Tensor]) -> list[tf.Tensor]:
        """Per floating-point input (float32, [batch, ...]): its baseline."""
        raise NotImplementedError


class Zeros(Baseline):
    kind = "zeros"

    def __call__(self, xs, extras):
        return [tf.zeros_like(x) for x in xs]


class Value(Baseline):
    kind = "value"
    takes = "number"

    @classmethod
    def check(cls, argument):
        super().check(argument)
        _number(argument, "value:<number> needs a finite number", lambda v: True)

    def __call__(self, xs, extras):
        return [tf.fill(tf.shape(x), float(self.argument)) for x in xs]


class Column(Baseline):
    """A per-row baseline read from a column with the input's shape (a model with one floating-point input)."""

    kind = "column"
    takes = "name"

    def __init__(self, model, floating, argument):
        super().__init__(model, floating, argument)
        if len(floating) != 1:
            raise SpecError(
                "{baseline} column:<name> needs a model with one floating-point input; this one has {count}",
                count=len(floating),
            )
        self.input = model.inputs[floating[0]]

    @property
    def row_inputs(self):
        return [RowInput("baseline", self.input.shape, tf.float32, "baseline_column", "baseline")]

    def __call__(self, xs, extras):
        return [extras["baseline"]]


class Mean(Baseline):
    """The dataset's mean input, the same for every row: computed by the caller in a first pass over the data."""

    kind = "mean"

    @property
    def dataset_inputs(self):
        return [DatasetInput(f"mean__{self.model.inputs[i].name}", self.model.inputs[i].name, self.model.inputs[i].shape)
                for i in self.floating]

    def __call__(self, xs, extras):
        return [tf.cast(extras[d.name], x.dtype) for d, x in zip(self.dataset_inputs, xs)]


class Blur(Baseline):
    """The row itself, Gaussian-blurred over height and width: a baseline with the image's colours but not its edges."""

    kind = "blur"
    takes = "sigma"

    @classmethod
    def check(cls, argument):
        super().check(argument)
        _number(argument, "blur:<sigma> needs a number above 0", lambda v: v > 0)

    def __init__(self, model, floating, argument):
        super().__init__(model, floating, argument)
        for i in floating:
            t = model.inputs[i]
            if len(t.shape) not in (2, 3):
                raise SpecError(
                    "{baseline} blur needs image inputs (height, width[, channels]); input {input!r} has shape {shape}",
                    input=t.name,
                    shape=t.shape,
                )
        self.sigma = float(argument)

    def _kernel(self, size: int) -> np.ndarray:
        radius = min(int(math.ceil(3 * self.sigma)), size - 1)
        offsets = np.arange(-radius, radius + 1)
        weights = np.exp(-0.5 * (offsets / self.sigma) ** 2)
        return (weights / weights.sum()).astype(np.float32)

    def _blur(self, x: tf.Tensor) -> tf.Tensor:
        image = x if len(x.shape) == 4 else x[..., None]
        height, width, channels = image.shape[1:]
        for axis, size in ((1, height), (2, width)):  # separable: one 1-D pass per axis, edges mirrored
            kernel = self._kernel(size)
            radius = len(kernel) // 2
            pad = [[0, 0]] * 4
            pad[axis] = [radius, radius]
            padded = tf.pad(image, pad, mode="SYMMETRIC")
            shape = (len(kernel), 1) if axis == 1 else (1, len(kernel))
            filters = tf.constant(np.tile(kernel.reshape(*shape, 1, 1), (1, 1, channels, 1)))
            image = tf.nn.depthwise_conv2d(padded, filters, strides=[1, 1, 1, 1], padding="VALID")
        return image if len(x.shape) == 4 else image[..., 0]

    def __call__(self, xs, extras):
        return [self._blur(x) for x in xs]


class Token(Baseline):
    """At an embedding layer's output (wrt layer): the embedding of one token id (a pad or [MASK]) at every position."""

    kind = "token"
    takes = "id"

    @classmethod
    def check(cls, argument):
        super().check(argument)
        _number(argument, "token:<id> needs a token id (a whole number, 0 or more)", lambda v: v >= 0 and v == int(v))

    def __init__(self, model, floating, argument):
        super().__init__(model, floating, argument)
        if not hasattr(model, "embedding"):
            raise SpecError("{baseline} token:<id> is an embedding's output: it needs {wrt} layer and {layer}")
        self.token = int(float(argument))

    def __call__(self, xs, extras):
        return [self.model.embedding(self.token, x) for x in xs]


BASELINES = {cls.kind: cls for cls in (Zeros, Value, Column, Mean, Blur, Token)}


def parse_baseline(value: str) -> tuple[type[Baseline], str | None]:
    """`kind[:argument]` -> (its class, the argument), checked; errors name the spec field."""
    kind, sep, argument = value.partition(":")
    if kind not in BASELINES:
        raise SpecError(
            "{baseline} must be one of zeros, value:<number>, column:<name>, mean, blur:<sigma>, token:<id>, not {value!r}",
            value=value,
        )
    cls = BASELINES[kind]
    cls.check(argument if sep else None)
    return cls, argument if sep else None


def baseline_column(value: str | None) -> str | None:
    """The column a `column:<name>` baseline reads (None for any other kind): the job reads it as a row input."""
    kind, sep, argument = (value or "").partition(":")
    return argument if kind == Column.kind and sep else None
