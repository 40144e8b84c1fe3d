"""Arrow-batched Parquet read and write, and the output schema.

Why not `ReadFromParquet`: one Python dict per row costs several times the
model's own compute. Rows stay in Arrow record batches here, bounded in rows
(a file written as one huge row group is streamed, never loaded whole), and the
unit of parallelism is the row group, so one large file still spreads over workers.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import uuid
from typing import TYPE_CHECKING, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquetBatched

from transforms import error_line
from transforms.counters import Counters
from transforms.tensors import SCALARS, Feed, FeedError, numpy_dtype, tensor_type, to_tensor_array

if TYPE_CHECKING:  # the layout reads the engine's declarations; this file needs no TensorFlow
    from transforms.gradients import Output

# A record batch read from Parquet aims at this many bytes (decoded), within row bounds.
READ_BATCH_BYTES = 32 << 20
READ_BATCH_ROWS = (1024, 65536)
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
SUFFIX = ".parquet"


class InputError(ValueError):
    """Input files that cannot be read; the message names the file."""


@dataclasses.dataclass(frozen=True)
class InputFiles:
    """The files an --input pattern matches: those to read, and the zero-byte ones skipped."""

    paths: list[str]
    empty: list[str]


def match_files(pattern: str, option: str = "--input") -> InputFiles:
    """Every file `pattern` matches (local or remote, Beam's filesystems), sorted.

    Zero-byte files are what a failed writer leaves behind: they are skipped
    (and reported), not read; a file with content that is not Parquet stays an error.
    """
    if _is_folder(pattern):  # a folder reads its Parquet files, with or without the trailing slash
        pattern = pattern.rstrip("/") + "/*" + SUFFIX
    try:
        result = FileSystems.match([pattern])[0]
    except Exception as err:  # BeamIOError and friends: the filesystem says why
        raise InputError(f"{option} {pattern!r}: cannot list files ({err})") from err
    found = sorted(result.metadata_list, key=lambda m: m.path)
    if not found:
        raise InputError(f"{option} {pattern!r} matches no file")
    paths = [m.path for m in found if m.size_in_bytes]
    empty = [m.path for m in found if not m.size_in_bytes]
    if not paths:
        raise InputError(f"{option} {pattern!r}: every file it matches is empty (0 bytes): {', '.join(empty[:3])}")
    return InputFiles(paths, empty)


def _is_folder(pattern: str) -> bool:
    if any(ch in pattern for ch in "*?["):
        return False
    if "://" not in pattern:
        return os.path.isdir(pattern)
    return pattern.endswith("/")


def open_parquet(path: str) -> pq.ParquetFile:
    """A Parquet file opened for streaming reads: column chunks are read in buffered pieces."""
    source = path if "://" not in path else FileSystems.open(path)
    try:
        return pq.ParquetFile(source, buffer_size=1 << 20, pre_buffer=False)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as err:
        raise InputError(f"{path} is not a readable Parquet file ({err})") from err


def read_footers(paths: Sequence[str]) -> list[pq.FileMetaData]:
    """Every file's footer, read in parallel (remote footers are slow one by one)."""
    if not paths:
        return []
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        return list(pool.map(lambda p: open_parquet(p).metadata, paths))


def read_schemas(paths: Sequence[str], footers: Sequence[pq.FileMetaData] | None = None) -> list[pa.Schema]:
    """Every file's Arrow schema, from its footer alone; a column named twice is refused here."""
    schemas = [meta.schema.to_arrow_schema() for meta in (footers or read_footers(paths))]
    for path, schema in zip(paths, schemas):
        twice = sorted({n for n in schema.names if schema.names.count(n) > 1})
        if twice:
            raise InputError(
                f"{path} has the column {twice[0]!r} twice; Parquet readers cannot tell the two apart "
                "(rewrite the file with unique column names)"
            )
    return schemas


def parquet_rows(paths: Sequence[str]) -> int:
    """Rows in these Parquet files, from their footers: a count that needs no runner's metrics."""
    return sum(meta.num_rows for meta in read_footers(paths))


def check_same_columns(paths: Sequence[str], schemas: Sequence[pa.Schema], columns: Sequence[str]) -> None:
    """Every file must hold the columns the job reads, with the first file's types."""
    first, reference = paths[0], schemas[0]
    for path, schema in zip(paths[1:], schemas[1:]):
        for column in columns:
            if column not in schema.names:
                raise InputError(
                    f"{path} has no column {column!r}, which {first} has; its columns are: {', '.join(schema.names)}"
                )
            theirs, ours = schema.field(column).type, reference.field(column).type
            if theirs != ours:
                raise InputError(
                    f"{path} disagrees with {first}: column {column!r} is {theirs} there, {ours} in {first}"
                )


def read_batch_rows(meta: pq.RowGroupMetaData) -> int:
    """Rows per record batch for a row group: about READ_BATCH_BYTES decoded."""
    per_row = max(1, meta.total_byte_size // max(1, meta.num_rows))
    low, high = READ_BATCH_ROWS
    return int(min(high, max(low, READ_BATCH_BYTES // per_row)))


class _RowGroups(beam.DoFn):
    """file -> (file, row group index) for each non-empty row group."""

    def process(self, path):
        meta = open_parquet(path).metadata
        for index in range(meta.num_row_groups):
            if meta.row_group(index).num_rows:
                yield path, index


@dataclasses.dataclass(frozen=True)
class UnreadableRows:
    """Rows of a row group that Parquet could not decode: they are rejected with stage `read`, not lost."""

    rows: int
    keys: pa.Table | None  # their key columns, where those could still be read
    reason: str


@dataclasses.dataclass(frozen=True)
class SourceBatch:
    """What the read yields: a record batch (or the rows that could not be read) and the file it came from."""

    source: str
    batch: pa.RecordBatch | UnreadableRows
    first_row: int = 0  # the batch's first row's position in its file, for error messages


class _ReadRowGroup(beam.DoFn):
    """(file, row group) -> (file, record batch) of the needed columns, bounded in rows.

    A row group that fails to decode midway (a corrupt page) does not fail the
    job: its unread rows come out as one UnreadableRows, with the keys and the
    column at fault where they can be found.
    """

    def __init__(self, columns: Sequence[str], rows: int | None, key_columns: Sequence[str] = (), count: bool = True):
        self._columns = list(columns)
        self._rows = rows
        self._key_columns = list(key_columns)
        self._count = count
        self._counters = Counters()

    def process(self, element):
        path, index = element
        parquet = open_parquet(path)
        rows = self._rows or read_batch_rows(parquet.metadata.row_group(index))
        first = sum(parquet.metadata.row_group(i).num_rows for i in range(index))
        done = 0
        try:
            for batch in parquet.iter_batches(batch_size=rows, row_groups=[index], columns=self._columns):
                if self._count:
                    self._counters.inc("rows_in", batch.num_rows)
                yield SourceBatch(path, batch, first + done)
                done += batch.num_rows
        except pa.ArrowMemoryError:
            raise  # the worker, not the data: let the runner retry the bundle
        except (pa.ArrowException, OSError) as err:
            column, detail = self._corrupt_column(parquet, index)
            if column is None:  # every column reads on its own: a passing fault (network, disk), not the data
                raise InputError(f"{path}: row group {index} cannot be read ({error_line(err)})") from err
            unread = parquet.metadata.row_group(index).num_rows - done
            if self._count:
                self._counters.inc("rows_in", unread)
            keys = self._keys(parquet, index, done, unread)
            reason = f"row group {index} cannot be read: column {column!r} is corrupt ({detail})"
            yield SourceBatch(path, UnreadableRows(unread, keys, reason), first + done)

    def _keys(self, parquet: pq.ParquetFile, index: int, start: int, rows: int) -> pa.Table | None:
        if not self._key_columns:
            return None
        try:
            return parquet.read_row_group(index, columns=self._key_columns).slice(start, rows)
        except (pa.ArrowException, OSError):
            return None

    def _corrupt_column(self, parquet: pq.ParquetFile, index: int) -> tuple[str | None, str]:
        """The first column of the row group that fails to decode on its own, and its error."""
        for column in self._columns:
            try:
                for _ in parquet.iter_batches(batch_size=65536, row_groups=[index], columns=[column]):
                    pass
            except (pa.ArrowException, OSError) as err:
                return column, error_line(err)
        return None, ""


class ReadParquetBatches(beam.PTransform):
    """PBegin -> SourceBatch, spread over workers by row group.

    `count=False` for a second read of the same files (a first pass), so `rows_in` counts each row once.
    """

    def __init__(
        self,
        files: Sequence[str],
        columns: Sequence[str],
        rows: int | None = None,
        key_columns: Sequence[str] = (),
        count: bool = True,
    ):
        super().__init__()
        self._files = list(files)
        self._columns = list(columns)
        self._rows = rows
        self._key_columns = list(key_columns)
        self._count = count

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self._files)
            | "RowGroups" >> beam.ParDo(_RowGroups())
            | "Spread" >> beam.Reshuffle()
            | "Read"
            >> beam.ParDo(
                _ReadRowGroup(self._columns, self._rows, self._key_columns, self._count)
            ).with_output_types(SourceBatch)
        )


def write_parquet(prefix: str, schema: pa.Schema, num_shards: int = 0) -> beam.PTransform:
    """Sharded `<prefix>-SSSSS-of-NNNNN.parquet` through Beam's file sink (temp files, then rename).

    `num_shards` 0 lets the runner choose; a fixed count costs a shuffle.
    """
    return WriteToParquetBatched(
        prefix,
        schema=schema,
        codec="snappy",
        file_name_suffix=SUFFIX,
        shard_name_template=SHARD_TEMPLATE,
        num_shards=num_shards,
    )


def output_files(prefix: str) -> list[str]:
    """The shards under `prefix`: what a finished job wrote."""
    pattern = prefix + SHARD_TEMPLATE.replace("S", "?").replace("N", "?") + SUFFIX
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # a prefix in a folder that does not exist yet matches nothing
        return []


def check_writable(prefix: str, option: str) -> None:
    """Write and delete a probe beside `prefix`, so an output that cannot be written fails before any compute."""
    folder, _ = FileSystems.split(prefix)
    probe = FileSystems.join(folder, f".beam-gradients-probe-{uuid.uuid4().hex}")
    try:
        FileSystems.mkdirs(folder)
    except Exception:  # it exists already (or the filesystem has no folders); the probe tells
        pass
    try:
        FileSystems.create(probe).close()
        FileSystems.delete([probe])
    except Exception as err:
        raise InputError(f"{option} {prefix!r}: cannot write there ({error_line(err)})") from err


# ---------------------------------------------------------------- the output schema


@dataclasses.dataclass(frozen=True)
class _Column:
    name: str
    type: pa.DataType
    source: str | None  # the engine output it is filled from; None for a key column
    feature: int | None = None  # for a stacked scalar input: which feature
    kind: str | None = None  # the engine output's kind (gradient, prediction, ...); None for a key column
    feature_name: str | None = None  # that feature's input column


def _arrow_type(output: Output) -> pa.DataType:
    value = pa.from_numpy_dtype(np.dtype(output.dtype))
    return tensor_type(output.shape, value) if len(output.shape) else value


class OutputLayout:
    """The output columns, their types and how each is filled, from the engine's declared outputs.

    Key columns first, then every output the engine writes, in its order. An
    output per model input that is fed by stacked scalar columns becomes one
    float column per feature.
    """

    def __init__(
        self,
        key_fields: Sequence[pa.Field],
        outputs: Sequence[Output],
        feeds: Sequence[Feed],
        metadata: dict[str, str] | None = None,
    ):
        by_input = {f.input: f for f in feeds}
        columns = [_Column(f.name, f.type, None) for f in key_fields]
        for output in outputs:
            if not output.write:
                continue
            feed = by_input.get(output.input)
            if feed is not None and feed.kind == SCALARS and output.per_feature:
                value = pa.from_numpy_dtype(np.dtype(output.dtype))
                for j, feature in enumerate(feed.columns):
                    name = output.per_feature.format(feature=feature)
                    columns.append(_Column(name, value, output.name, j, output.kind, feature))
            else:
                columns.append(_Column(output.name, _arrow_type(output), output.name, kind=output.kind))
        names = [c.name for c in columns]
        clashes = sorted({n for n in names if names.count(n) > 1})
        if clashes:
            raise FeedError(
                f"output column {', '.join(repr(c) for c in clashes)} would appear twice; "
                "rename the key column or drop it from --keep_columns"
            )
        self.columns = columns
        self.schema = pa.schema(
            [pa.field(c.name, c.type) for c in columns],
            metadata={k.encode(): v.encode() for k, v in (metadata or {}).items()},
        )

    def table(self, keys: pa.Table, result: dict, rows: int) -> pa.Table:
        """The output rows for the first `rows` rows of a batch (padding never reaches the output)."""
        arrays = []
        for c in self.columns:
            if c.source is None:
                arrays.append(keys.column(c.name))
                continue
            values = result[c.source][:rows]
            if c.feature is not None:
                values = values.reshape(rows, -1)[:, c.feature]
            if isinstance(c.type, pa.FixedShapeTensorType):
                arrays.append(to_tensor_array(values.reshape((rows, *c.type.shape)), c.type.value_type))
            else:
                arrays.append(pa.array(np.asarray(values, numpy_dtype(c.type)).reshape(rows)))
        return pa.Table.from_arrays(arrays, schema=self.schema)


def rejected_schema(key_fields: Sequence[pa.Field]) -> pa.Schema:
    """Rejected rows: the key columns, then where and why each row was refused."""
    return pa.schema(
        list(key_fields)
        + [pa.field("stage", pa.string()), pa.field("reason", pa.string()), pa.field("source_file", pa.string())]
    )


def rejected_table(schema: pa.Schema, keys: pa.Table, stages, reasons, source: str) -> pa.Table:
    n = keys.num_rows
    arrays = [keys.column(f.name) for f in schema if f.name in keys.column_names]
    arrays += [
        pa.array(list(stages), pa.string()),
        pa.array(list(reasons), pa.string()),
        pa.array([source] * n, pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)
