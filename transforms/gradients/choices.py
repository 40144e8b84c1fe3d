"""Fixed choices of the engine's own settings, without TensorFlow (spec.py declares the settings that take them).

The registries' names (targets, methods, wrt, weight forms) and the rules' are not listed here: their
classes declare them, and the command line reads them from the generated, TensorFlow-free
declared.py (docs/make_options.py), so `--help` and every option error answer at once.
"""

UNCONNECTED_MODES = ("zeros", "error")
EMITS = ("predictions", "loss", "norm")
KERAS_LOSSES = (
    "mse",
    "mae",
    "binary_crossentropy",
    "categorical_crossentropy",
    "sparse_categorical_crossentropy",
    "huber",
)

