"""The seed recipe: per-example gradients the way the seed article and Beam's docs suggest.

`beam.io.ReadFromParquet` (one dict per row), `beam.BatchElements`, a DoFn that
loads the model in `setup()` and runs an eager `tf.GradientTape` per batch, and
`beam.io.WriteToParquet` of one dict per row. It is the baseline the job has
to beat by far; nothing of the project is imported. The runner is Beam's
FnApiRunner, named directly (plain DirectRunner may first try Prism, which
downloads a binary and fails offline), the engine our job runs on too.
bench/speed.py runs it as a child process; by hand:

    .venv/bin/python bench/seed_recipe.py --input bench/work/mlp-300000-rg50000.parquet --model bench/work/mlp.keras \
        --output /tmp/seed --feature_column x --batch_size 256
"""

from __future__ import annotations

import argparse

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.runners.portability.fn_api_runner import FnApiRunner


class Gradients(beam.DoFn):
    def __init__(self, model_path: str, column: str):
        self._model_path = model_path
        self._column = column

    def setup(self):
        import keras

        self._model = keras.models.load_model(self._model_path, compile=False)
        self._shape = tuple(self._model.inputs[0].shape[1:])

    def process(self, rows):
        import tensorflow as tf

        x = tf.constant(np.array([r[self._column] for r in rows], np.float32).reshape(-1, *self._shape))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = self._model(x, training=False)
        # A non-scalar target is summed, as in the article: d(sum of outputs)/dx, per example.
        grads = tape.gradient(y, x).numpy().reshape(len(rows), -1)
        for r, g in zip(rows, grads):
            yield {"id": r["id"], "gradient": g.tolist()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True, help="output prefix")
    parser.add_argument("--model", required=True)
    parser.add_argument("--feature_column", default="x")
    parser.add_argument("--batch_size", type=int, default=256)
    args = parser.parse_args()

    schema = pa.schema([("id", pa.int64()), ("gradient", pa.list_(pa.float32()))])
    with beam.Pipeline(runner=FnApiRunner()) as p:
        (
            p
            | beam.io.ReadFromParquet(args.input, columns=["id", args.feature_column])
            | beam.BatchElements(min_batch_size=args.batch_size, max_batch_size=args.batch_size)
            | beam.ParDo(Gradients(args.model, args.feature_column))
            | beam.io.WriteToParquet(args.output, schema, file_name_suffix=".parquet")
        )


if __name__ == "__main__":
    main()
