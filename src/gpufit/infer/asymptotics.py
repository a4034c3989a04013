"""Asymptotic CLs (Cowan et al., arXiv:1007.1727) with pyhf's conventions.

The observed statistic and its Asimov counterpart (data = expected counts at the
conditional fit with mu = 0, or mu = 1 for q0) give, in the sqrt(q) parametrization,

    CLsb = Phi(-(t + sqrt(qA))),  CLb = Phi(-t),  CLs = CLsb / CLb

with ``t = sqrt(q) - sqrt(qA)`` (q, q0) or pyhf's piecewise form for qtilde; the expected
band evaluates the same at ``t = 2, 1, 0, -1, -2`` (the -2 ... +2 sigma CLs values).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import norm

from ..exceptions import InvalidArgument
from ..optimize import fit, resolve_bounds
from .test_statistics import check_poi_bounds, from_fits

N_SIGMA = np.array([2.0, 1.0, 0.0, -1.0, -2.0])


def asimov_data(model, data, asimov_mu: float, init=None, bounds=None, fixed=None, **fit_options):
    """Asimov dataset [N + A] at POI ``asimov_mu``, nuisance parameters profiled on ``data``."""
    pinned = dict(fixed or {})
    pinned[model.poi_name] = asimov_mu
    conditional = fit(model, data, fixed=pinned, init=init, bounds=bounds, hesse=False, **fit_options)
    return np.asarray(model.expected_data(conditional.pars)), conditional


class AsymptoticScan:
    """Asymptotic p-values for one observed dataset at any number of POI values.

    The free fits (to the data and to the Asimov data) are done once; each call of
    :meth:`evaluate` batches the fixed-POI fits of all requested mu values together.
    """

    def __init__(self, model, data, test_stat="qtilde", init=None, bounds=None, fixed=None, **fit_options):
        model.require_poi()
        self.model = model
        self.test_stat = test_stat
        self.data = np.asarray(data, dtype=model.dtype)
        self.kwargs = dict(init=init, bounds=bounds, fixed=fixed, **fit_options)
        check_poi_bounds(test_stat, float(resolve_bounds(model, bounds)[model.poi_index, 0]))
        self.free = fit(model, self.data, hesse=False, **self.kwargs)
        asimov_mu = 1.0 if test_stat == "q0" else 0.0
        self.asimov, self.asimov_fit = asimov_data(model, self.data, asimov_mu, **self.kwargs)
        self.free_asimov = fit(model, self.asimov, hesse=False, **self.kwargs)
        self.n_evaluations = 0
        self.fits_failed = int(~self.free.converged) + int(~self.asimov_fit.converged) + int(~self.free_asimov.converged)

    def evaluate(self, mus) -> dict:
        """p-values at POI values ``mus`` [M]: a dict of arrays [M] (and [M, 5] for bands)."""
        model = self.model
        mus = np.atleast_1d(np.asarray(mus, dtype=model.dtype))
        if self.test_stat == "q0":
            mus = np.zeros_like(mus)
        both = np.stack([np.broadcast_to(self.data, (len(mus), self.data.size)),
                         np.broadcast_to(self.asimov, (len(mus), self.asimov.size))])
        pinned = dict(self.kwargs.get("fixed") or {})
        pinned[model.poi_name] = np.stack([mus, mus])
        kwargs = dict(self.kwargs, fixed=pinned)
        conditional = fit(model, both, hesse=False, **kwargs)
        self.n_evaluations += len(mus)
        self.fits_failed += int(np.sum(~conditional.converged))
        poi = model.poi_index
        q_obs = from_fits(self.test_stat, mus, conditional.twice_nll[0], self.free.twice_nll, self.free.pars[poi])
        q_asimov = from_fits(
            self.test_stat, mus, conditional.twice_nll[1], self.free_asimov.twice_nll, self.free_asimov.pars[poi]
        )
        return pvalues(self.test_stat, q_obs, q_asimov) | {"mu": mus, "q_obs": q_obs, "q_asimov": q_asimov}


def pvalues(test_stat: str, q_obs, q_asimov) -> dict:
    """CLsb, CLb, CLs (observed [M]) and their expected bands [M, 5] from q and q_Asimov."""
    sq = np.sqrt(np.asarray(q_obs, dtype=float))
    sqa = np.sqrt(np.asarray(q_asimov, dtype=float))
    if test_stat in ("q", "q0"):
        t = sq - sqa
    elif test_stat == "qtilde":
        # qA = 0 (mu = 0, where the two hypotheses coincide): the second branch is 0/0;
        # its limit is the first one, which gives CLsb = CLb and CLs = 1, as pyhf at mu = 0.
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where((sq <= sqa) | (sqa == 0), sq - sqa, (sq * sq - sqa * sqa) / (2.0 * sqa))
    else:
        raise InvalidArgument(
            f"the asymptotic calculator takes q, qtilde or q0 (as pyhf's does), not {test_stat!r}"
        )
    clsb = norm.cdf(-(t + sqa))
    clb = norm.cdf(-t)
    t_exp = N_SIGMA[None, :] + 0.0 * sqa[..., None]
    clsb_exp = norm.cdf(-(t_exp + sqa[..., None]))
    clb_exp = norm.cdf(-t_exp)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {
            "teststat": t,
            "clsb_obs": clsb,
            "clb_obs": clb,
            # the ratio from logs: both tails underflow together far in the tail
            "cls_obs": np.exp(norm.logcdf(-(t + sqa)) - norm.logcdf(-t)),
            "clsb_exp": clsb_exp,
            "clb_exp": clb_exp,
            "cls_exp": clsb_exp / clb_exp,
        }
