"""The output schema: the columns a job writes, their types and how each is filled, from the engine's declared outputs."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Sequence

import numpy as np
import pyarrow as pa

from transforms.contract import KEY, REJECTED_COLUMNS, column_entry, columns_metadata
from transforms.feeds.columns import SCALARS, Feed, FeedError
from transforms.io.arrow import numpy_dtype, tensor_type, to_tensor_array

if TYPE_CHECKING:  # the layout reads the engine's declarations; this file needs no TensorFlow
    from transforms.gradients import Output


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
                "output column {clashes} would appear twice; rename the key column or drop it from {keep_columns}",
                clashes=", ".join(repr(c) for c in clashes),
            )
        self.columns = columns
        heads = {o.name: getattr(o, "head", None) for o in outputs}  # where the engine declares its outputs' heads
        inputs = {o.name: o.input for o in outputs}
        declared = [
            column_entry(c.name, c.kind, c.source, heads[c.source], inputs[c.source], c.feature_name)
            if c.source is not None else column_entry(c.name, KEY)
            for c in columns
        ]
        metadata = {**(metadata or {}), **columns_metadata(declared)}
        self.schema = pa.schema(
            [pa.field(c.name, c.type) for c in columns],
            metadata={k.encode(): v.encode() for k, v in metadata.items()},
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
    """Rejected rows: the key columns, then where and why each row was refused.

    A key column named like one of the latter is refused, as OutputLayout refuses a clash: the file would have the
    name twice, and a batch with a rejected row could not be written at all.
    """
    clashes = [f.name for f in key_fields if f.name in REJECTED_COLUMNS]
    if clashes:
        raise FeedError(
            "key column {clashes} clashes with the rejected-rows output's own column of that name; "
            "rename the key column or drop it from {keep_columns}",
            clashes=", ".join(repr(c) for c in clashes),
        )
    return pa.schema(list(key_fields) + [pa.field(name, pa.string()) for name in REJECTED_COLUMNS])


def rejected_table(schema: pa.Schema, keys: pa.Table, stages, reasons, source: str) -> pa.Table:
    n = keys.num_rows
    arrays = [keys.column(f.name) for f in schema if f.name in keys.column_names]
    arrays += [
        pa.array(list(stages), pa.string()),
        pa.array(list(reasons), pa.string()),
        pa.array([source] * n, pa.string()),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)
