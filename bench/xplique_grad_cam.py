"""xplique 2.0.2's Grad-CAM and Grad-CAM++ of a saved CNN on stored images: the reference tests/test_grad_cam.py reads.

Run with the venv of bench/xplique_venv.sh (xplique pins an older TensorFlow). The target is the
predicted class (one-hot, as xplique asks); the convolution layer is xplique's default (the last
layer with `filters`) unless --conv_layer names one.

    bench/.xplique-venv/bin/python bench/xplique_grad_cam.py --model tests/data/grad_cam_cnn.keras \\
        --inputs tests/data/grad_cam_inputs.npy --output tests/data/grad_cam_xplique.npz
"""

from __future__ import annotations

import argparse

import keras
import numpy as np
import tensorflow as tf
import xplique
from xplique.attributions import GradCAM, GradCAMPP


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--inputs", required=True, help=".npy of images (rows, height, width, channels)")
    parser.add_argument("--output", required=True, help=".npz with grad_cam and grad_cam_pp (rows, height, width)")
    parser.add_argument("--conv_layer")
    args = parser.parse_args()
    x = np.load(args.inputs).astype(np.float32)
    model = keras.models.load_model(args.model, compile=False)
    logits = model.predict(x, verbose=0)
    targets = tf.one_hot(np.argmax(logits, axis=1), logits.shape[1]).numpy()
    maps = {}
    for name, cls in (("grad_cam", GradCAM), ("grad_cam_pp", GradCAMPP)):
        explainer = cls(model, batch_size=len(x), conv_layer=args.conv_layer)
        maps[name] = np.asarray(explainer.explain(x, targets), np.float32).reshape(x.shape[:3])
    np.savez(args.output, xplique=np.array(xplique.__version__), **maps)
    print(f"xplique {xplique.__version__}: {len(x)} rows -> {args.output}")


if __name__ == "__main__":
    main()
