"""Every option of the job, defined once: Beam PipelineOptions, fed from flags and YAML files.

A YAML file given with `--config` holds the same names as the flags; a flag on
the command line overrides the file. Beam's own options (`runner`,
`direct_num_workers`, `project`, ...) may stand in the file too.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
from typing import TYPE_CHECKING, Sequence

import yaml
from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from pipeline.settings import INFLUENCE_SHARED, RUN_IO, RUN_REST, influence_settings
from transforms.gradients.declared import SETTINGS as ENGINE_SETTINGS
from transforms.gradients.errors import SpecError
from transforms.gradients.settings import Setting, by_name, check_settings, split_list
from transforms.job_settings import BATCH_SIZE, COMPUTE_SETTINGS

if TYPE_CHECKING:
    from transforms.gradients import GradientSpec

DEFAULT_BATCH_SIZE = BATCH_SIZE.default
# --runner values (any module path before them, any case) that run on Dask.
DASK_RUNNERS = ("daskrunner", "dask")


class OptionsError(ValueError):
    """An option that cannot work; raised before any data is read."""


def main_settings() -> tuple[Setting, ...]:
    """Every setting of the main job, in --help's order: where it reads and writes, the columns and the model's
    feed, the gradient's (the engine's, TensorFlow-free copy), then how it runs."""
    return RUN_IO + COMPUTE_SETTINGS[:3] + ENGINE_SETTINGS + COMPUTE_SETTINGS[3:] + RUN_REST


def flag_text(text: str) -> str:
    """A declaration's help with the settings it names (`{loss}`) as flags (`--loss`)."""
    return re.sub(r"\{(\w+)\}", r"--\1", text)


def add_setting(parser, setting: Setting, help: str | None = None) -> None:
    """The flag (and `--no_` flag) of one declared setting: its type, default, choices and help."""
    text = flag_text(help or setting.help)
    if setting.type is bool:
        parser.add_argument(f"--{setting.name}", action="store_true", help=text)
        if setting.negatable:
            parser.add_argument(
                f"--no_{setting.name}", dest=setting.name, action="store_false", help=f"Undo a config's {setting.name}."
            )
        return
    kw = {"type": setting.type} if setting.type is not str else {}
    if setting.default is not None and not setting.items:  # a list is given as one string; its default is the owner's
        kw["default"] = setting.default
    if setting.choices is not None and not setting.items:
        kw["choices"] = setting.choices
    parser.add_argument(f"--{setting.name}", help=text, **kw)


class GradientOptions(PipelineOptions):
    """The job's own options, one flag per declared setting (main_settings). Their names are the public interface."""

    @classmethod
    def _add_argparse_args(cls, parser):
        for setting in main_settings():
            add_setting(parser, setting)


def list_options() -> list[str]:
    """Options that hold a comma-separated list: given more than once, their values add up."""
    return [s.name for s in main_settings() + influence_settings() if s.items]


def parse_map(value: str | None) -> dict[str, str]:
    """`name=column,...`, or a JSON object: what Airflow's Beam operator passes for a dict option."""
    if value and value.lstrip().startswith("{"):
        try:
            mapping = json.loads(value)
        except json.JSONDecodeError as err:
            raise OptionsError(f"--input_map: not a valid JSON object ({err.msg})") from err
        return {str(name): str(column) for name, column in mapping.items()}
    mapping = {}
    for item in split_list(value):
        name, sep, column = item.partition("=")
        if not sep or not name.strip() or not column.strip():
            raise OptionsError(f"--input_map takes name=column pairs, not {item!r}")
        mapping[name.strip()] = column
    return mapping


class _Parser(_BeamArgumentParser):
    def error(self, message):
        """A bad value is an OptionsError (one line), not argparse's usage dump and exit."""
        raise OptionsError(message)


def _wants_dask(argv: Sequence[str]) -> bool:
    """A Dask runner or a --dask_ flag named: only then is Dask imported (it costs every start-up 0.5 s)."""
    runners = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--runner"]
    runners += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--runner=")]
    named = any(r.rsplit(".", 1)[-1].lower() in DASK_RUNNERS for r in runners)
    return named or any(arg.startswith("--dask_") for arg in argv)


def _register_dask_options() -> None:
    """Beam's DaskOptions (--dask_client_address, ...) join the parser once their module is imported."""
    try:
        import apache_beam.runners.dask.dask_runner  # noqa: F401  (declares DaskOptions)
    except ImportError as err:
        raise OptionsError(
            f"the Dask runner needs Dask installed ({err.msg}): pip install 'beam-gradients[dask]'"
        ) from err


def all_options_parser() -> argparse.ArgumentParser:
    """Every option Beam knows, ours included: what PipelineOptions itself parses with."""
    parser = _Parser(allow_abbrev=False)
    for cls in {str(c): c for c in PipelineOptions.__subclasses__()}.values():
        cls._add_argparse_args(parser)
    return parser


def _load_config(path: str) -> dict:
    """The YAML mapping of option names -> values in `path`."""
    try:
        with open(path) as fh:
            config = yaml.safe_load(fh) or {}
    except OSError as err:
        raise OptionsError(f"--config {path}: cannot read it ({err.strerror})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise OptionsError(f"--config {path}: not valid YAML{where} ({getattr(err, 'problem', None) or err})") from err
    if not isinstance(config, dict):
        raise OptionsError(f"--config {path}: expected a mapping of option names to values")
    return config


def mapping_args(config: dict, parser: argparse.ArgumentParser, where: str) -> list[str]:
    """Option names -> values (a YAML config, run()'s keyword arguments) as flags; errors start with `where`.

    A list is comma-separated, a dict `k=v,...`, a boolean flag is given for true
    (`no_trust_model_code: true` too) and left out for false, None leaves the option out.
    """
    actions = {s: a for a in parser._actions for s in a.option_strings}
    args = []
    for key, value in config.items():
        flag = f"--{key}"
        action = actions.get(flag)
        if action is None:
            close = _closest(flag, parser)  # named as the file or the keywords name it: no dashes
            raise OptionsError(f"{where}: unknown option {key!r}" + (f"; did you mean {close[2:]!r}?" if close else ""))
        if action.type in (int, float) and value is not None and not isinstance(value, (list, dict, bool)):
            try:  # as the command line would parse it, but naming the file: `batch_size: 64.5` is no integer
                action.type(str(value))
            except ValueError:
                raise OptionsError(f"{where}: {key} takes {'an integer' if action.type is int else 'a number'}, "
                                   f"not {value!r}") from None
        if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
            if not isinstance(value, bool):
                raise OptionsError(f"{where}: {key} takes true or false, not {value!r}")
            if value:
                args.append(flag)
        elif isinstance(action, argparse._AppendAction):
            args += [f"{flag}={v}" for v in (value if isinstance(value, list) else [value])]
        elif isinstance(value, dict):
            args.append(f"{flag}={','.join(f'{k}={v}' for k, v in value.items())}")
        elif isinstance(value, list):
            args.append(f"{flag}={','.join(str(v) for v in value)}")
        elif value is not None:
            args.append(f"{flag}={value}")
    return args


def _closest(flag: str, parser: argparse.ArgumentParser) -> str | None:
    """The known flag closest to an unknown one (`--feature_column` -> `--feature_columns`), or None."""
    known = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
    close = difflib.get_close_matches(flag, known, n=1, cutoff=0.7) if flag.startswith("--") else []
    return close[0] if close else None


def _config_path(argv: Sequence[str]) -> str | None:
    paths = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--config"]
    paths += [arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")]
    if len(paths) > 1:
        raise OptionsError(f"--config is given {len(paths)} times; give one file")
    return paths[0] if paths else None


def _join_repeated(argv: Sequence[str]) -> list[str]:
    """`--emit=a --emit b` -> `--emit=a,b` for the list options; argparse alone would keep only the last.

    Airflow's Beam operator passes a list as one flag per item. Joined before a config file's flags
    are put in front, so a list on the command line still replaces the file's list as a whole.
    """
    flags = {f"--{name}": [] for name in list_options()}
    rest, i = [], 0
    while i < len(argv):
        flag, sep, value = argv[i].partition("=")
        if flag in flags and (sep or i + 1 < len(argv)):
            flags[flag].append(value if sep else argv[i + 1])
            i += 1 if sep else 2
        else:
            rest.append(argv[i])
            i += 1
    return rest + [f"{flag}={','.join(values)}" for flag, values in flags.items() if values]


# The other commands, one line each in the main --help.
COMMANDS = (
    ("beam-gradients influence ...", "the training rows that pushed each prediction"),
    ("beam-gradients report OUTPUT_PREFIX", "one HTML page about a job's output"),
)


def help_text(
    prog: str = "beam-gradients",
    description: str = "Per-example gradients of a Keras model over Parquet, as a Beam batch job.",
    add_options=GradientOptions._add_argparse_args,
    commands=COMMANDS,
) -> str:
    import textwrap

    if commands:
        width = max(len(name) for name, _ in commands)
        description += "\n\nother commands (each with its own --help):\n"
        description += "\n".join(f"  {name:<{width}}  {text}" for name, text in commands)
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=textwrap.fill(
            "Any Beam pipeline option is accepted too: --runner, --direct_num_workers, "
            "--direct_running_mode, --project, --region, --temp_location, ...",
            width=78,
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_options(parser)
    return parser.format_help()


def parse(argv: Sequence[str], defaults: Sequence[str] = ()) -> PipelineOptions:
    """Flags -> PipelineOptions; unknown flags are errors.

    Later flags win: `defaults` (the demo's), then any --config file's, then
    `argv`. Repeated list flags are joined within `argv` only, so a list given
    there replaces a default or config list instead of adding to it.
    """
    argv = _join_repeated(argv)
    path = _config_path(argv)
    config = _load_config(path) if path else {}
    if _wants_dask(list(defaults) + argv + [f"--{key}={value}" for key, value in config.items()]):
        _register_dask_options()
    parser = all_options_parser()
    argv = list(defaults) + (mapping_args(config, parser, f"--config {path}") if path else []) + argv
    _, unknown = parser.parse_known_args(argv)
    if unknown:
        stray = [arg for arg in unknown if not arg.startswith("-")]
        if stray and all(arg.endswith(".parquet") or os.path.exists(arg) for arg in stray):
            raise OptionsError(
                f"unexpected file name(s) {', '.join(stray[:3])}{' ...' if len(stray) > 3 else ''}: "
                "the shell expanded an unquoted glob; quote it, e.g. --input 'data/*.parquet'"
            )
        flag = unknown[0].split("=", 1)[0]
        close = _closest(flag, parser)
        raise OptionsError(f"unknown option {' '.join(unknown)}" + (f"; did you mean {close}?" if close else "; see --help"))
    options = PipelineOptions(argv)
    check_runner(options)
    return options


def check_runner(options: PipelineOptions) -> None:
    """A --runner that Beam cannot resolve is an option error now, with the closest name, not a failure after planning."""
    from apache_beam.options.pipeline_options import StandardOptions
    from apache_beam.runners.runner import _RUNNER_MAP

    runner = options.view_as(StandardOptions).runner
    if not runner or not isinstance(runner, str) or "." in runner:  # a module path: Beam imports it
        return
    name = runner.lower()
    known = set(_RUNNER_MAP) | set(DASK_RUNNERS)
    if name in known or name + "runner" in known:
        return
    names = sorted({path.rsplit(".", 1)[-1] for path in _RUNNER_MAP.values()} | {"DaskRunner"})
    close = difflib.get_close_matches(runner, names, n=1, cutoff=0.5)
    close = close or difflib.get_close_matches(runner.lower(), [n.lower() for n in names], n=1, cutoff=0.5)
    hint = f"; did you mean {next(n for n in names if n.lower() == close[0].lower())}?" if close else ""
    raise OptionsError(f"--runner {runner!r} is not a runner Beam knows{hint} (known: {', '.join(names)})")


def setting_values(job, settings) -> dict:
    """name -> the job's value of each setting, a list setting's comma-separated string split into its items."""
    return {s.name: split_list(getattr(job, s.name)) if s.items else getattr(job, s.name) for s in settings}


def spec_from(job: GradientOptions) -> GradientSpec:
    from transforms.gradients.spec import spec_from_values  # TensorFlow: only once a model is needed

    return spec_from_values(setting_values(job, ENGINE_SETTINGS))


def given_settings(job: GradientOptions) -> list[str]:
    """The gradient settings (spec fields, and the row columns the answers read) given by flag or config."""
    given = job.get_all_options(drop_default=True)
    return [s.name for s in ENGINE_SETTINGS if s.name in given]


def row_columns(job: GradientOptions) -> dict[str, str | None]:
    """The columns of the row inputs the engine may ask for, by the spec field that names each."""
    from transforms.gradients.methods.baselines import baseline_column  # TensorFlow: a model is needed by now

    return {
        "label_column": job.label_column,
        "class_column": job.class_column,
        "baseline_column": baseline_column(job.baseline),
    }


def check_prefix(prefix: str | None, flag: str, name: str = "gradients", written: bool = True) -> None:
    """An output prefix names files, not a folder: `out/` or an existing folder would put the shards beside it.

    The error shows a valid prefix inside the folder (`out/gradients`). A prefix the job writes (`written`) may not
    hold a wildcard, in its absolute path either: Beam's sink lists and deletes its shards by a glob of it.
    """
    if not prefix:
        return
    remote = "://" in prefix
    full = prefix if remote else os.path.abspath(prefix)
    wildcards = [c for c in "[*?" if c in full]
    if written and wildcards:
        where = f"{prefix!r}" if full == prefix else f"{prefix!r} ({full})"
        raise OptionsError(
            f"{flag} {where} holds {' and '.join(map(repr, wildcards))}, which Beam's file sink reads as "
            "wildcards in the output's file names; give a prefix whose path has no '[', '*' or '?'"
        )
    if remote and not prefix.endswith("/"):
        _check_remote_segments(prefix, flag)
    if prefix.endswith("/") or (not remote and (prefix.endswith(os.sep) or os.path.isdir(prefix))):
        folder = prefix.rstrip("/" + os.sep) or prefix
        example = f"{folder}/{name}" if folder != "/" else f"/{name}"
        raise OptionsError(
            f"{flag} {prefix!r} is a folder, but {flag} takes a prefix of file names "
            f"(<prefix>-SSSSS-of-NNNNN.parquet, <prefix>_SUCCESS, ...); give one inside it, e.g. "
            + (f"{flag} {example}" if flag.startswith("-") else example)
        )


def _check_remote_segments(prefix: str, flag: str) -> None:
    """An object store's path is a name, not a folder tree: `gs://b/data//g` would name the marker `data//g_SUCCESS`,
    while Beam's file system joins drop the empty segment and put the shards at `data/g-...`, beside the input
    `data/*.parquet` that the overlap checks compared against `data//g`. A reviewer saw each rerun read its own
    earlier output. So a remote prefix has no empty, '.' or '..' segment."""
    scheme, _, path = prefix.partition("://")
    segments = path.split("/")
    odd = list(dict.fromkeys(f"'/{s}/'" if s else "'//'" for s in segments[1:] if s in ("", ".", "..")))
    if odd:
        tidy = f"{scheme}://{segments[0]}/" + "/".join(s for s in segments[1:] if s not in ("", "."))
        hint = f"; give {tidy}" if "'/../'" not in odd else ""
        raise OptionsError(
            f"{flag} {prefix!r} holds {' and '.join(odd)}: an object store keeps it in the files' names while "
            f"Beam's file system may drop it, so the job's files would not all land where its checks look{hint}"
        )


def flag_error(err: SpecError) -> SpecError:
    """An engine error with its spec fields named as the CLI's flags (every field the engine names is a flag)."""
    return err.named({field: f"--{field}" for field in err.fields})


def check_required(job: GradientOptions) -> None:
    refuse_options_of(job, InfluenceOptions, "beam-gradients influence")
    missing = [name for name in ("input", "output", "model") if not getattr(job, name)]
    if missing:
        raise OptionsError(f"missing {', '.join('--' + m for m in missing)}; see --help (or try --demo)")
    check_values(job)


def check_values(job: GradientOptions) -> None:
    """Every check that needs no file and no model: run before TensorFlow is imported, so it answers at once.

    Each setting's value against its declaration (the engine checks its own again once TensorFlow is imported).
    """
    for name, flag in (("output", "--output"), ("rejected", "--rejected")):
        check_prefix(getattr(job, name), flag)
    settings = by_name(main_settings())
    try:
        check_settings(setting_values(job, settings.values()), settings)
    except SpecError as err:
        if any(settings[field].kind == "job" for field in err.fields):
            raise OptionsError(str(flag_error(err))) from None
        raise flag_error(err) from None
    if job.vocab and job.wrt != "layer":  # names the ids of --wrt layer's token aggregates only
        raise OptionsError(f"--vocab names the token ids of --wrt layer's token scores; with --wrt {job.wrt}, leave it out")


# ---------------------------------------------------------------- `beam-gradients influence`

class InfluenceOptions(PipelineOptions):
    """The options of `beam-gradients influence` that the main job does not have."""

    @classmethod
    def _add_argparse_args(cls, parser):
        for setting in influence_settings():
            add_setting(parser, setting)


def _declared(cls) -> dict[str, str]:
    """dest -> flag of every option a class declares."""
    parser = argparse.ArgumentParser(add_help=False)
    cls._add_argparse_args(parser)
    return {a.dest: a.option_strings[0] for a in parser._actions}


def refuse_options_of(options: PipelineOptions, cls, command: str, allowed=()) -> None:
    """An option of the other command, given here, is an error rather than silently ignored."""
    given = options.get_all_options(drop_default=True)
    foreign = [flag for dest, flag in _declared(cls).items() if dest in given and dest not in allowed]
    if foreign:
        raise OptionsError(f"{', '.join(foreign)}: an option of {command}, not of this command; see --help")


def influence_help_text() -> str:
    shared = by_name(main_settings())

    def add(parser):
        InfluenceOptions._add_argparse_args(parser)
        for name, text in INFLUENCE_SHARED.items():
            add_setting(parser, shared[name], text)

    description = "The training rows that pushed each query's prediction, from the main job's weight projections."
    return help_text("beam-gradients influence", description, add, commands=())


def _shown(value) -> str:
    if value is None or value == ():
        return ""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):
        return ",".join(f"`{v}`" for v in value)
    return f"`{value}`"


def _table(settings, helps: dict | None = None) -> list[str]:
    lines = ["| option | type | default | allowed | read by | what it does |", "|---|---|---|---|---|---|"]
    for s in settings:
        kind = f"list of {s.type.__name__}" if s.items else s.type.__name__
        allowed = ", ".join(f"`{c}`" for c in s.choices) if s.choices else (s.bounds() if s.bounded else "")
        text = flag_text((helps or {}).get(s.name) or s.help).replace("|", "\\|").replace("<", "&lt;")
        lines.append(f"| `--{s.name}` | {kind} | {_shown(s.default)} | {allowed} | {s.owner} | {text} |")
        if s.negatable:
            lines.append(f"| `--no_{s.name}` | bool | | | {s.owner} | Undo a config's {s.name}. |")
    return lines


def options_reference() -> str:
    """docs/options.md: every option of both commands, from the declarations (docs/make_options.py writes it)."""
    shared = by_name(main_settings())
    lines = [
        "# Options",
        "",
        "Generated from the settings' declarations by `python docs/make_options.py`; do not edit by hand.",
        "Each option is also a key of a `--config` YAML file and a keyword argument of `pipeline.run()`;",
        "the gradient settings (read by a target, method, wrt or weight form) are keyword arguments of",
        "`transforms.api.ComputeGradients` and fields of `transforms.gradients.GradientSpec`.",
        "An empty default means not given. Any Beam pipeline option is accepted too (`--runner`, ...).",
        "",
        "## beam-gradients",
        "",
        *_table(main_settings()),
        "",
        "## beam-gradients influence",
        "",
        *_table(influence_settings() + tuple(shared[name] for name in INFLUENCE_SHARED), INFLUENCE_SHARED),
        "",
    ]
    return "\n".join(lines)
