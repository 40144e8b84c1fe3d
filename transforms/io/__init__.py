"""Parquet in and out: matching and footers (files), reading, writing, the output schema, numpy -> Arrow."""
