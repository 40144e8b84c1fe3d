"""The engine's one error type: it names spec fields, so any caller can say them in its own words."""

from __future__ import annotations

import string


class SpecError(ValueError):
    """A gradient spec or model that cannot work together; the message says why.

    The message is a template: `{clip_norm}` stands for a spec field and is shown
    as the bare field name, unless the caller renames fields (the CLI shows
    `--clip_norm`). Values are passed by keyword and never parsed as a template.

    >>> str(SpecError("{clip_norm} must be above 0, not {value}", value=-1))
    'clip_norm must be above 0, not -1'
    >>> str(SpecError("{clip_norm} must be above 0", value=-1).named({"clip_norm": "--clip_norm"}))
    '--clip_norm must be above 0'
    >>> e = SpecError("{clip_norm} must be above 0, not {value}", value=-1)
    >>> str(type(e)(e.args[0] + " [in a step]", *e.args[1:]))  # as Beam rebuilds it
    'clip_norm must be above 0, not -1 [in a step]'
    """

    def __init__(self, template: str, names: dict[str, str] | None = None, values: dict | None = None, /, **more):
        self.template = template
        self.values = {**(values or {}), **more}
        self.names = dict(names or {})
        # args rebuild the error: Beam re-raises a step's error as type(e)(e.args[0] + " [while running 'step']",
        # *e.args[1:]), which from the template alone printed "{train} checkpoint {c}: {err}" unfilled
        super().__init__(template, self.names, self.values)

    @property
    def fields(self) -> list[str]:
        """The spec fields the message names."""
        parsed = string.Formatter().parse(self.template)
        return [name for _, name, _, _ in parsed if name and name not in self.values]

    def named(self, names: dict[str, str]) -> "SpecError":
        """The same error, its fields shown as `names` says (fields not in it stay bare)."""
        return SpecError(self.template, names, **self.values)

    def __str__(self) -> str:
        return self.template.format(**{f: self.names.get(f, f) for f in self.fields}, **self.values)

    def __reduce__(self):  # pickled with its template, not its rendered text
        return _rebuild, (self.template, self.names, self.values)


def _rebuild(template: str, names: dict[str, str], values: dict) -> SpecError:
    return SpecError(template, names, **values)
