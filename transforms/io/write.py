"""Arrow-batched Parquet writing: sharded files through Beam's file sink."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import os

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filebasedsink import FileBasedSink
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.io.arrow import is_list
from transforms.io.files import SHARD_TEMPLATE, SUFFIX

CODEC = "snappy"  # each page's compression (pyarrow's default)
# Values encoded at a time, between checks of a page's size (pyarrow's default: 1,024). On rows of 2,048 float32
# the writer alone took 0.32 s against 0.41 s for 20,000 rows (best of 10 interleaved); pages stay near 1 MiB.
WRITE_BATCH = 65_536
# Bytes a remote file's writes gather in before each goes through Python (see `ParquetSink.open`): held per
# open remote shard, beside the filesystem's own upload buffer (GCS: 16 MiB too). 4 MiB took 5.2 s in the
# measurement there.
REMOTE_BUFFER = 16 << 20


def write_parquet(prefix: str, schema: pa.Schema, num_shards: int = 0) -> beam.PTransform:
    """Sharded `<prefix>-SSSSS-of-NNNNN.parquet` through Beam's file sink (temp files, then rename).

    `num_shards` 0 lets the runner choose; a fixed count costs a shuffle.
    """
    return beam.io.Write(ParquetSink(prefix, schema, num_shards))


def parquet_writer(where, schema: pa.Schema) -> pq.ParquetWriter:
    """pyarrow's writer as our outputs take it: min/max statistics and dictionaries on scalar columns only.

    A tensor column's 2,048 numbers a row have no useful min/max, and gradients hardly repeat a value, so a
    dictionary only grows until pyarrow gives it up. Rewriting a projection job's output (100,000 rows of 2,048
    float32) took 1.87 s without either against 2.65 s with both (docs/fast-weights.md).
    """
    scalars = [f.name for f in schema if not is_list(f.type)]
    dictionary = [f.name for f in schema if f.name in scalars and not pa.types.is_floating(f.type)]
    options = dict(compression=CODEC, use_dictionary=dictionary, write_statistics=scalars, write_batch_size=WRITE_BATCH)
    return pq.ParquetWriter(where, schema, **options)


class ParquetSink(FileBasedSink):
    """Beam's Parquet sink (`WriteToParquetBatched`: one row group per table) with our writer's settings."""

    def __init__(self, prefix: str, schema: pa.Schema, num_shards: int):
        super().__init__(
            prefix,
            coder=None,
            file_name_suffix=SUFFIX,
            num_shards=num_shards,
            shard_name_template=SHARD_TEMPLATE,
            mime_type="application/x-parquet",
            compression_type=CompressionTypes.UNCOMPRESSED,  # Parquet compresses its own pages
        )
        self._schema = schema

    def open(self, temp_path) -> _Open:
        """The writer's thread writes pages without the GIL: to a local file through pyarrow's own file, to a
        remote one (Beam's filesystems, Python objects) through a buffer of REMOTE_BUFFER bytes, since every write
        to a Python file takes the GIL. Each page of a projection (1 MiB) waited for it while the job's thread ran
        Python: the writer alone beside a thread of pure Python took 13.7 s for 800 MB through a Python file,
        3.1 s through the buffer and 1.8 s through pyarrow's file, against 2.0 s alone (a one-off script; the bench's
        rows: docs/fast-weights.md)."""
        if FileSystems.get_scheme(temp_path) is None:  # a local path, created as Beam's local filesystem does
            os.makedirs(os.path.dirname(temp_path) or ".", exist_ok=True)
            file = pa.OSFile(temp_path, "wb")
            return _Open(file, parquet_writer(file, self._schema))
        file = super().open(temp_path)
        stream = pa.output_stream(file, buffer_size=REMOTE_BUFFER)
        return _Open(file, parquet_writer(stream, self._schema), stream)

    def write_record(self, handle: _Open, table: pa.Table) -> None:
        handle.write(table)

    def close(self, handle: _Open) -> None:
        handle.close()


class _Open:
    """One temp file being written, its tables encoded on a thread of its own, in order.

    pyarrow's writer releases the GIL while it encodes and compresses, so a table is written while the job
    computes the next one: on the MLP's projection job, writing its 8 KiB a row took about as long as the whole
    input-gradient job (docs/fast-weights.md). At most QUEUED tables wait (so up to QUEUED + 1 tables of a writer
    are held at once, against one before); a failed write raises at the next write or at close, and the file is
    then closed incomplete, as a failed write always left it.
    """

    QUEUED = 2

    def __init__(self, file, writer: pq.ParquetWriter, stream: pa.NativeFile | None = None):
        self.file = file
        self.writer = writer
        self.stream = stream  # a buffer between the writer and `file`, if any: flushed and closed before it
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="beam-gradients-parquet")
        self._pending: collections.deque[concurrent.futures.Future] = collections.deque()

    def write(self, table: pa.Table) -> None:
        self._wait_until(self.QUEUED - 1)
        self._pending.append(self._thread.submit(self.writer.write_table, table))

    def close(self) -> None:
        self._wait_until(0)
        self._thread.shutdown()
        try:
            for part in self._parts():
                part.close()
        except BaseException:
            self._abandon()  # what is left open is closed, not left to the garbage collector
            raise

    def _wait_until(self, pending: int) -> None:
        """Wait for the oldest writes until `pending` are left; a failed one abandons the file and raises."""
        try:
            while len(self._pending) > pending:
                self._pending.popleft().result()
        except BaseException:
            self._abandon()  # Beam does not close a writer whose write raised
            raise

    def _abandon(self) -> None:
        """After a failed write: no queued table is written, the thread ends and the file is closed as it is."""
        self._thread.shutdown(cancel_futures=True)
        self._pending.clear()
        for part in self._parts():
            with contextlib.suppress(Exception):
                part.close()

    def _parts(self) -> list:
        """What close closes, in order: the writer, then the buffer, then the file, each flushing into the next."""
        return [part for part in (self.writer, self.stream, self.file) if part is not None]
