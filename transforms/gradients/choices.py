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
    "projection": ("countsketch", "factored"),  # the projection's construction (wrt/forms/projection.py)
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


# The lowest value of each numeric setting (and what the number means, where that helps): checked by the engine's
# answers that use the setting, and by a command line before it imports TensorFlow, so `--steps 0` answers at once.
MINIMUMS = {
    "steps": (1, ""),
    "samples": (1, ""),
    "k": (1, ""),
    "chunk": (1, ""),
    "projection_dim": (1, ""),
    "weight_memory_mb": (1, ""),
    "noise": (0, " (a fraction of each row's input range)"),
}


def check_minimum(field: str, value) -> None:
    """A SpecError naming `field` where `value` (None: not given) is below MINIMUMS[field] (or NaN)."""
    from transforms.gradients.errors import SpecError

    lowest, meaning = MINIMUMS[field]
    if value is not None and not value >= lowest:
        raise SpecError("{%s} must be %d or more%s, not {value}" % (field, lowest, meaning), value=value)
