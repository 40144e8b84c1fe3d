"""What to differentiate, as plain values: it travels to workers and into the output's metadata."""

from __future__ import annotations

import dataclasses
import json

from transforms.gradients.choices import EMITS, UNCONNECTED_MODES, check_minimum
from transforms.gradients.errors import SpecError
from transforms.gradients.losses import check_loss_name
from transforms.gradients.methods import METHODS, NoiseTunnel, check_method, method_settings
from transforms.gradients.targets import TARGETS
from transforms.gradients.wrt import FORMS, WRT

# Settings every gradient reads, whatever the answers: never refused as unused.
JOB_SETTINGS = ("target", "method", "wrt", "clip_norm", "clip_per_tensor", "unconnected", "emit", "jit_compile")


@dataclasses.dataclass(frozen=True)
class GradientSpec:
    """The answers to the engine's three questions (target, method, wrt) and their settings.

    Checked on construction, before any model is loaded; errors name these fields.

    >>> GradientSpec(target="per_output", emit=("norm",)).method
    'gradient'
    """

    target: str = "sum"
    loss: str | None = None
    clip_norm: float | None = None
    unconnected: str = "zeros"
    emit: tuple[str, ...] = ()
    jit_compile: bool = False
    method: str = "gradient"
    wrt: str = "inputs"
    clip_per_tensor: bool = False
    # With respect to the weights (wrt weights or both): which variables, and what is written per row.
    weights: str | None = None
    weight_output: tuple[str, ...] = ("norm",)
    projection_dim: int = 2048
    projection_dtype: str = "float32"
    projection_seed: int = 0
    projection: str = "countsketch"  # the construction: countsketch, or factored (from layer factors)
    allow_large_rows: bool = False
    weight_memory_mb: int = 1024
    # The methods' settings (methods/): integrated gradients' path, the noise methods' samples.
    steps: int = 50
    ig_rule: str = "riemann_trapezoid"
    baseline: str = "zeros"
    # None: not given. A noise method (smoothgrad, ...) then uses NoiseTunnel.SAMPLES, recorded here as the value
    # used; given to another method, SmoothGrad over that method (methods.build_method).
    samples: int | None = None
    noise: float = 0.2  # standard deviation, as a fraction of each row's input range (max - min)
    seed: int = 0
    chunk: int | None = None  # steps or samples per row in one model call; None: about CHUNK_ROWS rows
    # The targets' settings (targets/).
    k: int = 3
    output_name: str | None = None

    def __post_init__(self):
        if self.samples is None and issubclass(METHODS.get(self.method, object), NoiseTunnel):  # the metadata records the samples used
            object.__setattr__(self, "samples", NoiseTunnel.SAMPLES)
        TARGETS.check(self.target).check_spec(self)
        check_method(self)
        WRT.check(self.wrt).check_spec(self)
        if self.loss:
            check_loss_name(self.loss)
        check_minimum("chunk", self.chunk)
        if self.clip_norm is not None and not self.clip_norm > 0:
            raise SpecError("{clip_norm} must be above 0, not {value}", value=self.clip_norm)
        if self.clip_per_tensor and self.clip_norm is None:
            raise SpecError("{clip_per_tensor} needs {clip_norm}: the norm each tensor is clipped to")
        if self.unconnected not in UNCONNECTED_MODES:
            raise SpecError(
                "{unconnected} must be one of {choices}, not {value!r}",
                choices=", ".join(UNCONNECTED_MODES),
                value=self.unconnected,
            )
        unknown = sorted(set(self.emit) - set(EMITS))
        if unknown:
            raise SpecError(
                "{emit} takes {choices}; unknown: {unknown}", choices=", ".join(EMITS), unknown=", ".join(unknown)
            )
        if "loss" in self.emit and not self.loss:
            raise SpecError("{emit} loss needs {loss} and {label_column}")

    def answers(self) -> list[type]:
        """The classes that answer this spec: its target, method and wrt."""
        return [registry[getattr(self, registry.field)] for registry in (TARGETS, METHODS, WRT)]

    def used_settings(self) -> set[str]:
        """Every setting something in this spec reads."""
        used = set(JOB_SETTINGS).union(method_settings(self), *(a.used_settings(self) for a in (
            TARGETS[self.target], WRT[self.wrt])))
        if "loss" in self.emit:
            used |= {"loss", "label_column"}
        return used

    def check_used(self, given) -> None:
        """Refuse a setting the caller gave (`given`: names) that none of this spec's answers reads.

        Why: `--steps 100 --method gradient` would otherwise run, ignore the steps, and say nothing.
        """
        unused = [name for name in given if name not in self.used_settings()]
        if not unused:
            return
        name = unused[0]
        readers = [
            f"{{{registry.field}}} {cls.name}"
            for registry in (TARGETS, METHODS, WRT, FORMS)
            for cls in registry.values()
            if name in cls.settings
        ]
        if name in NoiseTunnel.settings and name != "samples" and readers:  # noise, seed: SmoothGrad over any method
            readers.append("{samples} with any method")
        chosen = ", ".join(f"{{{r.field}}} {getattr(self, r.field)}" for r in (TARGETS, METHODS, WRT))
        raise SpecError(
            "{%s} is not used with %s; leave it out%s" % (
                name, chosen, f" (it is read by {' or '.join(readers)})" if readers else "")
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)
