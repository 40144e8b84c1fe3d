"""A registry per question of the engine: name -> class. The CLI's choices are its names."""

from __future__ import annotations

from typing import ClassVar, Iterable

from transforms.gradients.errors import SpecError
from transforms.gradients.settings import Setting


class Answer:
    """What every target, method and wrt class shares: a registry name, the model and the spec."""

    name: ClassVar[str]  # its registry key: the spec value that picks it
    # The settings this class owns, declared once here (name, type, default, range, help): the spec's fields,
    # the CLI's flags and the docs are built from them (settings.py).
    declares: ClassVar[tuple[Setting, ...]] = ()
    # The names of the settings (spec fields, and the row columns the CLI names) this answer reads: its parent's
    # (or those it sets here, to read fewer) and those it declares. One given that no chosen answer reads is
    # refused (GradientSpec.check_used), not silently ignored.
    settings: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        own = tuple(s.name for s in cls.__dict__.get("declares", ()))
        cls.settings = tuple(cls.settings) + tuple(n for n in own if n not in cls.settings)

    def __init__(self, model, spec):
        self.model = model  # a ModelFunction
        self.spec = spec  # a GradientSpec

    @classmethod
    def check_spec(cls, spec) -> None:
        """Refuse spec values this answer cannot use, before any model is loaded."""

    @classmethod
    def check_declared(cls, spec, *names: str) -> None:
        """Check the spec's values of these settings (declared by this class or a base) against their declarations."""
        for owner in cls.__mro__:
            for setting in owner.__dict__.get("declares", ()):
                if setting.name in names:
                    setting.check(getattr(spec, setting.name))

    @classmethod
    def used_settings(cls, spec) -> tuple[str, ...]:
        """The settings this answer reads for `spec` (an answer holding others adds theirs)."""
        return cls.settings


class Registry(dict):
    """The answers to one question (`field` is the spec field that picks one), in the order given."""

    def __init__(self, field: str, classes: Iterable[type]):
        super().__init__((cls.name, cls) for cls in classes)
        self.field = field

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self)

    def declarations(self) -> list[Setting]:
        """Every setting its classes (and their bases) declare, each once, its owner named by the answers reading it."""
        found = {}
        for cls in self.values():
            for owner in reversed(cls.__mro__):
                for setting in owner.__dict__.get("declares", ()):
                    found.setdefault(id(setting), setting)
        return [
            s.with_owner(f"{self.field} " + ", ".join(c.name for c in self.values() if s.name in c.settings))
            for s in found.values()
        ]

    def check(self, name: str) -> type:
        """The class registered under `name`, or a SpecError listing the choices."""
        if name not in self:
            raise SpecError(
                "{" + self.field + "} must be one of {choices}, not {value!r}",
                choices=", ".join(self),
                value=name,
            )
        return self[name]
