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
"""

from transforms.gradients.engine import GradientEngine
from transforms.gradients.errors import SpecError
from transforms.gradients.losses import KERAS_LOSSES, resolve_loss
from transforms.gradients.methods import METHODS
from transforms.gradients.model_function import ModelFunction, TensorInfo, Weight, from_keras, from_saved_model
from transforms.gradients.outputs import Output, RowInput, gradient_name
from transforms.gradients.spec import EMITS, UNCONNECTED_MODES, GradientSpec
from transforms.gradients.targets import TARGETS
from transforms.gradients.wrt import FORMS, WRT
from transforms.gradients.wrt.forms import DTYPES as PROJECTION_DTYPES

__all__ = [
    "EMITS",
    "FORMS",
    "KERAS_LOSSES",
    "METHODS",
    "PROJECTION_DTYPES",
    "TARGETS",
    "UNCONNECTED_MODES",
    "WRT",
    "GradientEngine",
    "GradientSpec",
    "ModelFunction",
    "Output",
    "RowInput",
    "SpecError",
    "TensorInfo",
    "Weight",
    "from_keras",
    "from_saved_model",
    "gradient_name",
    "resolve_loss",
]
