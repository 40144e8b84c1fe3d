"""Beam coders for the job's Arrow elements, which measure them by their Arrow buffers' size.

Beam samples elements to estimate each PCollection's size, and for a type it
has no coder for, it pickles the element to measure it: a whole record batch or
output table copied only to be counted (about 15% of an MLP job's time). These
coders answer from the size of the Arrow buffers instead (which may overcount a
slice; a size estimate only), and where an element really crosses a
process boundary, tables travel in Arrow's IPC format.

Nothing here touches the coder of `pyarrow.Table` itself: registering one for it
would change every pipeline that imports this package. Our ParDos declare
`ArrowTable` instead, a type hint of our own that the registry maps to
`ArrowTableCoder`; it is a `pyarrow.Table` for Beam's type checks (a subclass,
and every table is an instance of it), so consumers typed `pyarrow.Table` still
accept our outputs. `SourceBatch` is our own type, so its coder is registered
for it directly.
"""

from __future__ import annotations

import pickle

import apache_beam as beam
import pyarrow as pa

from transforms.io.read import SourceBatch


class _AnyTable(type):
    def __instancecheck__(cls, instance) -> bool:
        return isinstance(instance, pa.Table)


class ArrowTable(pa.Table, metaclass=_AnyTable):
    """A type hint only, never instantiated: a `pyarrow.Table` that our coder carries. `.with_output_types(ArrowTable)`."""


class ArrowTableCoder(beam.coders.Coder):
    """pyarrow.Table <-> Arrow IPC stream bytes."""

    def encode(self, table: pa.Table) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue().to_pybytes()

    def decode(self, data: bytes) -> pa.Table:
        return pa.ipc.open_stream(data).read_all()

    def estimate_size(self, table: pa.Table) -> int:
        return table.get_total_buffer_size()

    def to_type_hint(self):
        return ArrowTable


class SourceBatchCoder(beam.coders.Coder):
    """SourceBatch <-> pickle (Arrow pickles its buffers whole), sized without encoding."""

    def encode(self, value: SourceBatch) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def decode(self, data: bytes) -> SourceBatch:
        return pickle.loads(data)

    def estimate_size(self, value: SourceBatch) -> int:
        batch = value.batch
        return len(value.source) + (batch.get_total_buffer_size() if isinstance(batch, pa.RecordBatch) else 1024)

    def to_type_hint(self):
        return SourceBatch


beam.coders.registry.register_coder(ArrowTable, ArrowTableCoder)
beam.coders.registry.register_coder(SourceBatch, SourceBatchCoder)
