"""``gpufit.fit``: one maximum-likelihood fit per dataset of a batch, in one compiled call."""

from __future__ import annotations

import warnings
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from iminuit import Minuit

from .. import _device
from ..exceptions import InvalidArgument, InvalidShape
from ._edge import EDGE_CHUNK, EDGE_SLOTS, edge_queue
from ._result import FitResult
from ._solver import (CONVERGED, DAMPING, MAX_ITERATIONS, hessian_batch, minimize_batch, minimize_points,
                      value_and_grad_one, value_one)

DEFAULT_TOL = 1e-8
DEFAULT_MAXITER = 300
# on an accelerator (one lockstep group a chunk), steps before the stragglers continue in a
# smaller batch (fit and toys alike); a CPU's queue of lockstep slots has no tail to cut
FIRST_PASS_STEPS = 30
POINT_FITS_MAX = 2048  # fits of a grid's points per compiled call on an accelerator (not yet run on one)
EDGE_NU = 1e-6  # an empty main bin whose expected count a fit left below this (events) is at the model's edge
RESTART_DAMPING = 1.0  # the initial damping of a new start ("heavily damped" Gauss-Newton): fit's and the toys'


def at_edge(model, data, pars) -> np.ndarray:
    """Fits that ended at the model's edge: data [..., N + A], pars [..., P] -> [...] bool,
    True where an empty main bin (n_b = 0) kept an expected count below ``EDGE_NU``.

    -2 log L is +inf where an expected count is negative, so a minimum next to nu_b = 0
    lies against a curved wall, and a fit stops where it reaches the wall rather than
    sliding along it (Gauss-Newton, Newton and MIGRAD alike). On 1,000 1Lbb toys, 191 of
    their 4,000 fits ended at the edge; new starts from the suggested init (exact Newton,
    and heavily damped Gauss-Newton) found lower minima for 36 of them, by up to 3.2 in
    -2 log L (benchmarks/README.md, "Minima at the edge of an empty bin"). Such fits
    get a new start, heavily damped Gauss-Newton from their start (the toys': the
    suggested init), which found 29 of those 36 alone at the cost of one fit (exact
    Newton, 28, costs several times more), the lower minimum kept; ``fit`` then runs
    the active-set solver along the edge from there (``optimize/_edge.py``)."""
    n = np.asarray(data)[..., : model.n_main]
    n = n.reshape(-1, model.n_main)
    pars = np.asarray(pars).reshape(-1, model.n_pars)
    out = np.zeros(len(n), bool)
    # only datasets with an empty bin can be at the edge (observed data rarely are), and
    # their count is padded to a power of two: expected_main compiles once per batch
    # shape (~0.15 s on 1Lbb), and fit() comes here with batches of every size
    rows = np.flatnonzero(np.any(n == 0, axis=-1))
    if rows.size:
        _, take = next(padded_chunks(rows.size, 1 << (rows.size - 1).bit_length()))
        nu = np.asarray(model.expected_main(pars[rows[take]]))[: rows.size]
        out[rows] = ended_at_edge(n[rows], nu)
    return out.reshape(np.shape(data)[:-1])


def ended_at_edge(n, nu):
    """The rule of :func:`at_edge` on arrays (NumPy, or JAX inside a compiled call): main
    counts n [..., N] and the fit's expected counts nu [..., N] -> [...] bool."""
    return ((n == 0) & (nu < EDGE_NU)).any(axis=-1)


def default_chunk_size(model) -> int:
    """Fits per compiled call for this model on JAX's default device."""
    m = model.compiled_numpy
    return _device.default_chunk_size(m, model.n_pars, model.n_main, model.n_aux)


def lockstep_slots(model) -> int:
    """Fits of this model that step in lockstep on a CPU (``_device.cpu_slots``)."""
    return _device.cpu_slots(model.compiled_numpy, model.n_pars, model.n_main, model.n_aux)


def padded_size(n: int, chunk: int, slots: int) -> int:
    """Batch sizes are rounded up to powers of two (then to whole chunks) so that a
    handful of compiled shapes serve every call; on a CPU, batches of more than one fit
    are at least one lockstep group of ``slots`` (:func:`lockstep_slots`), so that every
    fit runs in the same compiled group shape (bit-identical results whatever the batch
    around it)."""
    if n >= chunk:
        return chunk
    size = 1 << max(0, (n - 1).bit_length())
    if n > 1 and _device.platform() == "cpu":
        size = max(size, min(chunk, slots))
    return size


def padded_chunks(n: int, size: int):
    """The chunks of ``n`` rows for compiled calls of exactly ``size`` rows (one compiled
    shape): ``(rows [k], take [size])`` per chunk, ``take`` its rows padded by repeating
    the first (the calls' outputs past ``k`` are padding). Every batched caller (fits,
    toy chunks, host continuations) chunks through here."""
    for start in range(0, n, size):
        rows = np.arange(start, min(start + size, n))
        yield rows, np.concatenate([rows, np.repeat(rows[:1], size - rows.size)])


def resolve_fixed(model, fixed, batch_shape):
    """Fixed flags [P] and values: the measurement's fixed parameters plus ``fixed``
    (a mapping of names to values, scalars or arrays broadcastable to ``batch_shape``)."""
    flags = model.fixed_parameters()
    values = {}
    for name, value in dict(fixed or {}).items():
        index = model.parameter_index(name)
        flags[index] = True
        values[index] = np.broadcast_to(np.asarray(value, dtype=model.dtype), batch_shape)
    return flags, values


def _resolve_init(model, init, batch_shape):
    x0 = model.suggested_init()
    if init is None:
        return np.broadcast_to(x0, batch_shape + (model.n_pars,)).copy()
    if isinstance(init, Mapping):
        x0 = np.broadcast_to(x0, batch_shape + (model.n_pars,)).copy()
        for name, value in init.items():
            x0[..., model.parameter_index(name)] = value
        return x0
    init = np.asarray(init, dtype=model.dtype)
    if init.shape[-1] != model.n_pars:
        raise InvalidShape(f"init has length {init.shape[-1]} but the model has {model.n_pars} parameters")
    return np.broadcast_to(init, batch_shape + (model.n_pars,)).copy()


def invalid_data(model, data) -> np.ndarray:
    """[..., N + A] bool: entries no likelihood can be computed from (main-bin counts
    that are not finite or negative, auxiliary data that are not finite)."""
    bad = ~np.isfinite(data)
    bad[..., : model.n_main] |= data[..., : model.n_main] < 0
    return bad


def _check_data_values(model, data) -> None:
    """Refuse data [..., N + A] with an entry :func:`invalid_data` flags, naming it."""
    bad = invalid_data(model, data)
    if bad.any():
        index = np.argwhere(bad)[0]
        what = "main-bin count" if index[-1] < model.n_main else "auxiliary datum"
        raise InvalidArgument(
            f"data[{', '.join(str(i) for i in index)}] ({what}) is {data[tuple(index)]:g}; "
            "counts must be finite and >= 0 (auxiliary data finite)"
        )


def resolve_bounds(model, bounds) -> np.ndarray:
    """Bounds [P, 2] in use: the model's, overridden by ``bounds`` ([P, 2] or ``{name: (low, high)}``)."""
    b = model.suggested_bounds()
    if bounds is None:
        return b
    if isinstance(bounds, Mapping):
        for name, (low, high) in bounds.items():
            b[model.parameter_index(name)] = (low, high)
        return b
    b = np.asarray(bounds, dtype=model.dtype)
    if b.shape != (model.n_pars, 2):
        raise InvalidShape(f"bounds have shape {b.shape} but the model needs ({model.n_pars}, 2)")
    return b


def _kernel_tables(model):
    """The compiled tables the kernels take for ``model``'s backend (JAX or NumPy)."""
    return model.compiled if model.backend == "jax" else model.compiled_numpy


def _minuit_refit(model, data, x0, free, bounds, tol, strategy=0, iterate=5):
    """Careful single fit with iminuit (MIGRAD with the exact JAX gradient); where MIGRAD
    ends invalid, iminuit runs it again up to ``iterate`` times in all, at strategy 2."""
    compiled = _kernel_tables(model)
    # MIGRAD calls back once per point: on an accelerator each call would be a round
    # trip to the device, so the callbacks run on the host's CPU device
    cpu = jax.devices("cpu")[0]
    compiled, data = jax.device_put((compiled, data), cpu)

    def fcn(p):
        return float(value_one(compiled, data, jax.device_put(np.asarray(p, model.dtype), cpu)))

    def grad(p):
        return np.asarray(value_and_grad_one(compiled, data, jax.device_put(np.asarray(p, model.dtype), cpu))[1])

    minuit = Minuit(fcn, np.asarray(x0), grad=grad, name=model.parameter_names)
    minuit.errordef = Minuit.LEAST_SQUARES
    # a fixed parameter keeps its value even outside its bounds (iminuit would clip it
    # into its limits, and the fit would answer for another value than the one asked)
    minuit.limits = [tuple(b) if f else (-np.inf, np.inf) for b, f in zip(bounds, free)]
    minuit.values = np.asarray(x0)
    minuit.fixed = [not f for f in free]
    minuit.strategy = strategy  # exact gradients; strategy 1 adds numerical Hessians: ~10 s and more on 1Lbb
    minuit.tol = max(tol * 50.0, 1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        minuit.migrad(ncall=max(5_000, 50 * len(minuit.values)), iterate=iterate)  # bounded: ~3 ms a call on 1Lbb
    return np.asarray(minuit.values), float(minuit.fval), bool(minuit.valid), float(minuit.fmin.edm)


def _migrad(model, data, end, start, free, bounds, tol):
    """The iminuit fallback for one fit that the solver left unconverged: MIGRAD strategy 0
    from the solver's end point (fast: exact gradients, no numerical Hessian), and only
    where that fails, strategy 1 from the end point and from the fit's start; the lowest
    valid minimum, else the last attempt. A fit is declared failed only after all three.

    Returns:
        pars [P], twice_nll, valid, edm.
    """
    data = jnp.asarray(data)
    first = end if np.all(np.isfinite(end)) else start
    best = _minuit_refit(model, data, first, free, bounds, tol)
    if best[2]:
        return best
    for x0 in (first, start):
        r = _minuit_refit(model, data, x0, free, bounds, tol, strategy=1)
        if not best[2] or (r[2] and r[1] < best[1]):
            best = r
    return best


def fit(
    model,
    data,
    fixed: Mapping | None = None,
    init=None,
    bounds=None,
    hesse: bool | None = None,
    *,
    tol: float = DEFAULT_TOL,
    maxiter: int = DEFAULT_MAXITER,
    retry: bool = True,
    chunk_size: int | None = None,
    damping: float = DAMPING,
    newton: bool = False,
) -> FitResult:
    """Maximum-likelihood fits, one per dataset.

    Args:
        model: a :class:`gpufit.Model`.
        data: [..., N + A] observed data (main bins then auxiliary data), any batch shape.
        fixed: ``{"mu": 1.0}``: parameters to fix, on top of those the measurement
            fixes; values are scalars or arrays of the batch shape (one per fit).
        init: starting values, ``[P]``, ``[..., P]`` or ``{name: value}``
            (default: the model's suggested init).
        bounds: ``[P, 2]`` or ``{name: (low, high)}`` (default: the model's).
        hesse: also compute uncertainties and covariances from the exact Hessian
            (default: only for a single dataset).
        tol: convergence threshold on the estimated distance to the minimum (edm) of
            -2 log L.
        maxiter: cap on solver steps per fit.
        retry: continue the fits that did not converge with exact Newton steps from where
            the solver stopped (up to ``maxiter`` more; not those that stopped at an
            empty bin's edge), give fits that converged at such an edge a new start (the
            lower minimum kept) and then the active-set solver along the edge from there
            (``optimize/_edge.py``; the lower kept again), then refit those still
            unconverged: where the dataset has an empty bin, with that solver, else or
            where that fails with iminuit on the host (MIGRAD with
            the exact gradient, strategy 0 from where the solver stopped; where that
            fails, strategy 1 from there and from the fit's start, the lowest valid
            minimum kept); what still fails keeps ``converged=False``.
        chunk_size: fits per compiled call (default: from the model size and the
            device's memory; ``GPUFIT_CHUNK_SIZE`` in the environment also sets it).
        damping: initial Levenberg-Marquardt damping; larger values take more careful
            (more gradient-like) first steps.
        newton: exact Newton steps from the start (the exact Hessian, a dense solve)
            instead of Gauss-Newton ones: fewer steps, each about six times costlier on
            a 126-parameter model; for hard fits (the toy calculator's retries).

    Returns:
        :class:`FitResult` with leading shape ``[...]``.
    """
    if chunk_size is not None and int(chunk_size) < 1:
        raise InvalidArgument(f"chunk_size must be at least 1 fit (or None for the default), got {chunk_size!r}")
    data = model.check_data(np.asarray(data, dtype=model.dtype))
    _check_data_values(model, data)
    width = model.n_main + model.n_aux
    batch_shape = data.shape[:-1]
    flags, fixed_values = resolve_fixed(model, fixed, batch_shape)
    x0 = _resolve_init(model, init, batch_shape)
    for index, value in fixed_values.items():
        x0[..., index] = value
    b = resolve_bounds(model, bounds)
    free = ~flags
    x0 = np.where(free, np.clip(x0, b[:, 0], b[:, 1]), x0)

    n = int(np.prod(batch_shape, dtype=int))
    flat_data = data.reshape(n, width)
    flat_x0 = x0.reshape(n, model.n_pars)
    chunk = chunk_size or default_chunk_size(model)
    slots = lockstep_slots(model)
    compiled = _kernel_tables(model)

    def solve(rows, starts, steps, exact=newton, lam0=damping):
        """Run the solver on datasets ``rows`` from ``starts``, in padded chunks (``exact``:
        Newton steps)."""
        size = padded_size(len(rows), chunk, slots)
        group = _device.lockstep_group(size, slots)
        queued = queue and not exact and group < size  # the queue leaves a chunk's padding unfitted
        return _in_chunks(rows, starts, size, lambda take, x, real: minimize_batch(
            compiled, jnp.asarray(flat_data[take]), jnp.asarray(x), jnp.asarray(free),
            jnp.asarray(b[:, 0]), jnp.asarray(b[:, 1]), tol, maxiter=steps,
            group=group, lam0=lam0, newton_edm=float("inf") if exact else 0.0, queue=queued,
            count=jnp.asarray(real) if queued else None,
        ))

    # a CPU's narrow lockstep groups take their fits from a queue (no lockstep tail): one
    # pass; so do Newton fits (the few hard ones)
    queue = _device.platform() == "cpu" and not newton
    first = maxiter if n == 1 or newton or queue else min(maxiter, FIRST_PASS_STEPS)
    pars, twice_nll, status, n_iter, edm = _passes(solve, flat_x0, (first,), maxiter)
    by_minuit = np.zeros(n, bool)
    if retry and not newton:
        # exact Newton steps from where Gauss-Newton stopped, before iminuit: where the
        # Gauss-Newton curvature is far from the truth it crawls, Newton finishes in a few
        # steps, and MIGRAD costs seconds a fit on 126 parameters. Not for a fit that
        # crawled along an empty bin's edge: Newton crawls there too (300 steps, in a
        # lockstep group of 16: 3 s on 1Lbb), the edge solver of the host's retry does not
        late = np.flatnonzero((status != CONVERGED) & np.all(np.isfinite(pars), axis=1) & np.isfinite(twice_nll))
        late = late[~at_edge(model, flat_data[late], pars[late])]
        if late.size:
            p2, f2, s2, i2, e2 = solve(late, pars[late], maxiter, exact=True)
            keep = s2 == CONVERGED  # Newton steps only go down: never above the start
            done = late[keep]
            pars[done], twice_nll[done], status[done], edm[done] = p2[keep], f2[keep], s2[keep], e2[keep]
            n_iter[done] += i2[keep]
        # minima at the model's edge (at_edge): a new start, heavily damped, the lower kept
        def keep_lower(rows, result):
            p2, f2, s2, i2, e2 = result
            n_iter[rows] += i2  # steps taken, whichever minimum is kept
            keep = (s2 == CONVERGED) & (f2 < twice_nll[rows])
            lower = rows[keep]
            pars[lower], twice_nll[lower], edm[lower] = p2[keep], f2[keep], e2[keep]

        edge = np.flatnonzero((status == CONVERGED) & at_edge(model, flat_data, pars))
        if edge.size:
            keep_lower(edge, solve(edge, flat_x0[edge], maxiter, lam0=RESTART_DAMPING))
            # then on along the edge from the lower end: the solver's damping scales with the
            # empty bin's curvature 1/nu_b there (~1e15), which freezes every parameter that
            # moves nu_b, along the edge too, and reports a converged edm where the minimum
            # lies further on (8 of 512 1Lbb fits of fluctuated data, by up to 0.42)
            edge = edge[at_edge(model, flat_data[edge], pars[edge])]
        if edge.size:
            keep_lower(edge, along_edge(model, flat_data[edge], pars[edge], np.broadcast_to(free, pars[edge].shape),
                                        b, tol))
    if retry:
        by_minuit = _retry_on_host(lambda i: model, flat_data, flat_x0, pars, twice_nll, status, edm,
                                   lambda i: free, lambda i: b, tol)

    converged = status == CONVERGED
    uncertainties = covariance = hesse_valid = None
    if hesse is None:
        hesse = n == 1
    if hesse:
        covariance, hesse_valid = _covariance(compiled, flat_data, pars, free, chunk)
        hesse_valid = hesse_valid.reshape(batch_shape)
        uncertainties = np.sqrt(np.clip(np.diagonal(covariance, axis1=-2, axis2=-1), 0.0, None))
        covariance = covariance.reshape(batch_shape + (model.n_pars, model.n_pars))
        uncertainties = uncertainties.reshape(batch_shape + (model.n_pars,))
    return FitResult(
        pars=pars.reshape(batch_shape + (model.n_pars,)),
        twice_nll=twice_nll.reshape(batch_shape),
        converged=converged.reshape(batch_shape),
        status=status.reshape(batch_shape),
        n_iter=n_iter.reshape(batch_shape),
        edm=edm.reshape(batch_shape),
        parameter_names=list(model.parameter_names),
        fixed=flags,
        uncertainties=uncertainties,
        covariance=covariance,
        hesse_valid=hesse_valid,
        bounds=b,
        by_minuit=by_minuit.reshape(batch_shape),
    )


def _in_chunks(rows, starts, size, call):
    """``call(take, x, real)`` on chunks of exactly ``size`` rows: ``take`` [size] of
    ``rows`` [n] and their starts ``x`` [size, P] (from ``starts`` [n, P]), a short last
    chunk padded by repeating its first row, ``real`` of them not padding. Returns the
    outputs of ``call`` for the n rows, concatenated (each a fresh array)."""
    outs = []
    for chunk, take in padded_chunks(len(rows), size):
        outs.append([np.asarray(r)[: chunk.size] for r in call(rows[take], starts[take], chunk.size)])
    return [np.concatenate(parts).copy() for parts in zip(*outs)]


def _passes(solve, x0, firsts, maxiter):
    """Lockstep batches run as long as their slowest fit: passes of at most ``firsts[k]``
    steps, the fits still running after one going on in the next (a smaller batch) from
    where they stopped, then those left for the rest of ``maxiter``.
    ``solve(rows, starts, steps)`` runs the solver on rows [n'] from starts [n', P].

    Returns:
        pars [n, P], twice_nll [n], status [n], n_iter [n], edm [n].
    """
    rows = np.arange(len(x0))
    first = min(firsts[0], maxiter)
    pars, twice_nll, status, n_iter, edm = solve(rows, x0, first)
    taken = first
    for steps in tuple(firsts[1:]) + (maxiter,):
        late = np.flatnonzero(status == MAX_ITERATIONS)
        steps = min(steps, maxiter - taken)
        if not late.size or steps <= 0:
            break
        p2, f2, s2, i2, e2 = solve(late, pars[late], steps)
        pars[late], twice_nll[late], status[late], n_iter[late], edm[late] = p2, f2, s2, n_iter[late] + i2, e2
        taken += steps
    return pars, twice_nll, status, n_iter, edm


def along_edge(model, data, x0, free, bounds, tol, maxiter=DEFAULT_MAXITER):
    """The active-set solver along the model's edge (:func:`~gpufit.optimize._edge.edge_fits`)
    for R fits from where they ended at it (:func:`at_edge`): data [R, N + A], x0 and
    free [R, P], bounds [P, 2] -> pars [R, P], twice_nll, status, n_iter, edm [R].

    Through a queue of ``EDGE_SLOTS`` lockstep slots (:func:`~gpufit.optimize._edge.edge_queue`)
    in calls of ``EDGE_CHUNK`` fits (fewer fits: the next power of two, and as many
    slots): most fits end within a step or two (the median of 719 fits at the edge of
    4,000 1Lbb toys: 1), a few take 50 to 100, and a lockstep group runs as long as its
    slowest fit. Those 719 fits: 1.9-2.0 s with 8 slots (2.1-2.2 with 4, 2.2-2.6 with
    16), against 3.1-3.7 s in lockstep groups of 16 in passes of 2, 8 and 32 steps, then
    the rest (benchmarks/README.md, session 25)."""
    compiled = _kernel_tables(model)
    r = len(x0)
    size = EDGE_CHUNK if r >= EDGE_SLOTS else 1 << max(0, (r - 1).bit_length())
    return tuple(_in_chunks(np.arange(r), x0, size, lambda take, x, real: edge_queue(
        compiled, jnp.asarray(data[take]), jnp.asarray(x), jnp.asarray(free[take]), jnp.asarray(bounds[:, 0]),
        jnp.asarray(bounds[:, 1]), tol, maxiter, real, slots=min(EDGE_SLOTS, size))))


def _edge_or_migrad(model, data, end, start, free, bounds, tol):
    """The host's last word on one unconverged fit: where the dataset has an empty main
    bin and the solver ended at a finite point, the active-set solver along the model's
    edge (:func:`~gpufit.optimize._edge.edge_fits`: a fit that crawled along an empty
    bin's edge, where MIGRAD fails too); where that does not converge, MIGRAD
    (:func:`_migrad`).

    Returns:
        pars [P], twice_nll, converged, edm, by_minuit.
    """
    if np.any(data[: model.n_main] == 0) and np.all(np.isfinite(end)):
        p, f, status, _, e = (a[0] for a in along_edge(model, data[None], end[None], free[None], bounds, tol))
        if status == CONVERGED:
            return p, f, True, e, False
    return _migrad(model, data, end, start, free, bounds, tol) + (True,)


def _retry_on_host(model_of, data, x0, pars, twice_nll, status, edm, free_of, bounds_of, tol) -> np.ndarray:
    """Refit the rows [n] that the solver left unconverged on the host
    (:func:`_edge_or_migrad`: the edge solver, else MIGRAD), in place; row i's model,
    free flags and bounds are ``model_of(i)``, ``free_of(i)`` and ``bounds_of(i)``. A
    minimum is taken where converged (MIGRAD's: valid) and not higher.

    Returns:
        by_minuit [n] bool: the rows MIGRAD had the last word on.
    """
    by_minuit = np.zeros(len(x0), bool)
    done = {}  # a repeated (dataset, start) pair, e.g. padding, is refitted once
    for i in np.flatnonzero(status != CONVERGED):
        key = (data[i].tobytes(), x0[i].tobytes(), pars[i].tobytes())
        if key not in done:
            done[key] = _edge_or_migrad(model_of(i), data[i], pars[i], x0[i], free_of(i), bounds_of(i), tol)
        p, f, valid, e, by_minuit[i] = done[key]
        if valid and (not np.isfinite(twice_nll[i]) or f <= twice_nll[i] + 1e-6):
            pars[i], twice_nll[i], edm[i] = p, f, e
            status[i] = CONVERGED
    return by_minuit


def fit_points(stacked, models, point, data, x0, free, *, tol: float = DEFAULT_TOL, maxiter: int = DEFAULT_MAXITER,
               retry: bool = True) -> FitResult:
    """Fits of datasets of many models at once: the signal points of a grid, padded to
    one shape (:func:`gpufit.model.pad_models`), one compiled solver for all. Every fit
    may be of another point: a lockstep group mixes them.

    Args:
        stacked: the stacked tables [S, ...] (NumPy or JAX).
        models: the S padded models (bounds, names and the MIGRAD fallback of each point).
        point: [n] int, the model of each fit.
        data: [n, N + A]; x0: [n, P] starts (fixed parameters hold their value);
            free: [n, P] bool.
        tol, maxiter, retry: as :func:`fit`.

    Returns:
        :class:`FitResult` with leading shape [n] (``parameter_names`` and ``bounds``
        of the first model; ``fixed`` [n, P]).
    """
    point = np.asarray(point, dtype=np.int64)
    free = np.asarray(free, dtype=bool)
    n = len(point)
    bounds = np.stack([m.suggested_bounds() for m in models])[point]  # [n, P, 2]
    x0 = np.where(free, np.clip(x0, bounds[..., 0], bounds[..., 1]), x0)
    stacked = jax.tree_util.tree_map(jnp.asarray, stacked)
    # one compiled width for every call, the unused fits frozen from the start (they cost
    # one evaluation each): on a CPU 8 lockstep groups; on an accelerator one group of at
    # most POINT_FITS_MAX, since every fit of it holds its point's tables (~0.6 MB on 1Lbb)
    slots = lockstep_slots(models[0])
    size = min(default_chunk_size(models[0]), 8 * slots if _device.platform() == "cpu" else POINT_FITS_MAX)
    group = _device.lockstep_group(size, slots)

    def solve(rows, starts, steps):
        return _in_chunks(rows, starts, size, lambda take, x, real: minimize_points(
            stacked, jnp.asarray(point[take]), jnp.asarray(data[take]), jnp.asarray(x), jnp.asarray(free[take]),
            jnp.asarray(bounds[take, :, 0]), jnp.asarray(bounds[take, :, 1]), jnp.asarray(np.arange(size) < real),
            tol, steps, group=group,
        ))

    pars, twice_nll, status, n_iter, edm = _passes(solve, x0, (FIRST_PASS_STEPS,), maxiter)
    by_minuit = np.zeros(n, bool)
    if retry:
        by_minuit = _retry_on_host(lambda i: models[point[i]], data, x0, pars, twice_nll, status, edm,
                                   lambda i: free[i], lambda i: bounds[i], tol)
    return FitResult(
        pars=pars, twice_nll=twice_nll, converged=status == CONVERGED, status=status, n_iter=n_iter, edm=edm,
        parameter_names=list(models[0].parameter_names), fixed=~free, bounds=bounds[0], by_minuit=by_minuit,
    )


def _covariance(compiled, data, pars, free, chunk):
    """Covariance [B, P, P] = 2 (Hessian of -2 log L on the free parameters)^-1, and
    whether it is trustworthy [B] bool: the Hessian is positive definite there. Where it
    is not (a flat or negative direction: not a proper minimum, or a parameter at a
    bound) the covariance is a pseudo-inverse and ``hesse_valid`` says so."""
    hs = []
    for start in range(0, len(pars), chunk):
        hs.append(np.asarray(hessian_batch(compiled, jnp.asarray(data[start:start + chunk]), jnp.asarray(pars[start:start + chunk]))))
    h = np.concatenate(hs)
    idx = np.flatnonzero(free)
    cov = np.zeros_like(h)
    sub = h[:, idx[:, None], idx[None, :]]
    with np.errstate(all="ignore"):
        finite = np.all(np.isfinite(sub), axis=(1, 2))
        valid = finite.copy()
        if idx.size:
            eig = np.linalg.eigvalsh(np.where(finite[:, None, None], sub, 0.0))  # [B, F] ascending
            valid &= eig[:, 0] > 1e-12 * np.abs(eig[:, -1])
        inv = np.empty_like(sub)
        if valid.any():
            inv[valid] = np.linalg.inv(sub[valid])
        if (~valid).any():
            inv[~valid] = np.linalg.pinv(np.nan_to_num(sub[~valid]))
    cov[:, idx[:, None], idx[None, :]] = 2.0 * inv
    return cov, valid
