"""One declaration per setting: its name, type, default, allowed values and help, said once by its owner.

A target, method, wrt or weight form declares the settings it owns next to its
code (`Answer.declares`); the job's own settings are declared once per job. The
spec's fields, the command line's flags, YAML keys, the API's keyword
arguments, the Airflow DAGs' params and docs/options.md are all built from (or
checked against) these declarations. Nothing here knows of flags: help and
errors name other settings as `{name}`, which each caller renders its own way
(the CLI as `--name`), as `SpecError` does.

>>> steps = Setting("steps", int, 50, "points on the path", minimum=1)
>>> steps.check(0)
Traceback (most recent call last):
...
transforms.gradients.errors.SpecError: steps must be 1 or more, not 0
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Iterable, Sequence

from transforms.gradients.errors import SpecError

# What a setting is to its owner: a GradientSpec field, a column of the rows the engine reads (not a spec
# field: the job turns it into a row input), or an option of the job around the engine.
KINDS = ("spec", "column", "job")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting. `type` is int, float, str or bool; `items` True: a comma-separated list (a tuple in the spec).

    `minimum`/`above`/`maximum` bound a number (None: not given is always allowed); `range_text` replaces the
    generated "1 or more" in the error. `negatable`: a bool that a `no_<name>` can undo (a config's true).
    `shown_default`: the default as a CLI user sees it where it differs from `default` (None: not given,
    the owner then decides, as for a list whose default the spec fills in).
    """

    name: str
    type: type
    default: Any
    help: str
    choices: tuple | None = None
    minimum: float | None = None
    above: float | None = None
    maximum: float | None = None
    range_text: str = ""
    items: bool = False
    negatable: bool = False
    kind: str = "spec"
    owner: str = ""  # who declares it, e.g. "method integrated_gradients": filled in when collected

    def __post_init__(self):
        if self.kind not in KINDS:
            raise AssertionError(f"setting {self.name}: kind {self.kind!r} is not one of {KINDS}")

    @property
    def bounded(self) -> bool:
        return (self.minimum, self.above, self.maximum) != (None, None, None)

    def bounds(self) -> str:
        """The allowed range in words: "1 or more", "above 0", "between 0 and 1"."""
        if self.range_text:
            return self.range_text
        if self.minimum is not None and self.maximum is not None:
            return f"between {self.minimum:g} and {self.maximum:g}"
        if self.above is not None:
            return f"above {self.above:g}"
        return f"{self.minimum:g} or more"

    def check(self, value) -> None:
        """A SpecError naming this setting where `value` (None: not given) is not of its type, or out of its range
        or choices (or NaN)."""
        if value is None:
            return
        if not _is(value, self.type, self.items):
            wanted = f"a list of {PLURAL_WORDS[self.type]}" if self.items else TYPE_WORDS[self.type]
            raise SpecError("{%s} takes %s, not {value!r}" % (self.name, wanted), value=value)
        if self.choices is not None and not self.items and value not in self.choices:
            raise SpecError(
                "{%s} must be one of {choices}, not {value!r}" % self.name, choices=", ".join(self.choices), value=value
            )
        low = self.minimum is not None and not value >= self.minimum
        high = self.maximum is not None and not value <= self.maximum
        if low or high or (self.above is not None and not value > self.above):
            raise SpecError("{%s} must be %s, not {value}" % (self.name, self.bounds()), value=value)

    def with_owner(self, owner: str) -> "Setting":
        return dataclasses.replace(self, owner=owner)


def job_setting(name: str, type: type, default, help: str, **kw) -> Setting:
    """A setting of a job around the engine (not a spec field)."""
    return Setting(name, type, default, help, kind="job", owner="the job", **kw)


def split_list(value: str | Sequence[str] | None, strip: bool = True) -> list[str]:
    """A list setting's value as its items: a comma-separated string is split, as the command line and a config
    file give it. Column names keep their spaces (`strip=False`): a column may be named ' x'.

    Planning then matches each name exactly, or with its spaces trimmed where no column has the exact name.
    """
    if value is None or isinstance(value, str):
        return [v.strip() if strip else v for v in (value or "").split(",") if v.strip()]
    return list(value)


TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}
PLURAL_WORDS = {int: "integers", float: "numbers", str: "strings", bool: "true or false values"}


def _is(value, kind: type, items: bool) -> bool:
    if items:
        return isinstance(value, (tuple, list)) and all(_is(v, kind, False) for v in value)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, kind)


def by_name(settings: Iterable[Setting]) -> dict[str, Setting]:
    """name -> setting; a name declared twice is an error at import, naming both owners."""
    named: dict[str, Setting] = {}
    for setting in settings:
        if setting.name in named:
            raise AssertionError(
                f"setting {setting.name} is declared by {named[setting.name].owner} and by {setting.owner}; declare it once"
            )
        named[setting.name] = setting
    return named


def check_settings(values: dict, settings: dict[str, Setting], used: Iterable[str] | None = None) -> str | None:
    """One walk over the settings given (`values`: name -> value): each checked against its declaration (type,
    choices, range: a SpecError naming it); with `used` (the names something chosen reads), the first given
    setting nothing reads is returned, for the caller to refuse in its words. Names not declared are the caller's.
    """
    unused = None
    for name, value in values.items():
        if name in settings:
            settings[name].check(value)
            if used is not None and unused is None and name not in used:
                unused = name
    return unused


def python_source(settings: Iterable[Setting], doc: str) -> str:
    """Python that rebuilds `settings` as the tuple SETTINGS, with `doc` as its module docstring."""
    defaults = {f.name: f.default for f in dataclasses.fields(Setting)}
    lines = [f'"""{doc}"""', "", "from transforms.gradients.settings import Setting", "", "SETTINGS = ("]
    for setting in settings:
        args = [repr(setting.name), setting.type.__name__, repr(setting.default), repr(setting.help)]
        args += [f"{name}={getattr(setting, name)!r}" for name in list(defaults)[4:] if getattr(setting, name) != defaults[name]]
        lines.append(f"    Setting({', '.join(args)}),")
    return "\n".join(lines + [")", ""])
