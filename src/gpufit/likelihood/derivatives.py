"""Analytic first derivatives of the expected counts, for the batched solver (JAX).

``nu_k = (nominal_k + sum_h delta_kh(alpha)) * prod_m F_km(theta)`` gives

    d nu_k / d theta_p = sum_m [p = par(k, m)] (nominal_k + delta_k) dF_km prod_{m' != m} F_km'
                       + sum_h [p = par(k, h)] delta'_kh prod_m F_km

The products over "all factors but one" divide the product by each factor, counting
exact zeros apart (so a normfactor at 0 is fine), and the sums over entries that share a
(main bin, parameter) pair are gathered through precomputed tables into the [N, P]
Jacobian (``model/_solver_tables.py``; no scatter, which is slow on CPUs). One call costs
a few forward passes, independent of P, where ``jax.jacfwd`` costs P of them and
``jax.jacrev`` N.
"""

from __future__ import annotations

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
    """prod over the last axis of g, leaving out each entry in turn: [..., M] -> [..., M].

    The product of the non-negligible entries divided by each one, with exact zeros
    (a normfactor or gamma on its bound) handled by counting them: O(M) work, where
    XLA's cumulative products cost O(M^2) on CPUs. Entries below sqrt(tiny) count as
    zeros, an absolute error below sqrt(tiny) on the result.
    """
    small = jnp.abs(g) < jnp.sqrt(jnp.finfo(g.dtype).tiny)
    safe = jnp.where(small, 1.0, g)
    prod_nz = jnp.prod(safe, axis=-1, keepdims=True)
    zeros = jnp.sum(small, axis=-1, keepdims=True)
    return jnp.where(small, jnp.where(zeros == 1, prod_nz, 0.0), jnp.where(zeros == 0, prod_nz / safe, 0.0))


def _assemble(m, c_factor, c_delta):
    """Sum per-entry contributions [K, M] and [K, H] into the dense [N, P] matrix.

    Two gathers through the precomputed tables (``m.jac_entries``, ``m.jac_index``);
    no scatter.
    """
    flat = jnp.concatenate([c_factor.ravel(), c_delta.ravel(), jnp.zeros(1, c_factor.dtype)])
    sums = jnp.sum(flat[m.jac_entries], axis=-1)  # [Z]
    dense = jnp.concatenate([sums, jnp.zeros(1, sums.dtype)])[m.jac_index]
    return dense.reshape(m.n_main, -1)


def expected_main_and_jacobian(m, pars, second: bool = False):
    """Expected main counts and their Jacobian for ONE parameter vector.

    Args:
        m: compiled model.
        pars: [P].
        second: also return the diagonal second derivatives d2 nu_b / d theta_p^2.

    Returns:
        nu [N], jac [N, P] (and d2 [N, P] when ``second``).
    """
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
    nu = (base * factor) @ m.bin_matrix
    others = base[:, None] * _exclusive_products(factors)  # [K, M]
    jac = _assemble(m, others * dfactors, factor[:, None] * jnp.concatenate([dd_hist, zero])[m.delta_index])
    if not second:
        return nu, jac
    d2f = _normsys_second(code_n, alpha_n, m.normsys_hi, m.normsys_lo, m.normsys_coef)
    d2d = _histosys_second(code_h, alpha_h, m.histosys_up, m.histosys_down)
    s_factor = others * jnp.concatenate([jnp.zeros_like(pars), d2f, zero])[m.factor_index]
    s_delta = factor[:, None] * jnp.concatenate([d2d, zero])[m.delta_index]
    return nu, jac, _assemble(m, s_factor, s_delta)


def twice_nll_gradient_curvature(m, pars, data):
    """-2 log L, its gradient and the factors of a curvature matrix, for ONE fit.

    Args:
        pars: [P]; data: [N + A].

    Returns:
        f [], g [P], jac [N, P], w [N], c [P]: the positive semi-definite curvature
        matrix is ``2 (J^T diag(w) J + diag(c))`` (:func:`curvature_matrix`), kept in
        factors because N is small. ``w = n/nu^2`` is the observed information of the
        Poisson terms (``1/nu``, its expectation, in empty bins); ``c`` is the
        non-negative part of the diagonal second-order term (non-linear
        interpolations) plus the exact curvature of the constraint terms (the Poisson
        one falls back to its expectation ``tau/gamma`` where the auxiliary datum is 0).
    """
    from jax.scipy.special import gammaln, xlogy

    n = data[: m.n_main]
    aux = data[m.n_main :]
    nu, jac, d2 = expected_main_and_jacobian(m, pars, second=True)
    main = jnp.sum(xlogy(n, nu) - nu - gammaln(n + 1.0))
    ratio = jnp.where(n == 0, 0.0, n / nu)
    grad = -2.0 * (jac.T @ (ratio - 1.0))
    w = 1.0 / jnp.maximum(nu, jnp.finfo(nu.dtype).tiny)
    w = jnp.where(n > 0, n * w * w, w)
    curv = jnp.maximum((1.0 - ratio) @ d2, 0.0)

    # constraint terms, laid out per parameter (masks instead of scatters)
    a = jnp.concatenate([aux, jnp.zeros(1, aux.dtype)])[m.con_aux]  # [P]
    is_g, is_p = m.con_gauss, m.con_pois
    inv_var = 1.0 / (m.con_sigma * m.con_sigma)
    z = (a - pars) / m.con_sigma
    gauss = -jnp.sum(is_g * (0.5 * z * z + jnp.log(m.con_sigma) + 0.9189385332046727))
    rate = pars * m.con_tau
    safe_rate = jnp.where(is_p > 0, rate, 1.0)
    pois = jnp.sum(is_p * (xlogy(a, safe_rate) - rate - gammaln(a + 1.0)))
    safe_gamma = jnp.where(is_p > 0, pars, 1.0)
    grad = grad - 2.0 * is_g * (a - pars) * inv_var
    grad = grad - 2.0 * is_p * (jnp.where(a == 0, 0.0, a / safe_gamma) - m.con_tau)
    curv = curv + is_g * inv_var
    curv = curv + is_p * jnp.where(a > 0, a / (safe_gamma * safe_gamma), m.con_tau / safe_gamma)

    f = -2.0 * (main + gauss + pois)
    return f, grad, jac, w, curv


def curvature_matrix(jac, w, c):
    """``2 (J^T diag(w) J + diag(c))`` [P, P] from the factors of
    :func:`twice_nll_gradient_curvature`."""
    return 2.0 * ((jac.T * w) @ jac + jnp.diag(c))
