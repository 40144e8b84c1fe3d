"""The embedded default: a small demo model and Parquet data it makes, for `--demo`.

So that a newcomer sees the job run end to end with no data of their own: a
tiny two-headed image model (class logits and a brightness score) and 3,000
rows of 8x8 images in three files, each row with an `id` key, under ./demo.
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from transforms.io.arrow import to_tensor_array

DEMO_DIR = "demo"
ROWS_PER_FILE = 1000
FILES = 3
IMAGE_SHAPE = (8, 8, 1)


def make_model(path: str) -> None:
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input(IMAGE_SHAPE, name="image")
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, activation="tanh")(image))
    classes = keras.layers.Dense(3, name="classes")(features)
    brightness = keras.layers.Dense(1, name="brightness")(features)
    keras.Model(image, [classes, brightness]).save(path)


def make_data(folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for f in range(FILES):
        ids = np.arange(f * ROWS_PER_FILE, (f + 1) * ROWS_PER_FILE, dtype=np.int64)
        images = rng.random((ROWS_PER_FILE, *IMAGE_SHAPE), dtype=np.float32)
        table = pa.table({"id": ids, "image": to_tensor_array(images)})
        pq.write_table(table, _data_files(folder)[f], row_group_size=400)


def _data_files(folder: str) -> list[str]:
    return [os.path.join(folder, f"part-{f:05d}.parquet") for f in range(FILES)]


def _make_atomically(path: str, make) -> None:
    """Make `path` (a file or a folder) under a hidden name beside it, then move it into place.

    So a run killed or failed half-way leaves nothing that a rerun would take as made.
    The hidden name keeps the extension (Keras saves only to a `.keras` path).
    """
    folder, name = os.path.split(path)
    stem, ext = os.path.splitext(name)
    aside = os.path.join(folder, f".{stem}.making-{os.getpid()}{ext}")
    try:
        make(aside)
        if os.path.isdir(path):
            shutil.rmtree(path)
        os.replace(aside, path)
    finally:
        if os.path.isdir(aside):
            shutil.rmtree(aside, ignore_errors=True)
        elif os.path.exists(aside):
            os.unlink(aside)


def demo_options() -> list[str]:
    """Make the demo files (once, each atomically); the demo's options, which the user's own override."""
    model = os.path.join(DEMO_DIR, "model.keras")
    data = os.path.join(DEMO_DIR, "data")
    os.makedirs(DEMO_DIR, exist_ok=True)
    if not os.path.isfile(model):
        _make_atomically(model, make_model)
    if not all(os.path.isfile(f) for f in _data_files(data)):  # an older version's half-made folder too
        _make_atomically(data, make_data)
    return [
        "--runner=DirectRunner",
        f"--input={data}/*.parquet",
        f"--model={model}",
        f"--output={os.path.join(DEMO_DIR, 'out', 'gradients')}",
        "--feature_columns=image",
        "--keep_columns=id",
        "--target=per_output",
        "--emit=predictions,norm",
    ]
