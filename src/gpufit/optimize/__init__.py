"""Batched optimizer: ``fit`` and its ``FitResult``; ``minimize_batch`` and
``minimize_chain``, the compiled lockstep solver underneath, for callers that fit inside
their own compiled code (the toy calculator), with its status codes."""

from ._result import FitResult
from ._solver import CONVERGED, MAX_ITERATIONS, STATUS, FitEnd, minimize_batch, minimize_chain
from .fit import at_edge, fit, fit_points, padded_chunks, resolve_bounds

__all__ = ["at_edge", "fit", "fit_points", "FitResult", "FitEnd", "STATUS", "CONVERGED", "MAX_ITERATIONS",
           "minimize_batch", "minimize_chain", "padded_chunks", "resolve_bounds"]
