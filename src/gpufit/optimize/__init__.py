"""Batched optimizer: ``fit`` and its ``FitResult``."""

from ._result import FitResult
from ._solver import STATUS
from .fit import fit, resolve_bounds

__all__ = ["fit", "FitResult", "STATUS", "resolve_bounds"]
