"""Dataset-wide aggregates of a job's output, computed in the job by a combiner, so they scale with it.

Per gradient output (one tensor column, or one scalar column per feature for a
tabular input): the mean of |gradient| and of the gradient per element, the row
count, a quantile sketch of per-row L2 norms (transforms/sketch.py: partial
sketches add up on any worker, and a histogram's bins follow the data at any
scale), the older histogram over fixed log-spaced bins, and the top rows by norm
with their keys; the same means per group of `group_column` where one is given;
and the top rows by loss (and a sketch of the loss) where the output has a `loss` column. The result is one JSON object,
written beside the shards as `<output>-summary.json` (its schema is in the README).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Iterable, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa

from transforms.sketch import QuantileSketch

SUMMARY_VERSION = 1
# Histogram of per-row norms: 64 bins per decade (3.7% wide) from 1e-12 to 1e12, plus one bin below and one above.
BINS_PER_DECADE = 64
HISTOGRAM_EDGES = tuple(float(10.0 ** (e / BINS_PER_DECADE)) for e in range(-12 * BINS_PER_DECADE, 12 * BINS_PER_DECADE + 1))
# Beyond this many distinct groups, per-group means are dropped (and the summary says so).
MAX_GROUPS = 1000
LOSS_COLUMN = "loss"


@dataclasses.dataclass(frozen=True)
class GradientBlock:
    """One gradient output as written: a tensor column, or one scalar column per feature."""

    name: str  # the engine's output name, e.g. gradient__classes
    columns: tuple[str, ...]
    shape: tuple[int, ...]  # per row; (features,) for scalar columns
    features: tuple[str, ...] | None = None  # the input columns, for scalar columns

    def values(self, table: pa.Table) -> np.ndarray:
        """[rows, elements] values of this output in `table`, as written (float32): sums run in float64."""
        if self.features is None:
            column = table.column(self.columns[0]).combine_chunks()
            values = column.to_numpy_ndarray() if isinstance(column.type, pa.FixedShapeTensorType) else column
            return np.asarray(values).reshape(table.num_rows, -1)
        return np.stack([np.asarray(table.column(c)) for c in self.columns], axis=1).reshape(table.num_rows, -1)


@dataclasses.dataclass(frozen=True)
class TokenBlock:
    """Token scores at a layer (`token_scores__<layer>[__head]`), the ids at its positions and which are padding."""

    scores: str
    tokens: str
    mask: str

    def values(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores) of every real (not padding) position in `table`, flattened."""
        def grid(name):
            return table.column(name).combine_chunks().to_numpy_ndarray().reshape(table.num_rows, -1)

        real = grid(self.mask) != 0
        return grid(self.tokens)[real].astype(np.int64), grid(self.scores)[real]


class _TokenSums:
    """Per token id: how many real positions held it, and the sum of their scores (arrays indexed by id)."""

    def __init__(self):
        self.count = np.zeros(0, np.int64)
        self.sum = np.zeros(0)

    def _grow(self, size: int) -> None:
        if size > len(self.count):
            self.count = np.concatenate([self.count, np.zeros(size - len(self.count), np.int64)])
            self.sum = np.concatenate([self.sum, np.zeros(size - len(self.sum))])

    def add(self, ids: np.ndarray, scores: np.ndarray) -> None:
        if not len(ids):
            return
        size = int(ids.max()) + 1
        self._grow(size)
        self.count[:size] += np.bincount(ids, minlength=size)
        self.sum[:size] += np.bincount(ids, weights=scores.astype(np.float64), minlength=size)

    def merge(self, other: "_TokenSums") -> None:
        self._grow(len(other.count))
        self.count[: len(other.count)] += other.count
        self.sum[: len(other.sum)] += other.sum

    def entries(self, vocabulary: Sequence[str] | None) -> list[dict]:
        """One entry per id seen, by id: its count and mean score (and its token, where a vocabulary names it)."""
        entries = []
        for i in np.flatnonzero(self.count):
            entry = {"id": int(i), "count": int(self.count[i]), "mean": float(self.sum[i] / self.count[i])}
            if vocabulary is not None:
                entry["token"] = vocabulary[i] if i < len(vocabulary) else None
            entries.append(entry)
        return entries


@dataclasses.dataclass(frozen=True)
class AggregateSpec:
    """What to aggregate: the gradient outputs, the key columns to name top rows by, an optional group column."""

    blocks: tuple[GradientBlock, ...]
    key_columns: tuple[str, ...] = ()
    group_column: str | None = None
    loss_column: str | None = None
    top: int = 20
    token_blocks: tuple[TokenBlock, ...] = ()  # wrt layer: per token id, the mean token score
    vocabulary: tuple[str, ...] | None = None  # token id -> string (`vocab`), to name the ids in the summary

    @classmethod
    def from_layout(cls, layout, key_columns: Sequence[str], group_column: str | None = None, top: int = 20,
                    vocabulary: Sequence[str] | None = None):
        """From an OutputLayout: every column of kind `gradient`, grouped by the output it comes from."""
        blocks: dict[str, list] = {}
        for column in layout.columns:
            if column.kind == "gradient":
                blocks.setdefault(column.source, []).append(column)
        made = []
        for name, columns in blocks.items():
            if columns[0].feature is not None:
                features = tuple(c.feature_name for c in columns)
                made.append(GradientBlock(name, tuple(c.name for c in columns), (len(columns),), features))
            else:
                made.append(GradientBlock(name, (columns[0].name,), tuple(columns[0].type.shape)))
        loss = LOSS_COLUMN if LOSS_COLUMN in layout.schema.names else None
        kinds = {c.name: c.kind for c in layout.columns}
        tokens = []
        for column in layout.columns:  # token_scores__<layer>[__head], with tokens__<layer> and mask__<layer>
            layer = column.name.split("__")[1] if column.kind == "token_scores" else None
            if layer and kinds.get(f"tokens__{layer}") == "tokens" and kinds.get(f"mask__{layer}") == "mask":
                tokens.append(TokenBlock(column.name, f"tokens__{layer}", f"mask__{layer}"))
        vocabulary = tuple(vocabulary) if vocabulary is not None else None
        return cls(tuple(made), tuple(key_columns), group_column, loss, top, tuple(tokens), vocabulary)


def row_norms(values: np.ndarray) -> np.ndarray:
    """Each row's L2 norm (float64)."""
    return np.sqrt(np.einsum("ij,ij->i", values, values, dtype=np.float64))


def histogram_counts(norms: np.ndarray) -> np.ndarray:
    """Counts per bin of HISTOGRAM_EDGES: [below the first edge, each bin, at or above the last edge]."""
    index = np.searchsorted(np.asarray(HISTOGRAM_EDGES), norms, side="right")
    return np.bincount(index, minlength=len(HISTOGRAM_EDGES) + 1).astype(np.int64)


def _tie(keys: dict) -> str:
    return json.dumps(keys, sort_keys=True, default=str)


def top_entries(entries: Iterable[tuple[float, dict]], top: int) -> list[tuple[float, dict]]:
    """The `top` entries by value, largest first; ties broken by key so any merge order gives the same list."""
    return sorted(entries, key=lambda e: (-e[0], _tie(e[1])))[:top]


def top_candidates(table: pa.Table, values: np.ndarray, keys: Sequence[str], top: int) -> list[tuple[float, dict]]:
    """The rows of `table` that can be among the top (all rows tied with the cut included), with their keys."""
    if not len(values) or top < 1:
        return []
    if len(values) > top:
        cut = np.partition(values, len(values) - top)[len(values) - top]
        index = np.flatnonzero(values >= cut)
    else:
        index = np.arange(len(values))
    rows = table.select(list(keys)).take(pa.array(index)).to_pylist() if keys else [{} for _ in index]
    return [(float(values[i]), row) for i, row in zip(index, rows)]


class _Sums:
    """Count, sum and sum of |values| per element: the part of a mean that adds up."""

    def __init__(self, size: int):
        self.count = 0
        self.sum = np.zeros(size)
        self.sum_abs = np.zeros(size)

    def add(self, values: np.ndarray) -> None:
        self.count += len(values)
        self.sum += values.sum(axis=0, dtype=np.float64)
        self.sum_abs += np.abs(values).sum(axis=0, dtype=np.float64)

    def merge(self, other: "_Sums") -> None:
        self.count += other.count
        self.sum += other.sum
        self.sum_abs += other.sum_abs

    def means(self, shape) -> dict:
        n = max(self.count, 1)
        return {
            "count": self.count,
            "mean_abs": (self.sum_abs / n).reshape(shape).tolist(),
            "mean": (self.sum / n).reshape(shape).tolist(),
        }


class _BlockAccumulator:
    def __init__(self, size: int):
        self.all = _Sums(size)
        self.histogram = np.zeros(len(HISTOGRAM_EDGES) + 1, np.int64)
        self.norms = QuantileSketch()
        self.top_norm: list[tuple[float, dict]] = []
        self.groups: dict[str, _Sums] | None = {}


class Accumulator:
    def __init__(self, spec: AggregateSpec):
        self.rows = 0
        self.blocks = [_BlockAccumulator(int(np.prod(b.shape, dtype=np.int64))) for b in spec.blocks]
        self.top_loss: list[tuple[float, dict]] = []
        self.loss = QuantileSketch()
        # Per token block: the sums over all rows, and per group (None once there are more than MAX_GROUPS).
        self.tokens = [(_TokenSums(), {}) for _ in spec.token_blocks]


def _group_names(table: pa.Table, column: str) -> np.ndarray:
    values = table.column(column).to_pylist()
    return np.array(["null" if v is None else str(v) for v in values], dtype=object)


class AggregatesFn(beam.CombineFn):
    """Output tables -> the summary dict. Partial results merge on any runner, in any order, to the same result."""

    def __init__(self, spec: AggregateSpec):
        self.spec = spec

    def create_accumulator(self) -> Accumulator:
        return Accumulator(self.spec)

    def add_input(self, acc: Accumulator, table: pa.Table) -> Accumulator:
        spec = self.spec
        if not table.num_rows:
            return acc
        acc.rows += table.num_rows
        groups = _group_names(table, spec.group_column) if spec.group_column else None
        for block, block_acc in zip(spec.blocks, acc.blocks):
            values = block.values(table)
            block_acc.all.add(values)
            norms = row_norms(values)
            block_acc.histogram += histogram_counts(norms)
            block_acc.norms.add(norms[np.isfinite(norms)])  # the sketch counts finite values
            block_acc.top_norm = top_entries(
                block_acc.top_norm + top_candidates(table, norms, spec.key_columns, spec.top), spec.top
            )
            if groups is not None and block_acc.groups is not None:
                for name in np.unique(groups):
                    block_acc.groups.setdefault(name, _Sums(values.shape[1])).add(values[groups == name])
                if len(block_acc.groups) > MAX_GROUPS:
                    block_acc.groups = None
        for block, (everything, groups_) in zip(spec.token_blocks, acc.tokens):
            ids, scores = block.values(table)
            everything.add(ids, scores)
            if groups is not None and groups_ is not None:
                real = table.column(block.mask).combine_chunks().to_numpy_ndarray().reshape(table.num_rows, -1) != 0
                owners = np.repeat(groups, real.sum(axis=1))  # the group of each real position, in order
                for name in np.unique(groups):
                    groups_.setdefault(name, _TokenSums()).add(ids[owners == name], scores[owners == name])
        acc.tokens = [(t, g if g is None or len(g) <= MAX_GROUPS else None) for t, g in acc.tokens]
        if spec.loss_column:
            loss = np.asarray(table.column(spec.loss_column), np.float64)
            acc.loss.add(loss[np.isfinite(loss)])
            acc.top_loss = top_entries(acc.top_loss + top_candidates(table, loss, spec.key_columns, spec.top), spec.top)
        return acc

    def merge_accumulators(self, accumulators) -> Accumulator:
        accumulators = iter(accumulators)
        merged = next(accumulators)
        for acc in accumulators:
            tokens = []
            for (mine, mine_groups), (theirs, theirs_groups) in zip(merged.tokens, acc.tokens):
                mine.merge(theirs)
                if mine_groups is None or theirs_groups is None:
                    tokens.append((mine, None))
                    continue
                for name, sums in theirs_groups.items():
                    mine_groups.setdefault(name, _TokenSums()).merge(sums)
                tokens.append((mine, mine_groups if len(mine_groups) <= MAX_GROUPS else None))
            merged.tokens = tokens
            merged.rows += acc.rows
            merged.top_loss = top_entries(merged.top_loss + acc.top_loss, self.spec.top)
            merged.loss.merge(acc.loss)
            for mine, theirs in zip(merged.blocks, acc.blocks):
                mine.all.merge(theirs.all)
                mine.histogram += theirs.histogram
                mine.norms.merge(theirs.norms)
                mine.top_norm = top_entries(mine.top_norm + theirs.top_norm, self.spec.top)
                if mine.groups is None or theirs.groups is None:
                    mine.groups = None
                    continue
                for name, sums in theirs.groups.items():
                    if name in mine.groups:
                        mine.groups[name].merge(sums)
                    else:
                        mine.groups[name] = sums
                if len(mine.groups) > MAX_GROUPS:
                    mine.groups = None
        return merged

    def extract_output(self, acc: Accumulator) -> dict:
        spec = self.spec
        gradients = {}
        for block, block_acc in zip(spec.blocks, acc.blocks):
            entry = {
                "columns": list(block.columns),
                "features": list(block.features) if block.features else None,
                "shape": list(block.shape),
                **block_acc.all.means(block.shape),
                "norm_histogram": block_acc.histogram.tolist(),  # bins of histogram_edges (top level)
                "norm_sketch": block_acc.norms.to_json(),  # QuantileSketch.from_json: the report's histogram
                "top_by_norm": [{"norm": v, "keys": k} for v, k in block_acc.top_norm],
                "groups": None,
            }
            if spec.group_column and block_acc.groups is not None:
                entry["groups"] = {g: s.means(block.shape) for g, s in sorted(block_acc.groups.items())}
            gradients[block.name] = entry
        dropped = bool(spec.group_column) and any(b.groups is None for b in acc.blocks)
        summary = {
            "version": SUMMARY_VERSION,
            "rows": acc.rows,
            "key_columns": list(spec.key_columns),
            "group_column": spec.group_column,
            "groups_dropped": dropped,  # more than MAX_GROUPS distinct groups: per-group means left out
            "histogram_edges": list(HISTOGRAM_EDGES),
            "gradients": gradients,
            "top_by_loss": [{"loss": v, "keys": k} for v, k in acc.top_loss] if spec.loss_column else None,
        }
        if spec.loss_column:
            summary["loss_sketch"] = acc.loss.to_json()
        if spec.token_blocks:  # only where there are token scores: other outputs' summaries are unchanged
            summary["tokens"] = {
                block.scores: {
                    "tokens_column": block.tokens,
                    "tokens": everything.entries(spec.vocabulary),
                    "groups": None if groups is None or not spec.group_column else
                    {g: s.entries(spec.vocabulary) for g, s in sorted(groups.items())},
                }
                for block, (everything, groups) in zip(spec.token_blocks, acc.tokens)
            }
        return summary


def summarize(tables: Iterable[pa.Table], spec: AggregateSpec) -> dict:
    """The same summary without Beam: over tables streamed one at a time (the report's fallback)."""
    fn = AggregatesFn(spec)
    acc = fn.create_accumulator()
    for table in tables:
        acc = fn.add_input(acc, table)
    return fn.extract_output(acc)


def to_json(summary: dict) -> str:
    return json.dumps(summary, default=str)
