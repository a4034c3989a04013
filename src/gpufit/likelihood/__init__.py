"""Pure, batched likelihood kernels: ``expected_main``, ``expected_aux``, ``logpdf``."""

from .kernels import expected_aux, expected_data, expected_main, logpdf, twice_nll

__all__ = ["expected_main", "expected_aux", "expected_data", "logpdf", "twice_nll"]
