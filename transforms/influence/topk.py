"""Per query, the k best training rows seen so far; ties go to the smaller key. numpy and Arrow, no Beam.

A block of scores (queries × rows) gives its k best per query with
`argpartition` (linear, not a sort); only a query whose k-th score is tied
with rows left out looks at keys, row by row. The candidates then wait in a
small Arrow buffer that is sorted by (query, score, key) and cut to k per query
whenever it holds several times k per query, so memory stays about queries × k
whatever the number of training rows. Keys are compared as Arrow sorts them,
so any key columns (numbers, strings, several columns) break ties the same way
on every runner.

>>> import numpy as np, pyarrow as pa
>>> best = TopK(queries=1, k=2, largest=True)
>>> best.add_block(np.array([[3.0, 5.0, 5.0]], np.float32), pa.table({"id": [7, 9, 8]}))
>>> best.result().column("id").to_pylist()  # 5.0 twice: the smaller key first
[8, 9]
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

QUERY = "__query"
SCORE = "__score"
RANK = "__rank"
# The buffer is cut back to k per query when it holds this many times k per query.
COMPACT_EVERY = 8

__all__ = ["TopK", "block_top_k", "key_order"]


def key_order(keys: pa.Table) -> np.ndarray:
    """Each row's position when the rows are sorted by their keys: the tie-break within a block."""
    order = pc.sort_indices(keys, sort_keys=[(name, "ascending") for name in keys.column_names]).to_numpy()
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order))
    return position


def block_top_k(scores: np.ndarray, order: np.ndarray, k: int, largest: bool) -> np.ndarray:
    """(queries, rows) scores -> (queries, min(k, rows)) column indices of each query's k best.

    Best is largest (or smallest) score, then smallest `order`. The indices are
    not sorted; the merge sorts them.
    """
    queries, rows = scores.shape
    if rows <= k:
        return np.broadcast_to(np.arange(rows), (queries, rows))
    s = scores if largest else -scores
    chosen = np.argpartition(s, rows - k, axis=1)[:, rows - k :]
    threshold = np.take_along_axis(s, chosen, 1).min(axis=1, keepdims=True)
    tied_all = np.count_nonzero(s == threshold, axis=1)
    tied_chosen = np.count_nonzero(np.take_along_axis(s, chosen, 1) == threshold, axis=1)
    for q in np.flatnonzero(tied_all > tied_chosen):  # argpartition picked among ties at random: pick by key
        above = np.flatnonzero(s[q] > threshold[q])
        tied = np.flatnonzero(s[q] == threshold[q])
        tied = tied[np.argsort(order[tied], kind="stable")][: k - len(above)]
        chosen[q] = np.concatenate([above, tied])
    return chosen


class TopK:
    """The running k best (score, key) per query, for one direction (largest: proponents; smallest: opponents)."""

    def __init__(self, queries: int, k: int, largest: bool):
        self.queries, self.k, self.largest = queries, k, largest
        self._parts: list[pa.Table] = []
        self._rows = 0
        # Per query, the score a candidate must reach (ties included) to stay: the k-th best once k are held.
        self._bar = np.full(queries, -np.inf if largest else np.inf, np.float32)

    def add_block(self, scores: np.ndarray, keys: pa.Table) -> None:
        """One block of scores (queries × rows) with the block's keys (rows)."""
        if scores.shape[1] == 0 or self.queries == 0:
            return
        chosen = block_top_k(scores, key_order(keys), self.k, self.largest)
        best = np.take_along_axis(scores, chosen, 1)
        keep = best >= self._bar[:, None] if self.largest else best <= self._bar[:, None]
        query = np.broadcast_to(np.arange(self.queries, dtype=np.int32)[:, None], chosen.shape)[keep]
        self._add(query, best[keep], keys.take(pa.array(chosen[keep])))

    def merge(self, other: "TopK") -> None:
        for part in other._parts:
            self._add(part.column(QUERY).to_numpy(), part.column(SCORE).to_numpy(), part.drop_columns([QUERY, SCORE]))

    def _add(self, query: np.ndarray, score: np.ndarray, keys: pa.Table) -> None:
        if not len(query):
            return
        part = keys.append_column(QUERY, pa.array(query, pa.int32())).append_column(SCORE, pa.array(score, pa.float32()))
        self._parts.append(part)
        self._rows += len(query)
        if self._rows > COMPACT_EVERY * self.k * self.queries:
            self._compact()

    def _compact(self) -> pa.Table:
        """Sort the buffer by (query, score, key), keep k per query, and raise each full query's bar."""
        if not self._parts:
            return pa.table({QUERY: pa.array([], pa.int32()), SCORE: pa.array([], pa.float32())})
        table = pa.concat_tables(self._parts) if len(self._parts) > 1 else self._parts[0]
        keys = [name for name in table.column_names if name not in (QUERY, SCORE)]
        order = pc.sort_indices(
            table,
            sort_keys=[(QUERY, "ascending"), (SCORE, "descending" if self.largest else "ascending")]
            + [(name, "ascending") for name in keys],
        )
        table = table.take(order)
        query = table.column(QUERY).to_numpy()
        rank = np.arange(len(query)) - np.searchsorted(query, query, side="left")
        table = table.filter(pa.array(rank < self.k))
        query, rank = query[rank < self.k], rank[rank < self.k]
        full = rank == self.k - 1
        self._bar[query[full]] = table.column(SCORE).to_numpy()[full]
        self._parts, self._rows = [table], table.num_rows
        return table

    def result(self) -> pa.Table:
        """The k best per query, sorted by query then rank: columns: the keys, __query, __score, __rank (from 1)."""
        table = self._compact()
        query = table.column(QUERY).to_numpy()
        rank = np.arange(len(query)) - np.searchsorted(query, query, side="left") + 1
        return table.append_column(RANK, pa.array(rank, pa.int32()))
