"""How the gradient is taken: one class per method, one file each; METHODS lists them (the CLI's choices).

`build_method` is the one place that turns a spec into its method: METHODS[spec.method],
or, where `samples` is given to a method that takes no samples itself, SmoothGrad over
it (captum's `NoiseTunnel(IntegratedGradients)`).
"""

from transforms.gradients.choices import POINT_WRT
from transforms.gradients.errors import SpecError
from transforms.gradients.methods.base import Attribution, Differentiate, Evaluate, Method
from transforms.gradients.methods.grad_cam import GradCAM
from transforms.gradients.methods.grad_cam_pp import GradCAMPP
from transforms.gradients.methods.gradient import Gradient
from transforms.gradients.methods.gradient_x_input import GradientXInput
from transforms.gradients.methods.integrated_gradients import IntegratedGradients
from transforms.gradients.methods.noise import NoiseTunnel
from transforms.gradients.methods.smoothgrad import SmoothGrad
from transforms.gradients.methods.squaregrad import SquareGrad
from transforms.gradients.methods.steps import RULES as IG_RULES
from transforms.gradients.methods.vargrad import VarGrad
from transforms.gradients.registry import Registry

METHODS = Registry("method", [Gradient, GradientXInput, IntegratedGradients, SmoothGrad, VarGrad, SquareGrad, GradCAM, GradCAMPP])


def wrapped(spec) -> bool:
    """Whether the spec asks for SmoothGrad over its method: `samples` given to a method that is no noise method."""
    return spec.samples is not None and not issubclass(METHODS[spec.method], NoiseTunnel)


def check_method(spec) -> None:
    """Refuse spec values the method (and the noise around it, where wrapped) cannot use."""
    METHODS.check(spec.method).check_spec(spec)
    if wrapped(spec):
        if spec.wrt not in POINT_WRT:
            raise SpecError("{samples} with {method} %s is SmoothGrad over it: noise on the inputs, it needs {wrt} "
                            "inputs, not {value!r}" % spec.method, value=spec.wrt)
        SmoothGrad.check_spec(spec)


def method_settings(spec) -> tuple[str, ...]:
    """The settings the spec's method reads: with `samples` given to another method, the noise's too."""
    method = METHODS[spec.method]
    return SmoothGrad.used_settings(spec, method) if wrapped(spec) else method.used_settings(spec)


def build_method(model, spec) -> Method:
    """The spec's method for `model`: METHODS[spec.method], or SmoothGrad over it where `wrapped(spec)`.

    `method="integrated_gradients", samples=20, noise=0.1` builds
    `SmoothGrad(model, spec, IntegratedGradients(model, spec))`.
    """
    method = METHODS[spec.method](model, spec)
    return SmoothGrad(model, spec, method) if wrapped(spec) else method

__all__ = [
    "METHODS",
    "build_method",
    "method_settings",
    "check_method",
    "NoiseTunnel",
    "IG_RULES",
    "Method",
    "Attribution",
    "Differentiate",
    "Evaluate",
    "Gradient",
    "GradientXInput",
    "IntegratedGradients",
    "SmoothGrad",
    "VarGrad",
    "SquareGrad",
    "GradCAM",
    "GradCAMPP",
]
