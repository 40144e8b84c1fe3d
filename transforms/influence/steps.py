"""Influence as Beam pieces: training rows stream in blocks, queries travel as a side input, top-k merges in a combiner.

    train files (per checkpoint) -> blocks of projections -> [joined across checkpoints by key]
        -> ScoreBlocks(queries side input) -> partial top-k per bundle -> MergeTopK -> rows
    query files (per checkpoint) -> JoinQueries (one element) -> prepared query features (side input)
    TRAK only: train blocks -> GramFn (one k×k per checkpoint) -> damped inverse (side input)

The score matrix never exists: a block of training rows meets every query of
its group in one matrix product, and only each query's k best survive the block.
The numbers live in transforms/influence/scores (numpy) and transforms/influence/topk (numpy, Arrow).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from transforms.contract import (
    INFLUENCE_KIND,
    KEY,
    SELF_INFLUENCE_COLUMN,
    SELF_INFLUENCE_KIND,
    TRAIN_KEY,
    TRAIN_PREFIX,
    column_entry,
    columns_metadata,
)
from transforms.contract import RANK as RANK_KIND, SCORE as SCORE_KIND  # topk's RANK, SCORE are its own columns
from transforms import METRICS
from transforms.errors import setting
from transforms.io.files import InputError
from transforms.io.read import ReadParquetBatches, UnreadableRows
from transforms.io.schema import rejected_table
from transforms.hashing import key_hash
from transforms.influence.projections import PROJECTION, first_difference, projection_matrix, sort_by_keys
from transforms.influence.scores import SCORES, damped_inverse, gram, query_matrix, self_influence, train_matrix
from transforms.influence.topk import QUERY, RANK, SCORE, TopK

PROPONENT, OPPONENT = "proponent", "opponent"
KINDS = (PROPONENT, OPPONENT)
SELF_INFLUENCE = SELF_INFLUENCE_COLUMN
SELF = "self"  # the tag of ScoreBlocks' self-influence output


@dataclasses.dataclass(frozen=True)
class Block:
    """Rows of one input: their keys and, per checkpoint, their (rows, k) projections (None: not joined yet)."""

    keys: pa.Table
    projections: tuple
    checkpoint: int = 0  # which checkpoint the single projection is, before the join

    @property
    def rows(self) -> int:
        return self.keys.num_rows


@dataclasses.dataclass(frozen=True)
class Queries:
    """One group of queries, joined across checkpoints and sorted by key; `features` once prepared."""

    keys: pa.Table
    projections: tuple
    features: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class ScoreSpec:
    """How to score, decided before any data is read. Picklable."""

    score: str
    weights: tuple[float, ...]
    top_k: int
    kinds: tuple[str, ...]
    damping: float = 0.0
    block_rows: int = 4096  # training rows per matrix product: bounds the (queries × rows) scores

    @property
    def checkpoints(self) -> int:
        return len(self.weights)


# ---------------------------------------------------------------- reading


class _ToBlock(beam.DoFn):
    def __init__(self, checkpoint: int, key_columns: Sequence[str], keep_bad: bool = False):
        self._checkpoint, self._keys, self._keep_bad = checkpoint, list(key_columns), keep_bad

    def process(self, element):
        if isinstance(element.batch, UnreadableRows):
            raise InputError(f"{element.source}: {element.batch.reason}")
        matrix = projection_matrix(element.batch, element.source, self._keep_bad)
        yield Block(pa.Table.from_batches([element.batch.select(self._keys)]), (matrix,), self._checkpoint)


class ReadProjections(beam.PTransform):
    """PBegin -> Block per record batch of each checkpoint's files (bounded in rows), tagged with its checkpoint.

    With `keep_bad`, rows whose projection is null or not finite are kept (NaN) for SplitUnscorable
    to reject once the checkpoints are joined; without, they fail the job (InputError naming the file).
    """

    def __init__(
        self, files: Sequence[Sequence[str]], key_columns: Sequence[str], rows: int | None = None, keep_bad: bool = False
    ):
        super().__init__()
        self._files, self._keys, self._rows = [list(f) for f in files], list(key_columns), rows
        self._keep_bad = keep_bad

    def expand(self, pbegin):
        columns = self._keys + [PROJECTION]
        blocks = [
            pbegin
            | f"Read{c}" >> ReadParquetBatches(files, columns, self._rows, self._keys)
            | f"Blocks{c}" >> beam.ParDo(_ToBlock(c, self._keys, self._keep_bad))
            for c, files in enumerate(self._files)
        ]
        return blocks[0] if len(blocks) == 1 else tuple(blocks) | "Checkpoints" >> beam.Flatten()


def _align(parts_by_checkpoint: dict[int, list[Block]], checkpoints: int, where: str, names: dict[str, str]) -> Block:
    """Blocks of the same keys from every checkpoint -> one Block, rows sorted by key, projections side by side.

    `where` is the setting the rows come from (`train`, `query`); errors show it as `names` says.
    """
    keys, projections = None, []
    for c in range(checkpoints):
        parts = parts_by_checkpoint.get(c, [])
        if not parts:
            raise InputError(
                setting(where) + ": checkpoint {c} has none of the rows its other checkpoints have", names, c=c + 1
            )
        these = pa.concat_tables([p.keys for p in parts])
        matrix = np.concatenate([p.projections[0] for p in parts]) if len(parts) > 1 else parts[0].projections[0]
        order = sort_by_keys(these)
        these, matrix = these.take(order), matrix[order]
        if keys is not None and not these.equals(keys):
            key, in_first = first_difference(keys, these) or ("(a row's order)", True)
            raise InputError(
                setting(where) + ": the key {key} is in checkpoint {c} only", names, key=key, c=1 if in_first else c + 1
            )
        keys = these
        projections.append(matrix)
    return Block(keys, tuple(projections))


class _Bucket(beam.DoFn):
    """Block -> (bucket, piece of the block): a key's rows of every checkpoint meet in one bucket."""

    def __init__(self, buckets: int):
        self._buckets = buckets

    def process(self, block: Block):
        bucket = key_hash(block.keys) % np.uint64(self._buckets)
        for b in np.unique(bucket):
            rows = np.flatnonzero(bucket == b)
            yield int(b), Block(block.keys.take(rows), (block.projections[0][rows],), block.checkpoint)


class _JoinBucket(beam.DoFn):
    def __init__(self, checkpoints: int, block_rows: int, names: dict[str, str]):
        self._checkpoints, self._rows, self._names = checkpoints, block_rows, names

    def process(self, element):
        bucket, parts = element
        by_checkpoint: dict[int, list[Block]] = {}
        for part in parts:
            by_checkpoint.setdefault(part.checkpoint, []).append(part)
        joined = _align(by_checkpoint, self._checkpoints, "train", self._names)
        for start in range(0, joined.rows, self._rows):
            stop = start + self._rows
            yield Block(joined.keys.slice(start, self._rows), tuple(p[start:stop] for p in joined.projections))


class JoinCheckpoints(beam.PTransform):
    """Block per checkpoint -> Block holding every checkpoint's projection of the same rows, joined by key.

    One checkpoint needs no join. Several go through one shuffle into `buckets`
    buckets by a hash of the key, each about a block's size, and are joined there.
    """

    def __init__(self, checkpoints: int, buckets: int, block_rows: int, names: dict[str, str] | None = None):
        super().__init__()
        self._checkpoints, self._buckets, self._rows = checkpoints, buckets, block_rows
        self._names = dict(names or {})  # how errors show settings (the CLI: as flags); bare names by default

    def expand(self, blocks):
        if self._checkpoints == 1:
            return blocks
        return (
            blocks
            | "Bucket" >> beam.ParDo(_Bucket(self._buckets))
            | "Group" >> beam.GroupByKey()
            | "Join" >> beam.ParDo(_JoinBucket(self._checkpoints, self._rows, self._names))
        )


class JoinQueries(beam.CombineFn):
    """Blocks of one query group (any checkpoint) -> Queries: every checkpoint's rows, aligned by key."""

    def __init__(self, checkpoints: int, names: dict[str, str] | None = None):
        self._checkpoints = checkpoints
        self._names = dict(names or {})  # how errors show settings (the CLI: as flags); bare names by default

    def create_accumulator(self):
        return []

    def add_input(self, accumulator, block):
        accumulator.append(block)
        return accumulator

    def merge_accumulators(self, accumulators):
        return [block for accumulator in accumulators for block in accumulator]

    def extract_output(self, accumulator):
        if not accumulator:
            return None
        by_checkpoint: dict[int, list[Block]] = {}
        for block in accumulator:
            by_checkpoint.setdefault(block.checkpoint, []).append(block)
        joined = _align(by_checkpoint, self._checkpoints, "query", self._names)
        return Queries(joined.keys, joined.projections)


def in_group(block: Block, group: int, groups: int) -> Block:
    """The rows of a block that belong to query group `group` (by a hash of the key)."""
    if groups == 1:
        return block
    rows = np.flatnonzero(key_hash(block.keys) % np.uint64(groups) == group)
    return Block(block.keys.take(rows), tuple(p[rows] for p in block.projections), block.checkpoint)


# ---------------------------------------------------------------- rows that cannot be scored

REJECTED = "rejected"  # the tag of SplitUnscorable's rejected rows
REJECT_STAGE = "projection"


class SplitUnscorable(beam.DoFn):
    """Block (every checkpoint's projections, joined) -> the rows every checkpoint of which is finite;
    the others, with `with_rejected`, to the REJECTED output as rejected rows (keys, stage, reason).

    A row is rejected whole, from every checkpoint, so that the scores of the rest are those of a
    run without it: the Gram matrices, the scores and self influence alike. `patterns` (one per
    checkpoint) fill `source_file`: after the join a row's file is no longer known.
    """

    def __init__(self, schema: pa.Schema, patterns: Sequence[str], with_rejected: bool):
        self._schema, self._patterns, self._with_rejected = schema, list(patterns), with_rejected

    def process(self, block: Block):
        bad = [~np.isfinite(p).all(axis=1) for p in block.projections]
        rejected = np.logical_or.reduce(bad) if bad else np.zeros(block.rows, bool)
        if not rejected.any():
            yield block
            return
        keep = np.flatnonzero(~rejected)
        yield Block(block.keys.take(keep), tuple(p[keep] for p in block.projections), block.checkpoint)
        if not self._with_rejected:
            return
        rows = np.flatnonzero(rejected)
        which = [[block.checkpoint + c + 1 for c in range(len(bad)) if bad[c][r]] for r in rows]
        reasons = [
            f"{PROJECTION!r} is null or not finite in checkpoint {', '.join(map(str, w))}" for w in which
        ]
        for first in sorted({w[0] for w in which}):
            picks = [i for i, w in enumerate(which) if w[0] == first]
            yield beam.pvalue.TaggedOutput(
                REJECTED,
                rejected_table(
                    self._schema,
                    block.keys.take(rows[picks]),
                    [REJECT_STAGE] * len(picks),
                    [reasons[i] for i in picks],
                    self._patterns[first - 1],
                ),
            )


# ---------------------------------------------------------------- TRAK's first pass


class GramFn(beam.CombineFn):
    """Blocks (one checkpoint each) -> per checkpoint, ΦᵀΦ over every training row (float64)."""

    def __init__(self, checkpoints: int):
        self._checkpoints = checkpoints

    def create_accumulator(self):
        return [None] * self._checkpoints

    def add_input(self, accumulator, block):
        # a block of one checkpoint (`block.checkpoint`), or joined: every checkpoint's, in order
        for i, projection in enumerate(block.projections):
            c = block.checkpoint + i
            part = gram(projection)
            accumulator[c] = part if accumulator[c] is None else accumulator[c] + part
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = self.create_accumulator()
        for accumulator in accumulators:
            for c, part in enumerate(accumulator):
                if part is not None:
                    merged[c] = part if merged[c] is None else merged[c] + part
        return merged

    def extract_output(self, accumulator):
        return accumulator


def inverses(grams: list, damping: float, names: dict[str, str] | None = None) -> tuple:
    """Per checkpoint, (ΦᵀΦ + λI)⁻¹; the error names the `damping` setting (shown as `names` says) when it does not exist."""
    result = []
    names = dict(names or {})
    for c, g in enumerate(grams):
        if g is None:
            raise InputError("{train} checkpoint {c} holds no rows", names, c=c + 1)
        try:
            result.append(damped_inverse(g, damping))
        except ValueError as err:
            raise InputError("{train} checkpoint {c}: {err}; give a larger {damping}", names, c=c + 1, err=err) from err
    return tuple(result)


def states(spec: ScoreSpec, inverse: tuple | None) -> tuple:
    return inverse if inverse is not None else (None,) * spec.checkpoints


def prepare_queries(queries: Queries | None, spec: ScoreSpec, inverse: tuple | None = None) -> Queries | None:
    """Queries -> the same with `features`: what every block of training rows is multiplied by."""
    if queries is None:
        return None
    features = query_matrix(SCORES[spec.score], queries.projections, states(spec, inverse), spec.weights)
    return dataclasses.replace(queries, features=np.ascontiguousarray(features))


# ---------------------------------------------------------------- scoring


class ScoreBlocks(beam.DoFn):
    """Block of training rows -> (at the bundle's end) the bundle's top-k per query and kind.

    With `with_self`, each block's self influence also goes to the SELF output.
    """

    def __init__(self, spec: ScoreSpec, with_self: bool):
        self._spec, self._with_self = spec, with_self
        self._rows = Metrics.counter(METRICS, "train_rows_scored")
        self._best: dict[str, TopK] | None = None

    def start_bundle(self):
        self._best = None

    def process(self, block: Block, queries: Queries | None, inverse=None):
        spec = self._spec
        score = SCORES[spec.score]
        if self._with_self:
            values = self_influence(score, block.projections, states(spec, inverse), spec.weights)
            table = block.keys.rename_columns([TRAIN_PREFIX + n for n in block.keys.column_names])
            yield beam.pvalue.TaggedOutput(SELF, table.append_column(SELF_INFLUENCE, pa.array(values, pa.float64())))
        if queries is None or block.rows == 0:
            return
        if self._best is None:
            self._best = {kind: TopK(queries.keys.num_rows, spec.top_k, kind == PROPONENT) for kind in spec.kinds}
        self._rows.inc(block.rows)
        for start in range(0, block.rows, spec.block_rows):
            stop = min(block.rows, start + spec.block_rows)
            train = train_matrix(score, [p[start:stop] for p in block.projections], states(spec, inverse))
            # (queries, rows): the only place scores exist, multiplied in the score's dtype and kept as written
            scores = (queries.features @ train.T).astype(np.float32, copy=False)
            keys = block.keys.slice(start, stop - start)
            for best in self._best.values():
                best.add_block(scores, keys)

    def finish_bundle(self):
        if self._best is not None:
            yield GlobalWindows.windowed_value(self._best)
            self._best = None


class MergeTopK(beam.CombineFn):
    """Bundles' {kind: TopK} -> one {kind: TopK} for the whole job."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, best):
        for kind, topk in best.items():
            if kind in accumulator:
                accumulator[kind].merge(topk)
            else:
                accumulator[kind] = topk
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = {}
        for accumulator in accumulators:
            self.add_input(merged, accumulator)
        return merged

    def extract_output(self, accumulator):
        return accumulator


def influence_schema(query_keys: pa.Schema, train_keys: pa.Schema, metadata: dict[str, str]) -> pa.Schema:
    """Query keys, rank, kind, train__<key>..., score."""
    fields = list(query_keys) + [pa.field("rank", pa.int32()), pa.field("kind", pa.string())]
    fields += [pa.field(TRAIN_PREFIX + f.name, f.type) for f in train_keys]
    fields.append(pa.field("score", pa.float32()))
    declared = [column_entry(f.name, KEY) for f in query_keys] + [column_entry("rank", RANK_KIND), column_entry("kind", INFLUENCE_KIND)]
    declared += [column_entry(TRAIN_PREFIX + f.name, TRAIN_KEY) for f in train_keys] + [column_entry("score", SCORE_KIND)]
    return _with_metadata(fields, {**metadata, **columns_metadata(declared)})


def self_influence_schema(train_keys: pa.Schema, metadata: dict[str, str]) -> pa.Schema:
    fields = [pa.field(TRAIN_PREFIX + f.name, f.type) for f in train_keys] + [pa.field(SELF_INFLUENCE, pa.float64())]
    declared = [column_entry(TRAIN_PREFIX + f.name, TRAIN_KEY) for f in train_keys]
    declared.append(column_entry(SELF_INFLUENCE, SELF_INFLUENCE_KIND))
    return _with_metadata(fields, {**metadata, **columns_metadata(declared)})


def _with_metadata(fields: list[pa.Field], metadata: dict[str, str]) -> pa.Schema:
    return pa.schema(fields, metadata={k.encode(): v.encode() for k, v in metadata.items()})


def influence_table(best: dict, queries: Queries | None, schema: pa.Schema) -> list[pa.Table]:
    """The merged top-k -> output rows, sorted by query key, kind (proponents first), rank."""
    if queries is None or not best:
        return []
    tables = []
    query_names = queries.keys.column_names
    for kind in KINDS:
        if kind not in best:
            continue
        result = best[kind].result()
        if result.num_rows == 0:
            continue
        query = result.column(QUERY).to_numpy()
        columns = {name: queries.keys.column(name).take(pa.array(query)) for name in query_names}
        columns["rank"] = result.column(RANK)
        columns["kind"] = pa.array([kind] * result.num_rows, pa.string())
        for f in schema:
            if f.name.startswith(TRAIN_PREFIX):
                columns[f.name] = result.column(f.name[len(TRAIN_PREFIX) :])
        columns["score"] = result.column(SCORE)
        tables.append((query, kind, pa.table(columns).cast(schema)))
    if not tables:
        return []
    kind_index = np.concatenate([np.full(len(q), KINDS.index(k)) for q, k, _ in tables])
    order = np.lexsort((kind_index, np.concatenate([q for q, _, _ in tables])))
    table = pa.concat_tables([t for _, _, t in tables])
    # lexsort is stable, so within (query, kind) the rows keep their rank order
    return [table.take(pa.array(order)).replace_schema_metadata(schema.metadata)]
