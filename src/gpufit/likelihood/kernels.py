"""HistFactory likelihood kernels.

Pure functions of a compiled model ``m`` (:class:`~gpufit.model.CompiledModel`, a pytree
of arrays) and arrays with any leading batch shape ``[...]``. They run unchanged on
JAX (jit, vmap, grad) and NumPy arrays: the array namespace comes from the
model's arrays, never from a global switch.

Shapes: P parameters, N main bins, A auxiliary data, K sample-bins (every bin of every
sample of every channel), Tn normsys terms, Th histosys terms.

    nu_k = (nominal_k + sum_t histosys_delta_t) * prod(normfactor, lumi, staterror,
           shapesys, shapefactor parameters and normsys factors of sample-bin k)
    nu_b = sum over the sample-bins k of bin b

    log L = sum_b Poisson(n_b | nu_b) + sum Gaussian(a | theta, sigma) + sum Poisson(a | gamma tau)

with the continuous Poisson ``n log nu - nu - lgamma(n + 1)`` and normalized Gaussians,
exactly as pyhf's ``Model.logpdf``.
"""

from __future__ import annotations

from .._arrays import namespace_of
from .interpolation import histosys, normsys

_HALF_LOG_2PI = 0.9189385332046727417803297364056176398613974736377834128171515404


def expected_main(m, pars):
    """Expected main-bin counts: pars [..., P] -> [..., N]."""
    ns = namespace_of(m.nominal)
    xp = ns.xp
    batch = pars.shape[:-1]
    (f_norm,) = normsys(
        xp, m.normsys_code, xp.take(pars, m.normsys_par, axis=-1), m.normsys_log_hi, m.normsys_log_lo, m.normsys_coef
    )
    (d_hist,) = histosys(xp, m.histosys_code, xp.take(pars, m.histosys_par, axis=-1), m.histosys_up, m.histosys_down)
    one = xp.ones(batch + (1,), dtype=pars.dtype)
    factors = xp.concatenate([pars, f_norm, one], axis=-1)  # [..., P + Tn + 1]
    deltas = xp.concatenate([d_hist, 0.0 * one], axis=-1)  # [..., Th + 1]
    factor = xp.prod(xp.take(factors, m.factor_index, axis=-1), axis=-1)  # [..., K]
    delta = xp.sum(xp.take(deltas, m.delta_index, axis=-1), axis=-1)  # [..., K]
    return ((m.nominal + delta) * factor) @ m.bin_matrix


def expected_aux(m, pars):
    """Expected auxiliary data (constraint means/rates), in pyhf's auxdata order: [..., A]."""
    xp = namespace_of(m.nominal).xp
    gauss = xp.take(pars, m.gauss_par, axis=-1)
    pois = xp.take(pars, m.pois_par, axis=-1) * m.pois_tau
    both = xp.concatenate([gauss, pois], axis=-1)
    return xp.take(both, m.aux_order, axis=-1)


def expected_data(m, pars, include_auxdata: bool = True):
    """Main then auxiliary expected data: [..., N + A] (or [..., N])."""
    main = expected_main(m, pars)
    if not include_auxdata:
        return main
    xp = namespace_of(m.nominal).xp
    return xp.concatenate([main, expected_aux(m, pars)], axis=-1)


def poisson_logpmf(ns, n, rate):
    """log Poisson(n | rate), continuous in n as pyhf's: n log rate - rate - lgamma(n + 1)
    (0 log 0 = 0); ``ns`` the array namespace (:func:`gpufit._arrays.namespace_of`). The
    one formula of the main bins and the Poisson constraints, here and in the derivatives."""
    return ns.xlogy(n, rate) - rate - ns.gammaln(n + 1.0)


def normal_logpdf(xp, a, mean, sigma):
    """log N(a | mean, sigma), normalized (the Gaussian constraints)."""
    z = (a - mean) / sigma
    return -0.5 * z * z - xp.log(sigma) - _HALF_LOG_2PI


def constraint_data(xp, m, aux):
    """Each parameter's auxiliary datum: aux [..., A] -> [..., P] (0 where the parameter
    has no constraint term)."""
    pad = xp.zeros(aux.shape[:-1] + (1,), dtype=aux.dtype)
    return xp.take(xp.concatenate([aux, pad], axis=-1), m.con_aux, axis=-1)


def constraint_logpdf(ns, m, pars, a):
    """Sum of the constraint terms, laid out per parameter: pars [..., P] and their
    auxiliary data ``a`` [..., P] (:func:`constraint_data`) -> [...].

    Masks, not index lists, say which parameter has which term, so that a parameter
    without one (an unconstrained one, or one a grid's point lacks: ``gpufit.model.in_union``)
    adds exactly nothing."""
    xp = ns.xp
    gauss = xp.sum(m.con_gauss * normal_logpdf(xp, a, pars, m.con_sigma), axis=-1)
    rate = xp.where(m.con_pois > 0, pars * m.con_tau, 1.0)
    pois = xp.sum(m.con_pois * poisson_logpmf(ns, a, rate), axis=-1)
    return gauss + pois


def logpdf(m, pars, data):
    """log L(pars | data): pars [..., P], data [..., N + A] -> [...] (broadcasting)."""
    ns = namespace_of(m.nominal)
    xp = ns.xp
    n = data[..., : m.n_main]
    nu = expected_main(m, pars)
    main = xp.sum(poisson_logpmf(ns, n, nu), axis=-1)
    a = constraint_data(xp, m, data[..., m.n_main :])
    return main + constraint_logpdf(ns, m, pars, a)


def twice_nll(m, pars, data):
    """-2 log L: pars [..., P], data [..., N + A] -> [...]."""
    return -2.0 * logpdf(m, pars, data)
