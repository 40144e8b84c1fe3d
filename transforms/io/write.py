"""Arrow-batched Parquet writing: sharded files through Beam's file sink."""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.parquetio import WriteToParquetBatched

from transforms.io.files import SHARD_TEMPLATE, SUFFIX


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
