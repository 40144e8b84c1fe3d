"""The influence job (`beam-gradients influence`): plan, build and run it from options.

Everything that can be checked before compute is checked here first: both
sides' projection metadata (model hash, variables, seed, dim, dtype,
construction), unique keys within each input, the same rows in every
checkpoint. Key columns (only) of every file are read for that, so the launcher
holds about 8 bytes per integer key of every row for a moment.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import AsSingleton

from transforms.contract import REJECTED_SUFFIX, SELF_INFLUENCE_SUFFIX, metadata_key
from pipeline.options import (
    INFLUENCE_SHARED,
    GradientOptions,
    InfluenceOptions,
    OptionsError,
    flag_error,
    refuse_options_of,
    setting_values,
    split_list,
)
from pipeline.settings import influence_settings
from pipeline.outputs import StagedOutputs, _absolute, check_inputs_untouched, check_no_clash, check_pattern_untouched
from pipeline.reader import IncompleteOutput, output_shards
from pipeline.runners import check_reachable, is_dry_run, resolve_runner
from pipeline.staged import RowsUnaccounted, run_staged
from transforms import __version__
from transforms.influence.steps import (
    KINDS,
    REJECTED as REJECTED_TAG,
    SELF,
    GramFn,
    JoinCheckpoints,
    JoinQueries,
    MergeTopK,
    ReadProjections,
    ScoreBlocks,
    ScoreSpec,
    SplitUnscorable,
    in_group,
    influence_schema,
    influence_table,
    inverses,
    prepare_queries,
    self_influence_schema,
)
from transforms.gradients.errors import SpecError
from transforms.gradients.settings import by_name, check_settings
from transforms.io.files import SHARD_NAME, InputError, check_writable, match_files, open_parquet, read_schemas
from transforms.io.schema import rejected_schema
from transforms.io.write import write_parquet
from transforms.influence.projections import ProjectionMeta, default_keys, duplicate_key, first_difference
from transforms.influence.scores import SCORES
from transforms.influence.topk import COMPACT_EVERY

COMMAND = "beam-gradients influence"
INFLUENCE, SELF_INFLUENCE, REJECTED = "influence", "self_influence", "rejected"
BLOCK_ROWS = 4096  # training rows per matrix product, at most
JOIN_BUCKET_BYTES = 64 << 20  # projections per bucket of the checkpoint join
KEY_BYTES = 32  # what one candidate's key and bookkeeping cost in the top-k buffer, about


@dataclasses.dataclass
class Side:
    """One input (--train or --query): per checkpoint its files and metadata; its keys and row count."""

    option: str
    patterns: list[str]
    files: list[list[str]]
    metas: list[ProjectionMeta]
    keys: list[str]
    key_schema: pa.Schema
    rows: int

    @property
    def dims(self) -> list[int]:
        return [m.dim for m in self.metas]


@dataclasses.dataclass
class InfluencePlan:
    train: Side
    query: Side
    spec: ScoreSpec
    groups: int  # query groups, each a branch of the job
    buckets: int  # of the checkpoint join (several checkpoints only)
    outputs: dict[str, str]
    read_batch_rows: int | None
    self_influence: bool

    def schema(self) -> pa.Schema:
        return influence_schema(self.query.key_schema, self.train.key_schema, self.metadata())

    def self_schema(self) -> pa.Schema:
        return self_influence_schema(self.train.key_schema, self.metadata())

    def rejected_schema(self) -> pa.Schema:
        """Training rows that cannot be scored: their keys, stage, reason and --train pattern (as the main job's)."""
        return rejected_schema(list(self.train.key_schema)).with_metadata(
            {k.encode(): v.encode() for k, v in self.metadata().items()}
        )

    def metadata(self) -> dict[str, str]:
        influence = {
            "score": self.spec.score,
            "top_k": self.spec.top_k,
            "checkpoint_weights": list(self.spec.weights),
            "damping": self.spec.damping,
            "train": self.train.patterns,
            "query": self.query.patterns,
            "model_sha256": [m.model_sha256 for m in self.train.metas],
        }
        return {metadata_key("influence"): json.dumps(influence), metadata_key("version"): __version__}


FLAGS = {name: f"--{name}" for name in ("train", "query", "damping")}  # the settings the Beam steps' errors name
OPTION_OF = {INFLUENCE: "--output", SELF_INFLUENCE: "--self_influence_output", REJECTED: f"--output (its {REJECTED_SUFFIX} rows)"}


def influence_outputs(job: GradientOptions, options: InfluenceOptions) -> dict[str, str]:
    """name -> output prefix, every prefix the job writes (one place, for the output checks and cleanup)."""
    outputs = {INFLUENCE: job.output, REJECTED: f"{job.output}{REJECTED_SUFFIX}"}
    if options.self_influence:
        outputs[SELF_INFLUENCE] = options.self_influence_output or f"{job.output}{SELF_INFLUENCE_SUFFIX}"
    return outputs


def _read_keys(path: str, keys: list[str]) -> pa.Table:
    try:
        return open_parquet(path).read(columns=keys)
    except (pa.ArrowException, OSError) as err:
        raise InputError(f"{path}: cannot read its key columns ({err})") from err


def check_complete(option: str, pattern: str, paths: Sequence[str]) -> None:
    """Every file must be a shard its output's `_SUCCESS` marker lists (and vouches for), as the reader asks."""
    vouched: dict[str, set] = {}
    for path in paths:
        folder, name = FileSystems.split(path)
        found = SHARD_NAME.match(name)
        prefix = FileSystems.join(folder, found.group("prefix")) if found else None
        if prefix is not None and prefix not in vouched:
            try:
                vouched[prefix] = {_absolute(p) for p in output_shards(prefix)}
            except IncompleteOutput:
                vouched[prefix] = set()
            except InputError as err:  # a corrupt marker, or one that does not vouch for its shards
                raise InputError(f"{option} {pattern!r}: {err}; pass --allow_incomplete to read it anyway") from None
        if prefix is None or _absolute(path) not in vouched[prefix]:
            marker = f"{prefix}_SUCCESS" if prefix else "a _SUCCESS marker"
            raise InputError(
                f"{option} {pattern!r}: {path} is not listed by {marker}, so its output is absent, still being "
                "written or was cut short; pass --allow_incomplete to read it anyway"
            )


def plan_side(option: str, patterns: list[str], keys: list[str], allow_incomplete: bool = False) -> Side:
    """Match, read footers and key columns, and check one input: everything but the projections."""
    files, metas, key_tables, key_schema = [], [], [], None
    for c, pattern in enumerate(patterns):
        where = f"{option} {pattern!r}" + (f" (checkpoint {c + 1})" if len(patterns) > 1 else "")
        matched = match_files(pattern, option).paths
        if not allow_incomplete:
            check_complete(option, pattern, matched)
        schemas = read_schemas(matched)
        meta = ProjectionMeta.of(schemas[0], matched[0])
        for path, schema in zip(matched[1:], schemas[1:]):
            differs = meta.differences(ProjectionMeta.of(schema, path))
            if differs:
                raise InputError(f"{where}: {matched[0]} and {path} differ in {'; '.join(differs)}")
        names = keys or default_keys(schemas[0])
        if not names:
            raise OptionsError(f"{where}: {matched[0]} has no integer or string column to key rows by; give --keep_columns")
        for path, schema in zip(matched, schemas):
            missing = [k for k in names if k not in schema.names]
            if missing:
                raise InputError(
                    f"{path} has no key column {missing[0]!r} (--keep_columns); its columns are: {', '.join(schema.names)}"
                )
        these = pa.schema([schemas[0].field(k) for k in names])
        for path, schema in zip(matched[1:], schemas[1:]):
            if pa.schema([schema.field(k) for k in names]) != these:
                raise InputError(f"{where}: the key columns' types differ between {matched[0]} and {path}")
        if key_schema is not None and (these != key_schema):
            raise InputError(f"{where}: its key columns {names} differ in name or type from checkpoint 1's")
        table = pa.concat_tables([_read_keys(path, names) for path in matched])
        twice = duplicate_key(table)
        if twice is not None:
            raise InputError(f"{where}: the key {twice} occurs more than once; rows must be unique by --keep_columns")
        difference = first_difference(key_tables[0], table) if key_tables else None
        if difference is not None:
            key, in_first = difference
            raise InputError(
                f"{where}: checkpoints hold different rows: the key {key} is in checkpoint "
                f"{1 if in_first else c + 1} ({patterns[0 if in_first else c]!r}) only"
            )
        files.append(matched)
        metas.append(meta)
        key_tables.append(table)
        key_schema = these
    return Side(option, list(patterns), files, metas, list(names), key_schema, key_tables[0].num_rows)


def check_pairs(train: Side, query: Side) -> None:
    """Each checkpoint's training and query projections must come from the same model and projection."""
    for c, (t, q) in enumerate(zip(train.metas, query.metas)):
        differs = t.differences(q)
        if differs:
            checkpoint = f" of checkpoint {c + 1}" if len(train.metas) > 1 else ""
            raise InputError(
                f"--train {train.patterns[c]!r} ({train.files[c][0]}) and --query {query.patterns[c]!r} "
                f"({query.files[c][0]}){checkpoint} cannot be compared: {'; '.join(differs)}"
            )


def plan_groups(
    queries: int, dims: Sequence[int], top_k: int, kinds: int, budget_mb: int, feature_bytes: int = 4
) -> tuple[int, int]:
    """(query groups, block rows) so a worker holds the queries, a block's scores and the top-k within the budget.

    `feature_bytes`: a feature's size in the score's dtype (8 for TRAK's float64), beside float32 projections."""
    width = sum(dims)
    budget = budget_mb << 20
    block_rows = BLOCK_ROWS
    block = block_rows * width * (4 + feature_bytes)  # the block's projections and its features
    scores = block_rows * (feature_bytes + (4 if feature_bytes != 4 else 0))  # a query's product, then as float32
    per_query = width * (4 + feature_bytes) + scores + kinds * (COMPACT_EVERY + 1) * top_k * KEY_BYTES
    room = budget - block
    if room < per_query:
        raise OptionsError(
            f"--query_memory_mb {budget_mb} is too small for a block of {block_rows} rows of {width} numbers; "
            f"give at least {math.ceil((block + per_query) / (1 << 20))}"
        )
    per_group = room // per_query
    return max(1, math.ceil(queries / per_group)), block_rows


def plan_job(job: GradientOptions, options: InfluenceOptions) -> InfluencePlan:
    """Check every option against the files; nothing is computed yet."""
    missing = [f"--{n}" for n, v in (("train", options.train), ("query", options.query), ("output", job.output)) if not v]
    if missing:
        raise OptionsError(f"missing {', '.join(missing)}; see {COMMAND} --help")
    trains, queries = split_list(options.train), split_list(options.query)
    if len(trains) != len(queries):
        raise OptionsError(
            f"--train lists {len(trains)} checkpoints and --query {len(queries)}; they are paired in order"
        )
    weights = split_list(options.checkpoint_weights) or ["1"] * len(trains)
    if len(weights) != len(trains):
        raise OptionsError(f"--checkpoint_weights has {len(weights)} values for {len(trains)} checkpoints")
    try:
        weights = tuple(float(w) for w in weights)
    except ValueError as err:
        raise OptionsError(f"--checkpoint_weights takes numbers ({err})") from err
    kinds = tuple(split_list(options.kinds) or KINDS)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise OptionsError(f"--kinds: unknown {unknown[0]!r}; choose from {', '.join(KINDS)}")
    settings = by_name(influence_settings())
    try:  # each value against its declaration: --top_k 1 or more, --damping 0 or more, ...
        check_settings(setting_values(options, settings.values()), settings)
    except SpecError as err:
        raise OptionsError(str(flag_error(err))) from None
    score = SCORES[options.score]
    if options.self_influence and not score.has_self_influence:
        raise OptionsError(f"--self_influence needs --score tracin or trak: with {score.name} every row's is 1")
    outputs = influence_outputs(job, options)
    prefixes = {OPTION_OF[name]: prefix for name, prefix in outputs.items()}
    check_no_clash(prefixes)
    for option, patterns in (("--train", trains), ("--query", queries)):  # before reading: a rerun would read ours
        for pattern in patterns:
            check_pattern_untouched(prefixes, {option: pattern})

    keys = split_list(job.keep_columns)
    train = plan_side("--train", trains, keys, options.allow_incomplete)
    query = plan_side("--query", queries, keys, options.allow_incomplete)
    check_inputs_untouched(
        prefixes,
        {
            "--train": [p for paths in train.files for p in paths],
            "--query": [p for paths in query.files for p in paths],
            "--config": [job.config],
        },
    )
    check_pairs(train, query)
    if score.needs_gram and options.damping == 0 and train.rows < max(train.dims):
        raise OptionsError(
            f"--score trak: --train has {train.rows} rows, fewer than the projection dim {max(train.dims)}, "
            "so ΦᵀΦ is singular; give --damping greater than 0"
        )
    groups, block_rows = plan_groups(
        query.rows, query.dims, options.top_k, len(kinds), options.query_memory_mb, np.dtype(score.dtype).itemsize
    )
    width_bytes = sum(train.dims) * 4
    buckets = max(1, math.ceil(train.rows * width_bytes / JOIN_BUCKET_BYTES))
    spec = ScoreSpec(score.name, weights, options.top_k, kinds, options.damping, block_rows)
    return InfluencePlan(train, query, spec, groups, buckets, outputs, job.read_batch_rows, options.self_influence)


def build(pipeline: beam.Pipeline, plan: InfluencePlan, prefixes: dict[str, str]) -> None:
    """TRAK's Gram pass, then per query group: read training rows, score against the group, merge top-k, write.

    `prefixes` are where each output is written: the staging names of `plan.outputs`.
    """
    spec, train, query = plan.spec, plan.train, plan.query
    checkpoints = spec.checkpoints
    inverse = None
    rejected = plan.rejected_schema()
    if SCORES[spec.score].needs_gram:  # over the rows that are scored: joined, so a row is left out of every checkpoint's
        inverse = AsSingleton(
            pipeline
            | "Gram/Read" >> ReadProjections(train.files, train.keys, plan.read_batch_rows, keep_bad=True)
            | "Gram/Join" >> JoinCheckpoints(checkpoints, plan.buckets, spec.block_rows, FLAGS)
            | "Gram/Finite" >> beam.ParDo(SplitUnscorable(rejected, train.patterns, with_rejected=False))
            | "Gram/Sum" >> beam.CombineGlobally(GramFn(checkpoints))
            | "Gram/Invert" >> beam.Map(inverses, spec.damping, FLAGS)
        )
    side = (inverse,) if inverse is not None else ()
    schema = plan.schema()
    results = []
    for g in range(plan.groups):
        name = f"Group{g}" if plan.groups > 1 else "Queries"
        queries = (
            pipeline
            | f"{name}/Read" >> ReadProjections(query.files, query.keys)
            | f"{name}/Select" >> beam.Map(in_group, g, plan.groups)
            | f"{name}/Join" >> beam.CombineGlobally(JoinQueries(checkpoints, FLAGS))
            | f"{name}/Prepare" >> beam.Map(prepare_queries, spec, *side)
        )
        label = f"Train{g}" if plan.groups > 1 else "Train"
        split = (
            pipeline
            | f"{label}/Read" >> ReadProjections(train.files, train.keys, plan.read_batch_rows, keep_bad=True)
            | f"{label}/Join" >> JoinCheckpoints(checkpoints, plan.buckets, spec.block_rows, FLAGS)
            | f"{label}/Finite"
            >> beam.ParDo(SplitUnscorable(rejected, train.patterns, with_rejected=g == 0)).with_outputs(
                REJECTED_TAG, main="scorable"
            )
        )
        blocks = split.scorable
        if g == 0:  # every group reads every training row: one writes the rejected ones
            split[REJECTED_TAG] | "WriteRejected" >> write_parquet(prefixes[REJECTED], rejected)
        with_self = plan.self_influence and g == 0
        scored = blocks | f"{label}/Score" >> beam.ParDo(
            ScoreBlocks(spec, with_self), AsSingleton(queries), *side
        ).with_outputs(SELF, main="best")
        results.append(
            scored.best
            | f"{label}/Merge" >> beam.CombineGlobally(MergeTopK())
            | f"{label}/Rows" >> beam.FlatMap(influence_table, AsSingleton(queries), schema)
        )
        if with_self:
            scored[SELF] | "WriteSelfInfluence" >> write_parquet(prefixes[SELF_INFLUENCE], plan.self_schema())
    rows = results[0] if len(results) == 1 else tuple(results) | "Groups" >> beam.Flatten()
    rows | "WriteInfluence" >> write_parquet(prefixes[INFLUENCE], schema)


@dataclasses.dataclass
class InfluenceSummary:
    plan: InfluencePlan
    wall_seconds: float
    outputs: dict[str, list[str]]
    result: object = None
    dry_run: bool = False
    rows_rejected: int = 0  # training rows that could not be scored

    def __str__(self) -> str:
        if self.dry_run:
            return f"dry run: the job was built and checked in {self.wall_seconds:.1f} s, not run; nothing was written"
        p = self.plan
        lines = [
            f"influence: {p.train.rows} training rows x {p.query.rows} queries, {p.spec.checkpoints} checkpoint(s), "
            f"score {p.spec.score}, top {p.spec.top_k} per query and kind, {p.groups} query group(s)",
            f"training rows: {p.train.rows} in, {p.train.rows - self.rows_rejected} scored, "
            f"{self.rows_rejected} rejected (null or non-finite projection)",
            f"wall time: {self.wall_seconds:.1f} s",
        ]
        for name, files in self.outputs.items():
            lines.append(f"{name.replace('_', ' ')}: " + (", ".join(files) or "(none)"))
        return "\n".join(lines)


def check_rows(plan: InfluencePlan, rows: dict[str, int], scored: int) -> None:
    """Training rows in = scored + rejected, as the written files show it; RowsUnaccounted (nothing moved) if not.

    Every query gets min(top_k, scored) rows per kind, and self influence one row per scored row:
    both count the scored rows independently of the rejected output.
    """
    expected = {INFLUENCE: plan.query.rows * len(plan.spec.kinds) * min(plan.spec.top_k, max(scored, 0))}
    if SELF_INFLUENCE in rows:
        expected[SELF_INFLUENCE] = scored
    for name, count in expected.items():
        if rows[name] != count or scored < 0:
            raise RowsUnaccounted(
                f"training rows unaccounted for: --train holds {plan.train.rows}, {rows[REJECTED]} were rejected, "
                f"so {scored} scored, but the {name.replace('_', ' ')} output holds {rows[name]} rows, not {count}; "
                "nothing was moved into place"
            )


def run_options(options, argv: Sequence[str] = ()) -> InfluenceSummary:
    """Check, plan, build, run; the summary of what happened."""
    job, mine = options.view_as(GradientOptions), options.view_as(InfluenceOptions)
    refuse_options_of(options, GradientOptions, "the main job (beam-gradients)", allowed=INFLUENCE_SHARED)
    dry_run = is_dry_run(options)
    check_reachable(options)
    started = time.monotonic()
    plan = plan_job(job, mine)
    if not dry_run:
        for name, prefix in plan.outputs.items():
            check_writable(prefix, OPTION_OF[name])
    staged = StagedOutputs(plan.outputs)
    pipeline = beam.Pipeline(runner=resolve_runner(options), options=options)
    build(pipeline, plan, staged.staging)
    if dry_run:
        return InfluenceSummary(plan, time.monotonic() - started, {}, pipeline.run(), dry_run=True)

    def reconcile(rows: dict[str, int]) -> dict:
        scored = plan.train.rows - rows[REJECTED]
        check_rows(plan, rows, scored)
        marker = {
            "train_rows": plan.train.rows,
            "train_rows_scored": scored,
            "train_rows_rejected": rows[REJECTED],
            "query_rows": plan.query.rows,
            "rows_out": rows[INFLUENCE],
        }
        if SELF_INFLUENCE in rows:
            marker["self_influence_rows"] = rows[SELF_INFLUENCE]
        return marker

    result, rows, written = run_staged(pipeline, staged, reconcile)
    return InfluenceSummary(plan, time.monotonic() - started, written, result, rows_rejected=rows[REJECTED])
