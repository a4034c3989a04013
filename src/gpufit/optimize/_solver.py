"""A batched, bounded minimizer of -2 log L, for thousands of fits in lockstep.

One fit's step is written for one dataset and vmapped; a group of fits loops in
lockstep while any is still active, freezing the finished ones (their status is the
per-fit mask). A lockstep group runs as long as its slowest fit, unless: a narrow
group (a CPU's 8 to 64) is a queue of slots, each refilled with the next fit as soon as its
own finishes (:func:`minimize_chain`); a wide group (a GPU's chunk) runs as a funnel
of ever narrower passes that carry the stragglers' state (:func:`_minimize_group`). A
fit runs in two phases, each a loop of the same four readable pieces (step, acceptance,
damping, termination):

1. **Gauss-Newton** (far from the minimum). Curvature ``2 J^T diag(n/nu^2) J`` with the
   analytic ``J = d nu / d theta`` [N, P] (:mod:`gpufit.likelihood.derivatives`), plus
   the positive part of the diagonal second-order term and the exact curvature of the
   constraint terms. It is positive semi-definite, costs a few forward passes, and its
   damped step comes from an N x N and a small unconstrained-parameter system
   (:func:`solve_damped`), never a P x P factorization. It drops
   ``sum_b (1 - n_b/nu_b) d2 nu_b``, which is not small for Poisson data with few events
   per bin, so near the minimum it converges only linearly. In the end game (edm below
   ``ANDERSON_EDM``) the steps are accelerated by the newest secant pairs of the fit's
   own points and steps (:func:`_anderson`): 2,048 1Lbb toys at the suggested init,
   16 queue slots, edm 1e-6: 16.1 -> 12.2 steps a fit, 1.25 -> 1.0 ms, no minimum
   higher by more than 1.7e-3 (benchmarks/README.md, session 24).
2. **Newton** (optional: once the estimated distance to the minimum is below
   ``newton_edm``, or after ``newton_after`` Gauss-Newton steps): the exact Hessian
   (:func:`gpufit.likelihood.derivatives.twice_nll_hessian`, one K x P x P product;
   plus the Gauss-Newton term of empty bins, which keeps steps off nu_b < 0) and a
   dense damped Cholesky solve, with the Gauss-Newton matrix where the damped
   Hessian is not positive definite; quadratic convergence in the end game.

   Off by default, by measurement (benchmarks/solver.py: 128 1Lbb toys, 2-core CPU,
   groups of 16; results/solver-cpu-session21.json): Newton throughout cuts the mean
   steps from 19.7 to 14.0 (the same minima, but for one edge fit that Newton steps
   toward nu_b = 0 for all 300 steps), but a step costs about six Gauss-Newton ones
   (570 us a fit against 95; the Hessian alone 300 us) and a group pays it for all its
   fits until its slowest ends: 46.7 ms a fit against 3.3.

Common to both: a parameter on a bound with the gradient (then the step) pushing
outward is held for the step (projected Newton) and the step is clipped into the box;
a step is shortened so that no empty bin loses more than 90% of its expected count
(:func:`_edge_fraction`: in an empty bin -2 log L = 2 nu_b is smallest at the model's
edge nu_b = 0, the quadratic model aims right at it, and a step refused for crossing it
made hard toys crawl or stall: 5 of 2,000 1Lbb pseudo-experiments were lost that way;
where the minimum lies at that edge, the Gauss-Newton end game scales the empty bin's
curvature down, :func:`_edge_weights`);
damping ``(H + lambda D) delta = -g`` with D the diagonal of the curvature (in the
Newton phase with the 1/nu of empty bins capped at 1,
:func:`~gpufit.likelihood.derivatives.twice_nll_gradient_hessian`; capping it in
Gauss-Newton lost more 1Lbb toys, 11 of 2,000 against 1), lambda
shrunk after a good step and grown after a rejected one (Nielsen's rule); a fit stops
when the estimated distance to the minimum ``edm = g^T H^-1 g / 2`` is below ``tol``.
Thresholds that compare numbers of the size of -2 log L scale with the dtype's
precision, so float32 fits stop where float32 can no longer tell points apart.

Status codes are in :data:`STATUS`; no fit ever raises for the batch.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._device import jit
from ..likelihood.derivatives import twice_nll_gradient_curvature, twice_nll_gradient_hessian, twice_nll_hessian
from ..likelihood.kernels import expected_main, twice_nll
from ..model import take

CONVERGED, MAX_ITERATIONS, NOT_FINITE, STALLED, RUNNING, HANDOFF = 0, 1, 2, 3, -1, -2
STATUS = {
    CONVERGED: "converged",
    MAX_ITERATIONS: "max_iterations",
    NOT_FINITE: "not_finite",
    STALLED: "stalled",
}
_LAMBDA_MIN, _LAMBDA_MAX = 1e-12, 1e10
DAMPING = 1e-3  # the initial damping of a fit's first start
NEWTON_EDM = 0.0  # Gauss-Newton hands over to Newton below this edm (-2 log L units); 0: never
NEWTON_AFTER = 0  # ... or after this many steps; 0: never
EDGE_FRACTION = 0.1  # a step keeps at least this fraction of an empty bin's expected count
# the end game at the edge (_edge_weights): below this edm, an empty bin whose count a
# taken step cut by less than EDGE_SLOW has its curvature scaled down 4x, to EDGE_WEIGHT_MIN
EDGE_ENDGAME_EDM = 1e-3
EDGE_SLOW = 0.5
EDGE_WEIGHT_MIN = 1e-3
# the end game's secant acceleration (_anderson): the newest ANDERSON_M pairs of steps of a
# fit whose edm is below ANDERSON_EDM; ANDERSON_M = 0: plain Gauss-Newton
ANDERSON_M = 4
ANDERSON_EDM = 1e-2
ANDERSON_REFUSALS = 2
# below this edm a step that crosses a bound lands on it (_bounded_step); above, it is
# clipped as before: far from the minimum the path picks the basin, and landing there
# moved 19 of 8,192 1Lbb toy fits to another minimum (10 higher, by up to 7.4; 9 lower)
LANDING_EDM = 1.0
_FITS = "fits"  # the vmapped axis of a lockstep group's fits (_gn_step)
# a lockstep group wider than FUNNEL_FACTOR x FUNNEL_MIN fits runs its Gauss-Newton phase as
# a funnel of passes, each FUNNEL_FACTOR times narrower (funnel_widths)
FUNNEL_FACTOR, FUNNEL_MIN = 4, 512


def _precision(dtype):
    """Relative resolution of -2 log L in this dtype: the floor of every threshold that
    compares differences of -2 log L (1e-12 in float64, as before; 1e-6 in float32)."""
    return max(1e-12, 8.0 * float(jnp.finfo(dtype).eps))


class _State(NamedTuple):
    x: jax.Array  # [P]
    f: jax.Array  # []
    g: jax.Array  # [P]
    # Gauss-Newton: (jac [N, P], w [N], c [P], kappa [N]: _edge_weights, _Secants);
    # Newton: (hessian, gauss_newton [P, P], scale [2, P])
    curvature: tuple
    lam: jax.Array  # []
    edm: jax.Array  # []
    n_iter: jax.Array  # [] int
    status: jax.Array  # [] int


class _Secants(NamedTuple):
    """The Gauss-Newton end game's memory of ONE fit (:func:`_anderson`)."""

    dx: jax.Array  # [M, P]: differences of successive points (a ring, slot n % M next)
    dr: jax.Array  # [M, P]: differences of their Gauss-Newton steps
    n: jax.Array  # [] int: pairs made since the memory was last emptied (min(n, M) held)
    x: jax.Array  # [P]: the last point ...
    r: jax.Array  # [P]: ... its Gauss-Newton step
    held: jax.Array  # [P] bool: ... and the parameters it was solved for (_bounded_step)
    ok: jax.Array  # [] bool: whether the next point makes a pair with it
    refused: jax.Array  # [] int: steps of the pairs refused so far (ANDERSON_REFUSALS: plain Gauss-Newton from there)


def _no_secants(p, dtype, pairs):
    z = jnp.zeros((pairs, p), dtype)
    return _Secants(z, z, jnp.asarray(0), jnp.zeros(p, dtype), jnp.zeros(p, dtype), jnp.zeros(p, bool),
                    jnp.asarray(False), jnp.asarray(0))


def _small_cho_solve(matrix, rhs):
    """``cho_solve((cholesky(matrix), True), rhs)`` for ONE small symmetric positive
    definite matrix [n, n] and rhs [n] or [n, k], entry by entry in array operations: no LAPACK
    call beside the step's own (two in one compiled loop can deadlock a 2-core CPU's
    thread pool, :func:`solve_newton`)."""
    n = matrix.shape[0]
    zero = jnp.zeros((), matrix.dtype)
    chol = [[None] * n for _ in range(n)]
    for j in range(n):
        chol[j][j] = jnp.sqrt(matrix[j, j] - sum((chol[j][i] ** 2 for i in range(j)), zero))
        for r in range(j + 1, n):
            chol[r][j] = (matrix[r, j] - sum((chol[r][i] * chol[j][i] for i in range(j)), zero)) / chol[j][j]
    y = []
    for r in range(n):
        y.append((rhs[r] - sum((chol[r][i] * y[i] for i in range(r)), zero)) / chol[r][r])
    x = [None] * n
    for r in reversed(range(n)):
        x[r] = (y[r] - sum((chol[i][r] * x[i] for i in range(r + 1, n)), zero)) / chol[r][r]
    return jnp.stack(x)


def _anderson(mem: _Secants, x, delta, held, scale, endgame):
    """The end game's step: Anderson acceleration of the Gauss-Newton iteration
    ``x <- x + delta(x)`` from the newest pairs of points and their steps.

    Near the minimum Gauss-Newton converges linearly, ``e <- (1 - G^-1 H) e``: its
    curvature G lacks the Poisson term ``sum_b (1 - n_b/nu_b) d2 nu_b``. The secant pairs
    (dx, dr) of the last few steps span the directions it converges slowly in; the
    combination gamma of them that leaves the smallest predicted step,
    ``min |delta - dr gamma|`` (each parameter weighted by the curvature's diagonal
    ``scale``, so that no unit of a parameter counts), is where the iteration is heading,
    and the step goes there and one Gauss-Newton step on:
    ``delta - (dx + dr) gamma``. On a linear problem that is GMRES preconditioned with
    G (Walker and Ni 2011), whose eigenvalue ratios to H are clustered (1Lbb: within
    [0.4, 2.1] at an edm of 1e-2), so a few pairs carry most of Newton's end game at the
    cost of dot products: no Hessian, no extra evaluation.

    Only in the ``endgame`` (edm below ``ANDERSON_EDM``, where the basin is chosen: from
    an edm of 1 the pairs moved a few fits in 2,000 to other minima, up to 5e-3 higher)
    and while the active set stays the same (``held``); a refused step, a step cut at
    an empty bin's edge or a new weight of one empties the memory, and after
    ``ANDERSON_REFUSALS`` refused steps of its pairs the fit goes on with plain
    Gauss-Newton.

    Args:
        mem: the pairs so far; x, delta [P]: the point and its Gauss-Newton step (zero
        where not held), held [P] bool, scale [P] > 0, endgame [] bool.

    Returns:
        step [P], used [] bool (the pairs changed the step), mem (with the pair ending
        at x, and x, its step and ``held`` recorded for the next pair).
    """
    pair = mem.ok & endgame & (mem.refused < ANDERSON_REFUSALS) & jnp.all(held == mem.held)
    pairs = mem.dx.shape[0]
    slot = jnp.arange(pairs) == mem.n % pairs  # a ring: the combination does not depend on the order
    dx = jnp.where(pair, jnp.where(slot[:, None], x - mem.x, mem.dx), 0.0)
    dr = jnp.where(pair, jnp.where(slot[:, None], delta - mem.r, mem.dr), 0.0)
    n = jnp.where(pair, mem.n + 1, 0)
    filled = jnp.arange(pairs) < n
    weighted = dr * scale
    gram = weighted @ dr.T  # [M, M]
    ridge = _ridge(x.dtype) * jnp.max(jnp.diagonal(gram)) + jnp.finfo(x.dtype).tiny
    both = filled[:, None] & filled[None, :]
    gram = jnp.where(both, gram, 0.0) + jnp.diag(jnp.where(filled, ridge, 1.0))
    gamma = jnp.where(filled, _small_cho_solve(gram, jnp.where(filled, weighted @ delta, 0.0)), 0.0)
    step = delta - jnp.where(held, gamma @ (dx + dr), 0.0)
    used = (n > 0) & jnp.all(jnp.isfinite(step))
    return jnp.where(used, step, delta), used, _Secants(dx, dr, n, x, delta, held, endgame, mem.refused)


def _cho_solve(matrix, rhs):
    return jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(matrix), True), rhs)


def _ridge(dtype):
    return max(1e-10, 100.0 * float(jnp.finfo(dtype).eps))


def solve_damped(m, jac, w, c, g, lam, active):
    """The damped Gauss-Newton step on the active set, without forming the P x P matrix.

    Solves ``(J^T W J + diag(d)) delta = -g / 2`` with ``d = c + lam diag(J^T W J + c)``
    (Levenberg-Marquardt scaling) plus a tiny ridge, for ``delta`` on the ``active``
    parameters (zero elsewhere). With y = W J delta, the constrained parameters C
    (``d > 0``) give ``delta_C = (r_C - J_C^T y) / d_C``; what is left is an N x N
    system ``B = W^-1 + J_C D_C^-1 J_C^T`` and a U x U Schur complement for the
    unconstrained parameters. Cost O(N^2 G + N^3 + U^3) instead of O(P^3): of the
    constrained parameters only the G that act on several main bins (``m.spread``)
    enter the N x N product; the L that act on one (``m.local``, a gamma per bin)
    add ``J_bl^2 / d_l`` to its diagonal (gen300, N = 120: G = 21 of 261; its fits
    1.6x faster, the same steps).

    Args:
        jac [N, P], w [N], c [P], g [P] (or [P, K]: K right-hand sides, one
        factorization), lam [], active [P] bool.

    Returns:
        delta [P] (or [P, K]).
    """
    dg = w @ (jac * jac) + c  # diagonal of J^T W J + diag(c)
    scale = jnp.maximum(jnp.max(jnp.where(active, dg, 0.0)), 1.0)
    d = jnp.where(active, c + lam * dg + _ridge(g.dtype) * scale, 1.0)
    jac = jnp.where(active, jac, 0.0)
    r = jnp.where(active[:, None], -0.5 * g.reshape(g.shape[0], -1), 0.0)  # [P, K]
    u, k, loc, b_loc = m.unconstrained, m.spread, m.local, m.local_bin
    ju, jc, dc = jac[:, u], jac[:, k], d[k, None]
    jl, dl = jac[b_loc, loc][:, None], d[loc, None]  # [L, 1]: each local parameter's one entry, in its bin
    n, n_rhs = w.shape[0], r.shape[1]
    jc_scaled = jc / dc.T  # J_G D_G^-1  [N, G]
    b = (jnp.diag(1.0 / w + jax.ops.segment_sum(jl[:, 0] ** 2 / dl[:, 0], b_loc, num_segments=n))
         + jc_scaled @ jc.T)  # [N, N]
    rhs = jc_scaled @ r[k] + jax.ops.segment_sum(jl * r[loc] / dl, b_loc, num_segments=n)  # J_C D_C^-1 r_C [N, K]
    sol = _cho_solve(b, jnp.concatenate([rhs, ju], axis=1))  # [N, K + U]
    b_s, b_ju = sol[:, :n_rhs], sol[:, n_rhs:]
    delta_u = _cho_solve(ju.T @ b_ju + jnp.diag(d[u]), r[u] - ju.T @ b_s)  # [U, K]
    y = b_s + b_ju @ delta_u
    delta_k = (r[k] - jc.T @ y) / dc
    delta_l = (r[loc] - jl * y[b_loc]) / dl
    return jnp.concatenate([delta_u, delta_k, delta_l])[m.partition_inverse].reshape(g.shape)


def solve_newton(hessian, gauss_newton, g, lam, active, *, scale):
    """The damped Newton step on the active set: ``(H/2 + lam D) delta = -g/2`` with
    ``D = |scale/2|`` (about ``|diag(H/2)|``; plus a ridge), by a dense Cholesky; where that matrix is not
    positive definite (far from the minimum, a saddle), the same step with the
    Gauss-Newton matrix, which always is.

    Both matrices go through ONE batched Cholesky call: two independent LAPACK calls
    in one compiled loop can deadlock jaxlib's CPU thread pool on a 2-core machine
    (each blocks a pool thread waiting for sub-tasks that no free thread runs).

    Args:
        hessian, gauss_newton [P, P] of -2 log L, g [P], lam [], active [P] bool.
        scale [2, P]: the diagonals D is built from, one per matrix.

    Returns:
        delta [P], exact [] bool (the Hessian step was used).
    """
    half = 0.5 * jnp.stack([hessian, gauss_newton])  # [2, P, P]
    dg = jnp.abs(0.5 * scale)  # [2, P]
    scale = jnp.maximum(jnp.max(jnp.where(active, dg, 0.0), axis=1, keepdims=True), 1.0)
    both = active[:, None] & active[None, :]
    eye = jnp.eye(g.shape[0], dtype=g.dtype)
    damp = jnp.where(active, lam * dg + _ridge(g.dtype) * scale, 0.0)
    matrix = jnp.where(both, half, eye) + jax.vmap(jnp.diag)(damp)
    rhs = jnp.broadcast_to(jnp.where(active, -0.5 * g, 0.0)[:, None], (2, g.shape[0], 1))
    delta = jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(matrix), True), rhs)[..., 0]  # [2, P]
    exact = jnp.all(jnp.isfinite(delta[0]))
    return jnp.where(active, jnp.where(exact, delta[0], delta[1]), 0.0), exact


def _held(x, g, lo, hi, free):
    """Free parameters not held on a bound by a gradient that pushes outward."""
    return free & ~(((x <= lo) & (g > 0)) | ((x >= hi) & (g < 0)))


def _bounded_step(solve, x, g, lo, hi, free, axis=None, live=True, curvature_times=None):
    """A step from ``solve(active, g) -> (delta, info)``, with the two-metric projection:
    parameters on a bound that the gradient, then the step itself, pushes outward are
    held. With ``curvature_times`` (the model's change of the gradient for a
    displacement [P] -> [P]) and an edm below ``LANDING_EDM``, a parameter that the first
    step takes across its bound lands on it, and the others are solved again with that
    displacement fixed (their gradient
    shifted by ``curvature_times``): clipped instead, the step loses the direction its
    other components were solved for. A 1Lbb toy whose normfactor stood 0.09 below its
    bound 5 and was asked to move 0.21 had its clipped step refused 16 times, until the
    damping had grown from 1e-12 to 4e-3 and shortened it.

    The second solve changes the step only where the first pushed a parameter on or
    across its bound, which few steps do. Under ``jax.vmap(..., axis_name=axis)`` a lockstep
    group makes it only when one of its ``live`` fits needs it (a ``cond`` on the
    group's count, where a per-fit ``where`` would pay for both solves): on a CPU's
    groups of 8 to 64 the solve is most of a gen300 step (N = 120) and 15% of a 1Lbb one.
    (A loop of at most two rounds holds one copy of the solve instead of the cond's two,
    and compiles a 12-bin model's queue solver in 2.7 s instead of 3.0, but took
    sbottom's toys from 1,569-1,589 to 1,472-1,492 toys/s: benchmarks/README.md, session 25.)

    Returns:
        delta [P], edm [] (the damped quadratic model's decrease, g^T H^-1 g / 2 when
        undamped, on the parameters not held), info (from the last solve).
    """
    active = _held(x, g, lo, hi, free)
    delta, info = solve(active, g)
    held = active & ~(((x <= lo) & (delta < 0)) | ((x >= hi) & (delta > 0)))
    landing = jnp.zeros_like(x)
    edm_first = -0.5 * jnp.dot(jnp.where(held, g, 0.0), delta)
    if curvature_times is not None:
        crossing = held & ((x + delta < lo) | (x + delta > hi)) & (edm_first < LANDING_EDM)
        landing = jnp.where(crossing, jnp.clip(x + delta, lo, hi) - x, 0.0)
        held = held & ~crossing

    def again():
        d, i = solve(held, g if curvature_times is None else g + curvature_times(landing))
        return d + landing, i

    if axis is None:
        delta, info = again()
    else:
        redo = jax.lax.psum(jnp.any(held != active) & live, axis) > 0
        delta, info = jax.lax.cond(redo, again, lambda: (delta, info))
    edm = -0.5 * jnp.dot(jnp.where(held, g, 0.0), delta)
    # a step that lands parameters on their bounds is measured by the step before the
    # landing: the rest of it, solved with the landing fixed, may even rise in the model
    # (a 1Lbb toy fit "converged" 7.3 above its minimum, at edm -0.1)
    return delta, jnp.where(jnp.any(landing != 0.0), edm_first, edm), info


def _edge_fraction(dnu, nu, empty):
    """The fraction of a step that keeps every empty bin's expected count ``nu`` [N]
    above ``EDGE_FRACTION`` times its current value (``dnu`` [N]: the step's change).

    In an empty bin -2 log L is 2 nu_b, smallest at the edge nu_b = 0 of the model, and
    the quadratic model (curvature 1/nu_b there) aims a step right at it: the slightest
    non-linearity crosses it, the trial point is refused, the damping grows and the fit
    crawls or stalls. Shortened steps approach the edge geometrically instead.
    """
    return jnp.minimum(1.0, jnp.min(_edge_limits(dnu, nu, empty)))


def _edge_limits(dnu, nu, empty):
    """Per bin [N], the fraction of the step that keeps it above ``EDGE_FRACTION`` of
    its expected count (1 where the bin is not empty or the step raises it)."""
    tiny = jnp.finfo(nu.dtype).tiny
    return jnp.where(empty & (dnu < 0), (1.0 - EDGE_FRACTION) * nu / jnp.maximum(-dnu, tiny), 1.0)


def _edge_weights(kappa, nu, nu_try, limits, empty, taken, edm):
    """The next scale [N] of the empty bins' curvature 1/nu_b in the Gauss-Newton model.

    Where a fit's minimum lies at the model's edge nu_b = 0 (the rest of the likelihood
    pushes the count up less than the bin's own 2 nu_b pulls it down), the expected
    information 1/nu_b overstates the true curvature (zero) and each step cuts nu_b by
    only a fixed fraction: one 1Lbb toy fit took 483 steps, 2 of 1,000 fixed-POI toy
    fits more than 300. In the end game (edm below ``EDGE_ENDGAME_EDM``, where the basin is
    chosen), a bin whose count a taken step cut by less than ``EDGE_SLOW`` has its scale
    divided by 4 (down to ``EDGE_WEIGHT_MIN``); a bin that held a step back at the edge
    (:func:`_edge_limits` below 1) has it multiplied by 4 (up to 1). Measured on 1,000
    1Lbb toy datasets, fixed-POI and free fits (benchmarks/README.md): 101 steps instead
    of 483 on that toy, mean steps 19.8 -> 18.4 (fixed) and 18.4 -> 17.5 (free), no fit
    unconverged after 300 steps instead of 2, every minimum within 1e-3 of MIGRAD's
    (strategy 1, from each variant's end point); the rule throughout, or from an edm of
    1e-2, found minima up to 0.57 and 0.011 higher.

    Args:
        kappa, nu, nu_try, limits [N]; empty [N] bool; taken [] bool; edm [].
    """
    slow = empty & taken & (nu_try < nu) & (nu_try > EDGE_SLOW * nu) & (edm < EDGE_ENDGAME_EDM)
    return jnp.where(empty & (limits < 1.0), jnp.minimum(1.0, 4.0 * kappa),
                     jnp.where(slow, jnp.maximum(EDGE_WEIGHT_MIN, 0.25 * kappa), kappa))


def _accept(s: _State, f_try, g_try, quad, step):
    """Whether a trial point is taken, and the next damping (:func:`damping_rule`);
    ``quad`` is ``step^T H step``."""
    return damping_rule(s.f, s.lam, f_try, g_try, -(jnp.dot(s.g, step) + 0.5 * quad))


def damping_rule(f, lam, f_try, g_try, predicted):
    """Whether a trial point is taken, and the next damping (Nielsen's rule), for the
    batched solver and the edge solver alike: the step is taken when -2 log L (``f``
    before, ``f_try`` at the trial point, in the fit's dtype) did not rise by more than
    the dtype can resolve; the damping ``lam`` shrinks by how well the model's
    ``predicted`` decrease matched, and grows 4x after a refused step."""
    actual = f - f_try
    ok = jnp.isfinite(f_try) & jnp.all(jnp.isfinite(g_try)) & (actual >= -_precision(f.dtype) * jnp.abs(f))
    rho = actual / jnp.where(predicted > 0, predicted, 1.0)
    shrink = jnp.clip(1.0 - (2.0 * rho - 1.0) ** 3, 1.0 / 3.0, 2.0)  # rho < 0 when taken within precision
    lam = jnp.clip(jnp.where(ok, lam * shrink, lam * 4.0), _LAMBDA_MIN, _LAMBDA_MAX)
    return ok, lam


def _terminate(lam_used, f, edm, lam, n_iter, tol, maxiter, handoff, handoff_after=None):
    """The status after a step: converged when edm, computed with a damping
    ``lam_used`` small enough not to bias it, is under ``tol`` (or under what the dtype
    resolves of -2 log L, ``f``; ``tol = 0`` is never reached); ``handoff`` (Gauss-Newton only) passes the fit to the
    Newton phase, and so does ``handoff_after`` steps (a slow Gauss-Newton fit); stalled
    when the damping ``lam`` reached its cap."""
    small = lam_used < 1.0
    floor = jnp.where(tol > 0, jnp.maximum(tol, _precision(f.dtype) * jnp.abs(f)), 0.0)  # tol = 0: run on
    converged = jnp.isfinite(edm) & (edm < floor) & small
    to_newton = jnp.isfinite(edm) & small & (edm < handoff)
    if handoff_after is not None:
        to_newton = to_newton | (n_iter >= handoff_after)
    return jnp.where(
        converged, CONVERGED,
        jnp.where(
            ~jnp.isfinite(edm), NOT_FINITE,
            jnp.where(
                lam >= _LAMBDA_MAX, STALLED,
                jnp.where(to_newton, HANDOFF, jnp.where(n_iter >= maxiter, MAX_ITERATIONS, RUNNING)),
            ),
        ),
    )


def _pick(ok, new: _State, old: _State) -> _State:
    """The trial state where the step was taken, the old one elsewhere."""
    return jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, old)


def _gn_start(x, f, g, jac, w, c, lam0, pairs):
    """The Gauss-Newton state of ONE fit at its start x [P], from the evaluation there
    (:func:`~gpufit.likelihood.derivatives.twice_nll_gradient_curvature`), with room for
    ``pairs`` secant pairs (:func:`_anderson`)."""
    dtype = x.dtype
    return _State(
        x=x, f=f, g=g, curvature=(jac, w, c, jnp.ones(w.shape, dtype), _no_secants(x.shape[0], dtype, pairs)),
        lam=jnp.asarray(lam0, dtype), edm=jnp.asarray(jnp.inf, dtype),
        n_iter=jnp.asarray(0), status=jnp.where(jnp.isfinite(f), RUNNING, NOT_FINITE),
    )


def _gn_init(m, data, x0, lam0, pairs):
    """The Gauss-Newton state of ONE fit at its start x0 [P]."""
    return _gn_start(x0, *twice_nll_gradient_curvature(m, x0, data), lam0, pairs)


def _gn_step(m, data, s: _State, free, lo, hi, maxiter, tol, handoff, handoff_after, fresh=None, lam0=None):
    """One Gauss-Newton step of ONE running fit: the step (in the end game accelerated
    by the secant pairs the state has room for, :func:`_anderson`), its acceptance, the damping
    and the status after it. ``fresh`` [] bool (the queue, :func:`minimize_chain`): the
    slot holds a new fit at ``s.x`` whose evaluation this step makes instead of a step
    (the same one evaluation, so refilling a slot costs nothing extra). Vmapped with
    ``axis_name=_FITS`` (:func:`_bounded_step`)."""
    empty = data[: m.n_main] == 0
    jac, w, c, kappa, mem = s.curvature
    pairs = mem.dx.shape[0]
    w_model = jnp.where(empty, kappa * w, w)
    running = s.status == RUNNING
    live = running if fresh is None else running & ~fresh  # a refilled slot's step is not taken
    delta, edm, held = _bounded_step(lambda a, g: (solve_damped(m, jac, w_model, c, g, s.lam, a), a), s.x, s.g,
                                     lo, hi, free, axis=_FITS, live=live,
                                     curvature_times=lambda d: 2.0 * ((w_model * (jac @ d)) @ jac + c * d))
    nu = 1.0 / w  # in empty bins
    limits = _edge_limits(jac @ delta, nu, empty)
    cut = jnp.min(limits) < 1.0
    delta = delta * jnp.minimum(1.0, jnp.min(limits))
    if pairs:
        endgame = (edm < ANDERSON_EDM) & ~cut
        step, accelerated, mem = _anderson(mem, s.x, delta, held, w_model @ (jac * jac) + c, endgame)
        # a step the pairs took toward an empty bin's edge is the Gauss-Newton one again
        accelerated = accelerated & (jnp.min(_edge_limits(jac @ step, nu, empty)) >= 1.0)
        delta = jnp.where(accelerated, step, delta)
    if fresh is not None:
        delta = jnp.where(fresh, 0.0, delta)
    x_try = jnp.where(free, jnp.clip(s.x + delta, lo, hi), s.x)
    step = x_try - s.x
    f_try, g_try, j_try, w_try, c_try = twice_nll_gradient_curvature(m, x_try, data)
    js = jac @ step
    quad = 2.0 * (jnp.dot(w_model * js, js) + jnp.dot(c * step, step))
    ok, lam = _accept(s, f_try, g_try, quad, step)
    kappa_next = _edge_weights(kappa, nu, 1.0 / w_try, limits, empty, ok, edm)
    if pairs:
        # the damping measures the Gauss-Newton model, which a step of the pairs is not; a
        # refused one ends the fit's acceleration, a new weight of an empty bin its pairs
        lam = jnp.where(accelerated, s.lam, lam)
        mem = mem._replace(ok=mem.ok & ok & jnp.all(kappa_next == kappa), n=jnp.where(ok, mem.n, 0),
                           refused=mem.refused + (accelerated & ~ok))
    n_iter = s.n_iter + 1
    status = _terminate(s.lam, s.f, edm, lam, n_iter, tol, maxiter, handoff, handoff_after)
    new = _State(x_try, f_try, g_try, (j_try, w_try, c_try, kappa_next, mem), lam, edm, n_iter, status)
    picked = _pick(ok, new, s)
    stepped = picked._replace(lam=lam, edm=edm, n_iter=n_iter, status=status,
                              curvature=picked.curvature[:3] + (kappa_next, mem))
    if fresh is None:
        return stepped
    return _pick(fresh, _gn_start(x_try, f_try, g_try, j_try, w_try, c_try, lam0, pairs), stepped)


def _gn_loop(m, data, s: _State, free, lo, hi, maxiter, tol, handoff, handoff_after, running_at_most, per_fit=None):
    """Gauss-Newton steps of a lockstep group [G] until at most ``running_at_most`` of
    its fits are still running (finished fits are frozen: their state does not change).
    The loop JAX makes of a vmapped ``while_loop``, written out so that a pass can stop
    before its last fit (:func:`_minimize_group`'s funnel). ``per_fit=0``: ``m``, ``lo``
    and ``hi`` have a leading [G] axis, a model per fit."""
    step = jax.vmap(lambda mm, d, st, fr, low, high: _gn_step(mm, d, st, fr, low, high, maxiter, tol, handoff,
                                                                handoff_after),
                    in_axes=(per_fit, 0, 0, 0, per_fit, per_fit), axis_name=_FITS)

    def body(s):
        return jax.vmap(_pick)(s.status == RUNNING, step(m, data, s, free, lo, hi), s)

    return jax.lax.while_loop(lambda s: jnp.sum(s.status == RUNNING) > running_at_most, body, s)


class FitEnd(NamedTuple):
    """How fits of a chain's slots [S] ended (:func:`minimize_chain`)."""

    x: jax.Array  # [S, P]
    f: jax.Array  # [S]
    status: jax.Array  # [S]
    n_iter: jax.Array  # [S]
    edm: jax.Array  # [S]
    nu_empty: jax.Array  # [S, N]: the expected count of each empty main bin at the end (no meaning elsewhere)


def minimize_chain(m, data, count, n_phases: int, start, record, records, lo, hi, maxiter, tol, slots: int,
                   pairs: int = ANDERSON_M):
    """Gauss-Newton fits through ``slots`` lockstep slots, each of which takes the next
    fit as soon as its own has finished: a batch costs its fits' total steps / ``slots``
    (plus the last fits' tail), not the slowest fit of every group. Measured on 512
    1Lbb toys (2-core CPU, 16 slots): 2.3 ms a fit against 4.8 ms in groups of 16 that
    each run as long as their slowest fit, the same minima to the bit.

    Each of the first ``count`` rows (traced) of ``data`` [B, N + A] is a chain of up to
    ``n_phases`` fits that run one after the other in one slot: phase 0 always, then
    each later phase whose ``go`` holds once the fits before it are recorded (a
    restart, a second kind of fit, ...). A chain's fits see the results of its earlier
    ones, and one loop (one compiled solver) serves them all, with one tail. A fit's
    steps depend on its own row and start alone, so it ends where it would in any
    lockstep group of ``slots``.

    Args:
        start: ``start(phase [S], row [S], records) -> x0 [S, P], free [S, P] bool,
            lam0 [S], go [S] bool``, the start of a phase of each row, and whether it
            runs (phase 0 always does).
        record: ``record(phase [S], row [S], done [S] bool, end: FitEnd, records) ->
            records``, the records with the fits that ended (``done``) written in.
        records: any pytree, the chains' results so far (the first ``record``'s input).
        lo, hi [P]; maxiter, tol, pairs: as :func:`minimize_batch`.

    Returns:
        the records after the last fit.
    """
    b = data.shape[0]
    row = jnp.arange(slots)
    row = jnp.where(row < count, row, b)  # the row of each slot; b: none
    at = jnp.minimum(row, b - 1)
    phase = jnp.zeros(slots, int)
    x0, free, lam0, _ = start(phase, at, records)
    fresh = row < b
    s = queue_start(lambda d, x, l0: _gn_init(m, d, x, l0, pairs), x0, fresh, data[at], x0, lam0)
    step = jax.vmap(lambda d, st, fr, new, l0: _gn_step(m, d, st, fr, lo, hi, maxiter, tol, 0.0, None, new, l0),
                    axis_name=_FITS)

    def body(carry):
        s, row, phase, after, free, lam0, fresh, records = carry
        at = jnp.minimum(row, b - 1)
        s = jax.vmap(_pick)((s.status == RUNNING) | fresh, step(data[at], s, free, fresh, lam0), s)
        done = (s.status != RUNNING) & (row < b)
        empty = data[at, : m.n_main] == 0
        end = FitEnd(s.x, s.f, s.status, s.n_iter, s.edm, jnp.where(empty, 1.0 / s.curvature[1], jnp.inf))
        records = record(phase, at, done, end, records)
        later = jnp.full(slots, n_phases)  # each row's next phase: the first later one that goes
        for j in range(n_phases - 1, 0, -1):
            later = jnp.where((j > phase) & start(jnp.full(slots, j), at, records)[3], j, later)
        ended = done & (later == n_phases)
        row, after = next_rows(ended, row, after, count, b)
        phase = jnp.where(ended, 0, jnp.where(done, later, phase))
        fresh = done & (row < b)
        x0, free0, lam00, _ = start(phase, jnp.minimum(row, b - 1), records)
        s = s._replace(x=jnp.where(fresh[:, None], x0, s.x), status=jnp.where(fresh, RUNNING, s.status))
        return (s, row, phase, after, jnp.where(fresh[:, None], free0, free),
                jnp.where(fresh, lam00, lam0), fresh, records)

    carry = (s, row, phase, jnp.asarray(slots), free, lam0, fresh, records)
    return jax.lax.while_loop(lambda c: jnp.any(c[1] < b), body, carry)[-1]


def queue_start(init, x0, fresh, *args):
    """The state [S] of a queue's slots before its first round, in which every slot
    holding a fit (``fresh`` [S] bool) starts it as a refilled slot does: that round makes
    the first evaluations, and the compiled loop holds one copy of the evaluation instead
    of two (a 12-bin model's queue solver compiles in 3.0 s instead of 3.2). ``init``:
    one fit's start state from ``args`` (vmapped over them); only its shapes are used, the
    fields filled with placeholders the first round overwrites, x = x0 [S, P]; a slot
    without a fit stays frozen."""
    shapes = jax.eval_shape(jax.vmap(init), *args)
    s = jax.tree_util.tree_map(lambda a: jnp.ones(a.shape, a.dtype), shapes)
    return s._replace(x=x0, status=jnp.where(fresh, RUNNING, CONVERGED))


def unfitted(x0):
    """A queue's outputs before any fit has ended, for B fits from x0 [B, P]: pars (their
    start), twice_nll inf, status MAX_ITERATIONS, n_iter 0, edm inf."""
    b = x0.shape[0]
    return (x0, jnp.full(b, jnp.inf, x0.dtype), jnp.full(b, MAX_ITERATIONS), jnp.zeros(b, int),
            jnp.full(b, jnp.inf, x0.dtype))


def write_ended(out, done, row, ended):
    """The outputs ``out`` (:func:`unfitted`) with the fits that ``done`` [S] in slots
    holding rows ``row`` [S] written in: ``ended`` = (x, twice_nll, status, n_iter, edm) [S]."""
    where = jnp.where(done, row, out[1].shape[0])  # row B: nothing written
    return tuple(o.at[where].set(v, mode="drop") for o, v in zip(out, ended))


def next_rows(ended, row, after, count, b):
    """A queue's next rows: each slot whose fits ``ended`` [S] takes the next of the
    first ``count`` rows not yet taken (``after``: how many are), in slot order, or none
    (row ``b``) once they are all taken. Returns row [S], after []."""
    following = after + jnp.cumsum(ended) - 1
    return jnp.where(ended, jnp.where(following < count, following, b), row), after + jnp.sum(ended)


def _minimize_queue(m, data, x0, free, lo, hi, maxiter, tol, lam0, slots, count, pairs):
    """Gauss-Newton fits of a batch [B] through the queue's lockstep slots
    (:func:`minimize_chain`, one fit a row). Only the first ``count`` fits (traced) are
    run; the others keep their start, with twice_nll inf, status MAX_ITERATIONS and no
    steps.

    Args:
        data [B, N + A], x0 [B, P], free [B, P] bool, lo and hi [P]; count [] int.

    Returns:
        pars [B, P], twice_nll [B], status [B], n_iter [B], edm [B].
    """
    def start(phase, row, out):
        return x0[row], free[row], jnp.full(row.shape, lam0, x0.dtype), jnp.ones(row.shape, bool)

    def record(phase, row, done, end, out):
        return write_ended(out, done, row, (end.x, end.f, end.status, end.n_iter, end.edm))

    return minimize_chain(m, data, count, 1, start, record, unfitted(x0), lo, hi, maxiter, tol, slots, pairs)


def funnel_widths(batch: int, group: int | None) -> tuple[int, ...]:
    """The widths of a lockstep group's later passes (:func:`_minimize_group`): the
    group's width (the batch's where ``group`` is None) divided by ``FUNNEL_FACTOR``,
    again, ... down to ``FUNNEL_MIN`` fits; none for narrow groups (a CPU's 8 to 64, whose
    stragglers cost little: measured, a wide group with a funnel is 2.7x slower there)."""
    widths = []
    width = batch if group is None else min(group, batch)
    while width // FUNNEL_FACTOR >= FUNNEL_MIN:
        width //= FUNNEL_FACTOR
        widths.append(width)
    return tuple(widths)


def _newton(m, data, s: _State, curvature, free, lo, hi, maxiter, tol):
    """Phase 2 for ONE fit that phase 1 handed over (others pass through unchanged);
    vmapped with ``axis_name=_FITS``.

    ``curvature`` is (hessian, gauss_newton) [P, P] and the damping's scale [2, P] at ``s.x``. Where the damped
    Hessian is not positive definite (far from the minimum, or a saddle), the step is
    the damped Gauss-Newton one, which always is.
    """
    s = s._replace(
        curvature=curvature, status=jnp.where(s.status == HANDOFF, RUNNING, s.status),
        lam=jnp.minimum(s.lam, 1e-3),
    )

    empty = data[: m.n_main] == 0

    def body(s):
        h, h_gn, scale = s.curvature

        def solve(active, g):
            return solve_newton(h, h_gn, g, s.lam, active, scale=scale)

        delta, edm, exact = _bounded_step(solve, s.x, s.g, lo, hi, free, axis=_FITS, live=s.status == RUNNING)
        # the edge rule of phase 1, with the change of nu from the full step (a secant)
        nu = expected_main(m, s.x)
        dnu = expected_main(m, jnp.where(free, jnp.clip(s.x + delta, lo, hi), s.x)) - nu
        delta = delta * _edge_fraction(dnu, nu, empty)
        x_try = jnp.where(free, jnp.clip(s.x + delta, lo, hi), s.x)
        step = x_try - s.x
        f_try, g_try, h_try, gn_try, scale_try = twice_nll_gradient_hessian(m, x_try, data)
        ok, lam = _accept(s, f_try, g_try, step @ jnp.where(exact, h, h_gn) @ step, step)
        n_iter = s.n_iter + 1
        status = _terminate(s.lam, s.f, edm, lam, n_iter, tol, maxiter, -1.0)
        new = _State(x_try, f_try, g_try, (h_try, gn_try, scale_try), lam, edm, n_iter, status)
        return _pick(ok, new, s)._replace(lam=lam, edm=edm, n_iter=n_iter, status=status)

    return jax.lax.while_loop(lambda s: s.status == RUNNING, body, s)


def _minimize_group(m, data, x0, free, lo, hi, maxiter, tol, lam0, newton_edm, newton_after, funnel, per_fit=None,
                    active=None, pairs=ANDERSON_M):
    """Fits that step in lockstep: data [G, N + A], x0 [G, P], free [G, P]; with
    ``per_fit=0`` a model per fit (the arrays of ``m`` [G, ...], lo and hi [G, P]; no
    funnel, no Newton phase), else one model and lo, hi [P]. ``active`` [G] bool: the
    others (padding) are frozen from the start.

    A lockstep group runs as long as its slowest fit. With ``funnel`` widths (static,
    decreasing), phase 1 stops once no more fits are running than the first width, the
    running ones are gathered into a group of that width and go on from their state,
    and so on: every fit takes the same steps as in one pass (nothing of its state is
    recomputed or reset; the numbers agree to rounding, ~1e-12 in -2 log L, as XLA
    vectorizes other widths differently), but the stragglers of a wide group step
    without it.
    """
    after = newton_after if newton_after > 0 else None
    loop = functools.partial(_gn_loop, m, lo=lo, hi=hi, maxiter=maxiter, tol=tol, handoff=newton_edm,
                             handoff_after=after, per_fit=per_fit)
    s = jax.vmap(lambda mm, d, x: _gn_init(mm, d, x, lam0, pairs), in_axes=(per_fit, 0, 0))(m, data, x0)
    if active is not None:
        s = s._replace(status=jnp.where(active, s.status, CONVERGED))
    s = loop(data, s, free, running_at_most=funnel[0] if funnel else 0)
    if per_fit is not None:
        if funnel or newton_edm > 0 or after is not None:
            raise ValueError("a model per fit runs the Gauss-Newton phase in one pass")
        return s.x, s.f, s.status, s.n_iter, s.edm
    for k, width in enumerate(funnel):
        rows = jnp.argsort(s.status != RUNNING, stable=True)[:width]  # the running fits first
        part = jax.tree_util.tree_map(lambda a: a[rows], s)
        part = loop(data[rows], part, free[rows], running_at_most=funnel[k + 1] if k + 1 < len(funnel) else 0)
        s = jax.tree_util.tree_map(lambda a, b: a.at[rows].set(b), s, part)
    if newton_edm <= 0 and after is None:
        return s.x, s.f, s.status, s.n_iter, s.edm
    need = s.status == HANDOFF
    p = x0.shape[-1]
    # the Hessians that start phase 2, only when some fit of the group reached it
    curvature = jax.lax.cond(
        jnp.any(need),
        lambda: jax.vmap(lambda x, d: twice_nll_gradient_hessian(m, x, d)[2:])(s.x, data),
        lambda: (jnp.zeros(x0.shape[:1] + (p, p), x0.dtype),) * 2 + (jnp.zeros(x0.shape[:1] + (2, p), x0.dtype),),
    )
    phase2 = jax.vmap(lambda d, st, c, fr: _newton(m, d, st, c, fr, lo, hi, maxiter, tol), axis_name=_FITS)
    s = phase2(data, s._replace(curvature=()), curvature, free)
    return s.x, s.f, s.status, s.n_iter, s.edm


@functools.partial(jit, static_argnames=("maxiter", "group", "newton_edm", "newton_after", "funnel", "queue", "pairs"))
def minimize_batch(m, data, x0, free, lo, hi, tol, maxiter: int = 200, group: int | None = None, lam0=DAMPING,
                   newton_edm: float = NEWTON_EDM, newton_after: int = NEWTON_AFTER,
                   funnel: tuple[int, ...] | None = None, queue: bool = False, count=None, pairs: int = ANDERSON_M):
    """Minimize -2 log L for B datasets at once.

    Args:
        m: compiled model (pytree).
        data: [B, N + A] datasets.
        x0: [B, P] starting points (fixed parameters hold their value).
        free: [P] or [B, P] bool, parameters that float.
        lo, hi: [P] bounds.
        tol: edm threshold on -2 log L.
        maxiter: steps at most (both phases together).
        group: fits that step in lockstep (B must be a multiple); groups run one after
            another inside the call (``lax.map``). None: all B together.
        lam0: initial damping (larger: more careful first steps).
        newton_edm: edm below which a fit leaves Gauss-Newton for exact Newton steps
            (0: not on that account; inf: Newton throughout).
        newton_after: Gauss-Newton steps after which a fit moves on to Newton steps
            (0: never). Lockstep fits run as long as the slowest of their group, and the
            slow ones are those whose Gauss-Newton curvature is far from the truth.
        funnel: widths of the later passes of a group's Gauss-Newton phase
            (:func:`_minimize_group`); None: :func:`funnel_widths`; (): one pass. The
            results do not depend on it (to rounding).
        queue: Gauss-Newton fits (no Newton phase) run through ``group`` lockstep slots,
            each refilled with the next fit as soon as its own finishes
            (:func:`_minimize_queue`; B need not be a multiple): for a CPU, whose groups
            are narrow and run one after another.
        count: [] int (traced, with ``queue``), fit only the first ``count`` datasets; the
            others keep their start, with twice_nll inf, status MAX_ITERATIONS and no
            steps. None: all.
        pairs: secant pairs of the Gauss-Newton end game (:func:`_anderson`); 0: plain
            Gauss-Newton.

    Returns:
        pars [B, P], twice_nll [B], status [B] int, n_iter [B] int, edm [B].
    """
    b = data.shape[0]
    free = jnp.broadcast_to(free, x0.shape)
    if queue:
        if newton_edm > 0 or newton_after > 0 or group is None:
            raise ValueError("a queue runs Gauss-Newton fits through `group` slots")
        return _minimize_queue(m, data, x0, free, lo, hi, maxiter, tol, lam0, min(group, b),
                               b if count is None else count, pairs)
    if count is not None:
        raise ValueError("count needs queue=True")
    if funnel is None:
        funnel = funnel_widths(b, group)
    one_group = functools.partial(_minimize_group, m, lo=lo, hi=hi, maxiter=maxiter, tol=tol, lam0=lam0,
                                  newton_edm=newton_edm, newton_after=newton_after, funnel=funnel, pairs=pairs)
    if group is None or group >= b:
        return one_group(data, x0, free)
    groups = tuple(a.reshape((b // group, group) + a.shape[1:]) for a in (data, x0, free))
    out = jax.lax.map(lambda args: one_group(*args), groups)
    return tuple(o.reshape((b,) + o.shape[2:]) for o in out)


@jit
def hessian_batch(m, data, pars):
    """Exact Hessian of -2 log L: data [B, N + A], pars [B, P] -> [B, P, P]."""
    return jax.vmap(lambda p, d: twice_nll_hessian(m, p, d))(pars, data)


@jit
def value_one(m, data, pars):
    """-2 log L for one dataset, +inf where an expected count is negative (as
    :func:`value_and_grad_one`): MIGRAD asks for values far more often than for
    gradients (~20,000 against ~50 on a hard 1Lbb fit), and a value alone costs a
    fraction of both."""
    return jnp.where(jnp.any(expected_main(m, pars) < 0), jnp.inf, twice_nll(m, pars, data))


@jit
def value_and_grad_one(m, data, pars):
    """-2 log L and its gradient for one dataset (the iminuit fallback's objective).

    Like the batched solver's objective it is +inf where an expected count is negative:
    there the Poisson term 2 nu is unbounded below, and MIGRAD would report a "minimum"
    of a likelihood that does not exist.
    """
    f, g = jax.value_and_grad(lambda p: twice_nll(m, p, data))(pars)
    return jnp.where(jnp.any(expected_main(m, pars) < 0), jnp.inf, f), g


@functools.partial(jit, static_argnames=("group",))
def minimize_points(stacked, point, data, x0, free, lo, hi, active, tol, maxiter, lam0=DAMPING, group: int = 16):
    """Minimize -2 log L for B fits of the models of a stack (the signal points of a
    patchset padded to one shape, ``gpufit.model.stack``), each fit of its own point:
    one compiled call for a whole grid's fits, in lockstep groups of ``group``.

    Args:
        stacked: compiled models with arrays [S, ...].
        point: [B] int, the model of each fit.
        data: [B, N + A]; x0, free: [B, P]; lo, hi: [B, P] (each fit's bounds).
        active: [B] bool, the fits to run (the others are padding: a group of them
            costs one evaluation, so one compiled width serves batches of any size).
        tol, maxiter, lam0: as :func:`minimize_batch` (Gauss-Newton, one pass); maxiter
            is traced (a first pass and a continuation share the compiled call).
        group: fits that step in lockstep (B a multiple); groups run one after another.

    Returns:
        pars [B, P], twice_nll [B], status [B] int, n_iter [B] int, edm [B].
    """
    b = data.shape[0]

    def one(args):
        i, d, x, fr, low, high, on = args
        return _minimize_group(take(stacked, i), d, x, fr, low, high, maxiter=maxiter, tol=tol, lam0=lam0,
                               newton_edm=0.0, newton_after=0, funnel=(), per_fit=0, active=on)

    groups = tuple(a.reshape((b // group, group) + a.shape[1:]) for a in (point, data, x0, free, lo, hi, active))
    out = jax.lax.map(one, groups)
    return tuple(o.reshape((b,) + o.shape[2:]) for o in out)
