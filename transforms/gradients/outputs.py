"""What the engine writes, declared before any data: the output schema is built from these."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class Output:
    """One per-row value the engine returns, under `name` (its column's name).

    `kind` says what it is (gradient, prediction, loss, norm; later answers add
    their own). `input` is set for a value per model input: where that input is
    fed by stacked scalar columns, the value is written as one float column per
    feature, named `per_feature.format(feature=...)`. `write=False` marks a value
    computed only to check the row (a loss that is not emitted): a row is
    rejected when any value, written or not, is not finite. `of` names the
    output a value is derived from (a norm's gradient).
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    input: str | None = None
    per_feature: str | None = None
    write: bool = True
    of: str | None = None  # the output this one is computed from (a norm's gradient)


class RowInput(NamedTuple):
    """A per-row input beyond the model's (the label), fed from the column that spec field `column` names.

    `column` None: not a column but the row's seed (ROW_SEED), which the caller
    computes from the row's key columns or its position. `classes`: the value is a
    class index, valid in 0..classes-1 (a row outside is the caller's to reject).
    """

    name: str
    shape: tuple[int, ...]
    dtype: tf.DType
    column: str | None  # e.g. "label_column"
    needed_by: str  # the spec field that asks for it, e.g. "loss"
    classes: int | None = None


class DatasetInput(NamedTuple):
    """A value computed over the whole dataset before any gradient (the mean of model input `input`).

    The caller computes it in a first pass and passes it with every batch, without
    a batch dimension; the engine sees it among the row extras under `name`.
    """

    name: str
    input: str
    shape: tuple[int, ...]
    statistic: str = "mean"


# The row's seed for noise: 64 bits that identify the row wherever it is computed (see methods/noise.py).
ROW_SEED = RowInput("row_seed", (), tf.int64, None, "method")


def gradient_name(input_name: str, head: str | None, multi_input: bool, feature: str | None = None) -> str:
    """`gradient`, `gradient__<input>` or `gradient__<feature>`, then `__<head>` for a named head."""
    parts = ["gradient"]
    if feature is not None:
        parts.append(feature)
    elif multi_input:
        parts.append(input_name)
    if head is not None:
        parts.append(head)
    return "__".join(parts)
