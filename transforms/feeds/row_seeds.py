"""Each row's seed for noisy methods: 64 bits that name the row, the same wherever and however often it is computed.

From the row's key columns (`--keep_columns`) when it has any, else from its
file's name and its position in that file. Never Python's `hash()` (salted per
process): numbers are mixed by splitmix64 on their 64-bit values, strings and
bytes by BLAKE2b of their bytes (`transforms.hashing.seed_column_hash`). The
engine mixes in `--seed` itself.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pyarrow as pa

from transforms.hashing import digest64, key_seeds, splitmix64
from transforms.feeds.columns import Decoded, Reasons

def position_seeds(source: str, first_row: int, rows: int) -> np.ndarray:
    """int64 per row, from the file's name (not its folder: a moved copy keeps its seeds) and each row's position."""
    name = digest64(os.path.basename(source.rstrip("/")).encode())
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
