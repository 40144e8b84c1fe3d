"""Parquet files that follow the main job's weight-projection contract (notes: contract-weights), for the influence tests."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DTYPES = {"float32": pa.float32(), "float16": pa.float16()}


def projection_metadata(dim, seed=0, dtype="float32", model_sha256="ab" * 32, variables=("dense/kernel", "dense/bias"),
                        construction="gaussian-blocked-v1") -> dict[bytes, bytes]:
    weights = {
        "variables": list(variables),
        "parameters": 1234,
        "projection": {"seed": seed, "dim": dim, "dtype": dtype, "construction": construction},
    }
    return {
        b"beam_gradients.model_sha256": model_sha256.encode(),
        b"beam_gradients.model_path": b"/models/m.keras",
        b"beam_gradients.spec": b'{"target": "loss"}',
        b"beam_gradients.version": b"0.1.0",
        b"beam_gradients.batch_size": b"256",
        b"beam_gradients.weights": json.dumps(weights).encode(),
    }


def write_projections(path, keys: dict, phi: np.ndarray, files=1, row_group_size=None, extra: dict | None = None,
                      marker=True, **meta) -> list[str]:
    """Key columns, then `weight_projection` (fixed_shape_tensor [k]), then any extra columns, split over `files` files;
    with `marker`, the `<path>_SUCCESS` marker the main job writes beside a complete output."""
    dtype = meta.get("dtype", "float32")
    phi = np.asarray(phi, dtype=np.dtype(dtype))
    rows, dim = phi.shape
    metadata = projection_metadata(meta.pop("dim", dim), **meta)
    tensor = pa.fixed_shape_tensor(DTYPES[dtype], [dim])
    paths = []
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(rows), files)):
        columns = {name: pa.array(np.asarray(values)[part]) for name, values in keys.items()}
        storage = pa.FixedSizeListArray.from_arrays(pa.array(phi[part].reshape(-1), DTYPES[dtype]), dim)
        columns["weight_projection"] = pa.ExtensionArray.from_storage(tensor, storage)
        for name, values in (extra or {}).items():
            columns[name] = pa.array(np.asarray(values)[part])
        table = pa.table(columns).replace_schema_metadata(metadata)
        target = f"{path}-{i:05d}-of-{files:05d}.parquet"
        pq.write_table(table, target, row_group_size=row_group_size)
        paths.append(target)
    if marker:
        write_marker(path, paths)
    return paths


def write_marker(prefix, paths) -> None:
    """`<prefix>_SUCCESS` listing `paths` by name, with their rows and bytes, as StagedOutputs.commit writes it."""
    from pipeline.outputs import marker_path, shard_entries

    shards = shard_entries([str(p) for p in paths])
    body = {"rows_in": sum(s["rows"] for s in shards.values()), "outputs": {"--output": sorted(shards)}, "shards": shards}
    with open(marker_path(str(prefix)), "w") as fh:
        json.dump(body, fh)
