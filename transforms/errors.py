"""Errors of the Beam pieces that may name a setting: templates, as the engine's `SpecError`, phrased by the caller.

Why: the pieces below `pipeline/` are used from the CLI and from the Python API,
and a user is told about the setting in the words they used: `--input_map` on the
command line, `input_map` as a keyword. The message names a setting as `{input_map}`;
the CLI renames it (`pipeline.options.flag_error`), anything else shows the bare name.

A message built without values is plain text, never read as a template (paths and
column names may hold braces).

>>> str(SettingError("{damping} too small for checkpoint {c}", c=2))
'damping too small for checkpoint 2'
>>> str(SettingError("{damping} too small", value=0).named({"damping": "--damping"}))
'--damping too small'
>>> str(SettingError("a {braced} path"))
'a {braced} path'
"""

from __future__ import annotations

from transforms.gradients.errors import SpecError


class SettingError(SpecError):
    """SpecError's template for errors outside the engine; `named` keeps the error's own type."""

    def __init__(self, template: str, names: dict[str, str] | None = None, values: dict | None = None, /, **more):
        if not values and not more and names is None:  # plain text: nothing in it is a field
            template = template.replace("{", "{{").replace("}", "}}")
        super().__init__(template, names, values, **more)

    def named(self, names: dict[str, str]) -> "SettingError":
        return _rebuild(type(self), self.template, names, self.values)

    def __reduce__(self):  # pickled with its template and its type
        return _rebuild, (type(self), self.template, self.names, self.values)


def _rebuild(kind: type, template: str, names: dict[str, str], values: dict) -> SettingError:
    error = kind.__new__(kind)
    SpecError.__init__(error, template, names, values)
    return error


def setting(name: str) -> str:
    """`{name}`: a setting's place in a template whose setting is chosen at run time."""
    return "{" + name + "}"
