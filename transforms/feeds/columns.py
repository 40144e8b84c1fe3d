"""Arrow columns -> numpy model inputs, with the checks that reject bad rows.

A `Feed` says which column(s) fill one model input (or the label), decided once
from the Parquet schema before any data is read. `decode` turns one record batch
into a numpy array of the input's shape plus, per row, the reason it cannot be
fed (null, wrong length, NaN or infinity, a value the dtype cannot hold). Every
check is vectorised over the batch: no Python loop per row.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from transforms.errors import SettingError
from transforms.gradients.settings import split_list
from transforms.io.arrow import is_list, storage

TENSOR = "tensor"  # fixed_shape_tensor or (nested) fixed_size_list: one zero-copy view
LIST = "list"  # variable-length (nested) list: length checked per row
SCALARS = "scalars"  # one or more scalar numeric columns stacked in order


class FeedError(SettingError):
    """A column that cannot feed the model; raised before any data is read (a template: see transforms.errors)."""


@dataclasses.dataclass(frozen=True)
class Feed:
    """The column(s) that fill one model input: planned once, used for every batch."""

    input: str
    columns: tuple[str, ...]
    kind: str
    shape: tuple[int, ...]
    dtype: str
    # For nested lists as deep as the input's rank: each level's length is checked against its dim.
    levels: tuple[int, ...] | None = None
    # Token ids read by an embedding: valid in 0..vocabulary-1 (a row holding another is rejected), and the layer.
    vocabulary: int | None = None
    embedding: str | None = None
    what: str = ""  # how errors name what it fills: "" for "model input 'x'", or e.g. "the label"

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def described(self) -> str:
        """What it fills, as a row's reason says it."""
        return self.what or f"model input {self.input!r}"


class Reasons:
    """Per row: why it cannot be fed (None for a good row) and at which stage.

    The sentences are only allocated once a row is bad: good batches cost one
    boolean mask.
    """

    def __init__(self, rows: int):
        self.bad = np.zeros(rows, bool)
        self._text: np.ndarray | None = None
        self._stage: np.ndarray | None = None

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._text is None:
            self._text = np.full(len(self.bad), None, dtype=object)
            self._stage = np.full(len(self.bad), None, dtype=object)
        return self._text, self._stage

    @property
    def text(self) -> np.ndarray:
        return self._arrays()[0]

    @property
    def stage(self) -> np.ndarray:
        return self._arrays()[1]

    def add(self, mask: np.ndarray, stage: str, sentence: str) -> None:
        """Give `sentence` to the rows in `mask` that have no reason yet: the first one wins."""
        new = mask & ~self.bad
        if new.any():
            text, stages = self._arrays()
            text[new] = sentence
            stages[new] = stage
            self.bad |= new

    def merge(self, other: "Reasons") -> None:
        new = other.bad & ~self.bad
        if new.any():
            text, stages = self._arrays()
            text[new] = other.text[new]
            stages[new] = other.stage[new]
            self.bad |= new


@dataclasses.dataclass
class Decoded:
    """One batch of one feed: values for every row, and why each bad row is bad."""

    values: np.ndarray  # (rows, *shape); a bad row's values are meaningless
    reasons: Reasons


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)


def _list_levels(t: pa.DataType) -> tuple[list[int | None], pa.DataType]:
    """Each list level's fixed size (None where it varies), and the leaf type."""
    levels = []
    t = storage(t)
    while is_list(t):
        levels.append(t.list_size if pa.types.is_fixed_size_list(t) else None)
        t = storage(t.value_type)
    return levels, t


def column_kind(t: pa.DataType) -> tuple[str, int | None] | None:
    """(kind, values per row, or None where it varies), or None if no numbers are in it."""
    levels, leaf = _list_levels(t)
    if not _is_number(leaf):
        return None
    if not levels:
        return SCALARS, 1
    if None in levels:
        return LIST, None
    return TENSOR, math.prod(levels)


def _columns_list(schema: pa.Schema) -> str:
    return ", ".join(schema.names)


def exact_column(schema: pa.Schema, name: str) -> str:
    """`name` as the file spells it: exactly, else with surrounding spaces trimmed (`a, b` lists)."""
    return name if name in schema.names else name.strip()


def exact_columns(schema: pa.Schema, value: str | Sequence[str] | None) -> list[str]:
    """A list of column names (a comma-separated string, or a list) as the file spells each: `exact_column`."""
    return [exact_column(schema, name) for name in split_list(value, strip=False)]


def exact_input_map(schema: pa.Schema, mapping: dict[str, str]) -> dict[str, str]:
    """model input -> its column, or scalar columns joined with '+', each as the file spells it."""
    return {name: "+".join(exact_columns(schema, value.split("+"))) for name, value in mapping.items()}


def check_columns(schema: pa.Schema, columns: Sequence[str], what: str, source: str) -> None:
    """Fail with the list of columns that exist when one asked for does not."""
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise FeedError(
            f"{what} column {', '.join(repr(c) for c in missing)} not found in {source}; "
            f"its columns are: {_columns_list(schema)}"
        )


def plan_feed(
    schema: pa.Schema, input_name: str, columns: Sequence[str], shape, dtype, source: str, what: str | None = None
) -> Feed:
    """Check that `columns` can fill a model input of `shape`, and say how. `what` names the input in errors
    (default: "model input 'x'"; a row input's caller says "the label")."""
    given, what = what or "", what or f"model input {input_name!r}"
    shape = tuple(int(d) for d in shape)
    check_columns(schema, columns, "feature", source)
    size = math.prod(shape)
    kinds = {c: column_kind(schema.field(c).type) for c in columns}
    for c, kind in kinds.items():
        if kind is None:
            raise FeedError(
                f"column {c!r} has type {schema.field(c).type}, which cannot feed {what} "
                "(numbers, lists of numbers or fixed_shape_tensor are needed)"
            )
    if len(columns) > 1 or kinds[columns[0]][0] == SCALARS:
        scalar_like = [c for c in columns if kinds[c][0] != SCALARS]
        if scalar_like:
            raise FeedError(
                f"{what}: stacked feature columns must be scalar numbers, "
                f"but {', '.join(repr(c) for c in scalar_like)} hold lists"
            )
        if len(columns) != size:
            raise FeedError(
                f"{what} takes {size} values per example (shape {shape}), but "
                + (f"{len(columns)} scalar columns were given: " if len(columns) > 1 else "one scalar column was given: ")
                + ", ".join(columns)
            )
        return Feed(input_name, tuple(columns), SCALARS, shape, str(np.dtype(dtype)), what=given)
    column = columns[0]
    kind, per_row = kinds[column]
    field_type = schema.field(column).type
    if kind == TENSOR:
        tensor_shape = getattr(field_type, "shape", None)
        if per_row != size or (tensor_shape is not None and tuple(tensor_shape) != shape):
            got = f"shape {tuple(tensor_shape)}" if tensor_shape is not None else f"{per_row} values"
            raise FeedError(
                f"column {column!r} holds {got} per row, but {what} needs shape {shape}"
            )
        permutation = getattr(field_type, "permutation", None)
        if permutation is not None and list(permutation) != sorted(permutation):
            raise FeedError(
                f"column {column!r} is a fixed_shape_tensor with permutation {list(permutation)}; "
                "write it in row-major order (no permutation) to feed " + what
            )
    levels, _ = _list_levels(field_type)
    if kind == LIST and len(levels) == len(shape) > 1:
        wrong = [(i, size_, dim) for i, (size_, dim) in enumerate(zip(levels, shape)) if size_ not in (None, dim)]
        if wrong:
            i, size_, dim = wrong[0]
            raise FeedError(
                f"column {column!r} holds lists of {size_} at depth {i + 1}, but {what} needs shape {shape}"
            )
        return Feed(input_name, (column,), kind, shape, str(np.dtype(dtype)), levels=shape, what=given)
    return Feed(input_name, (column,), kind, shape, str(np.dtype(dtype)), what=given)


def plan_input_feeds(
    schema: pa.Schema,
    inputs: Sequence[tuple[str, Sequence[int], object]],
    feature_columns: Sequence[str] | None,
    input_map: Mapping[str, str],
    source: str,
) -> list[Feed]:
    """Map every model input to its column(s): explicit map, then feature columns, then names.

    `inputs` are (name, per-example shape, dtype). An `input_map` value may join
    scalar columns with '+' to stack them into one input.
    """
    names = [name for name, _, _ in inputs]
    unknown = sorted(set(input_map) - set(names))
    if unknown:
        raise FeedError(
            "{input_map} names {unknown}, which the model does not have; its inputs are: {inputs}",
            unknown=", ".join(repr(u) for u in unknown),
            inputs=", ".join(names),
        )
    feature_columns = list(feature_columns or [])
    check_columns(schema, feature_columns, "feature", source)
    feeds, fed = [], set()  # fed: the feature columns some input takes
    for name, shape, dtype in inputs:
        if name in input_map:
            columns = input_map[name].split("+")
        elif len(inputs) == 1 and feature_columns:
            columns = feature_columns
            fed.update(columns)
        elif name in schema.names and (not feature_columns or name in feature_columns):
            columns = [name]
            fed.add(name)
        else:
            hint = "{feature_columns} or " if len(inputs) == 1 else ""
            raise FeedError(
                "model input {name!r} is mapped to no column; pass " + hint + "{input_map} {name}=<column>. "
                "Columns are: {columns}",
                name=name,
                columns=_columns_list(schema),
            )
        feeds.append(plan_feed(schema, name, columns, shape, dtype, source))
    unused = [c for c in feature_columns if c not in fed]
    if unused:  # a setting nothing reads is refused, not ignored
        them = "them" if len(unused) > 1 else "it"
        raise FeedError(
            "{feature_columns} {unused}: no model input reads " + them
            + (" ({input_map} maps {mapped})" if input_map else "") + f"; drop {them} or map {them}",
            unused=", ".join(repr(c) for c in unused),
            mapped=", ".join(f"{k}={v}" for k, v in input_map.items()),
        )
    return feeds


# ---------------------------------------------------------------- decoding


def _to_numpy(values: pa.Array) -> np.ndarray:
    return values.to_numpy(zero_copy_only=False)


def _zero_filled(values: pa.Array) -> pa.Array:
    """Nulls replaced by the type's zero (False for booleans); their rows are rejected anyway."""
    return values.fill_null(pa.scalar(0).cast(values.type))


class _Owners:
    """Which row each flattened number belongs to, without a per-number index where sizes are fixed.

    A fixed-size tensor of n rows is a reshape (n, size): no index array is ever
    built for it. Only variable-length lists need a row index per number.
    """

    def __init__(self, rows: int):
        self.rows = rows
        self.per_row = 1  # while `index` is None: every row owns this many consecutive numbers
        self.index: np.ndarray | None = None

    def repeat(self, size: int) -> None:
        if self.index is None:
            self.per_row *= size
        else:
            self.index = np.repeat(self.index, size)

    def take(self, parents: np.ndarray) -> None:
        if self.index is None:
            self.index = np.repeat(np.arange(self.rows), self.per_row)
        self.index = self.index[parents]

    def rows_with(self, mask: np.ndarray) -> np.ndarray:
        """Row mask: the rows owning at least one number in `mask`."""
        if self.index is None:
            return mask.reshape(self.rows, -1).any(axis=1) if self.rows else np.zeros(0, bool)
        hit = np.zeros(self.rows, bool)
        hit[self.index[mask]] = True
        return hit

    def counts(self) -> np.ndarray:
        if self.index is None:
            return np.full(self.rows, self.per_row)
        return np.bincount(self.index, minlength=self.rows)


def _cast(feed: Feed, raw: np.ndarray, owners: _Owners, reasons: Reasons, column: str) -> np.ndarray:
    """Cast to the model's dtype; a row holding a value the dtype cannot take is rejected."""
    target = np.dtype(feed.dtype)
    if raw.dtype == target:
        return raw
    if np.issubdtype(target, np.integer) and raw.dtype.kind in "fiu":
        info = np.iinfo(target)
        ok = (raw >= info.min) & (raw <= info.max)
        sentence = f"column {column!r} holds a value outside {target}"
        if raw.dtype.kind == "f":
            ok &= np.isfinite(raw) & (raw == np.round(raw))
            sentence = f"column {column!r} holds a value that is not a whole number within {target}"
        if not ok.all():
            reasons.add(owners.rows_with(~ok), "decode", sentence)
        return np.where(ok, raw, 0).astype(target)
    with np.errstate(over="ignore", invalid="ignore"):
        cast = raw.astype(target)
    if target.kind == "f":
        overflow = np.isfinite(raw) & ~np.isfinite(cast)
        if overflow.any():
            reasons.add(owners.rows_with(overflow), "decode", f"column {column!r} holds a value too large for {target}")
    return cast


def _check_finite(values: np.ndarray, owners: _Owners, reasons: Reasons, column: str) -> None:
    if values.dtype.kind != "f":
        return
    finite = np.isfinite(values)
    if not finite.all():
        reasons.add(owners.rows_with(~finite), "validate", f"column {column!r} holds NaN or infinity")


def _check_vocabulary(feed: Feed, raw: np.ndarray, owners: _Owners, reasons: Reasons, column: str) -> None:
    """A row holding a token id outside the embedding's vocabulary is rejected, its reason naming the id."""
    outside = (raw < 0) | (raw >= feed.vocabulary)
    if not outside.any():
        return
    rows = owners.rows_with(outside)
    index = np.flatnonzero(outside)
    owner = owners.index[index] if owners.index is not None else index // owners.per_row
    first = {}
    for row, value in zip(owner.tolist(), raw[index].tolist()):  # only bad values: few
        first.setdefault(row, value)
    for value in sorted(set(first.values())):
        mask = np.zeros(len(rows), bool)
        mask[[r for r, v in first.items() if v == value]] = True
        reasons.add(
            mask,
            "decode",
            f"column {column!r} holds token id {value}, outside the vocabulary 0..{feed.vocabulary - 1} "
            f"of embedding {feed.embedding!r}",
        )


def _leaf(array: pa.Array, n: int, feed: Feed, reasons: Reasons) -> tuple[pa.Array, _Owners, np.ndarray]:
    """Flatten (nested) lists to their numbers: (numbers, their owning rows, rows with a null list).

    Where the feed checks levels, a row whose lists are ragged is rejected here.
    """
    owners = _Owners(n)
    null_list = np.zeros(n, bool)
    depth = 0
    while True:
        if isinstance(array, pa.ExtensionArray):
            array = array.storage
        t = array.type
        if not is_list(t):
            return array, owners, null_list
        if array.null_count:
            null_list |= owners.rows_with(_to_numpy(array.is_null()))
        if feed.levels is not None and not pa.types.is_fixed_size_list(t):
            lengths = _to_numpy(pc.list_value_length(array).fill_null(feed.levels[depth]))
            ragged = owners.rows_with(lengths != feed.levels[depth]) & ~null_list
            sentence = f"column {feed.columns[0]!r} is ragged: {feed.described} needs shape {feed.shape}"
            reasons.add(ragged, "decode", sentence)
        depth += 1
        if pa.types.is_fixed_size_list(t):
            size = t.list_size
            child = array.values.slice(array.offset * size, len(array) * size)
            owners.repeat(size)
        else:
            # Values under the offsets, null-backed ones included, as list_parent_indices counts them
            # (flatten() would skip those and misalign the two).
            offsets = _to_numpy(array.offsets)
            owners.take(_to_numpy(pc.list_parent_indices(array)))
            child = array.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        array = child


def decode(feed: Feed, batch: pa.RecordBatch | pa.Table) -> Decoded:
    """Numpy values of `feed` for every row of `batch`, with each bad row's reason."""
    n = batch.num_rows
    reasons = Reasons(n)
    if feed.kind == SCALARS:
        values = np.empty((n, len(feed.columns)), dtype=feed.dtype)
        owners = _Owners(n)
        for j, column in enumerate(feed.columns):
            array = batch.column(column)
            array = array.cast(storage(array.type))  # as a list's leaf: fill_null has no kernel for extensions
            if array.null_count:
                reasons.add(_to_numpy(array.is_null()), "decode", f"column {column!r} is null")
                array = _zero_filled(array)
            raw = _to_numpy(array)
            _check_finite(raw, owners, reasons, column)
            values[:, j] = _cast(feed, raw, owners, reasons, column)
            if feed.vocabulary is not None:  # each column is one token of the input
                _check_vocabulary(feed, values[:, j], owners, reasons, column)
        return Decoded(values.reshape((n, *feed.shape)), reasons)

    column = feed.columns[0]
    array = batch.column(column)
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    null_rows = _to_numpy(array.is_null()) if array.null_count else np.zeros(n, bool)
    reasons.add(null_rows, "decode", f"column {column!r} is null")
    leaf, owners, null_list = _leaf(array, n, feed, reasons)
    reasons.add(null_list, "decode", f"column {column!r} holds a null list")
    if feed.kind == LIST:
        counts = owners.counts()
        wrong = (counts != feed.size) & ~null_list
        for count in np.unique(counts[wrong]):
            reasons.add(
                wrong & (counts == count),
                "decode",
                f"column {column!r} has {count} values; {feed.described} needs "
                f"{feed.size} (shape {feed.shape})",
            )
    if leaf.null_count:
        reasons.add(owners.rows_with(_to_numpy(leaf.is_null())), "decode", f"column {column!r} holds a null value")
        leaf = _zero_filled(leaf)
    raw = _to_numpy(leaf)
    _check_finite(raw, owners, reasons, column)
    raw = _cast(feed, raw, owners, reasons, column)
    if feed.vocabulary is not None:
        _check_vocabulary(feed, raw, owners, reasons, column)
    if feed.kind == TENSOR:
        return Decoded(raw.reshape((n, *feed.shape)), reasons)
    values = np.zeros((n, feed.size), dtype=feed.dtype)
    good = ~reasons.bad
    values[good] = raw[good[owners.index]].reshape(-1, feed.size)
    return Decoded(values.reshape((n, *feed.shape)), reasons)


def merge_reasons(decoded: Sequence[Decoded]) -> Reasons:
    """Per row, the first reason any feed gives."""
    reasons = Reasons(len(decoded[0].reasons.bad))
    for d in decoded:
        reasons.merge(d.reasons)
    return reasons
