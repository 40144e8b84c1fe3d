"""Read a finished job's output back: numpy arrays, or a pandas DataFrame where pandas is installed.

Why: the output's gradient columns are Arrow `fixed_shape_tensor`s, which
need `combine_chunks().to_numpy_ndarray()` to become arrays; this does it per
column, streams where asked, and reads only a complete output (one with its
`_SUCCESS` marker), exactly the shards that marker lists.

>>> from pipeline.reader import read_arrays
>>> arrays = read_arrays("demo/out/gradients")            # doctest: +SKIP
>>> arrays["gradient__classes"].shape                     # doctest: +SKIP
(3000, 8, 8, 1)
"""

from __future__ import annotations

import json
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from pipeline.outputs import _absolute, _shard_regex, read_marker
from transforms.parquet import InputError, open_parquet, output_files

# Outputs whose marker is their main output's (`<output>_rejected` -> `<output>_SUCCESS`).
SECONDARY_SUFFIXES = ("_rejected", "_self_influence")
SUMMARY_SUFFIX = "-summary.json"


class IncompleteOutput(InputError):
    """No `_SUCCESS` marker vouches for this output: it is absent, still being written, or was cut short."""


def find_marker(prefix: str) -> dict | None:
    """The marker that lists `prefix`'s shards: its own, or its main output's for a rejected or self-influence prefix."""
    marker = read_marker(prefix)
    if marker is not None:
        return marker
    for suffix in SECONDARY_SUFFIXES:
        if prefix.endswith(suffix):
            marker = read_marker(prefix[: -len(suffix)])
            if marker is not None and _listed(marker, prefix):
                return marker
    return None


def _listed(marker: dict, prefix: str) -> list[str]:
    pattern = _shard_regex(_absolute(prefix))
    return sorted(p for paths in marker.get("outputs", {}).values() for p in paths if pattern.match(_absolute(p)))


def output_shards(prefix: str, require_complete: bool = True) -> list[str]:
    """The shards of the output at `prefix`: those its marker lists; without a marker, an IncompleteOutput error
    (or, with `require_complete=False`, whatever shards are there)."""
    marker = find_marker(prefix)
    if marker is not None:
        return _listed(marker, prefix)
    if require_complete:
        raise IncompleteOutput(
            f"{prefix}: no {prefix}_SUCCESS marker, so the output is absent, still being written or was cut short "
            "(pass require_complete=False to read whatever shards are there)"
        )
    return output_files(prefix)


def iter_tables(
    prefix: str, columns: Sequence[str] | None = None, batch_rows: int = 65536, require_complete: bool = True
) -> Iterator[pa.Table]:
    """The output as Arrow tables of at most `batch_rows` rows, one after another: never the whole output at once."""
    for path in output_shards(prefix, require_complete):
        parquet = open_parquet(path)
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=list(columns) if columns else None):
            yield pa.Table.from_batches([batch])


def to_numpy(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """One column as numpy: a tensor column as [rows, *shape], a fixed-size list as [rows, size], scalars as [rows]."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    kind = column.type
    if isinstance(kind, pa.FixedShapeTensorType):
        return column.to_numpy_ndarray()
    if pa.types.is_fixed_size_list(kind):
        return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), kind.list_size)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return np.array([np.asarray(v) if v is not None else None for v in column.to_pylist()], dtype=object)
    return column.to_numpy(zero_copy_only=False)


def read_arrays(prefix: str, columns: Sequence[str] | None = None, require_complete: bool = True) -> dict[str, np.ndarray]:
    """The whole output (or `columns` of it) as {column: numpy array}; for outputs that fit in memory."""
    tables = list(iter_tables(prefix, columns, require_complete=require_complete))
    if not tables:
        schema = pq.read_schema(output_files(prefix)[0]) if output_files(prefix) else pa.schema([])
        return {name: np.array([]) for name in (columns or schema.names)}
    table = pa.concat_tables(tables)
    return {name: to_numpy(table.column(name)) for name in table.column_names}


def read_dataframe(prefix: str, columns: Sequence[str] | None = None, require_complete: bool = True):
    """The output as a pandas DataFrame: one row per output row, a tensor cell holding a numpy array.

    Needs pandas (`pip install pandas`); nothing else in beam-gradients does.
    """
    try:
        import pandas as pd
    except ImportError as err:
        raise ImportError("read_dataframe needs pandas: pip install pandas (or use read_arrays)") from err
    arrays = read_arrays(prefix, columns, require_complete)
    return pd.DataFrame({name: list(v) if v.ndim > 1 else v for name, v in arrays.items()})


def read_summary(prefix: str) -> dict | None:
    """`<prefix>-summary.json`, the job's dataset-wide aggregates (schema in the README), or None where absent."""
    path = prefix + SUMMARY_SUFFIX
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type="uncompressed") as fh:
        return json.loads(fh.read().decode())


def output_metadata(prefix: str, require_complete: bool = True) -> dict[str, str]:
    """The `beam_gradients.*` metadata of the output's first shard (model, hash, spec, version), as text."""
    shards = output_shards(prefix, require_complete)
    if not shards:
        return {}
    meta = open_parquet(shards[0]).schema_arrow.metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"beam_gradients.")}
