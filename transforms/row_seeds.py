"""Each row's seed for noisy methods: 64 bits that name the row, the same wherever and however often it is computed.

From the row's key columns (`--keep_columns`) when it has any, else from its
file's name and its position in that file. Never Python's `hash()` (salted per
process): numbers are mixed by splitmix64 on their 64-bit values, strings and
bytes by BLAKE2b of their bytes. The engine mixes in `--seed` itself.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import numpy as np
import pyarrow as pa

from transforms.tensors import Decoded, Reasons

_NULL = np.uint64(0x6E756C6C)  # what a null key value hashes from


def splitmix64(values: np.ndarray) -> np.ndarray:
    """A bijection of uint64 values that spreads every bit (Steele et al.'s SplitMix64 finalizer); wraps mod 2**64."""
    x = values.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _digest(data: bytes) -> np.uint64:
    return np.frombuffer(hashlib.blake2b(data, digest_size=8).digest(), np.uint64)[0]


def _column_hash(array: pa.Array) -> np.ndarray:
    """uint64 per row: numbers (and dates, times) by their value's 64 bits, anything else by its bytes."""
    kind = array.type
    nulls = array.is_null().to_numpy(zero_copy_only=False) if array.null_count else None
    if pa.types.is_integer(kind) or pa.types.is_boolean(kind) or pa.types.is_temporal(kind):
        if pa.types.is_boolean(kind):
            array = array.cast(pa.int8())
        elif pa.types.is_temporal(kind):
            array = array.cast(pa.int64()) if kind.bit_width == 64 else array.cast(pa.int32())
        values = array.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        hashed = splitmix64(values.view(np.uint64))
    elif pa.types.is_floating(kind):
        values = array.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64) + 0.0  # -0.0 -> 0.0
        hashed = splitmix64(values.view(np.uint64))
    else:  # strings, bytes, anything else: by the bytes of each value
        texts = array.to_pylist()
        hashed = np.array([_digest(str(v).encode() if not isinstance(v, bytes) else v) for v in texts], np.uint64)
    if nulls is not None:
        hashed[nulls] = _NULL
    return hashed


def key_seeds(keys: pa.Table | pa.RecordBatch) -> np.ndarray:
    """int64 per row, from the key columns' values (in their order)."""
    seeds = np.zeros(keys.num_rows, np.uint64)
    for column in keys.columns:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        seeds = splitmix64(seeds ^ _column_hash(column))
    return seeds.view(np.int64)


def position_seeds(source: str, first_row: int, rows: int) -> np.ndarray:
    """int64 per row, from the file's name (not its folder: a moved copy keeps its seeds) and each row's position."""
    name = _digest(os.path.basename(source.rstrip("/")).encode())
    positions = np.arange(first_row, first_row + rows, dtype=np.uint64)
    return splitmix64(splitmix64(positions) ^ name).view(np.int64)


@dataclasses.dataclass(frozen=True)
class RowSeedFeed:
    """Fills the engine's `row_seed` row input (planned like a column feed; its columns are the keys)."""

    input: str
    columns: tuple[str, ...]  # the key columns; none: seeds come from the position
    shape: tuple[int, ...] = ()
    dtype: str = "int64"

    def decode(self, batch: pa.RecordBatch, source: str, first_row: int) -> Decoded:
        rows = batch.num_rows
        if self.columns:
            seeds = key_seeds(batch.select(list(self.columns)))
        else:
            seeds = position_seeds(source, first_row, rows)
        return Decoded(seeds, Reasons(rows))
