"""What to differentiate, as plain values: it travels to workers and into the output's metadata."""

from __future__ import annotations

import dataclasses
import difflib
import json
from typing import Sequence

from transforms.gradients.choices import EMITS, UNCONNECTED_MODES
from transforms.gradients.errors import SpecError
from transforms.gradients.losses import check_loss_name
from transforms.gradients.methods import METHODS, NoiseTunnel, check_method, method_settings
from transforms.gradients.settings import Setting, by_name, check_settings
from transforms.gradients.targets import TARGETS
from transforms.gradients.wrt import FORMS, WRT

# The settings of the engine itself, read by every gradient whatever the answers (never refused as unused).
# The answers' own settings are declared by their classes (`declares`), each in its own file.
ENGINE_SETTINGS = (
    Setting("target", str, "sum", f"What to differentiate: {', '.join(TARGETS)}.", choices=TARGETS.names),
    Setting("method", str, "gradient", f"How the gradient is taken: {', '.join(METHODS)}.", choices=METHODS.names),
    Setting(
        "wrt",
        str,
        "inputs",
        "Differentiate with respect to the model's inputs, its trainable weights, both, or a layer's output.",
        choices=WRT.names,
    ),
    Setting("clip_norm", float, None, "Rescale each example's own gradient to this L2 norm at most.", above=0),
    Setting(
        "clip_per_tensor",
        bool,
        False,
        "With {clip_norm}: clip each differentiated tensor on its own, not all of a row's together.",
    ),
    Setting(
        "unconnected",
        str,
        "zeros",
        "An input the target does not depend on: write zeros (and count it) or fail.",
        choices=UNCONNECTED_MODES,
    ),
    Setting("emit", str, (), f"Extra per-row columns, comma-separated: {', '.join(EMITS)}.", choices=EMITS, items=True),
    Setting("jit_compile", bool, False, "Compile the gradient function with XLA.", negatable=True),
)
REGISTRIES = (TARGETS, METHODS, WRT, FORMS)


def declared_settings() -> list[Setting]:
    """Every setting of the engine, in the order the spec, the CLI and the docs list them: the engine's, then each
    registry's answers' (`declares`), each with its owner."""
    own = [s.with_owner("every gradient") for s in ENGINE_SETTINGS]
    return list(by_name(own + [s for registry in REGISTRIES for s in registry.declarations()]).values())


SETTINGS = by_name(declared_settings())  # name -> Setting


class GradientSpec:
    """The answers to the engine's three questions (target, method, wrt) and their settings.

    Its fields are the settings declared by the engine and its answers (kind "spec", see `declared_settings`),
    with their defaults. Checked on construction, before any model is loaded; errors name these fields.

    >>> GradientSpec(target="per_output", emit=("norm",)).method
    'gradient'
    """

    def __post_init__(self):
        check_settings(dataclasses.asdict(self), SETTINGS)  # types, choices and ranges, as declared
        if self.samples is None and issubclass(METHODS.get(self.method, object), NoiseTunnel):  # the metadata records the samples used
            object.__setattr__(self, "samples", NoiseTunnel.SAMPLES)
        TARGETS.check(self.target).check_spec(self)
        check_method(self)
        WRT.check(self.wrt).check_spec(self)
        if self.loss:
            check_loss_name(self.loss)
        if self.clip_per_tensor and self.clip_norm is None:
            raise SpecError("{clip_per_tensor} needs {clip_norm}: the norm each tensor is clipped to")
        unknown = sorted(set(self.emit) - set(EMITS))
        if unknown:
            raise SpecError(
                "{emit} takes {choices}; unknown: {unknown}", choices=", ".join(EMITS), unknown=", ".join(unknown)
            )
        if "loss" in self.emit and not self.loss:
            raise SpecError("{emit} loss needs {loss} and {label_column}")

    def used_settings(self) -> set[str]:
        """Every setting something in this spec reads."""
        used = {s.name for s in ENGINE_SETTINGS}.union(method_settings(self), *(a.used_settings(self) for a in (
            TARGETS[self.target], WRT[self.wrt])))
        if "loss" in self.emit:
            used |= {"loss", "label_column"}
        return used

    def check_used(self, given) -> None:
        """Refuse a setting the caller gave (`given`: names) that none of this spec's answers reads.

        Why: `--steps 100 --method gradient` would otherwise run, ignore the steps, and say nothing.
        """
        name = check_settings({name: getattr(self, name, None) for name in given}, SETTINGS, self.used_settings())
        if name is None:
            return
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


def _spec_fields(cls):
    """Give `cls` one dataclass field per declared spec setting, with its declared default."""
    for setting in SETTINGS.values():
        if setting.kind == "spec":
            kind = tuple[setting.type, ...] if setting.items else setting.type
            cls.__annotations__[setting.name] = kind | None if setting.default is None else kind
            setattr(cls, setting.name, setting.default)
    return dataclasses.dataclass(frozen=True)(cls)


GradientSpec = _spec_fields(GradientSpec)


def spec_from_values(values: dict) -> GradientSpec:
    """A spec from settings by name (a job's options, an API call's keyword arguments): names that are no spec
    field are left out (a row column, a job option), a list setting's None or empty value takes its default."""
    given = {}
    for name, value in values.items():
        setting = SETTINGS.get(name)
        if setting is None or setting.kind != "spec":
            continue
        if setting.items:
            value = tuple(value or ()) or setting.default
        given[name] = value
    return GradientSpec(**given)


def spec_from_kwargs(*, caller: str = "", caller_keywords: Sequence[str] = (), **kwargs) -> GradientSpec:
    """The Python API's spec: every keyword must be a declared engine setting. A TypeError names one that is not
    and the closest name the caller takes: an engine setting or one of its own keywords (`caller_keywords`)."""
    spec_names = [name for name, setting in SETTINGS.items() if setting.kind == "spec"]
    unknown = [name for name in kwargs if name not in spec_names]
    if unknown:
        known = [*caller_keywords, *spec_names]
        close = difflib.get_close_matches(unknown[0], known, n=1, cutoff=0.6)
        raise TypeError(
            f"{caller + ' got an ' if caller else ''}unexpected setting {unknown[0]!r}"
            + (f"; did you mean {close[0]!r}?" if close else f"; it takes: {', '.join(known)}")
        )
    return spec_from_values(kwargs)
