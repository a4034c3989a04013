"""``FitResult``: what a batch of fits found, with flags instead of exceptions."""

from __future__ import annotations

import dataclasses

import numpy as np

from ._solver import STATUS

MESSAGES = {
    "converged": "the estimated distance to the minimum (edm) fell below tol",
    "max_iterations": "the step cap (maxiter) was reached before edm fell below tol",
    "not_finite": "-2 log L or its gradient is not finite at the start or on the way: check the model and data",
    "stalled": "no step lowers -2 log L any more (damping at its cap) while edm is above tol",
}


@dataclasses.dataclass(frozen=True)
class FitResult:
    """Results of one fit per dataset; leading shape ``[...]`` is the data's batch shape.

    Attributes:
        pars: [..., P] best-fit parameters.
        twice_nll: [...] -2 log L at ``pars``.
        converged: [...] bool.
        status: [...] int, how the fit ended (:data:`gpufit.optimize.STATUS`);
            ``status_names`` and ``messages`` spell it out.
        n_iter: [...] solver steps.
        edm: [...] estimated distance to the minimum (in -2 log L units).
        uncertainties: [..., P] Hesse errors (None unless ``hesse``); 0 for fixed ones.
        covariance: [..., P, P] (None unless ``hesse``).
        hesse_valid: [...] bool, the Hessian on the free parameters is positive definite
            at ``pars`` (None unless ``hesse``); where False the covariance is a
            pseudo-inverse and the errors are not to be trusted.
        bounds: [P, 2] the bounds the fits ran with (``at_limit`` reads them).
        by_minuit: [...] bool, iminuit (MIGRAD) had the last word on the fit: its status
            is then MIGRAD's (converged where ``valid``); ``finished_by`` says it in words.
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
    hesse_valid: np.ndarray | None = None
    bounds: np.ndarray | None = None
    by_minuit: np.ndarray | None = None

    @property
    def n_failed(self) -> int:
        """Number of fits that did not converge."""
        return int(np.sum(~np.asarray(self.converged)))

    @property
    def status_names(self):
        """``status`` as words: converged, max_iterations, not_finite, stalled."""
        return np.vectorize(lambda code: STATUS.get(int(code), str(code)), otypes=[object])(self.status)

    @property
    def messages(self):
        """``status`` as a sentence per fit (what happened, and what to do about it)."""
        return np.vectorize(lambda name: MESSAGES.get(name, name), otypes=[object])(self.status_names)

    @property
    def finished_by(self):
        """``"gpufit"`` or ``"iminuit"`` per fit: which minimizer had the last word."""
        by = np.zeros(np.shape(self.status), bool) if self.by_minuit is None else np.asarray(self.by_minuit)
        return np.where(by, "iminuit", "gpufit").astype(object)

    @property
    def at_limit(self) -> np.ndarray:
        """[..., P] bool: free parameters that ended on one of their bounds (as MINUIT's
        ``at_limit``); a minimum on a bound has no symmetric Hesse error there."""
        if self.bounds is None:
            raise ValueError("this FitResult carries no bounds")
        pars = np.asarray(self.pars)
        return ((pars <= self.bounds[:, 0]) | (pars >= self.bounds[:, 1])) & ~np.asarray(self.fixed)

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
            "finished_by": np.asarray(self.finished_by).tolist(),
            "n_iter": np.asarray(self.n_iter).tolist(),
            "edm": np.asarray(self.edm).tolist(),
        }
        if self.bounds is not None:
            out["at_limit"] = dict(zip(self.parameter_names, self.at_limit.T.tolist()))
        if self.uncertainties is not None:
            out["uncertainties"] = dict(zip(self.parameter_names, np.asarray(self.uncertainties).T.tolist()))
            out["hesse_valid"] = np.asarray(self.hesse_valid).tolist()
        return out
