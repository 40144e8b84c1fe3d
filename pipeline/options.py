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
from typing import TYPE_CHECKING, Sequence

import yaml
from apache_beam.options.pipeline_options import PipelineOptions, _BeamArgumentParser

from transforms.gradients.choices import EMITS, KERAS_LOSSES, MINIMUMS, NAMES, UNCONNECTED_MODES, check_minimum
from transforms.gradients.errors import SpecError

if TYPE_CHECKING:
    from transforms.gradients import GradientSpec

DEFAULT_BATCH_SIZE = 256
# Options that hold a comma-separated list: given more than once, their values add up.
LIST_OPTIONS = ("feature_columns", "keep_columns", "emit", "input_map", "weight_output")
# --runner values (any module path before them, any case) that run on Dask.
DASK_RUNNERS = ("daskrunner", "dask")


class OptionsError(ValueError):
    """An option that cannot work; raised before any data is read."""


class GradientOptions(PipelineOptions):
    """The job's own options. Their names are the public interface."""

    @classmethod
    def _add_argparse_args(cls, parser):
        add = parser.add_argument
        add("--input", help="Parquet file or glob to read (local path or gs://...).")
        add("--output", help="Output prefix: shards are <output>-SSSSS-of-NNNNN.parquet.")
        add("--model", help="Keras model: .keras, .h5 or SavedModel directory; local path or fsspec URL.")
        add(
            "--feature_columns",
            help="Column(s) feeding the model: one tensor or list column, or several scalar columns "
            "stacked in order (comma-separated).",
        )
        add("--keep_columns", help="Key columns copied unchanged to every output row (comma-separated).")
        add("--input_map", help="name=column,... maps model inputs to columns; join scalar columns with +.")
        add(
            "--target",
            default="sum",
            choices=NAMES["target"],
            help=f"What to differentiate: {', '.join(NAMES['target'])}.",
        )
        add("--class_column", help="Column holding each row's class index, for --target class.")
        add("--k", type=int, default=3, help="Classes per row for --target top_k (one gradient column each).")
        add("--output_name", help="The model output the target reads (a multi-output model's head).")
        add(
            "--method",
            default="gradient",
            choices=NAMES["method"],
            help=f"How the gradient is taken: {', '.join(NAMES['method'])}.",
        )
        add("--steps", type=int, default=50, help="Integrated gradients: points on the path.")
        add(
            "--ig_rule",
            default="riemann_trapezoid",
            choices=NAMES["ig_rule"],
            help=f"Integrated gradients: the step rule, {', '.join(NAMES['ig_rule'])}.",
        )
        add(
            "--baseline",
            default="zeros",
            help="Integrated gradients: zeros, value:<number>, column:<name>, mean (the dataset's, a first pass) or blur:<sigma>.",
        )
        add(
            "--samples",
            type=int,
            help="Noisy samples per row (default 50 for smoothgrad, vargrad, squaregrad; with another method: "
            "SmoothGrad over it).",
        )
        add("--noise", type=float, default=0.2, help="Noise standard deviation, as a fraction of each row's range.")
        add("--seed", type=int, default=0, help="Seed of the noise (mixed with each row's keys or position).")
        add("--chunk", type=int, help="Steps or samples per row in one model call (default: about 1024 rows).")
        add("--label_column", help="Column holding each row's label, for --loss.")
        add("--loss", help=f"Per-example loss: {', '.join(KERAS_LOSSES)} or module.path:function.")
        add("--clip_norm", type=float, help="Rescale each example's own gradient to this L2 norm at most.")
        add(
            "--clip_per_tensor",
            action="store_true",
            help="With --clip_norm: clip each differentiated tensor on its own, not all of a row's together.",
        )
        add(
            "--wrt",
            default="inputs",
            choices=NAMES["wrt"],
            help="Differentiate with respect to the model's inputs, its trainable weights, or both.",
        )
        add(
            "--weights",
            help="With --wrt weights/both: layer names (comma-separated) or a regular expression over variable "
            "paths (default: every trainable variable).",
        )
        add(
            "--weight_output",
            help=f"What each row's weight gradient is written as, comma-separated: {', '.join(NAMES['weight_output'])} "
            "(default: norm).",
        )
        add("--projection_dim", type=int, default=2048, help="Length k of each row's weight projection.")
        add("--projection_dtype", default="float32", choices=NAMES["projection_dtype"], help="Type of the projection.")
        add("--projection_seed", type=int, default=0, help="Seed of the projection: equal seeds, comparable rows.")
        # ---- issue 20 (h-20): settings declared by wrt/forms/projection.py (Projection.settings)
        add(
            "--projection",
            default="countsketch",
            choices=NAMES["projection"],
            help="How the projection is built: countsketch of each row's gradient, or factored (a TensorSketch of "
            "each layer's inputs and output gradients, never forming the gradient; docs/fast-weights.md).",
        )
        # ---- end of issue 20's settings
        add(
            "--allow_large_rows",
            action="store_true",
            help="Allow --weight_output full beyond 1,000,000 numbers per row.",
        )
        add(
            "--weight_memory_mb",
            type=int,
            default=1024,
            help="Memory budget of the per-example weight gradients: sets the rows per micro-batch.",
        )
        add("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="Rows per model call (the last is padded).")
        add("--emit", help=f"Extra per-row columns, comma-separated: {', '.join(EMITS)}.")
        add(
            "--unconnected",
            default="zeros",
            choices=UNCONNECTED_MODES,
            help="An input the target does not depend on: write zeros (and count it) or fail.",
        )
        add("--trust_model_code", action="store_true", help="Load models that carry code (Lambda layers).")
        add(
            "--no_trust_model_code",
            dest="trust_model_code",
            action="store_false",
            help="Undo a config's trust_model_code.",
        )
        add("--jit_compile", action="store_true", help="Compile the gradient function with XLA.")
        add("--no_jit_compile", dest="jit_compile", action="store_false", help="Undo a config's jit_compile.")
        add("--read_batch_rows", type=int, help="Rows per Parquet record batch read (default: about 32 MiB).")
        add("--rejected", help="Prefix of the rejected-rows output (default: <output>_rejected).")
        add(
            "--max_rejected_fraction",
            type=float,
            help="Exit with status 3 (after writing everything) when more than this fraction of rows is rejected.",
        )
        add(
            "--num_shards",
            type=int,
            help="Shards per output (default: the runner decides); a fixed count costs a shuffle.",
        )
        add(
            "--group_column",
            help="Also aggregate per value of this column (a label or a slice) in <output>-summary.json; "
            "it is kept in the output like a --keep_columns column.",
        )
        add("--top_rows", type=int, default=20, help="Rows listed in <output>-summary.json's top-by-norm and top-by-loss.")
        add("--quiet", action="store_true", help="No progress lines while the job runs.")
        add("--config", help="YAML file of options; flags on the command line override it.")
        add("--debug", action="store_true", help="Show tracebacks on errors.")
        add("--demo", action="store_true", help="Make a demo model and data under ./demo and run on them.")


def split_list(value: str | None, strip: bool = True) -> list[str]:
    """A comma-separated list. Column names keep their spaces (`strip=False`): a column may be named ' x'.

    Planning then matches each name exactly, or with its spaces trimmed where no column has the exact name.
    """
    return [v.strip() if strip else v for v in (value or "").split(",") if v.strip()]


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
            raise OptionsError(f"{where}: unknown option {key!r}")
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
    flags = {f"--{name}": [] for name in LIST_OPTIONS}
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
        known = [s for a in parser._actions for s in a.option_strings if s.startswith("--")]
        close = difflib.get_close_matches(flag, known, n=1, cutoff=0.7) if flag.startswith("--") else []
        hint = f"; did you mean {close[0]}?" if close else "; see --help"
        raise OptionsError(f"unknown option {' '.join(unknown)}{hint}")
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


def spec_from(job: GradientOptions) -> GradientSpec:
    from transforms.gradients import GradientSpec  # TensorFlow: only once a model is needed

    return GradientSpec(
        target=job.target,
        loss=job.loss,
        clip_norm=job.clip_norm,
        unconnected=job.unconnected,
        emit=tuple(split_list(job.emit)),
        jit_compile=job.jit_compile,
        method=job.method,
        steps=job.steps,
        ig_rule=job.ig_rule,
        baseline=job.baseline,
        samples=job.samples,
        noise=job.noise,
        seed=job.seed,
        chunk=job.chunk,
        k=job.k,
        output_name=job.output_name,
        wrt=job.wrt,
        clip_per_tensor=job.clip_per_tensor,
        weights=job.weights,
        weight_output=tuple(split_list(job.weight_output)) or GradientSpec.weight_output,
        projection_dim=job.projection_dim,
        projection_dtype=job.projection_dtype,
        projection_seed=job.projection_seed,
        projection=job.projection,  # issue 20
        allow_large_rows=job.allow_large_rows,
        weight_memory_mb=job.weight_memory_mb,
    )


def given_settings(job: GradientOptions) -> list[str]:
    """The gradient settings (spec fields, and the row columns the answers read) given by flag or config."""
    import dataclasses

    from transforms.gradients import GradientSpec

    given = job.get_all_options(drop_default=True)
    names = [f.name for f in dataclasses.fields(GradientSpec)] + ["label_column", "class_column"]
    return [name for name in names if name in given]


def row_columns(job: GradientOptions) -> dict[str, str | None]:
    """The columns of the row inputs the engine may ask for, by the spec field that names each."""
    from transforms.gradients.methods.baselines import baseline_column  # TensorFlow: a model is needed by now

    return {
        "label_column": job.label_column,
        "class_column": job.class_column,
        "baseline_column": baseline_column(job.baseline),
    }


def check_prefix(prefix: str | None, flag: str, name: str = "gradients") -> None:
    """An output prefix names files, not a folder: `out/` or an existing folder would put the shards beside it.

    The error shows a valid prefix inside the folder (`out/gradients`).
    """
    if not prefix:
        return
    remote = "://" in prefix
    if prefix.endswith("/") or (not remote and (prefix.endswith(os.sep) or os.path.isdir(prefix))):
        folder = prefix.rstrip("/" + os.sep) or prefix
        example = f"{folder}/{name}" if folder != "/" else f"/{name}"
        raise OptionsError(
            f"{flag} {prefix!r} is a folder, but {flag} takes a prefix of file names "
            f"(<prefix>-SSSSS-of-NNNNN.parquet, <prefix>_SUCCESS, ...); give one inside it, e.g. "
            + (f"{flag} {example}" if flag.startswith("-") else example)
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
    """Every check that needs no file and no model: run before TensorFlow is imported, so it answers at once."""
    for name, flag in (("output", "--output"), ("rejected", "--rejected")):
        check_prefix(getattr(job, name), flag)
    for field in MINIMUMS:  # the engine checks these too, but only once TensorFlow is imported
        try:
            check_minimum(field, getattr(job, field))
        except SpecError as err:
            raise flag_error(err) from None
    if job.clip_norm is not None and not job.clip_norm > 0:
        raise OptionsError(f"--clip_norm must be above 0, not {job.clip_norm}")
    if job.batch_size is None or job.batch_size < 1:
        raise OptionsError(f"--batch_size must be 1 or more, not {job.batch_size}")
    if job.max_rejected_fraction is not None and not 0 <= job.max_rejected_fraction <= 1:
        raise OptionsError(f"--max_rejected_fraction must be between 0 and 1, not {job.max_rejected_fraction}")
    if job.num_shards is not None and job.num_shards < 0:
        raise OptionsError(f"--num_shards must be 0 (the runner decides) or more, not {job.num_shards}")
    if job.top_rows is None or job.top_rows < 0:
        raise OptionsError(f"--top_rows must be 0 or more, not {job.top_rows}")
    if job.read_batch_rows is not None and job.read_batch_rows < 1:
        raise OptionsError(f"--read_batch_rows must be 1 or more, not {job.read_batch_rows}")


# ---------------------------------------------------------------- `beam-gradients influence`

# The influence command shares these options of the main job, with the same meaning for its own inputs and output.
INFLUENCE_SHARED = {
    "output": "Output prefix: shards are <output>-SSSSS-of-NNNNN.parquet, one row per (query, kind, rank).",
    "keep_columns": "Key columns of both inputs (comma-separated); default: every integer, string, boolean, "
    "date or timestamp column.",
    "read_batch_rows": "Training rows per block read (default: about 32 MiB of projections).",
    "config": "YAML file of options; flags on the command line override it.",
    "debug": "Show tracebacks on errors.",
}
LIST_OPTIONS = LIST_OPTIONS + ("train", "query", "checkpoint_weights", "kinds")


class InfluenceOptions(PipelineOptions):
    """The options of `beam-gradients influence` that the main job does not have."""

    @classmethod
    def _add_argparse_args(cls, parser):
        from transforms.influence import KINDS
        from transforms.scores import SCORES

        add = parser.add_argument
        add("--train", help="Training rows' projections: a file or glob per checkpoint (comma-separated or repeated).")
        add("--query", help="Query rows' projections: a file or glob per checkpoint, paired with --train in order.")
        add("--top_k", type=int, default=20, help="Training rows kept per query and kind.")
        add("--score", default="tracin", choices=tuple(SCORES), help="tracin (inner product), cosine or trak.")
        add("--damping", type=float, default=0.0, help="TRAK's λ: (ΦᵀΦ + λI)⁻¹.")
        add("--checkpoint_weights", help="One weight per checkpoint (its learning rate), comma-separated; default 1.")
        add("--kinds", help=f"Which rankings to write, comma-separated: {', '.join(KINDS)} (default both).")
        add("--self_influence", action="store_true", help="Also write each training row's score against itself.")
        add("--self_influence_output", help="Prefix of the self-influence output (default <output>_self_influence).")
        add(
            "--allow_incomplete",
            action="store_true",
            help="Read --train and --query files that no _SUCCESS marker lists (an output still being written, "
            "cut short, or not written by the main job).",
        )
        add(
            "--query_memory_mb",
            type=int,
            default=1024,
            help="Memory per worker for the queries, a block's scores and the top-k; more queries are split "
            "into groups, each a branch of the job.",
        )


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
    def add(parser):
        InfluenceOptions._add_argparse_args(parser)
        for name, text in INFLUENCE_SHARED.items():
            parser.add_argument(f"--{name}", help=text, **({"action": "store_true"} if name == "debug" else {}))

    description = "The training rows that pushed each query's prediction, from the main job's weight projections."
    return help_text("beam-gradients influence", description, add, commands=())
