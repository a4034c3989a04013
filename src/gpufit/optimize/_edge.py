"""Fits whose minimum lies on the model's edge: an active-set solver along nu_b = 0.

An empty main bin (n_b = 0) adds 2 nu_b to -2 log L, smallest at nu_b = 0, the edge of
the model (beyond it an expected count is negative and -2 log L is +inf). Where the
rest of the likelihood pushes the count up less than 2 nu_b pulls it down, the minimum
lies on that edge, a curved surface in parameter space. The batched solver approaches
it with steps that keep a tenth of nu_b, under an expected information 1/nu_b that grows
without limit; when the minimum is further along the edge, every step along it leaves
the curved surface, is cut to a tenth, and the fit crawls. Of the 10,000 1Lbb fits of
``benchmarks/fits.py`` one did that for 300 steps (nu_b = 5.5e-9, the POI on its bound
0), then exact Newton steps and MIGRAD (three attempts, 17 s) failed from there too;
this solver converges it in 45 steps (0.2 s), 0.055 lower, with the POI off its bound
(MIGRAD, strategy 1, from there finds nothing lower: ``tests/test_fit.py``).

The empty bins at the edge are held as equality constraints ``nu_b(theta) = t_b`` with
``t_b`` a tenth of the current count (the edge is approached geometrically and never
crossed), and the rest of -2 log L gets its damped Gauss-Newton model. A step solves
that quadratic program's KKT system, then a second-order correction (Nocedal & Wright,
Numerical Optimization, section 15.6) moves back onto the targets from where the
curvature of the edge took the step. A bin is released when its multiplier says that
its count wants to grow. Dense P x P algebra on the host: it runs for the few fits that
the batched solver leaves unconverged, before MIGRAD.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._device import jit
from ..likelihood.derivatives import twice_nll_gradient_curvature
from ..likelihood.kernels import expected_main
from ._solver import _LAMBDA_MAX, EDGE_FRACTION, _edge_fraction, _held, _precision, _ridge, damping_rule


@jit
def _evaluate(m, data, pars):
    return twice_nll_gradient_curvature(m, pars, data)


_expected_main = jit(expected_main)
HOLD_NU = 1e-3  # an empty bin whose expected count is below this (events) is held at the edge
CORRECTIONS = 4  # second-order corrections of a step at most (each one evaluation of nu)


def _kkt(matrix, g, jac_a, rhs, active):
    """The step of ``min g.d + d.matrix.d / 2`` subject to ``jac_a d = rhs``, on the
    ``active`` parameters [P] bool (0 elsewhere): d [P] and the multipliers [A]."""
    idx = np.flatnonzero(active)
    k, a = idx.size, jac_a.shape[0]
    kkt = np.zeros((k + a, k + a))
    kkt[:k, :k] = matrix[np.ix_(idx, idx)]
    kkt[:k, k:] = jac_a[:, idx].T
    kkt[k:, :k] = jac_a[:, idx]
    sol = np.linalg.lstsq(kkt, np.concatenate([-g[idx], rhs]), rcond=None)[0]
    delta = np.zeros(g.shape)
    delta[idx] = sol[:k]
    return delta, sol[k:]


def edge_fit(compiled, data, x0, free, lo, hi, tol, maxiter=300):
    """Minimize -2 log L of ONE fit whose minimum lies at the edge of empty bins.

    Args:
        compiled: compiled model (on the host's CPU device).
        data [N + A], x0 [P] (finite), free [P] bool, lo and hi [P]; tol: edm
            threshold.

    Returns:
        pars [P], twice_nll, converged (bool), edm, steps.
    """
    n_main = int(compiled.n_main)
    empty = np.asarray(data)[:n_main] == 0
    cpu = jax.devices("cpu")[0]
    compiled, data = jax.device_put((compiled, jnp.asarray(data)), cpu)
    dtype = np.asarray(x0).dtype

    def evaluate(p):
        return [np.asarray(a, np.float64) for a in _evaluate(compiled, data, jax.device_put(p.astype(dtype), cpu))]

    x = np.asarray(x0, np.float64)
    f, g, jac, w, c = evaluate(x)
    if not np.isfinite(f):
        return x, f, False, np.inf, 0
    lam, edm, floor = 1e-3, np.inf, max(tol, _precision(dtype) * abs(f))
    # the smallest count a held bin is taken to: below it the count is rounding (the sum
    # of its samples' counts, each O(1) or more) and a step can land on either side of 0
    scale = np.abs(np.asarray(compiled.nominal)) @ np.asarray(compiled.bin_matrix)  # [N]
    bottom = 1e3 * np.finfo(dtype).eps * np.maximum(scale, 1.0)
    released = np.zeros(empty.shape, bool)
    for step in range(1, maxiter + 1):
        nu = np.where(empty, 1.0 / np.where(empty, w, 1.0), np.inf)  # w = 1/nu in empty bins
        held = empty & (nu < HOLD_NU) & ~released
        while True:
            w_rest = np.where(held, 0.0, w)  # the held bins leave the objective ...
            curv = 2.0 * ((jac.T * w_rest) @ jac + np.diag(c))
            g_rest = g - 2.0 * jac[held].sum(axis=0)  # ... with their 2 nu_b
            dg = np.diag(curv)
            damped = curv + np.diag(lam * dg + _ridge(dtype) * max(dg.max(initial=0.0), 1.0))
            active = _held(x, g_rest, lo, hi, free)  # the batched solver's two-metric projection
            target = np.maximum(EDGE_FRACTION * nu[held], bottom[held])
            delta, mult = _kkt(damped, g_rest, jac[held], target - nu[held], active)
            pushed = active & ~_held(x, -delta, lo, hi, active)
            if pushed.any():
                active &= ~pushed
                delta, mult = _kkt(damped, g_rest, jac[held], target - nu[held], active)
            # g = g_rest + 2 J_h^T = J_h^T (2 - mult) at a solution: a minimum on the
            # edge has 2 - mult >= 0 (the count would rise into the model); a bin whose
            # multiplier exceeds 2 wants its count up, and is released for good (its
            # minimum is inside the model, where the batched solver's steps are right)
            release = np.flatnonzero(held)[mult > 2.0]
            if release.size == 0:
                break
            held[release] = False
            released[release] = True
        edm = -(g_rest @ delta + 0.5 * delta @ curv @ delta)
        delta *= float(_edge_fraction(jac @ delta, nu, empty & ~held))  # the batched solver's rule for the rest
        x_try = np.where(free, np.clip(x + delta, lo, hi), x)
        for _ in range(CORRECTIONS if held.any() else 0):  # second-order corrections back onto the targets
            nu_try = np.asarray(_expected_main(compiled, jax.device_put(x_try.astype(dtype), cpu)), np.float64)[held]
            if np.all(np.abs(nu_try - target) <= 0.5 * target):
                break
            back, _ = _kkt(damped, np.zeros_like(g), jac[held], target - nu_try, active)
            x_try = np.where(free, np.clip(x_try + back, lo, hi), x_try)
        f_try, g_try, jac_try, w_try, c_try = evaluate(x_try)
        ok, lam_next = damping_rule(np.asarray(f, dtype), lam, np.asarray(f_try, dtype), g_try, edm)
        if ok:
            x, f, g, jac, w, c = x_try, f_try, g_try, jac_try, w_try, c_try
        if edm < floor and lam < 1.0:
            return x, f, True, edm, step
        lam = float(lam_next)
        if lam >= _LAMBDA_MAX:
            break
    return x, f, False, edm, step
