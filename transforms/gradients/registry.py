"""A registry per question of the engine: name -> class. The CLI's choices are its names."""

from __future__ import annotations

from typing import Iterable

from transforms.gradients.errors import SpecError


class Registry(dict):
    """The answers to one question (`field` is the spec field that picks one), in the order given."""

    def __init__(self, field: str, classes: Iterable[type]):
        super().__init__((cls.name, cls) for cls in classes)
        self.field = field

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
