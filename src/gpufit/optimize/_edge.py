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
this solver converges it in 45 steps, 0.055 lower, with the POI off its bound (MIGRAD,
strategy 1, from there finds nothing lower: ``tests/test_fit.py``). And a fit can stop
*converged* where it meets the edge, short of the minimum further along it: there the
damping of the batched solver, scaled by the curvature 1/nu_b ~ 1e15, freezes every
parameter that moves nu_b (8 of 512 1Lbb fits of fluctuated data, by up to 0.42;
benchmarks/README.md, session 21), and MIGRAD does not move from there either.

The empty bins at the edge are held as equality constraints ``nu_b(theta) = t_b`` with
``t_b`` a tenth of the current count (the edge is approached geometrically and never
crossed), and the rest of -2 log L gets its damped Gauss-Newton model. A step solves
that quadratic program's KKT system, then a second-order correction (Nocedal & Wright,
Numerical Optimization, section 15.6) moves back onto the targets from where the
curvature of the edge took the step. A bin is released when its multiplier says that
its count wants to grow. One compiled loop, vmapped over a batch, in lockstep
(:func:`edge_fits`, an accelerator's toy chunk) or through a queue of slots
(:func:`edge_queue`, the host's), whose KKT steps go through the batched solver's
factored Gauss-Newton solve (an N x N factorization, :class:`_Kkt`): it runs for the
fits that end at the edge (``fit``'s ``at_edge``), the converged ones included, and for
the unconverged ones before MIGRAD.
"""


from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from .._device import jit
from ..likelihood.derivatives import expected_main_and_jacobian, twice_nll_gradient_curvature
from ._solver import (_FITS, _LAMBDA_MAX, CONVERGED, EDGE_FRACTION, MAX_ITERATIONS, NOT_FINITE, RUNNING, STALLED,
                      _edge_fraction, _held, _pick, _precision, damping_rule, next_rows, queue_start, solve_damped,
                      unfitted, write_ended)

HOLD_NU = 1e-3  # an empty bin whose expected count is below this (events) is held at the edge
CORRECTIONS = 4  # second-order corrections of a step at most (each one evaluation of nu and its Jacobian)
EDGE_SLOTS = 8  # the host's solver along the edge (fit.along_edge): a queue of this many lockstep slots ...
EDGE_CHUNK = 1024  # ... through which compiled calls of this many fits run (fewer: the next power of two)


class _Edge(NamedTuple):
    x: jax.Array  # [P]
    f: jax.Array  # []
    g: jax.Array  # [P]
    jac: jax.Array  # [N, P]
    w: jax.Array  # [N]
    c: jax.Array  # [P]
    lam: jax.Array  # []
    edm: jax.Array  # []
    released: jax.Array  # [N] bool: bins let go of for good (their minimum is inside the model)
    n_iter: jax.Array  # [] int
    status: jax.Array  # [] int


class _Kkt(NamedTuple):
    """The equality-constrained quadratic model of one step, factorized once: the step of
    ``min g.d + d.M.d / 2`` subject to ``J_h d = r`` is ``d = d0 - Y mu`` with
    ``M d0 = -g``, ``Y = M^-1 J_h^T`` and ``S mu = J_h d0 - r``, ``S = J_h Y`` (N x N,
    the identity's rows for bins not held)."""

    d0: jax.Array  # [P]
    y: jax.Array  # [P, N]
    s: jax.Array  # [N, N]
    rows: jax.Array  # [N, P]: the held bins' gradients on the active set, unit length
    unit: jax.Array  # [N]: their lengths (1 elsewhere)
    held: jax.Array  # [N] bool


class _Round(NamedTuple):
    """One round of a step's KKT solves (:func:`_edge_step`)."""

    held: jax.Array  # [N] bool
    released: jax.Array  # [N] bool
    active: jax.Array  # [P] bool
    fresh: jax.Array  # [] bool: a new set of held bins (its projection still to make)
    delta: jax.Array  # [P]
    mult: jax.Array  # [N]
    more: jax.Array  # [] bool: another round follows


def _unit_rows(jac, held, active):
    """The ``held`` bins' rows of ``jac`` [N, P] on the ``active`` parameters [P] bool, of
    unit length (0 for bins not held), their lengths (1 elsewhere), and the held bins
    whose row does not vanish there: rows [N, P], unit [N], held [N] bool."""
    rows = jnp.where(held[:, None] & active[None, :], jac, 0.0)
    norm = jnp.sqrt(jnp.sum(rows * rows, axis=1))
    held = held & (norm > 0)  # a row that vanishes on the active set constrains nothing
    unit = jnp.where(held, norm, 1.0)
    return rows / unit[:, None], unit, held


def _kkt(m, jac, w_rest, c, g, lam, held, active):
    """:class:`_Kkt` of the damped Gauss-Newton matrix of the rest of -2 log L (weights
    ``w_rest`` [N], ``c`` [P], damping ``lam``; :func:`~gpufit.optimize._solver.solve_damped`,
    an N x N factorization instead of a P x P one), gradient g [P], the ``held`` bins'
    rows of ``jac`` [N, P] on the ``active`` parameters [P] bool (the step is 0
    elsewhere): shapes fixed whatever is held."""
    rows, unit, held = _unit_rows(jac, held, active)
    # M^-1 v for each v of [-g, rows^T]: solve_damped takes a gradient, and solves
    # M d = -gradient with M the damped matrix of 2 (J^T W J + diag c)
    sol = solve_damped(m, jac, w_rest, c, jnp.concatenate([g[:, None], -rows.T], axis=1), lam, active)  # [P, 1 + N]
    y = sol[:, 1:]
    return _Kkt(sol[:, 0], y, rows @ y + jnp.diag(jnp.where(held, 0.0, 1.0)), rows, unit, held)


def _kkt_step(k: _Kkt, rhs):
    """The step [P] that meets ``J_h d = rhs`` [N] for the held bins, and the
    multipliers [N] (0 for bins not held)."""
    mu = jnp.linalg.solve(k.s, jnp.where(k.held, k.rows @ k.d0 - rhs / k.unit, 0.0))
    return k.d0 - k.y @ mu, jnp.where(k.held, mu / k.unit, 0.0)


def _least_norm(jac, held, active, rhs):
    """The shortest step [P] on the ``active`` parameters [P] bool that meets
    ``J_h d = rhs`` [N] for the ``held`` bins [N] bool (jac [N, P])."""
    rows, unit, held = _unit_rows(jac, held, active)
    gram = rows @ rows.T + jnp.diag(jnp.where(held, 0.0, 1.0))
    return rows.T @ jnp.linalg.solve(gram, jnp.where(held, rhs / unit, 0.0))


def _edge_start(x, f, g, jac, w, c, maxiter):
    """The state of ONE fit along the edge at its start x [P], from the evaluation there
    (:func:`~gpufit.likelihood.derivatives.twice_nll_gradient_curvature`)."""
    dtype = x.dtype
    return _Edge(x, f, g, jac, w, c, jnp.asarray(1e-3, dtype), jnp.asarray(jnp.inf, dtype), jnp.zeros(w.shape, bool),
                 jnp.asarray(0), jnp.where(jnp.isfinite(f), jnp.where(maxiter > 0, RUNNING, MAX_ITERATIONS), NOT_FINITE))


def _edge_step(m, data, s: _Edge, free, lo, hi, tol, maxiter, bottom, fresh=None):
    """One step of ONE fit along the edge (the module's docstring). ``fresh`` [] bool
    (the queue, :func:`edge_queue`): the slot holds a new fit at ``s.x`` whose first
    evaluation this step makes instead of a step."""
    n_main = m.n_main
    empty = data[:n_main] == 0
    dtype = s.x.dtype
    nu = jnp.where(empty, 1.0 / jnp.where(empty, s.w, 1.0), jnp.inf)  # w = 1/nu in empty bins
    target = jnp.maximum(EDGE_FRACTION * nu, bottom)

    def rest(held):
        # the held bins leave the objective (a weight at rounding level: the factored
        # solve divides by it), with their 2 nu_b
        w_rest = jnp.where(held, jnp.finfo(dtype).eps * jnp.max(jnp.where(held, 0.0, s.w)), s.w)
        return w_rest, s.g - 2.0 * jnp.sum(jnp.where(held[:, None], s.jac, 0.0), axis=0)

    # One factorization a round, in one loop (a single copy of the factored solve in the
    # compiled step instead of four: edge_fits of a 12-bin generated model compiles in
    # 3.3 s instead of 3.8 s):
    # each set of held bins first on the active set of the batched solver's two-metric
    # projection, then once more without the parameters its step pushes onto a bound;
    # then the bins that want their count up are released and the round starts again.
    # g = g_rest + 2 J_h^T = J_h^T (2 - mult) at a solution: a minimum on the edge has
    # 2 - mult >= 0 (the count would rise into the model); a bin whose multiplier exceeds
    # 2 wants its count up, and is released for good (its minimum is inside the model,
    # where the batched solver's steps are right).
    def one_round(r):
        w_rest, g_rest = rest(r.held)
        active = jnp.where(r.fresh, _held(s.x, g_rest, lo, hi, free), r.active)
        k = _kkt(m, s.jac, w_rest, s.c, g_rest, s.lam, r.held, active)
        delta, mult = _kkt_step(k, target - nu)
        pushed = active & ~_held(s.x, -delta, lo, hi, active)
        again = r.fresh & jnp.any(pushed)
        release = ~again & r.held & (mult > 2.0)
        return _Round(jnp.where(again, r.held, r.held & ~release), r.released | release,
                     jnp.where(again, active & ~pushed, active), ~again, delta, mult, again | jnp.any(release))

    held = empty & (nu < HOLD_NU) & ~s.released
    if fresh is not None:
        held = held & ~fresh  # a new fit's placeholder state: a round without a bin held
    r = jax.lax.while_loop(lambda r: r.more, one_round, _Round(held, s.released, free, jnp.asarray(True),
                                                              jnp.zeros_like(s.x), jnp.zeros_like(nu), jnp.asarray(True)))
    held, released, delta = r.held, r.released, r.delta
    w_rest, g_rest = rest(held)
    jd = s.jac @ delta
    edm = -(g_rest @ delta + jnp.dot(w_rest * jd, jd) + jnp.dot(s.c * delta, delta))  # the undamped model's decrease
    delta = delta * _edge_fraction(jd, nu, empty & ~held)  # the batched solver's rule for the rest
    x_try = jnp.where(free, jnp.clip(s.x + delta, lo, hi), s.x)

    # second-order corrections back onto the targets, each the shortest move that meets
    # the held bins' targets to first order where it starts: with the Jacobian of the
    # step's start (a chord) they did not converge where the edge curves, the trial point
    # fell beyond the edge (nu_b < 0: -2 log L is inf) and was refused, and the damping
    # grew; one 1Lbb fit took 113 steps instead of 16 (benchmarks/README.md, session 23)
    def correcting(carry):
        k, x, _ = carry
        nu_x, jac_x = expected_main_and_jacobian(m, x)
        off = held & (jnp.abs(nu_x - target) > 0.5 * target)
        back = _least_norm(jac_x, held, r.active, target - nu_x)
        return k + 1, jnp.where(jnp.any(off), jnp.where(free, jnp.clip(x + back, lo, hi), x), x), jnp.any(off)

    _, x_try, _ = jax.lax.while_loop(lambda carry: (carry[0] < CORRECTIONS) & carry[2] & jnp.any(held),
                                     correcting, (0, x_try, jnp.asarray(True)))
    if fresh is not None:
        x_try = jnp.where(fresh, s.x, x_try)
    f_try, g_try, jac_try, w_try, c_try = twice_nll_gradient_curvature(m, x_try, data)
    ok, lam_next = damping_rule(s.f, s.lam, f_try, g_try, edm)
    floor = jnp.maximum(tol, _precision(dtype) * jnp.abs(s.f))
    n_iter = s.n_iter + 1
    status = jnp.where((edm < floor) & (s.lam < 1.0), CONVERGED,
                       jnp.where(lam_next >= _LAMBDA_MAX, STALLED,
                                 jnp.where(n_iter >= maxiter, MAX_ITERATIONS, RUNNING)))
    new = (x_try, f_try, g_try, jac_try, w_try, c_try)
    old = (s.x, s.f, s.g, s.jac, s.w, s.c)
    x, f, g, jac, w, c = (jnp.where(ok, a, b) for a, b in zip(new, old))
    stepped = _Edge(x, f, g, jac, w, c, lam_next, edm, released, n_iter, status)
    if fresh is None:
        return stepped
    return _pick(fresh, _edge_start(x_try, f_try, g_try, jac_try, w_try, c_try, maxiter), stepped)


def _edge_one(m, data, x0, free, lo, hi, tol, maxiter, bottom):
    s = _edge_start(x0, *twice_nll_gradient_curvature(m, x0, data), maxiter)
    s = jax.lax.while_loop(lambda s: s.status == RUNNING,
                           lambda s: _edge_step(m, data, s, free, lo, hi, tol, maxiter, bottom), s)
    return s.x, s.f, s.status, s.n_iter, s.edm


def _bottom(m, dtype):
    """The smallest count [N] a held bin is taken to: below it the count is rounding (the
    sum of its samples' counts, each O(1) or more) and a step can land on either side of 0."""
    scale = jnp.abs(m.nominal) @ m.bin_matrix
    return 1e3 * jnp.finfo(dtype).eps * jnp.maximum(scale, 1.0)


@jit
def edge_fits(m, data, x0, free, lo, hi, tol, maxiter):
    """Minimize -2 log L of B fits whose minimum lies at the edge of empty bins, each
    from its start, in one compiled call (lockstep: the batch runs as long as its
    slowest fit; an accelerator's toy chunk, :func:`edge_pass`).

    Args:
        m: compiled model; data [B, N + A], x0 [B, P] (finite), free [B, P] bool, lo and
            hi [P]; tol: edm threshold; maxiter: steps at most, [] or [B] (traced: one
            compiled call serves a first pass and its continuation; 0: the fit is left
            as it is, with status MAX_ITERATIONS).

    Returns:
        pars [B, P], twice_nll [B], status [B] (the batched solver's codes), n_iter [B], edm [B].
    """
    bottom = _bottom(m, x0.dtype)
    maxiter = jnp.broadcast_to(jnp.asarray(maxiter), data.shape[:1])
    return jax.vmap(lambda d, x, fr, k: _edge_one(m, d, x, fr, lo, hi, tol, k, bottom), axis_name=_FITS)(
        data, x0, free, maxiter)


@functools.partial(jit, static_argnames=("slots",))
def edge_queue(m, data, x0, free, lo, hi, tol, maxiter, count, slots: int):
    """:func:`edge_fits` for the first ``count`` (traced) of B fits through ``slots``
    lockstep slots, each of which takes the next fit as soon as its own has finished
    (a CPU's, as :func:`~gpufit.optimize._solver.minimize_chain`): most fits along the
    edge end within a step or two, a few take 50 or more, and a lockstep group runs
    as long as its slowest fit. Each fit ends where it would in :func:`edge_fits`. The
    others keep their start, with twice_nll inf, status MAX_ITERATIONS and no steps.
    maxiter: [] (traced).

    Returns:
        pars [B, P], twice_nll [B], status [B], n_iter [B], edm [B].
    """
    b = data.shape[0]
    bottom = _bottom(m, x0.dtype)
    row = jnp.arange(slots)
    row = jnp.where(row < count, row, b)  # the row of each slot; b: none
    at = jnp.minimum(row, b - 1)
    fresh = row < b
    s = queue_start(lambda d, x: _edge_start(x, *twice_nll_gradient_curvature(m, x, d), maxiter), x0[at], fresh,
                    data[at], x0[at])
    step = jax.vmap(lambda d, st, fr, new: _edge_step(m, d, st, fr, lo, hi, tol, maxiter, bottom, new),
                    axis_name=_FITS)

    def body(carry):
        s, row, after, fresh, out = carry
        at = jnp.minimum(row, b - 1)
        s = jax.vmap(_pick)((s.status == RUNNING) | fresh, step(data[at], s, free[at], fresh), s)
        done = (s.status != RUNNING) & (row < b)
        out = write_ended(out, done, row, (s.x, s.f, s.status, s.n_iter, s.edm))
        row, after = next_rows(done, row, after, count, b)
        fresh = done & (row < b)
        s = s._replace(x=jnp.where(fresh[:, None], x0[jnp.minimum(row, b - 1)], s.x),
                       status=jnp.where(fresh, RUNNING, s.status))
        return s, row, after, fresh, out

    carry = (s, row, jnp.asarray(slots), fresh, unfitted(x0))
    return jax.lax.while_loop(lambda c: jnp.any(c[1] < b), body, carry)[-1]


def edge_pass(m, data, x0, go, free, lo, hi, tol, maxiter: int, capacity: int):
    """:func:`edge_fits` inside a caller's compiled call (an accelerator's toy chunk) for
    the fits ``go`` [B] among B, as many as ``capacity`` has room for, in one lockstep
    group (an accelerator's: passes would not narrow it) of up to ``maxiter`` steps. One
    copy of the edge solver in the caller's compiled code: each copy adds seconds to its
    compile time.

    Args:
        data [B, N + A], x0 [B, P] (finite where ``go``), go [B] bool, free [B, P] bool,
        lo, hi [P], tol [].

    Returns:
        pars [B, P], twice_nll [B], status [B], n_iter [B] (``x0``, inf, MAX_ITERATIONS
        and 0 where it did not run), done [B] bool: the fits it ran (False where it had no
        room: whoever continues them starts again from ``x0``).
    """
    b = data.shape[0]
    rows = jnp.argsort(~go, stable=True)[:capacity]
    ran = go[rows]

    def run():
        return edge_fits(m, data[rows], x0[rows], free[rows], lo, hi, tol, jnp.where(ran, maxiter, 0))[:4]

    def idle():  # no fit at the edge (most chunks of most models): not even a first evaluation
        shapes = jax.eval_shape(run)
        return (x0[rows],) + tuple(jnp.full(a.shape, v, a.dtype)
                                   for a, v in zip(shapes[1:], (jnp.inf, MAX_ITERATIONS, 0)))

    p, f, status, n_iter = jax.lax.cond(jnp.any(ran), run, idle)
    return (x0.at[rows].set(jnp.where(ran[:, None], p, x0[rows])),
            jnp.full(b, jnp.inf, f.dtype).at[rows].set(jnp.where(ran, f, jnp.inf)),
            jnp.full(b, MAX_ITERATIONS, status.dtype).at[rows].set(jnp.where(ran, status, MAX_ITERATIONS)),
            jnp.zeros(b, n_iter.dtype).at[rows].set(jnp.where(ran, n_iter, 0)), jnp.zeros(b, bool).at[rows].set(ran))
