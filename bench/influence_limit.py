"""The in-memory limit of influence: the whole training table in numpy, a blocked matmul and argpartition.

No key tie-breaks, no pipeline, nothing of the project imported: the floor
`beam-gradients influence --score tracin` is measured against. Writes each
query's top-k training ids (proponents, best first) to a .npy, so the driver can
check that both computed the same thing. bench/influence.py runs it as a child
process; by hand:

    .venv/bin/python bench/influence_limit.py --train bench/work/influence/train-1000000.parquet \
        --query bench/work/influence/query-1000.parquet --top_k 20 --output /tmp/limit-top.npy
"""

from __future__ import annotations

import argparse

import numpy as np
import pyarrow.parquet as pq

BLOCK = 8192


def matrix(path: str) -> tuple[np.ndarray, np.ndarray]:
    """ids and the (rows, dim) projections as stored (float16 or float32), read row group by row group into one array."""
    parquet = pq.ParquetFile(path)
    rows = parquet.metadata.num_rows
    ids, values = np.empty(rows, np.int64), None
    start = 0
    for index in range(parquet.num_row_groups):
        table = parquet.read_row_group(index, columns=["id", "weight_projection"])
        storage = table.column("weight_projection").combine_chunks().storage
        part = storage.values.to_numpy().reshape(len(storage), storage.type.list_size)
        if values is None:
            values = np.empty((rows, part.shape[1]), part.dtype)
        values[start : start + len(part)] = part
        ids[start : start + len(part)] = table.column("id").to_numpy()
        start += len(part)
    return ids, values


def best(scores: np.ndarray, k: int) -> np.ndarray:
    """Column indices of each row's k largest scores (unsorted)."""
    return np.argpartition(scores, scores.shape[1] - k, axis=1)[:, -k:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--query", required=True)
    parser.add_argument("--top_k", type=int, default=20)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    k = args.top_k
    _, queries = matrix(args.query)
    queries = queries.astype(np.float32)
    ids, train = matrix(args.train)  # the whole table in memory: what "in-memory" means
    top = {sign: (np.full((len(queries), k), -np.inf, np.float32), np.zeros((len(queries), k), np.int64)) for sign in (1, -1)}
    for start in range(0, len(train), BLOCK):
        block = train[start : start + BLOCK].astype(np.float32)
        scores = queries @ block.T
        for sign, (held, held_ids) in top.items():
            signed = scores if sign == 1 else -scores
            chosen = best(signed, min(k, signed.shape[1]))
            both = np.concatenate([held, np.take_along_axis(signed, chosen, 1)], axis=1)
            both_ids = np.concatenate([held_ids, ids[start + chosen]], axis=1)
            keep = best(both, k)
            top[sign] = (np.take_along_axis(both, keep, 1), np.take_along_axis(both_ids, keep, 1))
    scores, chosen_ids = top[1]
    order = np.argsort(-scores, axis=1, kind="stable")
    np.save(args.output, np.take_along_axis(chosen_ids, order, 1))
    print(f"limit: {len(train)} training rows x {len(queries)} queries, top {k}")


if __name__ == "__main__":
    main()
