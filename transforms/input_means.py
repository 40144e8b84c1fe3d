"""The dataset's mean model input, by a combiner: the `mean` baseline of integrated gradients.

A first pass of the same job: every row that can be fed adds to a float64
running sum per input (rows a feed rejects do not count), so the result is the
same on any runner and any number of workers, and memory is one input's size.
"""

from __future__ import annotations

from typing import Sequence

import apache_beam as beam
import numpy as np

from transforms.io.read import SourceBatch, UnreadableRows
from transforms.feeds.columns import Feed, decode, merge_reasons


class InputMeans(beam.CombineFn):
    """SourceBatch -> [mean of each feed's values over the rows that can be fed], float32, in `feeds` order."""

    def __init__(self, feeds: Sequence[Feed]):
        self._feeds = list(feeds)

    def create_accumulator(self):
        return [np.zeros(f.shape, np.float64) for f in self._feeds], 0

    def add_input(self, accumulator, element: SourceBatch):
        sums, count = accumulator
        if isinstance(element.batch, UnreadableRows):
            return accumulator
        decoded = [decode(f, element.batch) for f in self._feeds]
        good = ~merge_reasons(decoded).bad
        for total, d in zip(sums, decoded):
            total += d.values[good].astype(np.float64).sum(axis=0)
        return sums, count + int(good.sum())

    def merge_accumulators(self, accumulators):
        accumulators = list(accumulators)
        sums = [np.sum([a[0][i] for a in accumulators], axis=0) for i in range(len(self._feeds))]
        return sums, sum(a[1] for a in accumulators)

    def extract_output(self, accumulator):
        sums, count = accumulator
        return [(total / max(count, 1)).astype(np.float32) for total in sums]
