"""Arrow-batched Parquet reading, spread over workers by row group.

Why not `ReadFromParquet`: one Python dict per row costs several times the
model's own compute. Rows stay in Arrow record batches here, bounded in rows
(a file written as one huge row group is streamed, never loaded whole), and the
unit of parallelism is the row group, so one large file still spreads over workers.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from transforms import error_line
from transforms.counters import Counters
from transforms.io.files import InputError, open_parquet

# A record batch read from Parquet aims at this many bytes (decoded), within row bounds.
READ_BATCH_BYTES = 32 << 20
READ_BATCH_ROWS = (1024, 65536)


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
