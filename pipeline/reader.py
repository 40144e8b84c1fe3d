"""Read a finished job's output back: numpy arrays, or a pandas DataFrame where pandas is installed.

Why: the output's gradient columns are Arrow `fixed_shape_tensor`s, which
need `combine_chunks().to_numpy_ndarray()` to become arrays; this does it per
column, streams where asked, and reads only a complete output (one with its
`_SUCCESS` marker), exactly the shards that marker lists.

>>> from pipeline.reader import read_arrays
>>> arrays = read_arrays("demo/out/gradients")            # doctest: +SKIP
>>> arrays["gradient"].shape                              # doctest: +SKIP
(3000, 16, 16, 1)
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from transforms.contract import KEY, MARKER_SUFFIX, METADATA_PREFIX, SECONDARY_SUFFIXES, columns_of_kind, declared_columns, summary_path
from pipeline.outputs import CorruptMarker, _absolute, marker_entry, marker_path, output_folder, read_marker
from transforms.io.files import SHARD_TEMPLATE, SUFFIX, InputError, files_in_folder, open_parquet, output_files, read_footers

BATCH_ROWS = 65536  # rows of each table the reader hands out


class IncompleteOutput(InputError):
    """No `_SUCCESS` marker vouches for this output: it is absent, still being written, or was cut short."""


class MissingColumn(InputError, KeyError):
    """A column asked for that the output's shard lacks: an input error (one line from the CLI), and a KeyError, as
    for a dict's missing key."""


class OutputMismatch(InputError):
    """A shard the marker lists is missing, or its bytes or rows are not what the marker says."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """A file to read, with what its marker says it holds (None: no marker, or one written before it said)."""

    path: str
    rows: int | None = None
    bytes: int | None = None


def _find(prefix: str) -> tuple[dict, str] | None:
    """(marker, the prefix it belongs to) for `prefix`: its own, or its main output's for a secondary prefix."""
    marker = read_marker(prefix)
    if marker is not None:
        return marker, prefix
    for suffix in SECONDARY_SUFFIXES:
        if prefix.endswith(suffix):
            main = prefix[: -len(suffix)]
            marker = read_marker(main)
            if marker is not None and _select(marker, main, _of_prefix(prefix)):
                return marker, main
    return _find_beside(prefix)


def _find_beside(prefix: str) -> tuple[dict, str] | None:
    """The marker in `prefix`'s folder that lists its shards, where the job named it freely (an influence job's
    `--self_influence_output` sits in its output's folder under any name); markers that are not a job's are skipped."""
    for path in files_in_folder(output_folder(prefix).rstrip("/") + "/*" + MARKER_SUFFIX):
        main = path[: -len(MARKER_SUFFIX)]
        try:
            marker = read_marker(main)
            if marker is not None and _select(marker, main, _of_prefix(prefix)):
                return marker, main
        except CorruptMarker:
            continue
    return None


def find_marker(prefix: str) -> dict | None:
    """The marker that lists `prefix`'s shards: its own, or its main output's for a rejected or self-influence prefix.

    None where there is none; CorruptMarker where there is one that is not a job's marker.
    """
    found = _find(prefix)
    return found[0] if found else None


def _select(marker: dict, marker_prefix: str, wanted) -> list[Shard]:
    """The listed shards `wanted(option, path)` accepts; every entry resolved inside the marker's folder, or refused."""
    folder, where = output_folder(marker_prefix), marker_path(marker_prefix)
    info = marker.get("shards", {})
    chosen = []
    for option, entries in marker["outputs"].items():
        for entry in entries:
            path = marker_entry(entry, folder, where)
            if wanted(option, path):
                recorded = info.get(path.rsplit("/", 1)[-1]) or {}
                chosen.append(Shard(path, recorded.get("rows"), recorded.get("bytes")))
    return sorted(chosen, key=lambda s: s.path)


def _of_prefix(prefix: str):
    """The marker's entries that are `prefix`'s own shards, `<prefix>-SSSSS-of-NNNNN.parquet` with digits there:
    `out/g` takes neither `out/g-2`'s shards nor `out/g-rejected`'s, which Beam's delete pattern (a `*`) would."""
    name = re.escape(SHARD_TEMPLATE + SUFFIX).replace("SSSSS", r"\d{5,}").replace("NNNNN", r"\d{5,}")
    shard = re.compile(re.escape(_absolute(prefix)) + name)
    return lambda option, path: bool(shard.fullmatch(path))


def _check_files(shards: Sequence[Shard], where: str) -> None:
    """Every listed shard is there, with the bytes its marker says (the filesystem's listing: nothing is read)."""
    if not shards:
        return
    for shard, result in zip(shards, FileSystems.match([s.path for s in shards])):
        if not result.metadata_list:
            raise OutputMismatch(f"{shard.path}: listed by {where} but missing; the output is not what its marker vouches for")
        size = result.metadata_list[0].size_in_bytes
        if shard.bytes is not None and size != shard.bytes:
            raise OutputMismatch(
                f"{shard.path}: {size} bytes, but {where} says {shard.bytes}; the shard changed after the job wrote it"
            )


def _check_rows(shard: Shard, rows: int, where: str) -> None:
    if shard.rows is not None and rows != shard.rows:
        raise OutputMismatch(
            f"{shard.path}: {rows} rows, but {where} says {shard.rows}; the shard changed after the job wrote it"
        )


def _shards(prefix: str, require_complete: bool) -> tuple[list[Shard], str]:
    """The shards to read and the marker file that vouches for them ('' where none does)."""
    try:
        found = _find(prefix)
        if found is not None:
            marker, main = found
            shards = _select(marker, main, _of_prefix(prefix))
            _check_files(shards, marker_path(main))
            return shards, marker_path(main)
    except (CorruptMarker, OutputMismatch):
        if require_complete:
            raise
    if require_complete:
        raise IncompleteOutput(
            f"{prefix}: no {prefix}_SUCCESS marker, so the output is absent, still being written or was cut short "
            "(pass require_complete=False to read whatever shards are there)"
        )
    return [Shard(p) for p in output_files(prefix)], ""


def output_shards(prefix: str, require_complete: bool = True) -> list[str]:
    """The shards of the output at `prefix`: those its marker lists, each there with the bytes the marker says.

    Without a marker, IncompleteOutput; with a corrupt one (or one listing a file outside the output's
    folder), CorruptMarker; a listed shard missing or of another size, OutputMismatch. With
    `require_complete=False`, whatever shards are there instead of any of those errors.
    """
    return [s.path for s in _shards(prefix, require_complete)[0]]


def listed_shards(prefix: str, option: str) -> list[str]:
    """The shards the marker at `prefix` lists under `option` (e.g. "--rejected"), checked as output_shards'."""
    return [s.path for s in _listed(prefix, option)[0]]


def _listed(prefix: str, option: str) -> tuple[list[Shard], str]:
    found = _find(prefix)
    if found is None:
        raise IncompleteOutput(f"{prefix}: no {prefix}_SUCCESS marker lists its {option} shards")
    marker, main = found
    shards = _select(marker, main, lambda o, path: o == option)
    _check_files(shards, marker_path(main))
    return shards, marker_path(main)


def verify_output(prefix: str) -> dict:
    """The marker of the output at `prefix`, after checking every shard it lists: there, its bytes, its rows.

    Raises IncompleteOutput, CorruptMarker or OutputMismatch (one line, naming the marker or the shard).
    """
    found = _find(prefix)
    if found is None:
        raise IncompleteOutput(f"{prefix}: no {prefix}_SUCCESS marker")
    marker, main = found
    shards = _select(marker, main, lambda option, path: True)
    _check_files(shards, marker_path(main))
    for shard, footer in zip(shards, read_footers([s.path for s in shards])):
        _check_rows(shard, footer.num_rows, marker_path(main))
    return marker


def iter_tables(
    prefix: str, columns: Sequence[str] | None = None, batch_rows: int = BATCH_ROWS, require_complete: bool = True
) -> Iterator[pa.Table]:
    """The output as Arrow tables of at most `batch_rows` rows, one after another: never the whole output at once.

    Each listed shard's rows are checked against its marker as it is opened (OutputMismatch).
    """
    return _iter_shards(*_shards(prefix, require_complete), columns, batch_rows)


def iter_listed(prefix: str, option: str, columns: Sequence[str] | None = None, batch_rows: int = BATCH_ROWS):
    """Tables of the shards the marker at `prefix` lists under `option`, checked as iter_tables' are."""
    return _iter_shards(*_listed(prefix, option), columns, batch_rows)


def _iter_shards(shards: Sequence[Shard], where: str, columns, batch_rows: int) -> Iterator[pa.Table]:
    for shard in shards:
        parquet = open_parquet(shard.path)
        _check_rows(shard, parquet.metadata.num_rows, where)
        _check_columns(parquet.schema_arrow, columns, shard.path)
        for batch in parquet.iter_batches(batch_size=batch_rows, columns=list(columns) if columns else None):
            yield pa.Table.from_batches([batch])


def _check_columns(schema: pa.Schema, columns: Sequence[str] | None, path: str) -> None:
    """MissingColumn naming the columns asked for that the shard lacks (pyarrow would drop them without a word)."""
    missing = [c for c in columns or () if c not in schema.names]
    if missing:
        raise MissingColumn(f"{path} has no column {', '.join(map(repr, missing))}; it has {', '.join(schema.names)}")


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
    shards, where = _shards(prefix, require_complete)
    tables = list(_iter_shards(shards, where, columns, BATCH_ROWS))
    if not tables and shards:  # a zero-row output: its listed shard's columns, typed, with no rows
        schema = open_parquet(shards[0].path).schema_arrow
        tables = [schema.empty_table().select(list(columns)) if columns else schema.empty_table()]
    if not tables:
        return {name: np.array([]) for name in columns or ()}
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
    path = summary_path(prefix)
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
    return {k.decode(): v.decode() for k, v in meta.items() if k.startswith(METADATA_PREFIX.encode())}


def output_columns(prefix: str, require_complete: bool = True) -> list[dict] | None:
    """What each column of the output is, as the job declared it (`beam_gradients.columns`: column, kind,
    output, head, input, feature), or None for an output that declares none."""
    return declared_columns(output_metadata(prefix, require_complete))


def key_columns(prefix: str, require_complete: bool = True) -> list[str]:
    """The key columns the job kept (declared kind `key`), in order; none where the output declares no columns."""
    return columns_of_kind(output_columns(prefix, require_complete), KEY)
