"""The main job's weight-projection output, as the influence job reads it. Arrow and numpy, no Beam.

What a file must hold (the contract with `--wrt weights --weight_output projection`):
a `weight_projection` column (fixed_shape_tensor of float32 or float16, shape [k]),
and schema metadata naming the model's hash, the variables differentiated and how
the projection was built. Two projections are comparable only when all of those
agree; `ProjectionMeta.differences` says which do not.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.contract import REJECTED_COLUMNS, REJECTED_SUFFIX, metadata_key
from transforms.io.files import SHARD_NAME, SUFFIX, InputError

PROJECTION = "weight_projection"
MODEL_SHA256 = metadata_key("model_sha256").encode()
WEIGHTS = metadata_key("weights").encode()
DTYPES = {"float32": pa.float32(), "float16": pa.float16()}
DTYPE_NUMPY = {"float": np.float32, "halffloat": np.float16}  # Arrow's names -> numpy (nulls would make float64)
# Key column types a default key may have: identifiers, not measurements.
KEY_TYPES = (pa.types.is_integer, pa.types.is_string, pa.types.is_large_string, pa.types.is_boolean,
             pa.types.is_date, pa.types.is_timestamp, pa.types.is_binary)


@dataclasses.dataclass(frozen=True)
class ProjectionMeta:
    """What produced a file's projections; equal metas mean comparable projections."""

    model_sha256: str
    variables: tuple[str, ...]
    seed: int
    dim: int
    dtype: str
    construction: str

    @classmethod
    def of(cls, schema: pa.Schema, path: str) -> "ProjectionMeta":
        """Read from a file's schema; InputError naming the file when it is not a projection output."""
        rerun = "write it with the main job's {wrt} weights {weight_output} projection"
        metadata = schema.metadata or {}
        if PROJECTION not in schema.names:
            if set(REJECTED_COLUMNS) <= set(schema.names):  # a pattern wide enough to take the rejected rows too
                raise InputError(
                    "{path} holds the rows a job rejected (its columns {columns}), not projections; match only the "
                    "projections' shards{hint}", path=path, columns=", ".join(REJECTED_COLUMNS), hint=_shards_hint(path)
                )
            raise InputError("{path} has no column {column!r}; " + rerun, path=path, column=PROJECTION)
        try:
            weights = json.loads(metadata[WEIGHTS])
            projection = weights["projection"]
            meta = cls(
                metadata[MODEL_SHA256].decode(),
                tuple(weights["variables"]),
                int(projection["seed"]),
                int(projection["dim"]),
                str(projection["dtype"]),
                str(projection["construction"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(
                "{path}: its metadata does not say how its projections were made ({err!r}); " + rerun, path=path, err=err
            ) from err
        column = schema.field(PROJECTION).type
        expected = pa.fixed_shape_tensor(DTYPES.get(meta.dtype, pa.float32()), [meta.dim])
        if meta.dtype not in DTYPES or column != expected:
            raise InputError(f"{path}: column {PROJECTION!r} is {column}, but its metadata says {expected}")
        return meta

    def differences(self, other: "ProjectionMeta", model: bool = True) -> list[str]:
        """`name: mine vs theirs` for each field that differs (the model hash only where `model`)."""
        fields = [f.name for f in dataclasses.fields(self) if model or f.name != "model_sha256"]
        return [
            f"{'projection ' if name in ('seed', 'dim', 'dtype', 'construction') else ''}{name} "
            f"{_short(getattr(self, name))} vs {_short(getattr(other, name))}"
            for name in fields
            if getattr(self, name) != getattr(other, name)
        ]


def _short(value) -> str:
    text = ",".join(value) if isinstance(value, tuple) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def default_keys(schema: pa.Schema) -> list[str]:
    """Every identifier-like column (integers, strings, booleans, dates, timestamps, binary)."""
    return [f.name for f in schema if f.name != PROJECTION and any(test(f.type) for test in KEY_TYPES)]


def projection_matrix(batch: pa.RecordBatch | pa.Table, where: str, keep_bad: bool = False) -> np.ndarray:
    """The (rows, k) projections of a batch, float32 or float16 as stored; InputError on a null or non-finite row.

    With `keep_bad`, such rows are kept instead, all NaN where null: whoever scores them rejects them.
    """
    column = batch.column(PROJECTION)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if column.null_count and not keep_bad:
        raise InputError(f"{where}: column {PROJECTION!r} has {column.null_count} null rows")
    storage = column.storage
    values = storage.values.slice(storage.offset * storage.type.list_size, len(storage) * storage.type.list_size)
    if values.null_count and not keep_bad:
        raise InputError(f"{where}: column {PROJECTION!r} holds null numbers")
    dtype = DTYPE_NUMPY.get(str(storage.type.value_type), np.float32)
    matrix = values.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(len(storage), storage.type.list_size)
    if keep_bad:
        if values.null_count or column.null_count:
            matrix = matrix.copy()
            if values.null_count:
                matrix[values.is_null().to_numpy(zero_copy_only=False).reshape(matrix.shape)] = np.nan
            if column.null_count:
                matrix[column.is_null().to_numpy(zero_copy_only=False)] = np.nan
        return matrix
    if not np.isfinite(matrix).all():
        raise InputError(f"{where}: column {PROJECTION!r} holds a non-finite number")
    return matrix


def key_text(keys: pa.Table, row: int) -> str:
    """`id=7` or `a=1, b='x'`: one row's keys, for an error message."""
    return ", ".join(f"{name}={keys.column(name)[row].as_py()!r}" for name in keys.column_names)


def duplicate_key(keys: pa.Table) -> str | None:
    """One key that occurs more than once, as text, or None when the keys are unique."""
    if keys.num_rows < 2:
        return None
    counts = keys.group_by(keys.column_names, use_threads=False).aggregate([([], "count_all")])
    twice = pc.greater(counts.column("count_all"), 1)
    if not pc.any(twice).as_py():
        return None
    first = counts.filter(twice).slice(0, 1)
    return key_text(first.select(keys.column_names), 0)


def sort_by_keys(keys: pa.Table) -> np.ndarray:
    """Row indices that sort the table by its key columns, ascending."""
    return pc.sort_indices(keys, sort_keys=[(name, "ascending") for name in keys.column_names]).to_numpy()


def first_difference(a: pa.Table, b: pa.Table) -> tuple[str, bool] | None:
    """A key that one key table has and the other lacks (and whether `a` is the one with it); None when equal."""
    a, b = a.take(sort_by_keys(a)), b.take(sort_by_keys(b))
    if a.num_rows == b.num_rows and a.equals(b):
        return None
    only_a = _anti_join(a, b)
    if only_a.num_rows:
        return key_text(only_a.take(sort_by_keys(only_a)), 0), True
    only_b = _anti_join(b, a)
    return key_text(only_b.take(sort_by_keys(only_b)), 0), False


def _anti_join(a: pa.Table, b: pa.Table) -> pa.Table:
    return a.join(b, a.column_names, join_type="left anti", use_threads=False)


def _shards_hint(path: str) -> str:
    """`: out/proj-*.parquet` for a rejected-rows shard `out/proj_rejected-00000-of-00001.parquet`; else nothing."""
    found = SHARD_NAME.match(path)
    if not found or not found["prefix"].endswith(REJECTED_SUFFIX):
        return ""
    return f": {found['prefix'][: -len(REJECTED_SUFFIX)]}-*{SUFFIX}"
