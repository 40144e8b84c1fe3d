"""A mergeable quantile sketch of a column's values, so a histogram's bins can follow the data at any scale.

DDSketch (Masson, Rim and Lee, VLDB 2019): a value x is counted in bucket
ceil(log_gamma |x|), kept apart by sign, with gamma = (1 + a) / (1 - a). Every
value a quantile query returns is within a relative `a` of the true one, two
sketches merge by adding counts (so partial sketches from any worker add up),
and memory is bounded by the data's dynamic range, not its size: values from
1e-12 to 1e12 need at most about 28,000 buckets a sign at a = 0.1%.

Fixed log bins (64 a decade) put values from 0.080 to 0.087 into two or three
bars; at a = 0.1% they fall into about 80 buckets, which a histogram then groups
into bins on a linear or log axis chosen from the data's range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

RELATIVE_ACCURACY = 0.001
SMALLEST = 1e-30  # |x| below this counts as zero


@dataclass
class QuantileSketch:
    """Counts per log bucket, by sign, with the exact count, minimum and maximum."""

    relative_accuracy: float = RELATIVE_ACCURACY
    positive: dict[int, int] = field(default_factory=dict)
    negative: dict[int, int] = field(default_factory=dict)
    zeros: int = 0
    count: int = 0
    minimum: float = math.inf
    maximum: float = -math.inf

    @property
    def gamma(self) -> float:
        return (1 + self.relative_accuracy) / (1 - self.relative_accuracy)

    def add(self, values: np.ndarray) -> "QuantileSketch":
        """Count a block of finite values (any shape)."""
        values = np.asarray(values, dtype=np.float64).ravel()
        if values.size == 0:
            return self
        self.count += int(values.size)
        self.minimum = min(self.minimum, float(values.min()))
        self.maximum = max(self.maximum, float(values.max()))
        magnitude = np.abs(values)
        small = magnitude < SMALLEST
        self.zeros += int(small.sum())
        log_gamma = math.log(self.gamma)
        for store, chosen in ((self.positive, (values > 0) & ~small), (self.negative, (values < 0) & ~small)):
            if chosen.any():
                keys, counts = np.unique(np.ceil(np.log(magnitude[chosen]) / log_gamma).astype(np.int64), return_counts=True)
                for k, c in zip(keys.tolist(), counts.tolist()):
                    store[k] = store.get(k, 0) + c
        return self

    def merge(self, other: "QuantileSketch") -> "QuantileSketch":
        """Add another sketch's counts (same accuracy), as a combiner does with partial results."""
        if other.relative_accuracy != self.relative_accuracy:
            raise ValueError(f"cannot merge sketches of accuracy {self.relative_accuracy} and {other.relative_accuracy}")
        for mine, theirs in ((self.positive, other.positive), (self.negative, other.negative)):
            for k, c in theirs.items():
                mine[k] = mine.get(k, 0) + c
        self.zeros += other.zeros
        self.count += other.count
        self.minimum = min(self.minimum, other.minimum)
        self.maximum = max(self.maximum, other.maximum)
        return self

    def _buckets(self) -> tuple[np.ndarray, np.ndarray]:
        """Every bucket's representative value (within the relative accuracy of all it holds) and count, ascending."""
        g = self.gamma
        neg_keys = np.array(sorted(self.negative, reverse=True), dtype=np.float64)
        pos_keys = np.array(sorted(self.positive), dtype=np.float64)
        values = np.concatenate([-2 * g**neg_keys / (g + 1), [0.0] if self.zeros else [], 2 * g**pos_keys / (g + 1)])
        counts = np.array(
            [self.negative[int(k)] for k in neg_keys] + ([self.zeros] if self.zeros else []) + [self.positive[int(k)] for k in pos_keys],
            dtype=np.int64,
        )
        # the representative of the outermost buckets may lie a hair beyond the exact extremes
        return np.clip(values, self.minimum, self.maximum), counts

    def quantile(self, q: float) -> float:
        """The value at rank q (0 to 1), within the relative accuracy."""
        if self.count == 0:
            return math.nan
        values, counts = self._buckets()
        rank = q * (self.count - 1)
        return float(values[np.searchsorted(np.cumsum(counts), rank, side="right")])

    def _ranges(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every bucket's value range (low, high) and count, ascending, clipped to the exact extremes: bucket k of the
        positive values holds (gamma^(k-1), gamma^k], of the negative ones its mirror; the zeros are a point at 0."""
        g = self.gamma
        neg = sorted(self.negative, reverse=True)
        pos = sorted(self.positive)
        zero = [0.0] if self.zeros else []
        low = np.array([-(g ** k) for k in neg] + zero + [g ** (k - 1) for k in pos], dtype=np.float64)
        high = np.array([-(g ** (k - 1)) for k in neg] + zero + [g ** k for k in pos], dtype=np.float64)
        counts = np.array([self.negative[k] for k in neg] + ([self.zeros] if self.zeros else []) + [self.positive[k] for k in pos],
                          dtype=np.float64)
        return np.clip(low, self.minimum, self.maximum), np.clip(high, self.minimum, self.maximum), counts

    def histogram(self, bins: int = 40) -> tuple[np.ndarray, np.ndarray, str]:
        """(edges, counts, axis): bins over [minimum, maximum], on a log axis when the values are positive and span
        more than two decades, else linear. Every value is in exactly one bin, so the counts add up to `count`.

        A bucket that straddles a bin edge is split between the bins in proportion to its range on each side (the
        cumulative counts rounded at each edge), so bins narrower or wider than the buckets show no comb of
        alternately full and empty bars."""
        if self.count == 0:
            return np.array([0.0, 1.0]), np.zeros(1, np.int64), "linear"
        lo, hi = self.minimum, self.maximum
        axis = "log" if lo > 0 and hi / lo > 100 else "linear"
        if hi <= lo:
            edges = np.array([lo - 0.5, hi + 0.5]) if lo == 0 else np.array([lo * 0.999, hi * 1.001]) if lo > 0 else np.array([lo * 1.001, hi * 0.999])
            return edges, np.array([self.count], np.int64), axis
        edges = np.geomspace(lo, hi, bins + 1) if axis == "log" else np.linspace(lo, hi, bins + 1)
        low, high, counts = self._ranges()
        inner = edges[1:-1, None]
        width = high - low
        share = np.where(width > 0, np.clip((inner - low) / np.where(width > 0, width, 1), 0, 1), inner > low)  # a point at an edge: the upper bin
        below = np.concatenate([[0], np.rint(share @ counts).astype(np.int64), [self.count]])
        return edges, np.diff(below), axis

    def to_json(self) -> dict:
        """A plain dict for the summary file (keys as strings, as JSON needs)."""
        return {
            "relative_accuracy": self.relative_accuracy,
            "positive": {str(k): c for k, c in sorted(self.positive.items())},
            "negative": {str(k): c for k, c in sorted(self.negative.items())},
            "zeros": self.zeros,
            "count": self.count,
            "minimum": self.minimum if self.count else None,
            "maximum": self.maximum if self.count else None,
        }

    @classmethod
    def from_json(cls, data: dict) -> "QuantileSketch":
        return cls(
            relative_accuracy=data["relative_accuracy"],
            positive={int(k): c for k, c in data["positive"].items()},
            negative={int(k): c for k, c in data["negative"].items()},
            zeros=data["zeros"],
            count=data["count"],
            minimum=math.inf if data["minimum"] is None else data["minimum"],
            maximum=-math.inf if data["maximum"] is None else data["maximum"],
        )
