"""SplitMix64 and the 64-bit hash of an Arrow column's values: deterministic in every process (never Python's salted `hash()`).

Two column hashes live here, and they are not the same function: each one's bytes
are a contract kept as it was first written.

- `seed_column_hash`: the noise methods' per-row seeds (`key_seeds`, read by `transforms.feeds.row_seeds`).
  Numbers by their value's 64 bits (-0.0 as 0.0), strings and bytes by BLAKE2b of
  their bytes, a null by a fixed value. Columns combine as `splitmix64(acc ^ column)`.
- `bucket_column_hash`: the influence job's key buckets (`key_hash`).
  Numbers by their 64 bits as Arrow casts them (a null integer as the float NaN's
  bits), strings and binary by a vectorized sum of splitmix64-mixed bytes.
  Columns combine as `splitmix64(acc * 31 + column)`.

Changing either changes outputs: row seeds drive the noise, key hashes the bucketing.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa

GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
SEED_NULL = np.uint64(0x6E756C6C)  # what a null value hashes to in `seed_column_hash`


def splitmix64(values: np.ndarray) -> np.ndarray:
    """A bijection of uint64 values that spreads every bit (Steele et al.'s SplitMix64 finalizer); wraps mod 2**64."""
    with np.errstate(over="ignore"):
        x = values.astype(np.uint64) + GOLDEN
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def digest64(data: bytes) -> np.uint64:
    """The first 8 bytes of BLAKE2b of `data`, as a native-endian uint64."""
    return np.frombuffer(hashlib.blake2b(data, digest_size=8).digest(), np.uint64)[0]


def _binary_values(array: pa.Array) -> tuple[memoryview, np.ndarray] | None:
    """(the data bytes, int64 offsets per row + 1) of a string or binary array; None for any other type."""
    kind = array.type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_binary(kind) or pa.types.is_large_binary(kind)):
        return None
    width = np.int64 if (pa.types.is_large_string(kind) or pa.types.is_large_binary(kind)) else np.int32
    buffers = array.buffers()
    offsets = np.frombuffer(buffers[1], width)[array.offset : array.offset + len(array) + 1].astype(np.int64)
    data = memoryview(buffers[2]) if buffers[2] is not None else memoryview(b"")
    return data, offsets


def seed_column_hash(array: pa.Array) -> np.ndarray:
    """uint64 per row for row seeds: numbers (and dates, times) by their value's 64 bits, anything else by its bytes."""
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
    elif (binary := _binary_values(array)) is not None:
        # A string's UTF-8 bytes are what str(value).encode() gave: read them from the buffers, no Python objects.
        # BLAKE2b has no vectorized form here, so this is still one call per value (a null's slot is overwritten below).
        data, offsets = binary
        blake = hashlib.blake2b
        digests = b"".join(blake(data[start:end], digest_size=8).digest()
                           for start, end in zip(offsets[:-1].tolist(), offsets[1:].tolist()))
        hashed = np.frombuffer(digests, np.uint64).copy()
    else:  # anything else: by the bytes of each value's text
        texts = array.to_pylist()
        hashed = np.array([digest64(str(v).encode() if not isinstance(v, bytes) else v) for v in texts], np.uint64)
    if nulls is not None:
        hashed[nulls] = SEED_NULL
    return hashed


def bucket_column_hash(column: pa.Array) -> np.ndarray:
    """uint64 per row for key buckets: strings and binary by their mixed bytes, numbers by their 64 bits."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_binary(column.type):
        column = column.cast(pa.large_binary())
        offsets = np.frombuffer(column.buffers()[1], np.int64)[column.offset : column.offset + len(column) + 1]
        data = np.frombuffer(column.buffers()[2], np.uint8) if column.buffers()[2] else np.zeros(0, np.uint8)
        data = data[offsets[0] : offsets[-1]].astype(np.uint64)
        starts, lengths = offsets[:-1] - offsets[0], np.diff(offsets)
        position = np.arange(len(data), dtype=np.int64) - np.repeat(starts, lengths)
        with np.errstate(over="ignore"):  # sums of bytes mixed with their position, modulo 2**64
            total = np.concatenate([[np.uint64(0)], np.cumsum(splitmix64(data * np.uint64(1 << 9) + position.astype(np.uint64)))])
            sums = total[starts + lengths] - total[starts]
            return splitmix64(sums ^ lengths.astype(np.uint64))
    if pa.types.is_date(column.type) or pa.types.is_timestamp(column.type) or pa.types.is_boolean(column.type):
        column = column.cast(pa.int64())
    if pa.types.is_floating(column.type):
        values = column.cast(pa.float64()).to_numpy(zero_copy_only=False).view(np.uint64)
    else:
        values = column.cast(pa.int64()).to_numpy(zero_copy_only=False).view(np.uint64)
    return splitmix64(values)


def key_seeds(keys: pa.Table | pa.RecordBatch) -> np.ndarray:
    """int64 per row, from the key columns' values (in their order)."""
    seeds = np.zeros(keys.num_rows, np.uint64)
    for column in keys.columns:
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        seeds = splitmix64(seeds ^ seed_column_hash(column))
    return seeds.view(np.int64)


def key_hash(keys: pa.Table) -> np.ndarray:
    """A deterministic uint64 per row from its key columns: the same key gives the same hash in every process."""
    result = np.zeros(keys.num_rows, np.uint64)
    for name in keys.column_names:
        column = keys.column(name).combine_chunks()
        with np.errstate(over="ignore"):
            result = splitmix64(result * np.uint64(31) + bucket_column_hash(column))
    return result
