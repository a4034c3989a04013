"""Batched optimizer: ``fit`` and its ``FitResult``; ``minimize_batch`` and
``minimize_chain``, the compiled lockstep solver underneath, and ``edge_pass``, the
solver along the model's edge, for callers that fit inside their own compiled code (the
toy calculator), with its status codes."""

from ._edge import edge_pass
from ._result import FitResult
from ._solver import CONVERGED, MAX_ITERATIONS, STATUS, FitEnd, minimize_batch, minimize_chain
from .fit import along_edge, at_edge, fit, fit_points, padded_chunks, resolve_bounds

__all__ = ["along_edge", "at_edge", "edge_pass", "fit", "fit_points", "FitResult", "FitEnd", "STATUS", "CONVERGED",
           "MAX_ITERATIONS", "minimize_batch", "minimize_chain", "padded_chunks", "resolve_bounds"]
