"""What a user of xplique 2.x writes: read Parquet, explain every row, write Parquet, in one process.

Run with the venv of bench/xplique_venv.sh (xplique pins an older TensorFlow).
The target is the predicted class (one-hot targets, as xplique asks), channels not reduced (Grad-CAM: one map
per image, over the last layer with `filters`, as the job's default); IG runs
from a zero baseline with xplique's trapezoid rule, as the job's riemann_trapezoid.

    bench/.xplique-venv/bin/python bench/xplique_explain.py --method integrated_gradients \\
        --input data.parquet --model cnn.keras --output /tmp/xplique.parquet
"""

from __future__ import annotations

import argparse

import keras
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import tensorflow as tf
from xplique.attributions import GradCAM, GradCAMPP, GradientInput, IntegratedGradients, SmoothGrad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--method", choices=("integrated_gradients", "smoothgrad", "gradient_x_input", "grad_cam", "grad_cam_pp"), required=True)
    parser.add_argument("--points", type=int, default=50, help="steps or samples")
    parser.add_argument("--noise", type=float, default=0.2, help="SmoothGrad's standard deviation (absolute)")
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args()

    table = pq.read_table(args.input, columns=["id", "x"])
    x = table.column("x").combine_chunks().to_numpy_ndarray().astype(np.float32, copy=False)
    model = keras.models.load_model(args.model, compile=False)
    logits = model.predict(x, batch_size=args.batch_size, verbose=0)
    targets = tf.one_hot(np.argmax(logits, axis=1), logits.shape[1]).numpy()
    if args.method == "integrated_gradients":
        explainer = IntegratedGradients(
            model, batch_size=args.batch_size, steps=args.points, baseline_value=0.0, reducer=None
        )
    elif args.method == "smoothgrad":
        explainer = SmoothGrad(model, batch_size=args.batch_size, nb_samples=args.points, noise=args.noise, reducer=None)
    elif args.method in ("grad_cam", "grad_cam_pp"):  # over xplique's default layer: the last one with `filters`
        explainer = (GradCAM if args.method == "grad_cam" else GradCAMPP)(model, batch_size=args.batch_size)
    else:
        explainer = GradientInput(model, batch_size=args.batch_size, reducer=None)
    shape = x.shape[:3] if args.method.startswith("grad_cam") else x.shape  # a map per image: height x width
    explanations = np.asarray(explainer.explain(x, targets), np.float32).reshape(shape)
    result = pa.table({"id": table.column("id"), "gradient": pa.FixedShapeTensorArray.from_numpy_ndarray(explanations)})
    pq.write_table(result, args.output, compression="snappy")
    print(f"xplique: {len(x)} rows, {args.method}")


if __name__ == "__main__":
    main()
