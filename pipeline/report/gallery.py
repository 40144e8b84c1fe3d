"""Chosen rows' inputs, read by key from the job's input files, and drawn side by side with a caption each.

Why its own pass: the weight-norm, influence and self-influence sections show rows that
no gradient of an input names (a weight gradient has no input shape to match), so the
input's image column is chosen by its type (a tensor or list that is an image's shape)
and only the wanted keys are kept, so memory is bounded by what the page shows.
"""

from __future__ import annotations

import html
import math
from typing import Sequence

import numpy as np
import pyarrow as pa

from pipeline.reader import to_numpy
from pipeline.report.figures import _image, _matplotlib, png
from pipeline.report.passes import key_id
from transforms.io.files import InputError, match_files, open_parquet

SMALLEST_SIDE = 4  # a flat list is drawn as a square image only from 4x4 up


def _image_shape(kind: pa.DataType) -> tuple[int, ...] | None:
    """The shape an input column's values are drawn at, or None where they are not an image."""
    if isinstance(kind, pa.FixedShapeTensorType):
        shape = tuple(kind.shape)
        if len(shape) == 2 and min(shape) >= 2 or len(shape) == 3 and shape[-1] in (1, 3, 4) and min(shape[:2]) >= 2:
            return shape
        size = int(np.prod(shape))
    elif pa.types.is_fixed_size_list(kind):
        size = kind.list_size
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return ()  # its length is known per row
    else:
        return None
    return _square(size)


def _square(size: int) -> tuple[int, ...] | None:
    """A flat vector's image shape: a grey square, or a colour one (3 channels)."""
    for channels in (1, 3):
        side = math.isqrt(size // channels) if size % channels == 0 else 0
        if side >= SMALLEST_SIDE and side * side * channels == size:
            return (side, side) if channels == 1 else (side, side, 3)
    return None


def image_column(schema: pa.Schema, keys: Sequence[str]) -> str | None:
    """The first input column, not a key, whose values are images (by type and shape, never by name)."""
    return next((f.name for f in schema if f.name not in keys and _image_shape(f.type) is not None), None)


def read_inputs(pattern: str, keys: Sequence[str], wanted: set[str], label_column: str | None = None) -> dict[str, dict]:
    """key id (passes.key_id) -> {"image": array or None, "label": value or None}, for the wanted keys only.

    One pass over the input files, reading the key, image and label columns only."""
    files = match_files(pattern, "--input").paths
    schema = open_parquet(files[0]).schema_arrow
    missing = [k for k in keys if k not in schema.names]
    if missing:
        raise InputError(f"--input {pattern!r} has no key column {missing[0]!r}, which joins it to the output")
    image = image_column(schema, keys)
    label = label_column if label_column in schema.names else None
    columns = list(dict.fromkeys(list(keys) + [c for c in (image, label) if c]))
    found: dict[str, dict] = {}
    for path in files:
        for batch in open_parquet(path).iter_batches(batch_size=65536, columns=columns):
            table = pa.Table.from_batches([batch])
            ids = [key_id(row, keys) for row in table.select(list(keys)).to_pylist()]
            picks = [i for i, k in enumerate(ids) if k in wanted]
            if not picks:
                continue
            taken = table.take(pa.array(picks))
            images = to_numpy(taken.column(image)) if image else [None] * len(picks)
            labels = taken.column(label).to_pylist() if label else [None] * len(picks)
            for j, i in enumerate(picks):
                found[ids[i]] = {"image": _as_image(images[j], schema.field(image).type) if image else None, "label": labels[j]}
    return found


def inputs_or_note(pattern: str, keys: Sequence[str], wanted: set[str], label_column: str | None = None) -> tuple[dict, str]:
    """read_inputs, or where the input files cannot be joined (no such key column): nothing and a note that says why,
    so the rest of the section (keys and scores) is still shown."""
    try:
        return read_inputs(pattern, keys, wanted, label_column), ""
    except InputError as err:
        return {}, f'<p class="warning">The inputs are not shown: {html.escape(str(err))}.</p>'


def _as_image(values, kind: pa.DataType) -> np.ndarray | None:
    if values is None:
        return None
    values = np.asarray(values, np.float64)
    shape = _image_shape(kind) or _square(values.size)
    return values.reshape(shape) if shape else None


def _tile(values: np.ndarray) -> np.ndarray:
    """An input as an RGB tile in [0, 1]: grey scaled to its own range, colour as figures._image scales it."""
    image = _image(values)
    if image.ndim == 2:
        low, high = float(image.min()), float(image.max())
        grey = (image - low) / (high - low) if high > low else np.zeros_like(image)
        image = np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image, np.float64)


def strip(rows: Sequence[dict], title: str, columns: int | None = None) -> str | None:
    """Rows' inputs as tiles, `columns` a line (all in one line by default), each with its `caption` above it; a row
    without an image is a grey tile with its caption, one without either a gap. None where no row has an image.

    One mosaic on one axes (captions as text over it), not an axes per tile: a page draws dozens of these."""
    tiles = [None if r.get("image") is None else _tile(r["image"]) for r in rows]
    if all(t is None for t in tiles):
        return None
    height = max(t.shape[0] for t in tiles if t is not None)
    width = max(t.shape[1] for t in tiles if t is not None)
    columns = columns or len(rows)
    lines = -(-len(rows) // columns)
    gap, band = max(1, width // 8), max(4, int(height * 0.55))  # between tiles; above each line, for the captions
    canvas = np.ones((lines * (band + height) + gap, columns * (width + gap) + gap, 3))
    plt = _matplotlib()
    fig, ax = plt.subplots(figsize=(1.35 * columns, 1.7 * lines + 0.3))
    for n, (row, tile) in enumerate(zip(rows, tiles)):
        line, column = divmod(n, columns)
        top, left = line * (band + height) + band, gap + column * (width + gap)
        if tile is not None:
            canvas[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
        elif row.get("caption"):
            canvas[top : top + height, left : left + width] = 0.85
        if row.get("caption"):
            ax.text(left + width / 2, top - 0.5, row["caption"], ha="center", va="bottom", fontsize=7)
        if row.get("edge"):  # a colour that marks the tile (the query among its neighbours)
            ax.add_patch(_rectangle((left - 0.5, top - 0.5), width, height, row["edge"]))
    ax.imshow(canvas, interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    return png(fig)


def _rectangle(corner, width, height, colour):
    from matplotlib.patches import Rectangle

    return Rectangle(corner, width, height, fill=False, edgecolor=colour, linewidth=2.5)
