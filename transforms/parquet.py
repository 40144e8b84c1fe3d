"""Arrow-batched Parquet read and write, and the output schema.

Why not `ReadFromParquet`: one Python dict per row costs several times the
model's own compute. Rows stay in Arrow record batches here, bounded in rows
(a file written as one huge row group is streamed, never loaded whole), and the
unit of parallelism is the row group, so one large file still spreads over workers.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import glob
import shutil
import uuid
from typing import Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.parquetio import WriteToParquetBatched

from transforms import METRICS, error_line
from transforms.tensors import SCALARS, Feed, FeedError, tensor_type, to_tensor_array

# A record batch read from Parquet aims at this many bytes (decoded), within row bounds.
READ_BATCH_BYTES = 32 << 20
READ_BATCH_ROWS = (1024, 65536)
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
SUFFIX = ".parquet"


class InputError(ValueError):
    """Input files that cannot be read; the message names the file."""


def match_files(pattern: str, option: str = "--input") -> list[str]:
    """Every file `pattern` matches (local or remote, Beam's filesystems), sorted."""
    try:
        result = FileSystems.match([pattern])[0]
    except Exception as err:  # BeamIOError and friends: the filesystem says why
        raise InputError(f"{option} {pattern!r}: cannot list files ({err})") from err
    paths = sorted(m.path for m in result.metadata_list)
    if not paths:
        raise InputError(f"{option} {pattern!r} matches no file")
    return paths


def open_parquet(path: str) -> pq.ParquetFile:
    """A Parquet file opened for streaming reads: column chunks are read in buffered pieces."""
    source = path if "://" not in path else FileSystems.open(path)
    try:
        return pq.ParquetFile(source, buffer_size=1 << 20, pre_buffer=False)
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as err:
        raise InputError(f"{path} is not a readable Parquet file ({err})") from err


def read_schemas(paths: Sequence[str]) -> list[pa.Schema]:
    """Every file's schema, from its footer alone, read in parallel (remote footers are slow one by one)."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(16, len(paths))) as pool:
        return list(pool.map(lambda p: open_parquet(p).schema_arrow, paths))


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


class _ReadRowGroup(beam.DoFn):
    """(file, row group) -> (file, record batch) of the needed columns, bounded in rows.

    A row group that fails to decode midway (a corrupt page) does not fail the
    job: its unread rows come out as one UnreadableRows, with the keys and the
    column at fault where they can be found.
    """

    def __init__(self, columns: Sequence[str], rows: int | None, key_columns: Sequence[str] = ()):
        self._columns = list(columns)
        self._rows = rows
        self._key_columns = list(key_columns)
        self._rows_in = beam.metrics.Metrics.counter(METRICS, "rows_in")

    def process(self, element):
        path, index = element
        parquet = open_parquet(path)
        rows = self._rows or read_batch_rows(parquet.metadata.row_group(index))
        done = 0
        try:
            for batch in parquet.iter_batches(batch_size=rows, row_groups=[index], columns=self._columns):
                self._rows_in.inc(batch.num_rows)
                done += batch.num_rows
                yield SourceBatch(path, batch)
        except pa.ArrowMemoryError:
            raise  # the worker, not the data: let the runner retry the bundle
        except (pa.ArrowException, OSError) as err:
            column, detail = self._corrupt_column(parquet, index)
            if column is None:  # every column reads on its own: a passing fault (network, disk), not the data
                raise InputError(f"{path}: row group {index} cannot be read ({error_line(err)})") from err
            unread = parquet.metadata.row_group(index).num_rows - done
            self._rows_in.inc(unread)
            keys = self._keys(parquet, index, done, unread)
            reason = f"row group {index} cannot be read: column {column!r} is corrupt ({detail})"
            yield SourceBatch(path, UnreadableRows(unread, keys, reason))

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
    """PBegin -> SourceBatch, spread over workers by row group."""

    def __init__(
        self, files: Sequence[str], columns: Sequence[str], rows: int | None = None, key_columns: Sequence[str] = ()
    ):
        super().__init__()
        self._files = list(files)
        self._columns = list(columns)
        self._rows = rows
        self._key_columns = list(key_columns)

    def expand(self, pbegin):
        return (
            pbegin
            | "Files" >> beam.Create(self._files)
            | "RowGroups" >> beam.ParDo(_RowGroups())
            | "Spread" >> beam.Reshuffle()
            | "Read"
            >> beam.ParDo(_ReadRowGroup(self._columns, self._rows, self._key_columns)).with_output_types(SourceBatch)
        )


def write_parquet(prefix: str, schema: pa.Schema) -> beam.PTransform:
    """Sharded `<prefix>-SSSSS-of-NNNNN.parquet` through Beam's file sink (temp files, then rename)."""
    return WriteToParquetBatched(
        prefix, schema=schema, codec="snappy", file_name_suffix=SUFFIX, shard_name_template=SHARD_TEMPLATE
    )


def output_files(prefix: str) -> list[str]:
    """The shards under `prefix`: what a finished job wrote."""
    pattern = prefix + SHARD_TEMPLATE.replace("S", "?").replace("N", "?") + SUFFIX
    try:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    except Exception:  # a prefix in a folder that does not exist yet matches nothing
        return []


def remove_output(prefix: str) -> None:
    """Delete an earlier run's shards under `prefix`, so a rerun replaces them rather than mixing in.

    Only names of the job's own shard pattern are touched, and the temp folders
    Beam's sink leaves beside them when a run is killed before it finishes.
    """
    old = output_files(prefix)
    folder, name = FileSystems.split(prefix)
    temp_folders = FileSystems.join(folder, f"beam-temp-{name}-" + "?" * 32)  # Beam adds a uuid1's hex
    if "://" in prefix:  # an object store: the temp "folders" are their objects
        try:
            old += [m.path for m in FileSystems.match([FileSystems.join(temp_folders, "*")])[0].metadata_list]
        except Exception:  # nothing there yet
            pass
    else:  # a local disk keeps the folders, empty or not
        for path in glob.glob(temp_folders):
            shutil.rmtree(path, ignore_errors=True)
    if old:
        FileSystems.delete(old)


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
    source: str  # key | gradient | prediction | loss | norm
    index: int = 0
    feature: int | None = None  # for a stacked scalar input: which feature


def gradient_column(input_name: str, output: str | None, multi_input: bool, feature: str | None = None) -> str:
    """`gradient`, `gradient__<input>` or `gradient__<feature>`, then `__<output>` for per_output."""
    parts = ["gradient"]
    if feature is not None:
        parts.append(feature)
    elif multi_input:
        parts.append(input_name)
    if output is not None:
        parts.append(output)
    return "__".join(parts)


class OutputLayout:
    """The output columns, their types and how each is filled from the engine's results."""

    def __init__(
        self,
        key_fields: Sequence[pa.Field],
        gradient_keys: Sequence[tuple[str, str | None]],
        feeds: Sequence[Feed],
        predictions: Sequence[tuple[str, Sequence[int]]] = (),
        loss: bool = False,
        norms: bool = False,
        metadata: dict[str, str] | None = None,
    ):
        by_input = {f.input: f for f in feeds}
        multi_input = len(feeds) > 1
        columns = [_Column(f.name, f.type, "key") for f in key_fields]
        for i, (input_name, output) in enumerate(gradient_keys):
            feed = by_input[input_name]
            if feed.kind == SCALARS:
                for j, feature in enumerate(feed.columns):
                    name = gradient_column(input_name, output, multi_input, feature)
                    columns.append(_Column(name, pa.float32(), "gradient", i, j))
            else:
                name = gradient_column(input_name, output, multi_input)
                columns.append(_Column(name, tensor_type(feed.shape), "gradient", i))
        for i, (output, shape) in enumerate(predictions):
            kind = tensor_type(shape) if len(shape) else pa.float32()
            columns.append(_Column(f"prediction__{output}", kind, "prediction", i))
        if loss:
            columns.append(_Column("loss", pa.float32(), "loss"))
        if norms:
            for i, (input_name, output) in enumerate(gradient_keys):
                name = "norm__" + gradient_column(input_name, output, multi_input)
                columns.append(_Column(name, pa.float32(), "norm", i))
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
            if c.source == "key":
                arrays.append(keys.column(c.name))
                continue
            if c.source == "gradient":
                values = result["gradients"][c.index][:rows]
            elif c.source == "prediction":
                values = result["predictions"][c.index][:rows]
            elif c.source == "loss":
                values = result["loss"][:rows]
            else:
                values = result["norms"][c.index][:rows]
            if c.feature is not None:
                values = values.reshape(rows, -1)[:, c.feature]
            if isinstance(c.type, pa.FixedShapeTensorType):
                arrays.append(to_tensor_array(values.reshape((rows, *c.type.shape))))
            else:
                arrays.append(pa.array(np.asarray(values, np.float32).reshape(rows)))
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
