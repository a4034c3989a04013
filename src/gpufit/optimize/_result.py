"""``FitResult``: what a batch of fits found, with flags instead of exceptions."""

from __future__ import annotations

import dataclasses

import numpy as np

from ._solver import STATUS

MINUIT_FALLBACK = 10  # added to the status of fits that iminuit finished


@dataclasses.dataclass(frozen=True)
class FitResult:
    """Results of one fit per dataset; leading shape ``[...]`` is the data's batch shape.

    Attributes:
        pars: [..., P] best-fit parameters.
        twice_nll: [...] -2 log L at ``pars``.
        converged: [...] bool.
        status: [...] int; ``status_names`` spells them out.
        n_iter: [...] solver steps.
        edm: [...] estimated distance to the minimum (in -2 log L units).
        uncertainties: [..., P] Hesse errors (None unless ``hesse``); 0 for fixed ones.
        covariance: [..., P, P] (None unless ``hesse``).
        parameter_names, fixed: the model's names and the fixed flags used.
    """

    pars: np.ndarray
    twice_nll: np.ndarray
    converged: np.ndarray
    status: np.ndarray
    n_iter: np.ndarray
    edm: np.ndarray
    parameter_names: list
    fixed: np.ndarray
    uncertainties: np.ndarray | None = None
    covariance: np.ndarray | None = None

    @property
    def n_failed(self) -> int:
        """Number of fits that did not converge."""
        return int(np.sum(~np.asarray(self.converged)))

    @property
    def status_names(self):
        """``status`` as words: converged, max_iterations, not_finite, stalled
        (``+minuit`` where iminuit finished the fit)."""

        def name(code):
            code = int(code)
            base = STATUS.get(code % MINUIT_FALLBACK, str(code))
            return base + ("+minuit" if code >= MINUIT_FALLBACK else "")

        return np.vectorize(name, otypes=[object])(self.status)

    @property
    def correlations(self) -> np.ndarray | None:
        """[..., P, P] correlation matrix (None unless ``hesse``)."""
        if self.covariance is None:
            return None
        err = np.sqrt(np.clip(np.diagonal(self.covariance, axis1=-2, axis2=-1), 0, None))
        denom = err[..., :, None] * err[..., None, :]
        with np.errstate(invalid="ignore", divide="ignore"):
            corr = np.where(denom > 0, self.covariance / denom, 0.0)
        idx = np.arange(corr.shape[-1])
        corr[..., idx, idx] = np.where(err > 0, 1.0, 0.0)
        return corr

    def value(self, name: str):
        """Best-fit value(s) of one parameter: [...]."""
        return self.pars[..., self.parameter_names.index(name)]

    def error(self, name: str):
        """Hesse error(s) of one parameter: [...] (needs ``hesse``)."""
        if self.uncertainties is None:
            raise ValueError("this fit was run without hesse=True; no uncertainties")
        return self.uncertainties[..., self.parameter_names.index(name)]

    def to_dict(self) -> dict:
        """JSON-ready summary (lists), as ``gpufit fit --json`` prints."""
        out = {
            "parameters": dict(zip(self.parameter_names, np.asarray(self.pars).T.tolist())),
            "twice_nll": np.asarray(self.twice_nll).tolist(),
            "converged": np.asarray(self.converged).tolist(),
            "status": np.asarray(self.status_names).tolist(),
            "n_iter": np.asarray(self.n_iter).tolist(),
            "edm": np.asarray(self.edm).tolist(),
        }
        if self.uncertainties is not None:
            out["uncertainties"] = dict(zip(self.parameter_names, np.asarray(self.uncertainties).T.tolist()))
        return out
