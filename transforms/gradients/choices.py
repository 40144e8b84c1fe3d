"""The names the engine answers to, without TensorFlow: what a command line offers before any model is needed.

Why apart: `--help` and every option error must answer at once, and importing
TensorFlow costs seconds. Each registry checks, when it is built, that its
classes' names are exactly the ones listed here, so the two cannot drift.
"""

# Per registry field (the spec field that picks an answer): its answers' names, in the registry's order.
NAMES = {
    "target": ("sum", "per_output", "loss", "class", "predicted", "top_k"),
    "method": ("gradient", "gradient_x_input", "integrated_gradients", "smoothgrad", "vargrad", "squaregrad"),
    "wrt": ("inputs", "weights", "both"),
    "weight_output": ("norm", "projection", "full"),
    "projection_dtype": ("float32", "float16"),
    "ig_rule": ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gauss_legendre"),
}
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


def check_names(field: str, names) -> None:
    """Fail at import where the classes (or rules) registered for `field` are not exactly NAMES[field]."""
    if tuple(names) != NAMES[field]:
        raise AssertionError(f"{field}: registered {tuple(names)}, but choices.py lists {NAMES[field]}; make them equal")

