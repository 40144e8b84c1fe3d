"""The embedded default: a small image task, a CNN trained on it, and the jobs that explain it, for `--demo`.

So that a newcomer sees what per-example gradients are for, with no data of
their own and no download: 3,000 16x16 images of one shape each on a noisy
background (class 0 a filled square, 1 a plus, 2 a diagonal line), 30 of them
labelled wrongly on purpose, and a small two-headed CNN (`classes`, softmax
over the three; `brightness`, the image's mean) trained on those labels in
seconds. Everything is seeded, so every run makes the same files and the same
model. `--demo` then runs the main job (integrated gradients of the labelled
class, which light up on the shapes), per-example weight projections of the
loss, the influence job over them (self influence puts the 30 flipped rows
first) and the report. `demo_rows()` makes the rows again with what the job's
input leaves out on purpose (each row's true shape, its mask and whether its
label was flipped), for tests and docs.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from transforms.io.arrow import to_tensor_array

DEMO_DIR = "demo"
ROWS_PER_FILE = 1000
FILES = 3
ROWS = ROWS_PER_FILE * FILES
IMAGE_SHAPE = (16, 16, 1)
SHAPES = ("square", "plus", "diagonal")  # class i is SHAPES[i]
FLIPPED = 30  # rows whose label names another shape, on purpose
NOISE = 0.3  # the background is uniform in [0, NOISE); a shape's pixels in [0.8, 1)
EPOCHS = 12
VERSION = "2: 16x16 shapes, a trained CNN"  # written beside the files; files of another version are made again

MODEL = os.path.join(DEMO_DIR, "model.keras")
DATA = os.path.join(DEMO_DIR, "data")
DATA_PATTERN = os.path.join(DATA, "*.parquet")
OUT = os.path.join(DEMO_DIR, "out")
ATTRIBUTIONS = os.path.join(OUT, "gradients")  # the main job: integrated gradients of the labelled class
PROJECTIONS = os.path.join(OUT, "projections")  # each row's loss gradient w.r.t. the weights, projected
INFLUENCE = os.path.join(OUT, "neighbours")  # each row's most influential training rows
SELF_INFLUENCE = os.path.join(OUT, "self_influence")  # each row's score against itself


def _stamp(shape: np.ndarray, top: int, left: int, size: int = 5) -> np.ndarray:
    """The mask of one shape in a size x size box at (top, left) of an image."""
    box = np.zeros((size, size), bool)
    if shape == 0:
        box[1:4, 1:4] = True  # a filled 3x3 square, centred in the box
    elif shape == 1:
        box[size // 2, :] = box[:, size // 2] = True
    else:
        box[np.arange(size), np.arange(size)] = True
    mask = np.zeros(IMAGE_SHAPE[:2], bool)
    mask[top : top + size, left : left + size] = box
    return mask


def demo_rows() -> dict[str, np.ndarray]:
    """Every demo row, made again the same way each call: `ids`, `images` (float32, N x 16 x 16 x 1),
    `shapes` (the true class), `labels` (what the data says: 30 differ), `masks` (N x 16 x 16, the
    shape's pixels) and `flipped` (bool). Only `ids`, `images` and `labels` reach the job's input."""
    rng = np.random.default_rng(0)
    shapes = rng.permutation(np.arange(ROWS) % len(SHAPES)).astype(np.int64)
    images = rng.uniform(0.0, NOISE, (ROWS, *IMAGE_SHAPE)).astype(np.float32)
    corners = rng.integers(0, IMAGE_SHAPE[0] - 5 + 1, (ROWS, 2))
    masks = np.stack([_stamp(s, top, left) for s, (top, left) in zip(shapes, corners)])
    bright = rng.uniform(0.8, 1.0, images.shape).astype(np.float32)
    images[masks] = bright[masks]
    flipped = np.zeros(ROWS, bool)
    flipped[rng.choice(ROWS, FLIPPED, replace=False)] = True
    labels = shapes.copy()
    labels[flipped] = (shapes[flipped] + rng.integers(1, len(SHAPES), FLIPPED)) % len(SHAPES)
    return {
        "ids": np.arange(ROWS, dtype=np.int64),
        "images": images,
        "shapes": shapes,
        "labels": labels,
        "masks": masks,
        "flipped": flipped,
    }


def make_model(path: str) -> None:
    """A small CNN trained on the demo's labels (flipped ones included), seeded: the same weights every run."""
    import keras

    keras.utils.set_random_seed(0)
    image = keras.Input(IMAGE_SHAPE, name="image")
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(image)
    x = keras.layers.Conv2D(16, 3, activation="relu", name="conv2")(x)
    features = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    classes = keras.layers.Dense(len(SHAPES), activation="softmax", name="classes")(features)
    brightness = keras.layers.Dense(1, name="brightness")(features)
    model = keras.Model(image, [classes, brightness])
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss={"classes": "sparse_categorical_crossentropy", "brightness": "mean_squared_error"},
    )
    rows = demo_rows()
    targets = {"classes": rows["labels"], "brightness": rows["images"].mean(axis=(1, 2, 3))}
    model.fit(rows["images"], targets, batch_size=32, epochs=EPOCHS, shuffle=True, verbose=0)
    model.save(path)


def make_data(folder: str) -> None:
    """Three Parquet files of 1,000 rows: `id`, `image` (a 16x16x1 tensor) and `label`; nothing else."""
    os.makedirs(folder, exist_ok=True)
    rows = demo_rows()
    for f, path in enumerate(_data_files(folder)):
        part = slice(f * ROWS_PER_FILE, (f + 1) * ROWS_PER_FILE)
        table = pa.table(
            {"id": rows["ids"][part], "image": to_tensor_array(rows["images"][part]), "label": rows["labels"][part]}
        )
        pq.write_table(table, path, row_group_size=400)


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


def make_files() -> float:
    """Make the demo's model and data where they are missing or from another version; the seconds it took."""
    started = time.monotonic()
    os.makedirs(DEMO_DIR, exist_ok=True)
    stamp = os.path.join(DEMO_DIR, "VERSION")
    current = os.path.isfile(stamp) and open(stamp, encoding="utf-8").read().strip() == VERSION
    if not current or not os.path.isfile(MODEL):
        _make_atomically(MODEL, make_model)
    if not current or not all(os.path.isfile(f) for f in _data_files(DATA)):  # a half-made folder too
        _make_atomically(DATA, make_data)
    if not current:
        with open(stamp, "w", encoding="utf-8") as fh:
            fh.write(VERSION + "\n")
    return time.monotonic() - started


MAIN_OPTIONS = [
    "--runner=DirectRunner",
    f"--input={DATA_PATTERN}",
    f"--model={MODEL}",
    f"--output={ATTRIBUTIONS}",
    "--feature_columns=image",
    "--keep_columns=id,label",
    "--target=class",
    "--class_column=label",
    "--output_name=classes",
    "--method=integrated_gradients",
    "--steps=32",
    "--emit=predictions,norm",
]


def demo_options(argv: Sequence[str] = ()) -> list[str]:
    """The main job's options (integrated gradients of each row's labelled class), which the user's own (`argv`)
    override; less those that the user's choices leave unused, so `--demo --method gradient` drops the demo's
    `--steps` rather than being refused for it."""
    from pipeline.options import ENGINE_SETTINGS, GradientOptions, OptionsError, parse, spec_from
    from transforms.gradients.errors import SpecError

    try:
        used = spec_from(parse(argv, defaults=MAIN_OPTIONS).view_as(GradientOptions)).used_settings()
    except (OptionsError, SpecError):
        return list(MAIN_OPTIONS)  # the job's own checks say what is wrong, as without --demo
    engine = {s.name for s in ENGINE_SETTINGS}
    return [o for o in MAIN_OPTIONS if o[2:].split("=")[0] not in engine or o[2:].split("=")[0] in used]


def projection_options() -> list[str]:
    """Each row's loss gradient w.r.t. the weights, as a 512-number seeded projection (the influence job's input)."""
    return [
        "--runner=DirectRunner",
        f"--input={DATA_PATTERN}",
        f"--model={MODEL}",
        f"--output={PROJECTIONS}",
        "--feature_columns=image",
        "--keep_columns=id",
        "--target=loss",
        "--label_column=label",
        "--loss=sparse_categorical_crossentropy",
        "--output_name=classes",
        "--wrt=weights",
        "--weights=conv1,conv2,classes",  # the layers the class loss depends on (not the brightness head)
        "--weight_output=projection",
        "--projection_dim=512",
        "--quiet",
    ]


def influence_options() -> list[str]:
    """Every row against every row (TracIn): its top proponents and opponents, and its self influence."""
    projections = f"{PROJECTIONS}-*.parquet"
    return [
        "--runner=DirectRunner",
        f"--train={projections}",
        f"--query={projections}",
        f"--output={INFLUENCE}",
        "--keep_columns=id",
        "--top_k=5",
        "--self_influence",
        f"--self_influence_output={SELF_INFLUENCE}",
    ]
