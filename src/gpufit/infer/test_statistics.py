"""Profile-likelihood test statistics, batched over datasets and POI values.

All follow pyhf's conventions (Cowan et al., arXiv:1007.1727):

* ``tmu = -2 ln lambda(mu)``, clipped at 0, with the POI bounds in use;
* ``qmu = tmu`` where ``muhat <= mu``, else 0 (one-sided, for upper limits);
* ``q0 = t0`` where ``muhat >= 0``, else 0 (discovery);
* the "tilde" variants (``qmu_tilde``, ``tmu_tilde``) are the same formulas with the
  POI bounded below at 0: like pyhf, gpufit uses the bounds it is given and warns when
  they do not match the statistic's name.
"""

from __future__ import annotations

import logging

import numpy as np

from ..exceptions import InvalidArgument

from ..optimize import fit

log = logging.getLogger(__name__)

TEST_STATS = ("q0", "q", "qtilde", "t", "ttilde")
ALIASES = {"qmu": "q", "qmu_tilde": "qtilde", "tmu": "t", "tmu_tilde": "ttilde"}


def normalize_test_stat(name: str) -> str:
    name = ALIASES.get(name, name)
    if name not in TEST_STATS:
        raise InvalidArgument(
            f"unknown test statistic {name!r}; choose one of {', '.join(TEST_STATS)} "
            "(or qmu, qmu_tilde, tmu, tmu_tilde)"
        )
    return name


def check_poi_bounds(test_stat: str, poi_low: float) -> None:
    """pyhf's warnings when the POI bound does not match the statistic."""
    if test_stat in ("qtilde", "ttilde") and poi_low != 0:
        log.warning(
            "%s used with the POI not bounded at zero (lower bound %s); use %s instead",
            test_stat, poi_low, test_stat[0],
        )
    if test_stat in ("q", "t") and poi_low == 0:
        log.warning(
            "%s used with the POI bounded at zero; use %stilde instead", test_stat, test_stat
        )


def one_sided(test_stat: str) -> int:
    """Where a one-sided statistic is 0 whatever the fixed-POI fit gives: +1 for muhat >
    mu (``q``, ``qtilde``), -1 for muhat < mu (``q0``, whose mu is 0), 0 for none (``t``,
    ``ttilde``). The toys skip the fixed-POI fit there, as ROOT's
    ProfileLikelihoodTestStat does (:func:`zero_by_muhat`)."""
    return {"q": 1, "qtilde": 1, "q0": -1}.get(test_stat, 0)


def zero_by_muhat(side: int, muhat, mu, xp=np):
    """Where the free fit's ``muhat`` alone makes the statistic of side ``side``
    (:func:`one_sided`) 0 at ``mu``: arrays broadcast together -> [...] bool. ``xp``: the
    array namespace (``jax.numpy`` inside a compiled toy chunk)."""
    if side > 0:
        return muhat > mu
    if side < 0:
        return muhat < mu
    return xp.zeros(xp.broadcast_shapes(xp.shape(muhat), xp.shape(mu)), bool)


def from_fits(test_stat: str, mu, twice_nll_fixed, twice_nll_free, muhat):
    """A test statistic from the two fits: arrays broadcast together -> [...]."""
    tmu = np.clip(np.asarray(twice_nll_fixed) - np.asarray(twice_nll_free), 0.0, None)
    return np.where(zero_by_muhat(one_sided(test_stat), np.asarray(muhat), mu), 0.0, tmu)


def profile_fits(model, data, mu, init=None, bounds=None, fixed=None, **fit_options):
    """The free fit and the fit with the POI fixed to ``mu`` for every dataset.

    Args:
        data: [..., N + A]; mu: scalar or [...].

    Returns:
        (free FitResult, fixed-POI FitResult), both of batch shape [...].
    """
    poi = model.poi_name
    model.require_poi()
    data = np.asarray(data, dtype=model.dtype)
    batch = data.shape[:-1]
    free = fit(model, data, fixed=fixed, init=init, bounds=bounds, hesse=False, **fit_options)
    pinned = dict(fixed or {})
    pinned[poi] = np.broadcast_to(np.asarray(mu, dtype=model.dtype), batch)
    conditional = fit(model, data, fixed=pinned, init=init, bounds=bounds, hesse=False, **fit_options)
    return free, conditional


def _statistic(test_stat, model, data, mu, **kwargs):
    test_stat = normalize_test_stat(test_stat)
    if test_stat == "q0":
        mu = 0.0
    free, conditional = profile_fits(model, data, mu, **kwargs)
    muhat = free.pars[..., model.poi_index]
    return from_fits(test_stat, mu, conditional.twice_nll, free.twice_nll, muhat)


def qmu(model, data, mu, **kwargs):
    """One-sided ``qmu`` for datasets [..., N + A] at ``mu`` (scalar or [...]) -> [...]."""
    return _statistic("q", model, data, mu, **kwargs)


def qmu_tilde(model, data, mu, **kwargs):
    """``qmu_tilde`` (POI bounded at 0) -> [...]."""
    return _statistic("qtilde", model, data, mu, **kwargs)


def tmu(model, data, mu, **kwargs):
    """Two-sided ``tmu`` -> [...]."""
    return _statistic("t", model, data, mu, **kwargs)


def tmu_tilde(model, data, mu, **kwargs):
    """Two-sided ``tmu_tilde`` (POI bounded at 0) -> [...]."""
    return _statistic("ttilde", model, data, mu, **kwargs)


def q0(model, data, **kwargs):
    """Discovery ``q0`` -> [...]."""
    return _statistic("q0", model, data, 0.0, **kwargs)
