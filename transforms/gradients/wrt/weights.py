"""`weights`: per-example gradients with respect to the trainable variables, written as norms, projections or whole."""

from __future__ import annotations

import tensorflow as tf

from transforms.gradients.errors import SpecError
from transforms.gradients.ops import clip
from transforms.gradients.settings import Setting
from transforms.gradients.wrt.base import Wrt
from transforms.gradients.wrt.layer_gradients import LayerGradients, NotCovered, covered_layers
from transforms.gradients.wrt.forms import FORMS
from transforms.gradients.wrt.per_example import in_micro_batches, micro_batch_rows, vectorized_or_looped
from transforms.gradients.wrt.selection import select


class Weights(Wrt):
    """Why not one backward pass: it sums the rows' weight gradients. Each row's own comes from a
    vectorized per-example backward pass (`tf.vectorized_map`), over micro-batches that the memory
    budget bounds; each micro-batch is clipped and reduced to its forms before the next starts, so the
    batch's per-example gradients are never all held at once. Hence `differentiate` returns the forms'
    values (one per declared column), not raw gradients, and only the plain gradient method can use them.

    When every selected variable belongs to a layer kind `layer_gradients` covers (Dense, EinsumDense and so
    MultiHeadAttention, Embedding, Conv1D/2D, Layer- and BatchNormalization), a fast path replaces the per-example
    backward pass: one batched backward pass per micro-batch, each row's gradient (or, for norms alone, its norm,
    never the gradient) from the layers' inputs and output gradients. `path` says which one the traced function took:
    "ghost_norms", "layer_gradients" or "per_example".
    """

    name = "weights"
    declares = (
        Setting(
            "weights",
            str,
            None,
            "With {wrt} weights/both: layer names (comma-separated) or a regular expression over variable "
            "paths (default: every trainable variable).",
        ),
        Setting(
            "weight_output",
            str,
            ("norm",),
            f"What each row's weight gradient is written as, comma-separated: {', '.join(FORMS)} "
            "(default: norm).",
            choices=FORMS.names,
            items=True,
        ),
        Setting(
            "weight_memory_mb",
            int,
            1024,
            "Memory budget of the per-example weight gradients: sets the rows per micro-batch.",
            minimum=1,
        ),
    )

    @classmethod
    def used_settings(cls, spec):
        forms = [FORMS[name] for name in spec.weight_output if name in FORMS]
        return cls.settings + tuple(s for form in forms for s in form.used_settings(spec))

    @classmethod
    def check_spec(cls, spec):
        if spec.method != "gradient":
            raise SpecError(
                "{wrt} {value} works with {method} gradient only, not {method_value!r}",
                value=spec.wrt,
                method_value=spec.method,
            )
        if not spec.weight_output:
            raise SpecError("{weight_output} needs one of {choices} at least", choices=", ".join(FORMS))
        for name in spec.weight_output:
            FORMS.check(name).check_spec(spec)
        cls.check_declared(spec, "weight_memory_mb")

    def __init__(self, model, spec, target):
        super().__init__(model, spec, target)
        if len(target.heads) != 1:
            raise SpecError(
                "{wrt} {value} needs one scalar per row; {target} {target_value} gives {count} ({heads})",
                value=spec.wrt,
                target_value=spec.target,
                count=len(target.heads),
                heads=", ".join(map(str, target.heads)),
            )
        self.selection = select(model.weights, spec.weights)
        self.forms = [FORMS[name](model, spec, self.selection) for name in dict.fromkeys(spec.weight_output)]
        self.rows = micro_batch_rows(self.selection.parameters, spec.weight_memory_mb)
        owners = covered_layers(model, self.selection)
        self.fast = owners and LayerGradients(owners, self.selection, spec.clip_norm, spec.clip_per_tensor)
        self.path = None  # "ghost_norms", "layer_gradients" or "per_example", once traced
        self.micro_batch = self.rows  # its rows per micro-batch, once traced

    def declare(self):
        return [o for form in self.forms for o in form.declare()]

    def provenance(self) -> dict:
        record = {"variables": self.selection.paths, "parameters": self.selection.parameters, "projection": None}
        for form in self.forms:
            record.update(form.provenance())
        return record

    def differentiate(self, forward_fn, points, extras):
        names = list(extras)
        tensors = list(points) + [extras[n] for n in names]
        prepared = [form.prepare() for form in self.forms]  # once per batch, not per micro-batch
        results = [tf.TensorSpec(o.shape, o.dtype) for o in self.declare()]

        def forms(grads):
            return [value for form, p in zip(self.forms, prepared) for value in form.compute(grads, p)]

        if self.fast:
            try:
                # one row, traced and never run (nothing uses it): what a row's factors keep, the outputs' specs
                factors, probe = self.fast.factors(forward_fn, [t[:1] for t in tensors], len(points), names)
                outputs = [tf.TensorSpec(o.shape[1:], o.dtype) for o in probe.outputs]
                whole = any(form.name != "norm" and not getattr(form, "factored", False) for form in self.forms)
                # no row's whole gradient held: as many rows as its factors (and what a form forms of them) allow
                formed = sum(form.formed_parameters() for form in self.forms if getattr(form, "factored", False))
                self.micro_batch = self.rows if whole else self.fast.rows(factors, self.spec.weight_memory_mb, formed)
                if [form.name for form in self.forms] == ["norm"]:
                    self.path = "ghost_norms"
                    values = self.fast.norms(
                        forward_fn, tensors, len(points), names, self.forms[0], self.micro_batch, outputs
                    )
                else:
                    self.path = "layer_gradients"

                    def per_batch(ts):
                        factors, forward = self.fast.factors(forward_fn, ts, len(points), names)
                        grads, out = None, []
                        for form, p in zip(self.forms, prepared):
                            if getattr(form, "factored", False):  # never forms a row's gradient
                                out += form.from_factors(factors, self.fast.clip_scales(factors), p)
                                continue
                            if form.name == "norm":
                                out += form.from_squares(self.fast.clipped_squares(factors))
                                continue
                            grads = grads or self.fast.clipped(factors)
                            out += form.compute(grads, p)
                        return out + list(forward.outputs)

                    values = in_micro_batches(per_batch, tensors, self.micro_batch, results + outputs)
                # the engine reuses the micro-batches' forward passes instead of running the model once more
                columns = len(values) - len(outputs)
                return [values[:columns]], probe.at(values[columns:], extras)
            except NotCovered:
                pass  # the ops traced so far are unused, so pruned
        self.path, self.micro_batch = "per_example", self.rows
        variables = [w.variable for w in self.selection.weights]

        def per_row(row):
            xs = [t[None] for t in row[: len(points)]]
            row_extras = {n: t[None] for n, t in zip(names, row[len(points) :])}
            with tf.GradientTape() as tape:
                total = tf.reduce_sum(forward_fn(xs, row_extras).scalars[0])
            grads = tape.gradient(total, variables, unconnected_gradients=tf.UnconnectedGradients.NONE)
            return [self._dense(g, w) for g, w in zip(grads, self.selection.weights)]

        row_grads = [tf.TensorSpec(w.variable.shape, tf.float32) for w in self.selection.weights]

        def micro_batch(tensors):
            grads = clip(vectorized_or_looped(per_row, tensors, row_grads), self.spec.clip_norm, self.spec.clip_per_tensor)
            return forms(grads)

        return [in_micro_batches(micro_batch, tensors, self.rows, results)], None

    def _dense(self, gradient, weight):
        """A row's gradient of one variable as a dense float32 tensor: an embedding's sparse one densified,
        a variable the target ignores as zeros (or an error)."""
        if gradient is None:
            if self.spec.unconnected == "error":
                raise SpecError(
                    "variable {path!r} has no gradient: {of} does not depend on it "
                    "(use {unconnected} zeros to write zeros instead)",
                    path=weight.path,
                    of=self.target.describe(self.target.heads[0]),
                )
            self.unconnected.add((weight.path, self.target.heads[0]))
            return tf.zeros(weight.variable.shape, tf.float32)
        return tf.cast(tf.convert_to_tensor(gradient), tf.float32)

    def columns(self, gradients):
        return {o.name: value for o, value in zip(self.declare(), gradients[0])}
