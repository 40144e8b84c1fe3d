"""Fixed choices of the engine's own settings, without TensorFlow (spec.py declares the settings that take them).

The registries' names (targets, methods, wrt, weight forms) and the rules' are not listed here: their
classes declare them, and the command line reads them from the generated, TensorFlow-free
declared.py (docs/make_options.py), so `--help` and every option error answer at once.
"""

UNCONNECTED_MODES = ("zeros", "error")
# The wrt answers whose gradients are taken at the method's points (the inputs, or a layer's activation), so every
# method works with them; the others (weights) take the plain gradient only.
POINT_WRT = ("inputs", "layer")
EMITS = ("predictions", "loss", "norm")
KERAS_LOSSES = (
    "mse",
    "mae",
    "binary_crossentropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "huber",
)

