"""gpufit: batched HistFactory likelihoods, fits, CLs and Monte-Carlo toys on JAX.

>>> import gpufit
>>> ws = gpufit.Workspace.load("ws.json")
>>> model = ws.model()
>>> data = ws.data(model)
>>> fit = gpufit.fit(model, data)
>>> r = gpufit.hypotest(model, data, mu=1.0)
"""

import jax as _jax

_jax.config.update("jax_enable_x64", True)  # float64 is the default precision

from ._version import __version__  # noqa: E402
from .exceptions import (  # noqa: E402
    BackendUnavailable,
    GpufitError,
    InvalidInterpCode,
    InvalidModel,
    InvalidShape,
    InvalidWorkspace,
    ToyFitsFailed,
    UnknownName,
    UnspecifiedPOI,
)
from .model import Model  # noqa: E402
from .optimize import FitResult, fit  # noqa: E402
from .infer import HypoTestResult, UpperLimitResult, hypotest, upper_limit  # noqa: E402
from . import infer  # noqa: E402
from .workspace import Workspace  # noqa: E402

__all__ = [
    "__version__",
    "Workspace",
    "Model",
    "fit",
    "FitResult",
    "hypotest",
    "upper_limit",
    "HypoTestResult",
    "UpperLimitResult",
    "infer",
    "GpufitError",
    "InvalidWorkspace",
    "UnknownName",
    "InvalidModel",
    "InvalidShape",
    "InvalidInterpCode",
    "UnspecifiedPOI",
    "ToyFitsFailed",
    "BackendUnavailable",
]
