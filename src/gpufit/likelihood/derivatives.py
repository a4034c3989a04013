"""Analytic first derivatives of the expected counts, for the batched solver (JAX).

``nu_k = (nominal_k + sum_h delta_kh(alpha)) * prod_m F_km(theta)`` gives

    d nu_k / d theta_p = sum_m [p = par(k, m)] (nominal_k + delta_k) dF_km prod_{m' != m} F_km'
                       + sum_h [p = par(k, h)] delta'_kh prod_m F_km

The products over "all factors but one" come from exclusive cumulative products (no
division, so a normfactor at 0 is fine), and the sums over entries that share a
(main bin, parameter) pair are one segment sum into the [N, P] Jacobian. One call costs
a few forward passes, independent of P, where ``jax.jacfwd`` costs P of them and
``jax.jacrev`` N.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..model.interpolation import histosys_delta, normsys_factor


def _normsys_derivative(code, alpha, hi, lo, coef):
    log_hi, log_lo = jnp.log(hi), jnp.log(lo)
    up = jnp.power(hi, alpha) * log_hi
    down = -jnp.power(lo, -alpha) * log_lo
    if code == "code1":
        return jnp.where(alpha >= 0, up, down)  # the right derivative at the kink
    poly = coef[:, 0] + alpha * (
        2 * coef[:, 1] + alpha * (3 * coef[:, 2] + alpha * (4 * coef[:, 3] + alpha * (5 * coef[:, 4] + alpha * 6 * coef[:, 5])))
    )
    return jnp.where(alpha >= 1.0, up, jnp.where(alpha > -1.0, poly, down))


def _histosys_derivative(code, alpha, up, down):
    if code == "code0":
        return jnp.where(alpha >= 0, up, down)  # the right derivative at the kink
    if code == "code2":
        a = 0.5 * (up - down)
        b = 0.5 * (up + down)
        return jnp.where(alpha > 1.0, b + 2 * a, jnp.where(alpha >= -1.0, 2 * a * alpha + b, b - 2 * a))
    s = 0.5 * (up + down)
    a = 0.0625 * (up - down)
    a2 = alpha * alpha
    inside = s + a * alpha * (30.0 + a2 * (18.0 * a2 - 40.0))
    return jnp.where(alpha > 1.0, up, jnp.where(alpha < -1.0, down, inside))


def _normsys_second(code, alpha, hi, lo, coef):
    log_hi, log_lo = jnp.log(hi), jnp.log(lo)
    up = jnp.power(hi, alpha) * log_hi * log_hi
    down = jnp.power(lo, -alpha) * log_lo * log_lo
    if code == "code1":
        return jnp.where(alpha >= 0, up, down)  # the right derivative at the kink
    poly = 2 * coef[:, 1] + alpha * (
        6 * coef[:, 2] + alpha * (12 * coef[:, 3] + alpha * (20 * coef[:, 4] + alpha * 30 * coef[:, 5]))
    )
    return jnp.where(alpha >= 1.0, up, jnp.where(alpha > -1.0, poly, down))


def _histosys_second(code, alpha, up, down):
    if code == "code0":
        return jnp.zeros_like(alpha * up)
    if code == "code2":
        a = 0.5 * (up - down)
        return jnp.where((alpha > 1.0) | (alpha < -1.0), 0.0, 2 * a)
    a = 0.0625 * (up - down)
    a2 = alpha * alpha
    inside = a * (30.0 + a2 * (90.0 * a2 - 120.0))
    return jnp.where((alpha > 1.0) | (alpha < -1.0), 0.0, inside)


def _exclusive_products(g):
    """prod over the last axis of g, leaving out each entry in turn: [..., M] -> [..., M]."""
    ones = jnp.ones_like(g[..., :1])
    before = jnp.cumprod(jnp.concatenate([ones, g[..., :-1]], axis=-1), axis=-1)
    after = jnp.flip(jnp.cumprod(jnp.concatenate([ones, jnp.flip(g[..., 1:], -1)], axis=-1), axis=-1), -1)
    return before * after


def jacobian_segments(m, n_pars: int):
    """Segment ids (main bin * P + parameter) of every factor and histosys entry."""
    npars = n_pars
    par_of_factor = jnp.concatenate(
        [jnp.arange(npars, dtype=jnp.int32), m.normsys_par.astype(jnp.int32), jnp.zeros(1, jnp.int32)]
    )
    par_of_delta = jnp.concatenate([m.histosys_par.astype(jnp.int32), jnp.zeros(1, jnp.int32)])
    bin_of = jnp.argmax(m.bin_matrix, axis=-1).astype(jnp.int32)  # [K]
    ids_f = bin_of[:, None] * npars + par_of_factor[m.factor_index]
    ids_h = bin_of[:, None] * npars + par_of_delta[m.delta_index]
    return jnp.concatenate([ids_f.ravel(), ids_h.ravel()])


def expected_main_and_jacobian(m, pars, segments, second: bool = False):
    """Expected main counts and their Jacobian for ONE parameter vector.

    Args:
        m: compiled model.
        pars: [P].
        segments: from :func:`jacobian_segments`.
        second: also return the diagonal second derivatives d2 nu_b / d theta_p^2.

    Returns:
        nu [N], jac [N, P] (and d2 [N, P] when ``second``).
    """
    npars = pars.shape[-1]
    alpha_n = pars[m.normsys_par]
    alpha_h = pars[m.histosys_par]
    code_n, code_h = m.normsys_code, m.histosys_code
    f_norm = normsys_factor(jnp, code_n, alpha_n, m.normsys_hi, m.normsys_lo, m.normsys_coef)
    df_norm = _normsys_derivative(code_n, alpha_n, m.normsys_hi, m.normsys_lo, m.normsys_coef)
    d_hist = histosys_delta(jnp, code_h, alpha_h, m.histosys_up, m.histosys_down)
    dd_hist = _histosys_derivative(code_h, alpha_h, m.histosys_up, m.histosys_down)
    one, zero = jnp.ones(1, pars.dtype), jnp.zeros(1, pars.dtype)
    factors = jnp.concatenate([pars, f_norm, one])[m.factor_index]  # [K, M]
    dfactors = jnp.concatenate([jnp.ones_like(pars), df_norm, zero])[m.factor_index]  # [K, M]
    factor = jnp.prod(factors, axis=-1)  # [K]
    base = m.nominal + jnp.sum(jnp.concatenate([d_hist, zero])[m.delta_index], axis=-1)  # [K]
    nu_k = base * factor
    others = base[:, None] * _exclusive_products(factors)  # [K, M]
    c_factor = others * dfactors
    c_delta = factor[:, None] * jnp.concatenate([dd_hist, zero])[m.delta_index]  # [K, H]
    size = m.n_main * npars
    jac = jax.ops.segment_sum(jnp.concatenate([c_factor.ravel(), c_delta.ravel()]), segments, size)
    nu = nu_k @ m.bin_matrix
    if not second:
        return nu, jac.reshape(m.n_main, npars)
    d2f = _normsys_second(code_n, alpha_n, m.normsys_hi, m.normsys_lo, m.normsys_coef)
    d2d = _histosys_second(code_h, alpha_h, m.histosys_up, m.histosys_down)
    s_factor = others * jnp.concatenate([jnp.zeros_like(pars), d2f, zero])[m.factor_index]
    s_delta = factor[:, None] * jnp.concatenate([d2d, zero])[m.delta_index]
    d2 = jax.ops.segment_sum(jnp.concatenate([s_factor.ravel(), s_delta.ravel()]), segments, size)
    return nu, jac.reshape(m.n_main, npars), d2.reshape(m.n_main, npars)


def twice_nll_gradient_curvature(m, pars, data, segments):
    """-2 log L, its gradient and its Fisher curvature for ONE fit.

    Args:
        pars: [P]; data: [N + A]; segments: from :func:`jacobian_segments`.

    Returns:
        f [], g [P], h [P, P]: a positive semi-definite curvature matrix,
        ``h = 2 (J^T diag(w) J + diag(c))`` with the observed weights ``w = n/nu^2``
        (``1/nu`` in empty bins), the non-negative part of the diagonal second-order
        term, and the exact second derivatives of the constraint terms (the Poisson
        one falls back to its expectation ``tau/gamma`` where the auxiliary datum is 0).
    """
    from jax.scipy.special import gammaln, xlogy

    n = data[: m.n_main]
    aux = data[m.n_main :]
    nu, jac, d2 = expected_main_and_jacobian(m, pars, segments, second=True)
    main = jnp.sum(xlogy(n, nu) - nu - gammaln(n + 1.0))
    ratio = jnp.where(n == 0, 0.0, n / nu)
    grad = -2.0 * (jac.T @ (ratio - 1.0))
    # observed information n/nu^2 of the Poisson term where n > 0 (exact for factors that
    # act linearly), its expectation 1/nu in empty bins
    w = 1.0 / jnp.maximum(nu, jnp.finfo(nu.dtype).tiny)
    w = jnp.where(n > 0, n * w * w, w)
    # plus the diagonal of sum_b (1 - n_b/nu_b) d2 nu_b / d theta^2 where it adds curvature
    # (the non-linear interpolations), so the matrix stays positive semi-definite
    curv = jnp.maximum((1.0 - ratio) @ d2, 0.0)

    theta = pars[m.gauss_par]
    a_g = aux[m.gauss_aux]
    inv_var = 1.0 / (m.gauss_sigma * m.gauss_sigma)
    z = (a_g - theta) / m.gauss_sigma
    gauss = jnp.sum(-0.5 * z * z - jnp.log(m.gauss_sigma)) - 0.9189385332046727 * theta.shape[0]
    grad = grad.at[m.gauss_par].add(-2.0 * (a_g - theta) * inv_var)
    curv = curv.at[m.gauss_par].add(inv_var)

    gamma = pars[m.pois_par]
    a_p = aux[m.pois_aux]
    rate = gamma * m.pois_tau
    pois = jnp.sum(xlogy(a_p, rate) - rate - gammaln(a_p + 1.0))
    grad = grad.at[m.pois_par].add(-2.0 * (jnp.where(a_p == 0, 0.0, a_p / gamma) - m.pois_tau))
    curv = curv.at[m.pois_par].add(jnp.where(a_p > 0, a_p / (gamma * gamma), m.pois_tau / gamma))

    f = -2.0 * (main + gauss + pois)
    h = 2.0 * ((jac.T * w) @ jac + jnp.diag(curv))
    return f, grad, h
