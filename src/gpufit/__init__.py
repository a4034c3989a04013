"""gpufit: batched HistFactory likelihoods, fits, CLs and Monte-Carlo toys on JAX.

>>> import gpufit
>>> ws = gpufit.Workspace.load("ws.json")
>>> model = ws.model()
>>> data = ws.data(model)
>>> fit = gpufit.fit(model, data)
>>> r = gpufit.hypotest(model, data, mu=1.0)

Importing gpufit switches on JAX's ``jax_enable_x64`` for the whole process: likelihoods
and toys are float64 by default (float32 does not reach float64's minima yet), and JAX
allows float64 only process-wide. Other JAX code in the same process then gets float64
arrays where it asked for none (``jnp.zeros(3).dtype`` is float64); pass dtypes
explicitly there, or import gpufit in a process of its own.
"""

import jax as _jax

_jax.config.update("jax_enable_x64", True)  # process-wide: see the module docstring

from ._version import __version__  # noqa: E402
from .exceptions import (  # noqa: E402
    BackendUnavailable,
    GpufitError,
    InvalidArgument,
    InvalidInterpCode,
    InvalidModel,
    InvalidShape,
    InvalidWorkspace,
    LimitOutsideGrid,
    ToyFitsFailed,
    UnknownName,
    UnspecifiedPOI,
)
from .model import Model  # noqa: E402
from .optimize import FitResult, fit  # noqa: E402
from .infer import HypoTestResult, ScanResult, UpperLimitResult, hypotest, scan, upper_limit  # noqa: E402
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
    "scan",
    "ScanResult",
    "HypoTestResult",
    "UpperLimitResult",
    "infer",
    "GpufitError",
    "InvalidWorkspace",
    "InvalidArgument",
    "LimitOutsideGrid",
    "UnknownName",
    "InvalidModel",
    "InvalidShape",
    "InvalidInterpCode",
    "UnspecifiedPOI",
    "ToyFitsFailed",
    "BackendUnavailable",
]
