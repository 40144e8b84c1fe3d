"""`integrated_gradients`: the gradient integrated along the straight path from a baseline to the input, times (x - b).

Steps are evaluated `chunk` at a time inside the compiled function (see
`fold_chunks`), so memory holds batch_size x chunk points whatever `steps` is.
The completeness gap `ig_delta` (sum of attributions minus f(x) - f(baseline),
per head) tells a user when more steps are needed.
"""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.methods.base import Attribution, InputAttribution, fold_chunks
from transforms.gradients.methods.baselines import parse_baseline
from transforms.gradients.methods.steps import RULES, alphas_and_weights, check_rule
from transforms.gradients.ops import per_example_sum, per_point, tile_rows
from transforms.gradients.outputs import Output
from transforms.gradients.settings import Setting


def delta_name(head: str | None) -> str:
    return "ig_delta" if head is None else f"ig_delta__{head}"


class IntegratedGradients(InputAttribution):
    name = "integrated_gradients"
    declares = (
        Setting("steps", int, 50, "Integrated gradients: points on the path.", minimum=1),
        Setting(
            "ig_rule",
            str,
            "riemann_trapezoid",
            f"Integrated gradients: the step rule, {', '.join(RULES)}.",
            choices=tuple(RULES),
        ),
        Setting(
            "baseline",
            str,
            "zeros",
            "Integrated gradients: zeros, value:<number>, column:<name>, mean (the dataset's, a first pass) or blur:<sigma>.",
        ),
    )

    def __init__(self, model, spec):
        super().__init__(model, spec)
        kind, argument = parse_baseline(spec.baseline)
        self.baseline = kind(model, self.floating, argument)
        self.alphas, self.weights = alphas_and_weights(spec.ig_rule, spec.steps)

    @classmethod
    def check_spec(cls, spec):
        super().check_spec(spec)
        cls.check_declared(spec, "steps")
        check_rule(spec.ig_rule)
        parse_baseline(spec.baseline)

    @property
    def row_inputs(self):
        return self.baseline.row_inputs

    @property
    def dataset_inputs(self):
        return self.baseline.dataset_inputs

    def declare(self, heads):
        self.heads = heads  # the engine declares before it traces: attribute names its columns by these
        return [Output(delta_name(head), "ig_delta", ()) for head in heads]

    def attribute(self, differentiate, inputs, extras, evaluate):
        xs = self.differentiated(inputs)
        baselines = self.baseline(xs, extras)
        alphas, weights = tf.constant(self.alphas), tf.constant(self.weights)
        rows = int(inputs[0].shape[0])

        def step(first, size, sums):
            # tf.slice, not alphas[first : first + size]: under XLA that slice came back whole when `first` is
            # the while loop's tensor (steps over two or more chunks with --jit_compile: a shape error)
            alpha = tf.repeat(tf.slice(alphas, [first], [size]), rows)  # per point, laid out as tile_rows
            weight = tf.slice(weights, [first], [size])
            points = [tile_rows(x, size) for x in inputs]
            for i, x, b in zip(self.floating, xs, baselines):
                path = tile_rows(b, size) + tf.reshape(alpha, (-1,) + (1,) * (len(x.shape) - 1)) * tile_rows(x - b, size)
                points[i] = tf.cast(path, inputs[i].dtype)
            gradients, _ = differentiate(points, {k: tile_rows(v, size) for k, v in extras.items()})
            return [
                [s + tf.tensordot(weight, per_point(g, size), axes=1) for s, g in zip(head_sums, head)]
                for head_sums, head in zip(sums, gradients)
            ]

        zeros = [[tf.zeros_like(x) for x in xs] for _ in self.heads]
        sums = fold_chunks(self.spec.steps, self.chunk(inputs, self.spec.steps), step, zeros)
        attributions = [[s * (x - b) for s, x, b in zip(head, xs, baselines)] for head in sums]
        at_inputs = evaluate(inputs, extras)
        at_baselines = inputs[:]
        for i, b in zip(self.floating, baselines):
            at_baselines[i] = tf.cast(b, inputs[i].dtype)
        at_baseline = evaluate(at_baselines, extras)
        deltas = {
            delta_name(name): tf.add_n([per_example_sum(a) for a in head]) - (fx - fb)
            for name, head, fx, fb in zip(self.heads, attributions, at_inputs.scalars, at_baseline.scalars)
        }
        return Attribution(attributions, at_inputs, deltas)
