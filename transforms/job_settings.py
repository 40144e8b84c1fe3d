"""The main job's own settings around the engine, declared once: the CLI's flags, `ComputeGradients`' keyword
arguments and docs/options.md are built from them (the engine's settings are in transforms/gradients/)."""

from transforms.gradients.settings import job_setting as _job


BATCH_SIZE = _job("batch_size", int, 256, "Rows per model call (the last is padded).", minimum=1)
COMPUTE_SETTINGS = (
    _job(
        "feature_columns",
        str,
        (),
        "Column(s) feeding the model: one tensor or list column, or several scalar columns stacked in order "
        "(comma-separated).",
        items=True,
    ),
    _job("keep_columns", str, (), "Key columns copied unchanged to every output row (comma-separated).", items=True),
    _job(
        "input_map",
        str,
        None,
        "name=column,... maps model inputs to columns; join scalar columns with +.",
        items=True,
    ),
    BATCH_SIZE,
    _job("trust_model_code", bool, False, "Load models that carry code (Lambda layers).", negatable=True),
)
