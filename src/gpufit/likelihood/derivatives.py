"""Analytic derivatives of the expected counts and of -2 log L, for the solver (JAX).

``nu_k = (nominal_k + sum_h delta_kh(alpha)) * prod_m F_km(theta)`` gives

    d nu_k / d theta_p = sum_m [p = par(k, m)] (nominal_k + delta_k) dF_km prod_{m' != m} F_km'
                       + sum_h [p = par(k, h)] delta'_kh prod_m F_km

The products over "all factors but one" are the whole product times each factor's
``F'/F`` (with a factor at 0 standing in as sqrt(tiny) and what carries it flushed to 0,
:func:`expected_main_and_jacobian`), and the sums over entries that share a
(main bin, parameter) pair are gathered through precomputed tables into the [N, P]
Jacobian (``model/_tables.py``; no scatter, which is slow on CPUs). One call costs
a few forward passes, independent of P, where ``jax.jacfwd`` costs P of them and
``jax.jacrev`` N.

The exact Hessian of -2 log L (:func:`twice_nll_hessian`) uses the same entries, laid
out per sample-bin ([K, P], through ``factor_of`` / ``delta_of``): each sample-bin's
second derivatives are rank one plus a diagonal, so the Hessian is one K x P x P
product instead of P autodiff passes.
"""

from __future__ import annotations

import jax.numpy as jnp

from .._arrays import get_namespace
from .interpolation import histosys, normsys
from .kernels import constraint_data, constraint_logpdf, poisson_logpmf


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


def _assemble(m, c_factor, c_hist):
    """Sum per-entry contributions into dense [N, P, R] matrices: c_factor [K, M, R] (one
    per factor entry), c_hist [Th, R] (one per histosys term); R derivatives at once.

    Two gathers through the precomputed tables (``m.jac_entries``, ``m.jac_index``),
    each moving R numbers per index; no scatter.
    """
    r = c_factor.shape[-1]
    zero = jnp.zeros((1, r), c_factor.dtype)
    flat = jnp.concatenate([c_factor.reshape(-1, r), c_hist, zero])
    sums = jnp.sum(flat[m.jac_entries], axis=-2)  # [Z, R]
    dense = jnp.concatenate([sums, zero])[m.jac_index]
    return dense.reshape(m.n_main, -1, r)


def _interpolated(m, pars, order):
    """Every factor and histosys shift with its derivatives in its own parameter, for
    ONE parameter vector [P]: ``order + 1`` factor arrays [P + Tn + 1] (the parameters
    themselves, normfactor, lumi and gammas being factor = theta; the normsys factors;
    a trailing 1, 0, 0 for padding) and ``order + 1`` shift arrays [Th + 1] (a trailing 0)."""
    code_n, code_h = m.normsys_code, m.histosys_code
    norm = normsys(jnp, code_n, pars[m.normsys_par], m.normsys_log_hi, m.normsys_log_lo, m.normsys_coef, order)
    hist = histosys(jnp, code_h, pars[m.histosys_par], m.histosys_up, m.histosys_down, order)
    one, zero = jnp.ones(1, pars.dtype), jnp.zeros(1, pars.dtype)
    linear = (pars, jnp.ones_like(pars), jnp.zeros_like(pars))
    pads = (one, zero, zero)
    factors = [jnp.concatenate([linear[i], norm[i], pads[i]]) for i in range(order + 1)]
    shifts = [jnp.concatenate([hist[i], zero]) for i in range(order + 1)]
    return factors, shifts


def _entries(m, pars, order):
    """Per-entry pieces of every sample-bin for ONE parameter vector [P].

    Returns factors, dfactors (and d2factors) [K, M]: each factor entry's value and
    derivatives in its own parameter (1, 0, 0 for padding); ddelta (and d2delta) [K, H]:
    each histosys entry's derivatives; base [K] = nominal + shifts; factor [K] = product.
    """
    factors, shifts = _interpolated(m, pars, order)
    f = [a[m.factor_index] for a in factors]  # [K, M] each
    d = [a[m.delta_index] for a in shifts]  # [K, H] each
    base = m.nominal + jnp.sum(d[0], axis=-1)
    return f, d, base, jnp.prod(f[0], axis=-1)


def expected_main_and_jacobian(m, pars, second: bool = False):
    """Expected main counts and their Jacobian for ONE parameter vector.

    Args:
        m: compiled model.
        pars: [P].
        second: also return the diagonal second derivatives d2 nu_b / d theta_p^2
            (without the products of two entries of one parameter in one sample-bin).

    Returns:
        nu [N], jac [N, P] (and d2 [N, P] when ``second``).
    """
    order = 2 if second else 1
    factors, shifts = _interpolated(m, pars, order)
    # d F_k / d theta through an entry = F_k (f' / f) of that entry, with the ratios
    # taken per factor [P + Tn + 1] before the gather (the products of "all factors but
    # one" of each entry cost a 1Lbb step a quarter of its evaluation). A factor at 0 (a
    # normfactor or gamma on its bound) stands in as s = sqrt(tiny), so that its own
    # entry keeps the product of the others; what then carries a factor s (F_k, the
    # derivatives along the other parameters) is flushed to exactly 0 below s / eps: at
    # the model's edge an empty bin's nu_b and its derivatives along every other
    # parameter are 0, as the solver's edge rule needs.
    small = jnp.sqrt(jnp.finfo(pars.dtype).tiny)
    flush = small / jnp.finfo(pars.dtype).eps
    safe = jnp.where(jnp.abs(factors[0]) < small, small, factors[0])
    f = [a[m.factor_index] for a in [safe] + [a / safe for a in factors[1:]]]  # [K, M] each: F, F'/F, F''/F
    product = jnp.prod(f[0], axis=-1)  # [K]
    base = m.nominal + jnp.sum(shifts[0][m.delta_index], axis=-1)
    factor = jnp.where(jnp.abs(product) < flush, 0.0, product)
    nu = (base * factor) @ m.bin_matrix
    # both orders in one pass through the tables (on 1Lbb a quarter of a step's
    # evaluation); a histosys term shifts one sample-bin: its derivatives times that
    # sample-bin's factors, without the [K, H] layout
    c_factor = jnp.stack([(base * product)[:, None] * a for a in f[1:]], axis=-1)  # [K, M, order]
    c_hist = factor[m.histosys_bin][:, None] * jnp.stack([a[:-1] for a in shifts[1:]], axis=-1)  # [Th, order]
    dense = _assemble(m, c_factor, c_hist)
    dense = jnp.where(jnp.abs(dense) < flush, 0.0, dense)
    return (nu,) + tuple(dense[..., i] for i in range(order))


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
    ns = get_namespace("jax")
    n = data[: m.n_main]
    aux = data[m.n_main :]
    nu, jac, d2 = expected_main_and_jacobian(m, pars, second=True)
    main = jnp.sum(poisson_logpmf(ns, n, nu))
    ratio = jnp.where(n == 0, 0.0, n / nu)
    grad = -2.0 * (jac.T @ (ratio - 1.0))
    w = 1.0 / jnp.maximum(nu, jnp.finfo(nu.dtype).tiny)
    w = jnp.where(n > 0, n * w * w, w)
    curv = jnp.maximum((1.0 - ratio) @ d2, 0.0)

    # constraint terms, laid out per parameter (masks instead of scatters)
    a = constraint_data(jnp, m, aux)  # [P]
    is_g, is_p = m.con_gauss, m.con_pois
    inv_var = 1.0 / (m.con_sigma * m.con_sigma)
    safe_gamma = jnp.where(is_p > 0, pars, 1.0)
    grad = grad - 2.0 * is_g * (a - pars) * inv_var
    grad = grad - 2.0 * is_p * (jnp.where(a == 0, 0.0, a / safe_gamma) - m.con_tau)
    curv = curv + is_g * inv_var
    curv = curv + is_p * jnp.where(a > 0, a / (safe_gamma * safe_gamma), m.con_tau / safe_gamma)

    # a bin with n = 0 and nu < 0 (a histosys pushed past zero) would make -2 log L
    # unbounded below: such points are outside the model, not minima
    f = jnp.where(jnp.any(nu < 0), jnp.inf, -2.0 * (main + constraint_logpdf(ns, m, pars, a)))
    return f, grad, jac, w, curv


def curvature_matrix(jac, w, c):
    """``2 (J^T diag(w) J + diag(c))`` [P, P] from the factors of
    :func:`twice_nll_gradient_curvature`."""
    return 2.0 * ((jac.T * w) @ jac + jnp.diag(c))


def _per_sample_bin(table, contributions):
    """Dense [K, P] from per-entry contributions [K, W] through ``factor_of``/``delta_of``."""
    flat = jnp.concatenate([contributions.ravel(), jnp.zeros(1, contributions.dtype)])
    return jnp.sum(flat.at[table].get(mode="promise_in_bounds"), axis=-1)


def twice_nll_hessian(m, pars, data):
    """The exact Hessian of -2 log L for ONE fit: pars [P], data [N + A] -> [P, P].

    With ``nu_k = B_k F_k`` (B: nominal plus histosys shifts, F: the product of the
    factors) and ``r_b = 1 - n_b / nu_b``:

        H = 2 [J^T diag(n / nu^2) J + sum_b r_b d2 nu_b + constraint curvature]
        d2 nu_k = (B_k / F_k) gF gF^T + gB gF^T + gF gB^T        off the diagonal

    where gF, gB [K, P] are the per-sample-bin gradients of F and B (each entry
    depends on one parameter, so the factor block is rank one per sample-bin). The
    rank-one form divides by F_k, so it is evaluated with factors clamped away from
    zero (a normfactor or gamma at 0: the terms that involve it are right, the others
    are O(clamp) instead of 0); the diagonal, where that division would cancel
    catastrophically, is summed exactly from the entries. One K x P x P product per
    call: use it where Gauss-Newton steps converge slowly, not for every step.
    """
    f, d, base, factor = _entries(m, pars, 2)
    n = data[: m.n_main]
    aux = data[m.n_main :]
    others = _exclusive_products(f[0])  # prod of the other factors [K, M]
    g_f = _per_sample_bin(m.factor_of, others * f[1])  # dF_k / d theta [K, P]
    g_b = _per_sample_bin(m.delta_of, d[1])  # dB_k / d theta [K, P]
    jac_k = base[:, None] * g_f + factor[:, None] * g_b  # d nu_k / d theta [K, P]
    nu = (base * factor) @ m.bin_matrix
    jac = m.bin_matrix.T @ jac_k  # [N, P]
    ratio = jnp.where(n == 0, 0.0, n / nu)
    w = jnp.where(n == 0, 0.0, ratio / nu)
    c = m.bin_matrix @ (1.0 - ratio)  # r of each sample-bin's main bin [K]

    clamp = jnp.finfo(pars.dtype).eps ** (2.0 / 3.0)
    f_safe = jnp.where(f[0] < 0, jnp.minimum(f[0], -clamp), jnp.maximum(f[0], clamp))
    prod_safe = jnp.prod(f_safe, axis=-1)  # [K]
    g_safe = _per_sample_bin(m.factor_of, prod_safe[:, None] / f_safe * f[1])  # [K, P]
    # sum_k c_k [(B / F)_k gF_k gF_k^T + gB_k gF_k^T + gF_k gB_k^T] is the symmetric part
    # of ONE K x P x P product, sum_k c_k (B gF / F + 2 gB)_k gF_k^T
    left = (c * base / prod_safe)[:, None] * g_safe + 2.0 * c[:, None] * g_b  # [K, P]
    second = left.T @ g_safe
    second = 0.5 * (second + second.T)
    diag = c @ (
        base[:, None] * _per_sample_bin(m.factor_of, others * f[2])
        + factor[:, None] * _per_sample_bin(m.delta_of, d[2])
        + 2.0 * g_b * g_f
    )
    eye = jnp.eye(pars.shape[0], dtype=bool)
    second = jnp.where(eye, jnp.diag(diag), second)

    a = constraint_data(jnp, m, aux)
    safe_gamma = jnp.where(m.con_pois > 0, pars, 1.0)
    con = m.con_gauss / (m.con_sigma * m.con_sigma) + m.con_pois * a / (safe_gamma * safe_gamma)
    return 2.0 * ((jac.T * w) @ jac + second + jnp.diag(con))


def twice_nll_gradient_hessian(m, pars, data):
    """-2 log L, its gradient, the solver's Newton matrix and the Gauss-Newton curvature
    for ONE fit: f [], g [P], hessian [P, P], gauss_newton [P, P] (the fallback where
    the first is not positive definite), and scale [2, P], the diagonals the damping
    scales with.

    The Newton matrix is the exact Hessian plus, for empty bins only, the Gauss-Newton
    term ``2 J_b J_b^T / nu_b``: an empty bin contributes no curvature to the exact
    Hessian (n/nu^2 = 0), so exact Newton steps run straight through nu_b = 0, where
    -2 log L stops being defined; the expected information 1/nu_b grows as the edge
    nears and keeps the steps inside.
    """
    f, g, jac, w, c = twice_nll_gradient_curvature(m, pars, data)
    empty = jnp.where(data[: m.n_main] == 0, w, 0.0)  # w = 1/nu in empty bins
    hessian = twice_nll_hessian(m, pars, data) + 2.0 * (jac.T * empty) @ jac
    gauss_newton = curvature_matrix(jac, w, c)
    # the damping's scale caps the 1/nu of empty bins at 1: near the model's edge
    # (nu_b -> 0) it would swamp every other curvature along the parameters of the bin,
    # and with it every step and the edm
    excess = 2.0 * (jnp.maximum(empty - 1.0, 0.0) @ (jac * jac))
    scale = jnp.stack([jnp.diagonal(hessian) - excess, jnp.diagonal(gauss_newton) - excess])
    return f, g, hessian, gauss_newton, scale
