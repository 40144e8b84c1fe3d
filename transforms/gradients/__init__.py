"""The engine: per-example gradients of a model, one compiled function per batch shape.

Pure TensorFlow/Keras, no Beam and nothing else of the project, so it can be
tested and reused on its own. A `GradientSpec` answers the engine's three
questions, each answer one small class in one file, listed in a registry:

- of what (`targets/`, TARGETS): sum, per_output, loss;
- how (`methods/`, METHODS): gradient;
- with respect to what (`wrt/`, WRT): inputs, weights, both; a weight gradient is written in the forms
  of `wrt/forms/` (FORMS): norm, projection, full.

`GradientEngine` composes them into one `tf.function` with a fixed input
signature and declares its outputs (`Output`: name, kind, shape, dtype), from
which a caller builds its schema. Errors (`SpecError`) name spec fields; a
caller may rename them (`SpecError.named`), as the CLI does with its flags.

Names are imported on first use (PEP 562), so `from transforms.gradients import
SpecError` or the choices in `choices.py` cost no TensorFlow import: the command
line answers `--help` and option errors at once.
"""

import importlib

# name -> the submodule that defines it (`submodule:attribute` where the name differs there)
_WHERE = {
    "EMITS": "choices",
    "KERAS_LOSSES": "choices",
    "UNCONNECTED_MODES": "choices",
    "SpecError": "errors",
    "METHODS": "methods",
    "TARGETS": "targets",
    "WRT": "wrt",
    "FORMS": "wrt",
    "PROJECTION_DTYPES": "wrt.forms.projection:DTYPES",
    "GradientEngine": "engine",
    "GradientSpec": "spec",
    "resolve_loss": "losses",
    "ModelFunction": "model_function",
    "TensorInfo": "model_function",
    "Weight": "model_function",
    "from_keras": "model_function",
    "from_saved_model": "model_function",
    "Output": "outputs",
    "RowInput": "outputs",
    "gradient_name": "outputs",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, _, attribute = _WHERE[name].partition(":")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute or name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
