"""`layer`: attributions with respect to a named layer's output (an embedding for text, a convolution's maps).

The model is split at the layer (`layer_split.LayerSplit`): the method's points are
the layer's activation, so every method works there unchanged (the gradient,
gradient x activation, integrated gradients from a baseline activation through
the rest of the network, the noise tunnel with noise scaled to the activation's
range). Columns, per head:

- `gradient__<layer>`: the attribution, with the layer output's per-row shape;
- where that shape is positions x features: `token_scores__<layer>` (positions,),
  the attribution reduced over the features axis (`token_score`: `sum`, so that
  integrated gradients' token scores add up to f(x) - f(baseline); or `l2`, the
  norm, for a magnitude), and `mask__<layer>` (int8, 1: a real position, 0: padding);
- where one integer model input has shape (positions,) (of several, the one an Embedding reads: ids beside an
  integer padding mask): `tokens__<layer>`, its ids (the job's token aggregates read them).

Padding positions are the Keras mask the layer's output carries (e.g. from an
`Embedding(mask_zero=True)`) and the positions whose token equals `pad_token`. The
mask only marks them: a model that honours it gives them zero gradient by itself, and
one that drops it on the way (a `Conv1D` after the embedding) does use them, so
zeroing them would hide part of the attribution (its token scores no longer added up
to f(x) - f(baseline), while `ig_delta`, measured before, said they did). `pad_token`
positions are zeroed, as asked, before clipping: `ig_delta` is measured before that.
"""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.errors import SpecError
from transforms.gradients.ops import clip
from transforms.gradients.settings import Setting
from transforms.gradients.outputs import Output, gradient_name
from transforms.gradients.wrt.inputs import Inputs
from transforms.gradients.wrt.layer_split import LayerSplit, embedding_consumers, find_layer

# Baselines that make sense at a layer's activation (the others are built from the input columns).
LAYER_BASELINES = ("zeros", "value", "token")


def _suffix(name: str, head: str | None) -> str:
    return name if head is None else f"{name}__{head}"


class Layer(Inputs):
    name = "layer"
    declares = (
        Setting("layer", str, None, "With {wrt} layer: the layer whose output is attributed (nested sub-models' too)."),
        Setting("pad_token", int, None, "With {wrt} layer: the token id that is padding (zero attribution).", minimum=0,
                range_text="a token id (0 or more)"),
        Setting("token_score", str, "sum", "With {wrt} layer: token_scores reduce each position's features by their "
                "sum or L2 norm.", choices=("sum", "l2")),
    )

    @classmethod
    def check_spec(cls, spec):
        if not spec.layer:
            raise SpecError("{wrt} layer needs {layer}: the name of the layer whose output is attributed")
        cls.check_declared(spec, "token_score", "pad_token")
        kind = spec.baseline.partition(":")[0]
        if spec.method == "integrated_gradients" and kind not in LAYER_BASELINES:
            raise SpecError("{baseline} %s is built from the input columns; at a layer use zeros, value:<number> or "
                            "token:<id> (an embedding's)" % kind)

    @classmethod
    def function(cls, model, spec):
        return LayerSplit(model, find_layer(model, spec.layer))

    def __init__(self, model: LayerSplit, spec, target):
        super().__init__(model, spec, target)
        self.layer = model.layer.name
        self.shape = model.inputs[0].shape
        self.positional = len(self.shape) == 2  # positions x features
        self.token_input = self._token_input()  # the model input (index in the split's inputs) holding the tokens
        if spec.pad_token is not None and self.token_input is None:
            raise SpecError(
                "{pad_token} needs the tokens at {layer} %s's positions; %s" % (self.layer, self._why_no_tokens())
            )
        self.mask = None  # [batch, positions] int8, 1 for a real position; set by `enter`, at trace time
        self.kept = None  # [batch, positions] float32, 0 where the token is pad_token (zeroed); set by `enter`
        self.token_ids = None  # [batch, positions], the token input; set by `enter`

    def _token_input(self) -> int | None:
        """The index of the integer model input of shape (positions,) whose tokens sit at the layer's positions:
        the one such input, or of several (token ids beside an integer padding mask) the one an Embedding reads."""
        if not self.positional:
            return None
        found = [i for i, t in enumerate(self.model.inputs) if t.dtype.is_integer and t.shape == self.shape[:1]]
        if len(found) > 1:  # the one the attributed Embedding reads (ids beside segment ids), else the one any reads
            read = embedding_consumers(self.model.full)
            by_layer = [i for i in found if self.model.layer in read.get(self.model.inputs[i].name, [])]
            found = by_layer or [i for i in found if self.model.inputs[i].name in read]
        return found[0] if len(found) == 1 else None

    def _why_no_tokens(self) -> str:
        if not self.positional:
            return f"its output has shape {tuple(self.shape)}, not positions x features"
        integer = [t for t in self.model.inputs if t.dtype.is_integer]
        same = [t.name for t in integer if t.shape == self.shape[:1]]
        if len(same) > 1:
            return (f"the integer inputs {', '.join(same)} all have {self.shape[0]} positions, and which holds the "
                    "tokens is not known: attribute the Embedding layer that reads the token ids")
        if integer:
            return (f"the model's integer inputs are {', '.join(f'{t.name} {tuple(t.shape)}' for t in integer)}: "
                    "a layer that changes the number of positions (a 'valid' convolution, pooling) has no token "
                    "at each of its positions")
        return "the model has no integer input"

    def declare(self):
        outputs = []
        for head in self.target.heads:
            outputs.append(Output(gradient_name(self.layer, head, True), "gradient", self.shape, input=self.layer))
            if self.positional:
                outputs.append(Output(_suffix(f"token_scores__{self.layer}", head), "token_scores", self.shape[:1],
                                      input=self.layer))
        if self.positional:
            outputs.append(Output(f"mask__{self.layer}", "mask", self.shape[:1], dtype="int8", input=self.layer))
        if self.token_input is not None:  # the ids at the positions, so scores read without the input beside them
            dtype = self.model.inputs[self.token_input].dtype.name
            outputs.append(Output(f"tokens__{self.layer}", "tokens", self.shape[:1], dtype=dtype, input=self.layer))
        return outputs

    def enter(self, inputs):
        activation, mask = self.model.head(inputs)
        points = [activation, *inputs]
        if self.token_input is not None:
            self.token_ids = points[self.token_input]
        if self.positional:
            real = tf.ones(tf.shape(activation)[:2], tf.bool)
            if self.spec.pad_token is not None:
                real &= tf.not_equal(tf.cast(self.token_ids, tf.int64), self.spec.pad_token)
                self.kept = tf.cast(real, tf.float32)
            if mask is not None:
                real &= tf.cast(tf.reshape(mask, tf.shape(real)), tf.bool)
            self.mask = tf.cast(real, tf.int8)
        return points

    def _connected(self, gradient, x, index, head):
        if gradient is None:
            raise SpecError("{layer} {value!r}: its output does not reach {of}", value=self.layer,
                            of=self.target.describe(head))
        return tf.cast(gradient, tf.float32)

    def columns(self, gradients):
        values = {}
        for head, grads in zip(self.target.heads, gradients):
            (g,) = grads
            if self.kept is not None:
                g = g * self.kept[:, :, None]
            (g,) = clip([g], self.spec.clip_norm, self.spec.clip_per_tensor)  # the norm of what is written
            if self.positional:
                scores = tf.reduce_sum(g, -1) if self.spec.token_score == "sum" else tf.norm(g, axis=-1)
                values[_suffix(f"token_scores__{self.layer}", head)] = scores
            values[gradient_name(self.layer, head, True)] = g
        if self.positional:
            values[f"mask__{self.layer}"] = self.mask
        if self.token_input is not None:
            values[f"tokens__{self.layer}"] = self.token_ids
        return values
