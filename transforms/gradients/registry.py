"""A registry per question of the engine: name -> class. The CLI's choices are its names."""

from __future__ import annotations

from typing import ClassVar, Iterable

from transforms.gradients.choices import check_names
from transforms.gradients.errors import SpecError


class Answer:
    """What every target, method and wrt class shares: a registry name, the model and the spec."""

    name: ClassVar[str]  # its registry key: the spec value that picks it
    # The settings (spec fields, and the row columns the CLI names) this answer reads: one given that no
    # chosen answer reads is refused (GradientSpec.check_used), not silently ignored.
    settings: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model, spec):
        self.model = model  # a ModelFunction
        self.spec = spec  # a GradientSpec

    @classmethod
    def check_spec(cls, spec) -> None:
        """Refuse spec values this answer cannot use, before any model is loaded."""

    @classmethod
    def used_settings(cls, spec) -> tuple[str, ...]:
        """The settings this answer reads for `spec` (an answer holding others adds theirs)."""
        return cls.settings


class Registry(dict):
    """The answers to one question (`field` is the spec field that picks one), in the order given."""

    def __init__(self, field: str, classes: Iterable[type]):
        super().__init__((cls.name, cls) for cls in classes)
        self.field = field
        check_names(field, self.names)  # the command line offers NAMES[field] without importing TensorFlow

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self)

    def check(self, name: str) -> type:
        """The class registered under `name`, or a SpecError listing the choices."""
        if name not in self:
            raise SpecError(
                "{" + self.field + "} must be one of {choices}, not {value!r}",
                choices=", ".join(self),
                value=name,
            )
        return self[name]
