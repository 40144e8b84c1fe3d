"""The report's streaming passes: one pass over an output (or the input files) at a time, never a whole table in memory.

What each pass keeps is bounded: the top rows of a ranking, class counts, the gradients
of the rows a figure shows and of a seeded random sample.
"""

from __future__ import annotations

import collections
import hashlib
import json
from typing import Sequence

import numpy as np
import pyarrow as pa

from pipeline.reader import iter_tables, to_numpy
from transforms.aggregates import GradientBlock, top_candidates, top_entries
from transforms.contract import GRADIENT
from transforms.io.files import InputError, match_files, open_parquet
from transforms.sketch import QuantileSketch


def is_image(block: GradientBlock) -> bool:
    shape = block.shape
    if block.features is not None:
        return False
    return (len(shape) == 3 and shape[-1] in (1, 3, 4) and min(shape[:2]) >= 2) or (len(shape) == 2 and min(shape) >= 2)


def blocks_from_summary(summary: dict) -> list[GradientBlock]:
    return [
        GradientBlock(name, tuple(g["columns"]), tuple(g["shape"]), tuple(g["features"]) if g["features"] else None)
        for name, g in summary["gradients"].items()
    ]


def blocks_from_declared(entries, schema: pa.Schema) -> list[GradientBlock]:
    """For an output without a summary: its declared gradient columns, one block per engine output
    (a stacked scalar input's per-feature columns together), as the job's combiner groups them."""
    by_output: dict[str, list[dict]] = {}
    for entry in entries or ():
        if entry["kind"] == GRADIENT:
            by_output.setdefault(entry["output"] or entry["column"], []).append(entry)
    blocks = []
    for name, columns in by_output.items():
        if columns[0]["feature"] is not None:
            features = tuple(c["feature"] for c in columns)
            blocks.append(GradientBlock(name, tuple(c["column"] for c in columns), (len(columns),), features))
        else:
            column = columns[0]["column"]
            blocks.append(GradientBlock(name, (column,), tuple(getattr(schema.field(column).type, "shape", ()))))
    return blocks


# One encoder for every key: json.dumps with `default` builds a new encoder per call, the pass's largest cost.
_KEY_ENCODER = json.JSONEncoder(default=str)


def key_id(row: dict, names: Sequence[str]) -> str:
    """A row's keys as one string (JSON of their values in `names` order), to match rows across passes and files."""
    return _KEY_ENCODER.encode([row.get(n) for n in names])


def key_ids(table: pa.Table, names: Sequence[str]) -> list[str]:
    """key_id of every row of `table`, column by column (no dict per row)."""
    columns = [table.column(n).to_pylist() for n in names]
    return [_KEY_ENCODER.encode(list(values)) for values in zip(*columns)]


def sample_rank(key: str, seed: int) -> int:
    """A row's place in the seeded random sample: the rows with the smallest values are the sample, in any order read."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{key}".encode()).digest()[:8], "big")


class Ranked:
    """Top rows of one scalar column by |value|, with a quantile sketch of |value|, over streamed tables.

    `signed`: whether any value was negative (else |value| is the value, and the page names it plainly).
    """

    def __init__(self, column: str, keys: Sequence[str], top: int):
        self.column, self.keys, self.top = column, list(keys), top
        self.sketch = QuantileSketch()
        self.best: list = []
        self.rows, self.total, self.largest = 0, 0.0, 0.0
        self.signed = False

    @property
    def shown(self) -> str:
        """The column as the page names its values: |name| where some were negative."""
        return f"|{self.column}|" if self.signed else self.column

    def add(self, table: pa.Table) -> None:
        raw = np.asarray(to_numpy(table.column(self.column)), np.float64)
        if not len(raw):
            return
        self.signed = self.signed or bool((raw < 0).any())
        values = np.abs(raw)
        self.rows += len(values)
        self.total += float(values.sum())
        self.largest = max(self.largest, float(values.max()))
        self.sketch.add(values[np.isfinite(values)])
        self.best = top_entries(self.best + top_candidates(table, values, self.keys, self.top), self.top)


class Classes:
    """How often each class is the row's (first) class, streamed."""

    def __init__(self, column: str):
        self.column = column
        self.counts: collections.Counter = collections.Counter()

    def add(self, table: pa.Table) -> None:
        values = np.asarray(to_numpy(table.column(self.column)))
        first = values.reshape(len(values), -1)[:, 0] if values.ndim > 1 else values
        classes, counts = np.unique(first.astype(np.int64), return_counts=True)
        self.counts.update(dict(zip(classes.tolist(), counts.tolist())))


def stream_output(prefix: str, blocks, keys, wanted: set[str], sample: int, seed: int, ranked: list, complete):
    """One pass over the output: gradients of the wanted rows (by key) and of a seeded random sample; ranked columns."""
    image_blocks = [b for b in blocks if is_image(b)]
    columns = list(dict.fromkeys(list(keys) + [c for b in image_blocks for c in b.columns] + [r.column for r in ranked]))
    # `ranked`: anything with .column and .add(table), fed every table of the pass
    found: dict[str, dict] = {}
    sampled: list[tuple[int, str, dict]] = []  # (rank, key, row)
    position = 0
    for table in iter_tables(prefix, columns, require_complete=complete):
        for r in ranked:
            r.add(table)
        if not image_blocks:
            continue
        ids = (
            key_ids(table, keys)
            if keys
            else [json.dumps(["row", position + i]) for i in range(table.num_rows)]
        )
        position += table.num_rows
        ranks = np.array([sample_rank(k, seed) for k in ids], dtype=np.uint64)
        cut = sampled[-1][0] if len(sampled) >= sample else None
        chosen = np.fromiter((k in wanted for k in ids), bool, len(ids))
        if sample:
            chosen |= ranks < np.uint64(cut) if cut is not None else True
        picks = np.flatnonzero(chosen).tolist()
        if not picks:
            continue
        values = {b.name: to_numpy(table.column(b.columns[0]).take(pa.array(picks))) for b in image_blocks}
        key_rows = table.select(list(keys)).take(pa.array(picks)).to_pylist() if keys else [{} for _ in picks]
        for j, i in enumerate(picks):
            row = {"keys": key_rows[j], "gradients": {n: v[j] for n, v in values.items()}}
            if ids[i] in wanted:
                found[ids[i]] = row
            if sample:
                sampled.append((int(ranks[i]), ids[i], row))
        sampled = sorted(sampled, key=lambda s: s[0])[:sample]
    return found, [(key, row) for _, key, row in sampled]


def input_column(schema: pa.Schema, block: GradientBlock, keys: Sequence[str]) -> str | None:
    """The input column that feeds this gradient: the one with the gradient's shape (by name where several do)."""
    size = int(np.prod(block.shape))
    fits = []
    for field in schema:
        if field.name in keys:
            continue
        kind = field.type
        if isinstance(kind, pa.FixedShapeTensorType) and (
            int(np.prod(kind.shape)) == size or tuple(kind.shape[: len(block.shape)]) == tuple(block.shape)
        ):  # the input's shape, or an image with channels under a channel-less map (Grad-CAM's)
            fits.append(field.name)
        elif pa.types.is_fixed_size_list(kind) and kind.list_size == size:
            fits.append(field.name)
        elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
            fits.append(field.name)
    named = [f for f in fits if f in block.name.split("__")]
    return (named or fits or [None])[0]


def stream_inputs(pattern: str, keys: Sequence[str], wanted: set[str], blocks) -> dict[str, dict[str, np.ndarray]]:
    """The input rows of the wanted keys (one pass over the input files, key and feature columns only)."""
    files = match_files(pattern, "--input").paths
    schema = open_parquet(files[0]).schema_arrow
    missing = [k for k in keys if k not in schema.names]
    if missing:
        raise InputError(f"--input {pattern!r} has no key column {missing[0]!r}, which joins it to the output")
    feeds = {b.name: input_column(schema, b, keys) for b in blocks}
    columns = list(dict.fromkeys(list(keys) + [c for c in feeds.values() if c]))
    found: dict[str, dict[str, np.ndarray]] = {}
    for path in files:
        for batch in open_parquet(path).iter_batches(batch_size=65536, columns=columns):
            table = pa.Table.from_batches([batch])
            ids = key_ids(table, keys)
            picks = [i for i, k in enumerate(ids) if k in wanted]
            if not picks:
                continue
            taken = table.take(pa.array(picks))
            for name, column in feeds.items():
                if column is None:
                    continue
                values = to_numpy(taken.column(column))
                block = next(b for b in blocks if b.name == name)
                size = int(np.prod(block.shape))
                for j, i in enumerate(picks):
                    value = np.asarray(values[j], np.float64)
                    if value.size == 0 or value.size % size:
                        key = ", ".join(f"{k}={taken.column(k)[j].as_py()!r}" for k in keys)
                        raise InputError(
                            f"--input {pattern!r}: column {column!r} of {path} holds {value.size} numbers in the row "
                            f"{key}, which do not make the {block.shape} of {name!r}: is it the job's own input?"
                        )
                    shape = block.shape if value.size == size else (*block.shape, -1)  # + channels
                    found.setdefault(ids[i], {})[name] = value.reshape(shape)
    return found
