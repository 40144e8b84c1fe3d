"""EinsumDense (and so MultiHeadAttention's query, key, value and output projections).

The equation's letters split into the row (the input's first), positions (input and output, not the kernel),
contracted ones (input and kernel) and output ones (kernel and output): per row, g_kernel = sum_t a_t^T d_t with
a_t the contracted values at position t and d_t the output ones. Equations with an ellipsis, a letter in all
three operands, or a summed-away input letter are not covered (the general path takes them).
"""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.wrt.layers.base import Exact, LayerKind, Outer, Split, affine_output


def split_equation(equation: str):
    """'abc,cde->abde' -> (positions, contracted, produced, input, kernel, output), or None when not covered."""
    if "..." in equation or " " in equation:
        return None
    inputs, output = equation.split("->")
    x, kernel = inputs.split(",")
    row = x[0]
    if output[:1] != row or row in kernel:
        return None
    if any(c in kernel and c in output for c in x) or any(c not in kernel and c not in output for c in x):
        return None
    if any(c not in x and c not in kernel for c in output):
        return None
    positions = [c for c in x[1:] if c in output]
    contracted = [c for c in x if c in kernel]
    produced = [c for c in kernel if c in output]
    if sorted(contracted + produced) != sorted(kernel):
        return None
    return positions, contracted, produced, x, kernel, output


class EinsumDenseKind(LayerKind):
    layer_class = "EinsumDense"

    @classmethod
    def covers(cls, layer):
        return super().covers(layer) and split_equation(layer.equation) is not None

    @classmethod
    def variables(cls, layer):
        return [v for v in (layer.kernel, layer.bias) if v is not None]

    @classmethod
    def split(cls, layer, variable):
        if variable is not layer.kernel:
            return None
        _, contracted, produced, _, kernel, _ = split_equation(layer.equation)
        size = dict(zip(kernel, map(int, layer.kernel.shape)))
        inner, outer = [size[c] for c in contracted], [size[c] for c in produced]
        order = contracted + produced
        return Split(_product(inner), _product(outer), (*inner, *outer), tuple(order.index(c) for c in kernel))

    @classmethod
    def call(cls, layer, inputs, *args, **kwargs):
        from keras import ops

        return affine_output(layer, inputs, ops.einsum(layer.equation, inputs, layer.kernel))

    @classmethod
    def factors(cls, layer, record, d):
        positions, contracted, produced, x, kernel, output = split_equation(layer.equation)
        a = tf.cast(record.a, tf.float32)
        rows = d.shape[0]
        a = tf.transpose(a, [x.index(c) for c in [x[0], *positions, *contracted]])
        d_t = tf.transpose(d, [output.index(c) for c in [output[0], *positions, *produced]])
        size = dict(zip([x[0], *positions, *contracted], a.shape.as_list()))
        size.update(zip([output[0], *positions, *produced], d_t.shape.as_list()))
        inner = [size[c] for c in contracted]
        outer = [size[c] for c in produced]
        a = tf.reshape(a, (rows, -1, _product(inner)))
        d_t = tf.reshape(d_t, (rows, -1, _product(outer)))
        order = contracted + produced
        out = {id(layer.kernel): Outer(a, d_t, grouped=(*inner, *outer), perm=tuple(order.index(c) for c in kernel))}
        if layer.bias is not None:
            # The bias spans the output letters from its first axis on (1 where not a bias axis): sum the rest.
            first = len(output) - len(layer.bias.shape)
            summed = [i for i, c in enumerate(output) if i > 0 and (i < first or layer.bias.shape[i - first] == 1)]
            g = tf.reduce_sum(d, axis=summed, keepdims=True) if summed else d
            out[id(layer.bias)] = Exact(tf.reshape(g, (rows, *layer.bias.shape)))
        return out


def _product(dims) -> int:
    n = 1
    for dim in dims:
        n *= int(dim)
    return n
