"""The batched toy calculator: test-statistic distributions from thousands of
pseudo-experiments fitted at once.

A *row* is one toy: (hypothesis, mu index, toy index). For a chunk of rows one compiled
call draws the toys on the device (:mod:`gpufit.infer.sampling`), runs both fits of
each (free, and with the POI fixed to the tested value) from the point that generated
it for a first pass of lockstep steps, continues the fits that stopped short (up to
``maxiter`` more steps), gives every fit that converged at the model's edge (an empty
bin's expected count at 0: :func:`gpufit.optimize.at_edge`) a new start from the
model's suggested initial values (heavily damped Gauss-Newton), keeping the lower
minimum; on an accelerator it then takes the fits still at the edge on along it (the
active-set solver of :func:`gpufit.optimize.edge_pass`: the batched solver's damping
freezes there, short of a minimum further along the edge); and it refits from its
fixed-POI twin every free fit that ended above that twin (a local minimum: the twin's
point is admissible for the free fit), as many of each as the call has room for,
without a trip to the host. The next chunk is dispatched before
the host reads this one, and what the host reads of it is a few numbers per toy (each
fit's -2 log L, status and flags, the free fit's muhat: :class:`PerToy`, outputs of the
call); a toy's dataset and parameters leave the device only where the host retries one
of its fits.

A one-sided statistic (``q``, ``qtilde``: 0 where muhat > mu; ``q0``: 0 where muhat < 0)
does not need the fixed-POI fit of a toy whose converged free fit puts muhat there: on a
CPU the chunk call does not run it (half of the s+b toys' fixed-POI fits at the tested
mu; 1Lbb's toys 17% faster), as ROOT's ProfileLikelihoodTestStat skips it. Such a toy's
free fit is then not checked against its twin for a local minimum: of 20,000
pseudo-experiments at mu = 1 that check would have moved 11 sbottom and 4 1Lbb test
statistics from 0 to at most 0.15 and 0.65 (a free fit stuck at a muhat above mu whose
deeper minimum lies below it; pyhf fits both and checks neither;
benchmarks/skipped_twins.py). ``all_fixed_fits=True`` fits and checks every
twin. The rule is the host's, on the final free fits, so that a CPU and an accelerator
(whose lockstep pass fits both kinds) give the same test statistics.

Then, only for the rows that need it, the host, in a thread of its own so that the
device goes on with the next chunks:

1. continues the stragglers the call had no room for, with the same kernel;
2. gives the fits at the model's edge that the call had no room for (or that converged
   in step 1) their new start, then takes those still at the edge on along it
   (:func:`gpufit.optimize.along_edge`; a CPU's chunk call leaves this to the host for
   every fit: 1Lbb, 2,000 toys at mu = 1: 358 of 6,700 fits, 49 of them lower by more
   than 1e-3, by up to 1.6, in 1.7 s);
3. restarts what still failed from the suggested initial values (exact Newton steps,
   and heavily damped Gauss-Newton), keeping the lower converged minimum;
4. hands the rest to iminuit (MIGRAD with the exact gradient, on the CPU: strategy 0,
   then strategy 1 from two starts, :func:`gpufit.fit`'s ``retry``);
5. refits the local minima left (no room, or a refit that did not converge there).

On a CPU, the retries of a chunk that needs any wait until every chunk call has returned
(as many chunks as ``_DEFERRED_BYTES`` holds; later ones do not wait): there the host's
computations share XLA's thread pool with the chunk calls.

What still fails is counted: its test statistic is NaN, it is left out of the p-values,
and more than ``max_failed`` (a fraction) raises :class:`gpufit.ToyFitsFailed` carrying
the result.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import hashlib
import os
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from .. import _device
from .._version import __version__
from ..exceptions import InvalidArgument
from ..likelihood.kernels import expected_main
from ..optimize import (CONVERGED, MAX_ITERATIONS, along_edge, at_edge, edge_pass, fit, minimize_batch, minimize_chain,
                        padded_chunks)
from ..optimize.fit import (
    DAMPING,
    DEFAULT_TOL,
    FIRST_PASS_STEPS,
    RESTART_DAMPING,
    default_chunk_size,
    ended_at_edge,
    invalid_data,
    lockstep_slots,
    padded_size,
    resolve_bounds,
    resolve_fixed,
)
from .sampling import BACKGROUND_ONLY, SIGNAL_PLUS_BACKGROUND, sample_toys, toy_keys
from .test_statistics import check_poi_bounds, from_fits, normalize_test_stat, one_sided, zero_by_muhat
from .toy_pvalues import DEFAULT_MAX_FAILED, check_failed, count_failed, toy_pvalues

DEFAULT_NTOYS = 2000
TOY_PARS = ("profiled", "init")
_MAX_CPU_CHUNK = 4096  # toys per compiled call on a CPU: progress updates stay frequent
_SEED_LIMIT = 2**32
_QUEUED_CHUNKS = 4  # chunks whose host retries may wait for the retry thread
# the chunks (data and fits) whose retries wait for an idle CPU, at most: 1Lbb's 10,000 toys
# hold ~60 MB, 100,000 ~600 MB
_DEFERRED_BYTES = 1 << 30
_RETRY_BATCH = 16  # fits per compiled retry call on a CPU (one lockstep group); 16x that elsewhere
# exact-Newton restarts per compiled call on a CPU: they are rare (3 of 40,000 1Lbb toy
# fits) and every fit of the batch, padding included, pays for a step that costs about
# ten Gauss-Newton ones (a lone 1Lbb restart, warm: 1.2-1.9 s in a batch of 16, 0.18 s in 2)
_NEWTON_BATCH = 2


def _retry_batch(newton: bool = False) -> int:
    """Fits per compiled retry call here (one fixed size: each retry kernel compiles once)."""
    if _device.platform() != "cpu":
        return 16 * _RETRY_BATCH
    return _NEWTON_BATCH if newton else _RETRY_BATCH


def _put(a, rows, new, where):
    """``a`` with ``a[rows]`` replaced by ``new`` where ``where`` [len(rows)] holds."""
    where = where.reshape(where.shape + (1,) * (a.ndim - 1))
    return a.at[rows].set(jnp.where(where, new, a[rows]))


def _whole_groups(n: int, chunk: int, group: int, limit: int) -> int:
    """``n`` fits rounded up to whole lockstep groups where a chunk is several groups (a
    CPU); where the whole chunk steps as one group (a GPU), a pass of ``n`` fits is its
    own group: rounding it up to the chunk would run every continuation as wide as the
    first pass (measured on an H200: half the toys/s)."""
    unit = group if group < chunk else 1
    return min(limit, -(-max(n, 1) // unit) * unit)


def continuation_capacity(chunk: int, group: int) -> tuple[int, int]:
    """Fits per chunk call that continue inside the call, in its two continuation passes:
    1/8 of the chunk's 2C fits (measured: 2-9% need it on sbottom, gen40 and 1Lbb), then
    a quarter of those. The rest continue from the host, through the same kernel."""
    first = _whole_groups(2 * chunk // 8, chunk, group, 2 * chunk)
    return first, _whole_groups(first // 4, chunk, group, first)


def edge_capacity(chunk: int) -> int:
    """Fits per chunk call that go on along the model's edge inside an accelerator's call
    (:func:`_along_edge_in_call`): 1/8 of the chunk's 2C fits (measured on 1Lbb: ~5%),
    at least 16 (a small chunk's few fits at the edge all fit). The rest go on from the
    host."""
    return min(2 * chunk, max(2 * chunk // 8, 16))


def refit_capacity(chunk: int, group: int) -> tuple[int, int]:
    """Free fits per chunk call refitted from their fixed-POI twin inside the call (1/16
    of the toys; measured 0.2-1.6%), and the room of that refit's second pass."""
    first = _whole_groups(chunk // 16, chunk, group, chunk)
    return first, _whole_groups(first // 4, chunk, group, first)


def local_minimum(f_free, f_fixed, status_free, status_fixed, tol, xp=jnp):
    """Free fits [C] that ended above their fixed-POI twin: a local minimum, since the
    twin's point is admissible for the free fit (margin: 10 tol, at least 1e-5). ``xp``:
    the array namespace (NumPy on the host, where a JAX call would be a dispatch)."""
    return ((status_free == CONVERGED) & (status_fixed == CONVERGED)
            & (f_free > f_fixed + xp.maximum(1e-5, 10.0 * tol)))


def settled_by_free(side, muhat, status, mu_test, xp=jnp):
    """Toys [C] whose converged free fit (``muhat``, ``status`` [C]) alone settles a
    one-sided statistic of side ``side`` at ``mu_test`` [C] (0 by its muhat:
    :func:`~gpufit.infer.test_statistics.zero_by_muhat`): their fixed-POI fit is not
    needed. The chunk call's rule and the host's (on the final free fits). ``xp``: the
    array namespace."""
    return (status == CONVERGED) & zero_by_muhat(side, muhat, mu_test, xp=xp)


def new_start(init, x0, free, lo, hi, xp=jnp):
    """The new start of fits [R, P] whose first start led them astray (converged at the
    model's edge, or not at all), as :func:`gpufit.fit` would start them: the suggested
    ``init`` [P], clipped into ``lo``, ``hi`` [P], for the ``free`` [R, P] parameters, the
    fits' own start ``x0`` [R, P] for the others (the POI of fixed-POI fits). ``xp``: the
    array namespace (NumPy for the host's retries)."""
    return xp.where(free, xp.clip(init, lo, hi), x0)


def _continue_pass(m, data, pars, f, status, free, lo, hi, tol, late, capacity, maxiter, group, lam0):
    """Continue the ``late`` fits [B] (as many as ``capacity``, sorted to the front so that
    they fill whole lockstep groups) for ``maxiter`` steps; returns the updated pars, f,
    status and which fits ran."""
    rows = jnp.argsort(~late, stable=True)[:capacity]
    go = late[rows]
    p2, f2, s2, _, _ = minimize_batch(m, data[rows], pars[rows], free[rows], lo, hi, tol, maxiter=maxiter,
                                      group=min(group, capacity), lam0=lam0)
    pars, f, status = _put(pars, rows, p2, go), _put(f, rows, f2, go), _put(status, rows, s2, go)
    return pars, f, status, jnp.zeros(late.shape, bool).at[rows].set(go)


@functools.partial(_device.jit, static_argnames=("first_steps", "maxiter", "group", "capacity"))
def continue_fits(m, data, pars, free, lo, hi, tol, first_steps: int, maxiter: int, group: int,
                  capacity: tuple[int, int], lam0=1e-3):
    """Continue fits from where they stopped, as :func:`gpufit.fit` runs them: ``first_steps``
    steps, then up to ``maxiter - first_steps`` for those that used them all (a smaller,
    denser batch: a lockstep group runs as long as its slowest fit); ``lam0``: the
    initial damping (``RESTART_DAMPING`` for a new start).

    data [R, N + A], pars [R, P], free [R, P] -> pars, twice_nll [R], status [R], and
    ``done`` [R] bool: False for fits that one of the passes had no room for (``capacity``:
    fits per pass), whose results are then to be dropped and the fit continued again
    elsewhere. The one continuation of every toy fit, in a chunk call or from the host; a
    fit's steps depend on its own row only, so it continues to the same numbers (to
    rounding: ~1e-13 in -2 log L between differently shaped calls) wherever it ran.
    """
    r = data.shape[0]
    f = jnp.full(r, jnp.inf, data.dtype)
    status = jnp.full(r, MAX_ITERATIONS, jnp.int32)
    pars, f, status, ran = _continue_pass(m, data, pars, f, status, free, lo, hi, tol, jnp.ones(r, bool),
                                          capacity[0], first_steps, group, lam0)
    done = ran
    if maxiter > first_steps:
        late = ran & (status == MAX_ITERATIONS)
        pars, f, status, ran2 = _continue_pass(m, data, pars, f, status, free, lo, hi, tol, late, capacity[1],
                                               maxiter - first_steps, group, lam0)
        done = ran & (~late | ran2)
    return pars, f, status, done


class ChunkFits(NamedTuple):
    """One kind of fit (free, or with the POI fixed) of a chunk's toys, as :func:`toy_chunk`
    returns them, every field [C]."""

    pars: jax.Array  # [C, P]
    twice_nll: jax.Array
    status: jax.Array
    continued: jax.Array  # bool: ran beyond ``first_steps`` steps in the call (the host continues none again)
    # bool: converged, and the call looked whether it ended at the model's edge, and made
    # what that asks for (the new start, then the solver along the edge)
    edge_checked: jax.Array
    edge_refit: jax.Array  # bool: it had, and got a new start in the call
    edge_lower: jax.Array  # bool: ... which converged lower, and is the result
    along_lower: jax.Array  # bool: the solver along the edge went lower from there, and is the result


def chunk_outputs(outputs):
    """:func:`toy_chunk`'s flat outputs (host or device arrays) -> data, the free fits and
    the fixed-POI fits (:class:`ChunkFits`), refitted, skipped, muhat."""
    data, *fits, refitted, skipped, muhat = outputs
    per_kind = len(ChunkFits._fields)
    return data, ChunkFits(*fits[:per_kind]), ChunkFits(*fits[per_kind:]), refitted, skipped, muhat


class PerToy(NamedTuple):
    """What the host reads of every toy of a chunk call (:func:`toy_chunk`), host arrays
    [C]: the free fit's muhat, and per kind every field of :class:`ChunkFits` but the
    parameters (``pars`` None)."""

    muhat: np.ndarray
    free: ChunkFits
    fixed: ChunkFits
    refitted: np.ndarray


def per_toy(outputs) -> PerToy:
    """:class:`PerToy` of a chunk call's outputs: a selection of them, so that reading it
    from a device is a few transfers that wait for this chunk call alone (a computation
    on its outputs would queue behind the next chunk call, dispatched meanwhile)."""
    _, free, fixed, refitted, _, muhat = chunk_outputs(outputs)
    return PerToy(muhat, free._replace(pars=None), fixed._replace(pars=None), refitted)


def rows_of(outputs, index):
    """The toys ``index`` [R] of a chunk call's outputs, whole: data [R, N + A], the free
    and the fixed-POI fits (:class:`ChunkFits`), refitted [R]. Taken from the call's own
    outputs rather than drawn again from their keys: a retry must fit the very dataset
    the call fitted, to the last bit, and a second compiled draw may round differently."""
    data, free, fixed, refitted, *_ = chunk_outputs(outputs)
    return data[index], ChunkFits(*(a[index] for a in free)), ChunkFits(*(a[index] for a in fixed)), refitted[index]


_rows_on_device = _device.jit(rows_of)  # an accelerator's: only the toys the host retries leave it


def _edge_restarts(m, data, pars, f, status, start, free, lo, hi, tol, first_steps, maxiter, group, capacity):
    """New starts for the fits [R] that converged at the model's edge
    (:func:`gpufit.optimize.at_edge`): heavily damped Gauss-Newton (``RESTART_DAMPING``)
    from ``start`` [R, P], the lower converged minimum kept, as :func:`gpufit.fit` and the
    host's retries do, as many as ``capacity`` (:func:`continue_fits`): an accelerator's
    (a CPU's queue restarts them in :func:`_chained_fits`). Returns pars, twice_nll,
    edge_checked, edge_refit, edge_lower."""
    converged = status == CONVERGED
    edge = converged & ended_at_edge(data[:, : m.n_main], expected_main(m, pars))
    rows = jnp.argsort(~edge, stable=True)[: capacity[0]]
    p2, f2, s2, done = continue_fits(m, data[rows], start[rows], free[rows], lo, hi, tol, first_steps=first_steps,
                                     maxiter=maxiter, group=group, capacity=capacity, lam0=RESTART_DAMPING)
    ran = edge[rows] & done
    lower = ran & (s2 == CONVERGED) & (f2 < f[rows])
    refit = jnp.zeros(f.shape, bool).at[rows].set(ran)
    return (_put(pars, rows, p2, lower), _put(f, rows, f2, lower), converged & (~edge | refit), refit,
            jnp.zeros(f.shape, bool).at[rows].set(lower))


def _along_edge_in_call(m, data, pars, f, status, checked, free, lo, hi, tol, maxiter, capacity):
    """An accelerator's fits [R] that converged at the model's edge and had their new
    start there (``checked``: :func:`_edge_restarts`) go on along the edge from the lower
    end, with the active-set solver (:func:`gpufit.optimize.edge_pass`), as
    :func:`gpufit.fit` does: the batched solver's damping, scaled by an empty bin's
    curvature 1/nu_b there, freezes every parameter that moves nu_b, and its fits
    converge short of a minimum further along the edge (before: 25 of 2,000 1Lbb test
    statistics off by more than 1e-3, by up to 1.26). As many as ``capacity`` has room
    for (:func:`edge_capacity`), the lower minimum kept. Returns pars, twice_nll,
    checked (False for the fits at the edge it had no room for: the host's) and
    along_lower [R]."""
    edge = checked & (status == CONVERGED) & ended_at_edge(data[:, : m.n_main], expected_main(m, pars))
    if not capacity:  # no room at all: every fit at the edge is the host's
        return pars, f, checked & ~edge, jnp.zeros(f.shape, bool)
    p2, f2, s2, _, done = edge_pass(m, data, pars, edge, free, lo, hi, tol, maxiter, capacity)
    lower = edge & done & (s2 == CONVERGED) & (f2 < f)
    return jnp.where(lower[:, None], p2, pars), jnp.where(lower, f2, f), checked & (~edge | done), lower


# the phases of a toy's chain of fits in the queue (_chained_fits)
_FREE, _FREE_EDGE, _FIXED, _FIXED_EDGE, _REFIT = range(5)


def _chained_fits(m, data, gen_pars, x_fixed, free_f, free_x, start_f, start_x, poi_of, n_real, mu_test, side, lo,
                  hi, tol, first_steps, maxiter, group):
    """Both fits of the first ``n_real`` toys of a chunk [C], and their retries, through
    the solver's queue (a CPU's): each toy is a chain of fits in one slot
    (:func:`~gpufit.optimize.minimize_chain`), each run where it is needed:

    1. the free fit from the generating point ``gen_pars`` [C, P];
    2. if it converged at the model's edge (:func:`~gpufit.optimize.fit.ended_at_edge`),
       a new, heavily damped start from ``start_f`` [C, P], kept where it converges lower;
    3. the fixed-POI fit from ``x_fixed`` [C, P], unless the free fit settles a one-sided
       statistic of side ``side`` at ``mu_test`` [C] alone (:func:`settled_by_free`);
    4. its new start from ``start_x`` at the edge, as 2;
    5. if the free fit ended above its twin (:func:`local_minimum`), the free fit again
       from the twin's minimum, kept where it converges lower.

    One solver loop serves them all, where one a kind of fit did before: the chunk kernel
    of a 12-bin generated model compiles in 4.4 s instead of 7.7 s, and a chunk has one
    tail instead of five. ``free_f``, ``free_x`` [C, P] bool: the free parameters of
    each kind; ``poi_of``: parameters [S, P] -> their POI [S].

    Returns:
        the free and the fixed-POI fits (the seven fields of :class:`ChunkFits` each; a
        fit not run keeps its start, with twice_nll inf and status MAX_ITERATIONS),
        refitted [C] (the refits of 5 that converged), skipped [C] (the toys 3 left out).
    """
    c = data.shape[0]
    n = data[:, : m.n_main]

    def unfitted(x0):
        return dict(pars=x0, f=jnp.full(c, jnp.inf, x0.dtype), status=jnp.full(c, MAX_ITERATIONS),
                    n_iter=jnp.zeros(c, int), edge=jnp.zeros(c, bool), lower=jnp.zeros(c, bool))

    records = dict(free=unfitted(gen_pars), fixed=unfitted(x_fixed), skipped=jnp.zeros(c, bool),
                   refitted=jnp.zeros(c, bool))

    def start(phase, row, rec):
        free, fixed = rec["free"], rec["fixed"]
        slot = jnp.arange(row.size)
        x0 = jnp.stack([gen_pars[row], start_f[row], x_fixed[row], start_x[row], fixed["pars"][row]])[phase, slot]
        fixed_poi = (phase == _FIXED) | (phase == _FIXED_EDGE)
        mask = jnp.where(fixed_poi[:, None], free_x[row], free_f[row])
        lam0 = jnp.where((phase == _FREE_EDGE) | (phase == _FIXED_EDGE), RESTART_DAMPING, DAMPING).astype(x0.dtype)
        worse = local_minimum(free["f"][row], fixed["f"][row], free["status"][row], fixed["status"][row], tol)
        go = jnp.stack([jnp.ones(row.shape, bool), free["edge"][row], ~rec["skipped"][row], fixed["edge"][row],
                        worse])[phase, slot]
        return x0, mask, lam0, go

    def record(phase, row, done, end, rec):
        # every gather before every scatter, one scatter an array: XLA then updates the
        # records in place (a read between two writes copied the [C, P] arrays each step)
        converged = end.status == CONVERGED
        stopped_at_edge = converged & ended_at_edge(n[row], end.nu_empty)
        ended, rows = {}, {}
        for name, first, again in (("free", _FREE, _FREE_EDGE), ("fixed", _FIXED, _FIXED_EDGE)):
            fits = rec[name]
            f = fits["f"][row]
            main = done & (phase == first)
            lower = done & (phase == again) & converged & (end.f < f)
            better = done & (phase == _REFIT) & converged & (end.f < f) if name == "free" else False
            new = main | lower | better  # the fit's result: this one
            ended[name] = dict(
                pars=jnp.where(new[:, None], end.x, fits["pars"][row]), f=jnp.where(new, end.f, f),
                status=jnp.where(main, end.status, fits["status"][row]),
                n_iter=jnp.where(main, end.n_iter, fits["n_iter"][row]),
                edge=jnp.where(main, stopped_at_edge, fits["edge"][row]), lower=lower | fits["lower"][row])
            rows[name] = jnp.where(new, row, c)  # row c: nothing written
        free = ended["free"]
        final = done & ((phase == _FREE) | (phase == _FREE_EDGE))  # the free fit is final: its twin's turn
        skipped = settled_by_free(side, poi_of(free["pars"]), free["status"], mu_test[row])
        refit = done & (phase == _REFIT)
        out = dict(skipped=rec["skipped"].at[jnp.where(final, row, c)].set(skipped, mode="drop"),
                   refitted=rec["refitted"].at[jnp.where(refit, row, c)].set(converged, mode="drop"))
        for name, at in rows.items():
            out[name] = {key: rec[name][key].at[at].set(value, mode="drop") for key, value in ended[name].items()}
        return out

    rec = minimize_chain(m, data, n_real, 5, start, record, records, lo, hi, maxiter, tol, group)

    def chunk_fits(fits):
        return (fits["pars"], fits["f"], fits["status"], fits["n_iter"] > first_steps, fits["status"] == CONVERGED,
                fits["edge"], fits["lower"])

    return chunk_fits(rec["free"]), chunk_fits(rec["fixed"]), rec["refitted"], rec["skipped"]


@functools.partial(_device.jit, static_argnames=("first_steps", "maxiter", "group", "capacity", "refits", "edge",
                                                 "queue", "side"))
def toy_chunk(m, seed, hypothesis, mu_index, toy_index, gen_pars, init, mu_test, poi_mask, free, lo, hi, tol, n_real,
              first_steps: int, maxiter: int, group: int, capacity: tuple[int, int], refits: tuple[int, int],
              edge: int = 0, queue: bool = False, side: int = 0):
    """Draw a chunk of toys and fit each twice, in one compiled call.

    With ``queue`` (a CPU), the fits of the first ``n_real`` toys run to their end in the
    solver's queue of ``group`` lockstep slots (no lockstep tail: a slot takes the next
    toy when its own is done; the padding of a short chunk is not fitted), each toy's
    fits one after the other in one slot (:func:`_chained_fits`): the free fit, then the
    fixed-POI fit where the free fit leaves the test statistic to it (``side``:
    :func:`~gpufit.infer.test_statistics.one_sided`; a free fit that converged, with
    nothing left to check at the model's edge, and whose muhat makes a one-sided
    statistic 0 makes its twin unnecessary: 1Lbb's s+b toys at the tested mu skip half
    their fixed-POI fits), each with its new start at the model's edge, and the free
    fit's refit from its twin where it is caught in a local minimum.
    Without (an accelerator, whose chunk is one wide lockstep group), every fit of both
    kinds gets ``first_steps`` steps in lockstep, then those that did not converge (as
    many as ``capacity`` has room for) continue (:func:`continue_fits`). Then fits that
    converged at the model's edge get a new start from ``init`` (:func:`_edge_restarts`,
    as many as ``capacity`` has room for), and free fits caught in a local minimum
    (:func:`local_minimum`, as many as ``refits`` has room for) are refitted from their
    fixed-POI twin, each kept where it converges lower; before that refit, the fits
    still at the edge go on along it (:func:`_along_edge_in_call`, as many as ``edge``
    has room for: :func:`edge_capacity`). Both ways without a trip to the host, and both
    skip the same toys' twins (the accelerator's lockstep pass fits them, then leaves
    them out as the queue does). The queue leaves the solver along the edge to the host
    (:meth:`ToyCalculator._settle`): on a CPU its compiled copy in the chunk kernel
    doubled the kernel's compile time (1Lbb, sbottom, a generated model: +5-6 s), while
    the host's serves every chunk shape and ``gpufit.fit``.

    Args:
        m: compiled model; seed: [] uint32.
        hypothesis, mu_index, toy_index: [C] int, the rows.
        gen_pars: [C, P] generating parameters; init: [P] the model's suggested initial
            values (the free parameters' new start at the edge); mu_test: [C] tested
            POI values.
        poi_mask: [P] bool (the POI); free: [P] bool; lo, hi: [P]; tol: [];
        n_real: [] int, the toys that are not padding (the first ones; used by the queue).

    Returns:
        data [C, N + A]; the free fits and the fixed-POI fits (the fields of
        :class:`ChunkFits`, eight arrays each, flat: a serialized kernel keeps plain
        tuples; a skipped fixed-POI fit keeps its start, with twice_nll inf and status
        MAX_ITERATIONS); refitted [C] bool: free fits whose refit from the twin
        converged here (lower or not); skipped [C] bool: toys whose fixed-POI fit was
        not needed; muhat [C]: the free fits' POI (what the host reads of their
        parameters, :class:`PerToy`).
    """
    keys = toy_keys(seed, hypothesis, mu_index, toy_index)
    data = sample_toys(m, gen_pars, keys)
    x_fixed = jnp.where(poi_mask, mu_test[:, None], gen_pars)
    c = data.shape[0]
    free_f = jnp.broadcast_to(free, gen_pars.shape)
    free_x = jnp.broadcast_to(free & ~poi_mask, gen_pars.shape)
    start_f, start_x = new_start(init, gen_pars, free_f, lo, hi), new_start(init, x_fixed, free_x, lo, hi)

    def poi_of(pars):  # [C, P] -> [C]
        return jnp.sum(jnp.where(poi_mask, pars, 0.0), axis=-1)

    if queue:
        free_fits, fixed_fits, refitted, skipped = _chained_fits(
            m, data, gen_pars, x_fixed, free_f, free_x, start_f, start_x, poi_of, n_real, mu_test, side, lo, hi,
            tol, first_steps, maxiter, group)

        def host_along_edge(fits):  # still at the edge after its new start: the host goes on along it
            pars, status, checked = fits[0], fits[2], fits[4]
            return fits[:4] + (checked & ~ended_at_edge(data[:, : m.n_main], expected_main(m, pars)),) + fits[5:] + (
                jnp.zeros(status.shape, bool),)

        return ((data,) + host_along_edge(free_fits) + host_along_edge(fixed_fits)
                + (refitted, skipped, poi_of(free_fits[0])))
    both_free = jnp.concatenate([free_f, free_x])
    both_data = jnp.concatenate([data, data])
    both_x0 = jnp.concatenate([gen_pars, x_fixed])
    pars, f, status, _, _ = minimize_batch(m, both_data, both_x0, both_free, lo, hi, tol, maxiter=first_steps,
                                           group=group)
    late = status != CONVERGED
    rows = jnp.argsort(~late, stable=True)[: capacity[0]]  # the stragglers first
    p2, f2, s2, done = continue_fits(m, both_data[rows], pars[rows], both_free[rows], lo, hi, tol,
                                     first_steps=first_steps, maxiter=maxiter, group=group, capacity=capacity)
    go = late[rows] & done  # the others continue from the host, from their first pass
    pars, f, status = _put(pars, rows, p2, go), _put(f, rows, f2, go), _put(status, rows, s2, go)
    continued = jnp.zeros(2 * c, bool).at[rows].set(go)
    pars, f, checked, refit, lower = _edge_restarts(m, both_data, pars, f, status,
                                                    jnp.concatenate([start_f, start_x]), both_free, lo, hi, tol,
                                                    first_steps, maxiter, group, capacity)
    pars, f, checked, along = _along_edge_in_call(m, both_data, pars, f, status, checked, both_free, lo, hi, tol,
                                                  maxiter, edge)
    both = (pars, f, status, continued, checked, refit, lower, along)
    free_fits = tuple(a[:c] for a in both)
    # the toys whose free fit settles their test statistic alone, with nothing left to check
    # at the model's edge (the host would restart it: its muhat may move)
    skipped = settled_by_free(side, poi_of(free_fits[0]), free_fits[2], mu_test) & free_fits[4]
    x0 = (x_fixed, jnp.inf, MAX_ITERATIONS) + (False,) * 5  # a skipped twin, as the queue leaves it
    fixed_fits = tuple(jnp.where(skipped.reshape((c,) + (1,) * (a.ndim - 1)), x, a[c:]) for a, x in zip(both, x0))

    pf, ff, sf = free_fits[:3]
    px, fx, sx = fixed_fits[:3]
    worse = local_minimum(ff, fx, sf, sx, tol)  # a skipped twin never is lower (inf)
    rows = jnp.argsort(~worse, stable=True)[: refits[0]]
    p3, f3, s3, done = continue_fits(m, data[rows], px[rows], free_f[rows], lo, hi, tol, first_steps=first_steps,
                                     maxiter=maxiter, group=group, capacity=refits)
    refitted = worse[rows] & done & (s3 == CONVERGED)  # a refit that did not converge: the host's (iminuit)
    better = refitted & (f3 < ff[rows])
    pf, ff = _put(pf, rows, p3, better), _put(ff, rows, f3, better)
    refitted = jnp.zeros(c, bool).at[rows].set(refitted)
    return (data, pf, ff) + tuple(free_fits[2:]) + tuple(fixed_fits) + (refitted, skipped, poi_of(pf))


@dataclasses.dataclass
class ToyStats:
    """Book-keeping of a toy run: counts and seconds."""

    toys: int = 0
    fits: int = 0
    continued: int = 0  # fits that needed more than FIRST_PASS_STEPS steps (or a second start)
    restarted: int = 0  # unconverged fits started again from the suggested init
    at_edge: int = 0  # converged fits at an empty bin's edge, given a new start (optimize.at_edge)
    lower_at_edge: int = 0  # ... of which the new start found a lower minimum
    lower_along_edge: int = 0  # ... and where the solver along the edge went lower from there
    minuit: int = 0
    local_minima: int = 0
    # fixed-POI fits not needed: the free fit's muhat makes a one-sided statistic 0
    # (test_statistics.one_sided); left out of ``fits``
    skipped: int = 0
    failed: int = 0
    compile_seconds: float = 0.0
    seconds: float = 0.0
    # where ``seconds`` went (what a GPU run needs to be read): waiting for chunk calls
    # on the device, and the host's retries (restarts, iminuit, local minima)
    device_wait_seconds: float = 0.0
    host_retry_seconds: float = 0.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def show_progress(progress: bool | None) -> bool:
    """A progress bar only when asked, or by default when stderr is a terminal."""
    return sys.stderr.isatty() if progress is None else bool(progress)


def check_toy_options(ntoys=None, seed=None, toy_pars=None, max_failed=None, chunk_size=None) -> None:
    """The valid range of each toy option (those given); :class:`InvalidArgument` otherwise."""
    if toy_pars is not None and toy_pars not in TOY_PARS:
        raise InvalidArgument(f"toy_pars must be one of {TOY_PARS}, got {toy_pars!r}")
    if seed is not None and not (_is_int(seed) and 0 <= int(seed) < _SEED_LIMIT):
        raise InvalidArgument(f"seed must be an integer in [0, 2**32), got {seed!r}")
    if ntoys is not None and not (_is_int(ntoys) and int(ntoys) >= 1):
        raise InvalidArgument(f"ntoys must be an integer >= 1, got {ntoys!r}")
    if max_failed is not None and not 0.0 <= float(max_failed) <= 1.0:
        raise InvalidArgument(f"max_failed is a fraction in [0, 1], got {max_failed!r}")
    if chunk_size is not None and not (_is_int(chunk_size) and int(chunk_size) >= 1):
        raise InvalidArgument(f"chunk_size must be an integer >= 1 (or None for the default), got {chunk_size!r}")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


class ToyCalculator:
    """Toy-based p-values at POI values ``mus`` for one observed dataset.

    Building one checks the options and fits nothing; the fits to the observed data run
    once, when a result first needs them. The compiled chunk kernels are shared by every
    calculator of the process (a limit's mus, a grid's points, a notebook's reruns): the
    16 most recently used argument shapes are kept (the least recently used goes first).

    Args:
        model, data: the model and the observed data [N + A].
        mus: tested POI values [M].
        test_stat: ``"qtilde"``, ``"q"``, ``"q0"``, ``"t"`` or ``"ttilde"`` (or pyhf's
            names: ``"qmu_tilde"``, ``"qmu"``, ``"tmu"``, ``"tmu_tilde"``).
        ntoys: toys per hypothesis and mu, for :meth:`run`; None for a calculator that
            only computes the rows it is given (:meth:`teststats`: a campaign's job).
        seed: campaign seed, 0 <= seed < 2**32; the toys depend only on
            (seed, hypothesis, mu index, toy index).
        toy_pars: ``"profiled"``: nuisance parameters at their conditional fit to the
            data (mu fixed to the tested value, or to 0 for background-only toys; 1 for
            q0); ``"init"``: the suggested initial values.
        chunk_size: toys per compiled call (default: from the device's memory).
        max_failed: largest tolerated fraction of toys with a failed fit.
        progress: progress bar on stderr (default: when stderr is a terminal).
        init, bounds, fixed, tol, maxiter: as for :func:`gpufit.fit` (``tol`` for the
            fits to the observed data).
        toy_tol: edm threshold of the toy fits: 1e-6 by default, which puts each toy's
            test statistic within about 2e-5 of its value at 1e-8, in half the time
            (1,000 1Lbb toys; benchmarks/README.md, "What the toys' tolerance buys").
        all_fixed_fits: fit every toy's fixed-POI twin, also where the free fit's muhat
            makes a one-sided statistic 0 without it, so that every free fit is checked
            against its twin for a local minimum (the module's docstring: by default
            such twins are skipped, as ROOT does).
        kernel_dir: a folder that keeps the chunk kernel serialized (``jax.export``):
            the first calculator to need it writes it, later ones (other processes:
            a campaign's jobs) read it instead of tracing it; with JAX's persistent
            compilation cache in the same folder they compile nothing either.
    """

    def __init__(self, model, data, mus, test_stat="qtilde", *, ntoys=DEFAULT_NTOYS, seed=0,
                 toy_pars="profiled", chunk_size=None, max_failed=DEFAULT_MAX_FAILED, progress=None,
                 init=None, bounds=None, fixed=None, tol=DEFAULT_TOL, maxiter=300, toy_tol=1e-6,
                 all_fixed_fits: bool = False, kernel_dir: str | None = None):
        check_toy_options(ntoys=ntoys, seed=seed, toy_pars=toy_pars, max_failed=max_failed, chunk_size=chunk_size)
        poi = model.require_poi()
        test_stat = normalize_test_stat(test_stat)
        self.model = model
        self.test_stat = test_stat
        self.data = np.asarray(data, dtype=model.dtype)
        self.mus = np.atleast_1d(np.asarray(mus, dtype=model.dtype))
        if test_stat == "q0":
            self.mus = np.zeros_like(self.mus)
        self.ntoys = None if ntoys is None else int(ntoys)
        self.seed = int(seed)
        self.toy_pars = toy_pars
        self.max_failed = float(max_failed)
        self.progress = progress
        self.tol = float(toy_tol)
        self.maxiter = int(maxiter)
        # where the free fit's muhat alone settles the statistic (test_statistics.one_sided)
        self.side = 0 if all_fixed_fits else one_sided(test_stat)
        self.user_fixed = dict(fixed or {})
        self.fit_kwargs = dict(init=init, bounds=bounds, fixed=fixed, tol=tol, maxiter=maxiter)
        self.stats = ToyStats()
        self.kernel_dir = kernel_dir

        flags, values = resolve_fixed(model, fixed, ())
        b = resolve_bounds(model, bounds)
        check_poi_bounds(test_stat, float(b[poi, 0]))
        self.bounds = b
        self.free = ~flags
        self.poi_mask = np.zeros(model.n_pars, bool)
        self.poi_mask[poi] = True
        self._fixed_values = values  # {index: value} of the fixed parameters (the "init" toys use them)
        if chunk_size is None:
            chunk_size = max(default_chunk_size(model) // 2, lockstep_slots(model))
            if _device.platform() == "cpu":
                chunk_size = min(chunk_size, _MAX_CPU_CHUNK)
        self.chunk_size = int(chunk_size)

    # -- the observed data -------------------------------------------------------------
    @functools.cached_property
    def _observed(self) -> dict:
        """The fits to the observed data, run once when first needed (so that building a
        calculator costs nothing): one free fit and one fixed-POI fit per mu give the
        observed test statistics [M]; the generating points [M, P] of both hypotheses."""
        model, poi, m = self.model, self.model.poi_index, len(self.mus)
        free_obs = fit(model, self.data, hesse=False, **self.fit_kwargs)
        fixed_obs = self._fixed_fit(np.broadcast_to(self.data, (m, self.data.size)), self.mus)
        teststat_obs = from_fits(self.test_stat, self.mus, fixed_obs.twice_nll, free_obs.twice_nll,
                                 free_obs.pars[poi])
        mu_b = 1.0 if self.test_stat == "q0" else 0.0
        n_failed = int(np.sum(~fixed_obs.converged)) + int(not free_obs.converged)
        if self.toy_pars == "profiled":
            gen_sb = fixed_obs.pars
            fit_b = self._fixed_fit(self.data, mu_b)
            n_failed += int(not fit_b.converged)
            gen_b = np.broadcast_to(fit_b.pars, (m, model.n_pars))
        else:
            x0 = model.suggested_init()
            for index, value in self._fixed_values.items():
                x0[index] = value
            gen_sb = np.repeat(x0[None], m, axis=0)
            gen_sb[:, poi] = self.mus
            gen_b = np.repeat(x0[None], m, axis=0)
            gen_b[:, poi] = mu_b
        return {"free_obs": free_obs, "fixed_obs": fixed_obs, "teststat_obs": teststat_obs, "gen_sb": gen_sb,
                "gen_b": gen_b, "n_failed_observed": n_failed}

    free_obs = property(lambda self: self._observed["free_obs"], doc="The free fit to the observed data.")
    fixed_obs = property(lambda self: self._observed["fixed_obs"], doc="The fixed-POI fits [M] to the observed data.")
    teststat_obs = property(lambda self: self._observed["teststat_obs"], doc="Observed test statistics [M].")
    gen_sb = property(lambda self: self._observed["gen_sb"], doc="Generating points [M, P] of s+b toys.")
    gen_b = property(lambda self: self._observed["gen_b"], doc="Generating points [M, P] of b-only toys.")
    n_failed_observed = property(lambda self: self._observed["n_failed_observed"],
                                 doc="Fits to the observed data that did not converge.")

    # -- fits ------------------------------------------------------------------------
    def _fixed_fit(self, data, mu, **kwargs):
        kwargs.setdefault("tol", self.fit_kwargs["tol"])
        pinned = dict(self.user_fixed)
        pinned[self.model.poi_name] = np.broadcast_to(np.asarray(mu, dtype=self.model.dtype), np.shape(data)[:-1])
        options = dict(self.fit_kwargs, fixed=pinned, hesse=False)
        options.update(kwargs)
        return fit(self.model, data, **options)

    def _free_fit(self, data, **kwargs):
        kwargs.setdefault("tol", self.fit_kwargs["tol"])
        options = dict(self.fit_kwargs, hesse=False)
        options.update(kwargs)
        return fit(self.model, data, **options)

    def _refit(self, kind, data, mu_test, **kwargs):
        """Refit rows in batches of one fixed size (:func:`_retry_batch`), so that every run
        reuses the same compiled retry kernels whatever number of fits it retries."""
        kwargs["tol"] = self.tol
        kwargs["chunk_size"] = _retry_batch(kwargs.get("newton", False))
        n = len(data)
        if n == 1:  # a lone fit would compile a batch-of-one kernel: pad to two
            data, mu_test = np.repeat(data, 2, axis=0), np.repeat(mu_test, 2)
            kwargs["init"] = np.repeat(np.atleast_2d(kwargs["init"]), 2, axis=0)
        r = self._free_fit(data, **kwargs) if kind == "free" else self._fixed_fit(data, mu_test, **kwargs)
        return _select(r, np.arange(len(r.twice_nll)) < n)

    def _free_of(self, kind):
        """The free parameters [P] of one kind of fit ("free", or "fixed": the POI fixed)."""
        return self.free & ~self.poi_mask if kind == "fixed" else self.free

    def _continue(self, kind, data, pars, group):
        """Continue fits on the host that the chunk call had no room for: the same kernel,
        in batches of one fixed size; returns pars, twice_nll, status."""
        free = self._free_of(kind)
        batch = _retry_batch()
        lo, hi = jnp.asarray(self.bounds[:, 0]), jnp.asarray(self.bounds[:, 1])
        out = [np.empty_like(pars), np.empty(len(pars), pars.dtype), np.empty(len(pars), np.int32)]
        for rows, take in padded_chunks(len(pars), batch):
            res = continue_fits(self.model.compiled, jnp.asarray(data[take]), jnp.asarray(pars[take]),
                                jnp.broadcast_to(jnp.asarray(free), (batch, free.size)), lo, hi, self.tol,
                                first_steps=FIRST_PASS_STEPS, maxiter=self.maxiter, group=min(group, batch),
                                capacity=(batch, batch))
            for o, r in zip(out, res[:3]):
                o[rows] = np.asarray(r)[: rows.size]
        return out

    def _fetch(self, outputs, n, mu_test):
        """What the host reads of every toy of a chunk call (:class:`PerToy`, its first ``n``
        toys), and the toys [R] whose fits its retries may touch (:meth:`_open`), which
        :meth:`_whole` then takes whole. A GPU's chunk ships back a few numbers per toy,
        not its datasets and parameters."""
        # transfers of the outputs alone (on a CPU, views of host memory: no compiled call)
        toys = jax.tree_util.tree_map(lambda a: a[:n], jax.device_get(per_toy(outputs)))
        return toys, np.flatnonzero(self._open(toys, mu_test))

    def _whole(self, outputs, index):
        """The toys ``index`` [R] of a chunk call's outputs, whole (:func:`rows_of`), as host
        copies: on a CPU read in place (a compiled call beside the next chunk call could
        hang XLA's CPU runtime, :meth:`_repair`), elsewhere gathered on the device, the
        rows padded to a power of two (a handful of compiled gathers serve every chunk)."""
        if not index.size:  # nothing to take: no call on the device
            return rows_of([np.empty((0,) + a.shape[1:], a.dtype) for a in outputs], index)
        if _device.platform() == "cpu":
            return rows_of([np.asarray(a) for a in outputs], index)
        padded = np.resize(index, max(8, 1 << (index.size - 1).bit_length()))
        rows = jax.device_get(_rows_on_device(outputs, jnp.asarray(padded, jnp.int32)))
        return jax.tree_util.tree_map(lambda a: np.array(a[: index.size]), rows)

    def _open(self, per_toy: PerToy, mu_test):
        """Toys [C] whose fits the host's retries may touch (:meth:`_retries`: an
        unconverged fit, a converged one the call did not check at the model's edge, a
        local minimum it did not refit), counting a fixed-POI fit only where the test
        statistic needs it. The others are final as the chunk call left them."""
        free, fixed = per_toy.free, per_toy.fixed
        needed = self._needed(per_toy.muhat, free.status, mu_test)
        unfinished = [(res.status != CONVERGED) | ~res.edge_checked for res in (free, fixed)]
        minimum = local_minimum(free.twice_nll, fixed.twice_nll, free.status, fixed.status, self.tol, xp=np)
        return unfinished[0] | ((unfinished[1] | (minimum & ~per_toy.refitted)) & needed)

    def _repair(self, data, mu_test, free_res: ChunkFits, fixed_res: ChunkFits, refitted, group, defer=False):
        """The host's retries of the toys of a chunk that :meth:`_whole` took whole (steps
        1-5 of the module's docstring), in place; returns drawn [R] bool (toys drawn from
        a valid expectation) and needed [R] bool (toys whose test statistic uses their
        fixed-POI fit, :meth:`_retries`). With ``defer``, a chunk with unconverged fits (or
        a local minimum the call did not refit) returns instead a callable that makes its
        retries and returns the same, to be called once the device is idle. On a CPU the
        host's compiled calls share XLA's thread pool with the chunk calls (a Newton
        restart waited 9 s beside a 1Lbb chunk call, 0.2 s alone), and two executions at
        once can hang XLA's CPU runtime (benchmarks/README, sessions 14 and 16). The queue
        of a CPU's chunk call leaves the host nothing else, so its other chunks make no
        compiled call here.

        ``free_res`` and ``fixed_res``: the chunk call's fits (host arrays, whose pars,
        twice_nll and status are updated here); ``refitted`` [R]: free fits refitted from
        their twin in the chunk call already.
        """
        retries = functools.partial(self._retries, data, mu_test, free_res, fixed_res, refitted, group)
        # so far: a free fit that moves may change it
        needed = self._needed(free_res.pars[:, self.model.poi_index], free_res.status, mu_test)
        unconverged = (free_res.status != CONVERGED) | ((fixed_res.status != CONVERGED) & needed)
        # fits at the model's edge that the call left to the host (a CPU's: all of them)
        at_edge_left = ~free_res.edge_checked | (~fixed_res.edge_checked & needed)
        unsettled = defer and (np.any(unconverged | at_edge_left) or np.any(
            local_minimum(free_res.twice_nll, fixed_res.twice_nll, free_res.status, fixed_res.status, self.tol, xp=np)
            & ~refitted & needed))
        return retries if unsettled else retries()

    def _needed(self, muhat, status, mu_test):
        """Toys [C] whose test statistic needs their fixed-POI fit, from their free fits'
        ``muhat`` and ``status`` [C] (:func:`settled_by_free`)."""
        return ~settled_by_free(self.side, muhat, status, mu_test, xp=np)

    def _retries(self, data, mu_test, free_res: ChunkFits, fixed_res: ChunkFits, refitted, group):
        """Steps 1-5 of the retries of a chunk's toys [R]: the free fits' steps 1-4
        (:meth:`_settle`, :meth:`_rescue`), then those of the fixed-POI fits that the test
        statistic still needs once the free fits are final, then step 5
        (:meth:`_local_minima`). Returns drawn [R] bool and needed [R] bool
        (:meth:`_tally`)."""
        # a toy drawn from a NaN expectation (a broken model) has no valid data: its fits
        # have failed, and no retry can help (fit() refuses such data)
        drawn = ~invalid_data(self.model, data).any(axis=-1)
        self._settle("free", data, mu_test, free_res, drawn, group)
        self._rescue("free", data, mu_test, free_res, drawn)
        needed = self._needed(free_res.pars[:, self.model.poi_index], free_res.status, mu_test)
        fixed_before = fixed_res.twice_nll.copy()
        self._settle("fixed", data, mu_test, fixed_res, drawn & needed, group)
        self._rescue("fixed", data, mu_test, fixed_res, drawn & needed)
        # a twin that went lower here may leave its free fit above it, refitted in the call or not
        refitted = refitted & ~(fixed_res.twice_nll < fixed_before)
        self._local_minima(data, free_res, fixed_res, refitted, needed)
        return drawn, needed

    def _teststats(self, toys: PerToy, index, whole, repaired, mu_test):
        """The test statistics [C] of a chunk's toys once its retries are made: every
        toy's numbers (:meth:`_fetch`), those of the toys ``index`` [R] as the retries
        left them (``whole``: their data and both fits; ``repaired``: drawn and needed
        [R] from :meth:`_retries`). Counts the chunk call's work (:meth:`_tally`).

        Returns:
            teststat [C], failed [C] bool, needed [C] bool (toys whose fixed-POI fit was used).
        """
        free, fixed = toys.free, toys.fixed
        muhat, f_free, s_free = toys.muhat.copy(), free.twice_nll.copy(), free.status.copy()
        f_fixed, s_fixed = fixed.twice_nll.copy(), fixed.status.copy()
        _, free_res, fixed_res, _ = whole
        muhat[index], f_free[index] = free_res.pars[:, self.model.poi_index], free_res.twice_nll
        s_free[index], f_fixed[index], s_fixed[index] = free_res.status, fixed_res.twice_nll, fixed_res.status
        drawn, needed = np.ones(muhat.size, bool), self._needed(muhat, s_free, mu_test)
        drawn[index], needed[index] = repaired
        self._tally(toys, drawn, needed)
        # a fixed-POI fit not needed (the chunk call may have skipped it) takes the free
        # fit's -2 log L, as ROOT's ProfileLikelihoodTestStat does, and cannot fail the toy
        f_fixed = np.where(needed, f_fixed, f_free)
        failed = (s_free != CONVERGED) | ((s_fixed != CONVERGED) & needed)
        return from_fits(self.test_stat, mu_test, f_fixed, f_free, muhat), failed, needed

    def _tally(self, per_toy: PerToy, drawn, needed):
        """Counts what the chunk call did for its toys [C] (``drawn``, ``needed``: as
        :meth:`_retries` returns them, True and the chunk's own elsewhere): the fits it
        continued, restarted at the model's edge (and which went lower) and refitted
        from their twin, of the fits the toys use, and the fixed-POI fits not needed.
        What the host's retries did, they count themselves."""
        stats = self.stats
        for res, wanted in ((per_toy.free, drawn), (per_toy.fixed, drawn & needed)):
            stats.continued += int(np.sum(res.continued & wanted))
            stats.at_edge += int(np.sum(res.edge_refit & wanted))
            stats.lower_at_edge += int(np.sum(res.edge_lower & wanted))
            stats.lower_along_edge += int(np.sum(res.along_lower & wanted))
        stats.local_minima += int(per_toy.refitted.sum())
        stats.skipped += int(np.sum(~needed))

    def _settle(self, kind, data, mu_test, res: ChunkFits, wanted, group):
        """Steps 1 and 2 of the host's retries for the ``wanted`` [C] fits of one kind of
        a chunk, in place: the stragglers the chunk call had no room for continue, and the
        fits at the model's edge that it did not look at get their new start."""
        stats = self.stats
        pars, f, status = res.pars, res.twice_nll, res.status
        # 1. continue from where the first pass stopped (those the chunk had no room for)
        late = np.flatnonzero((status != CONVERGED) & wanted & ~res.continued)
        if late.size:
            stats.continued += late.size
            pars[late], f[late], status[late] = self._continue(kind, data[late], pars[late], group)
        # 2. minima at the model's edge (optimize.at_edge) that the chunk call did not
        # finish: a new start from the suggested init (heavily damped Gauss-Newton) where
        # the call made none, the lower minimum kept, then on along the edge from there
        # (optimize.along_edge), as fit() does, the lower kept again
        done = np.flatnonzero((status == CONVERGED) & wanted & ~res.edge_checked)
        edge = done[at_edge(self.model, data[done], pars[done])]
        new = edge[~res.edge_refit[edge]]
        if new.size:
            r = self._refit(kind, data[new], mu_test[new], init=self._start(kind, mu_test[new]), retry=False,
                            damping=RESTART_DAMPING)
            lower = r.converged & (r.twice_nll < f[new])
            _store(pars, f, status, new[lower], _select(r, lower))
            stats.at_edge += new.size
            stats.lower_at_edge += int(lower.sum())
            edge = edge[at_edge(self.model, data[edge], pars[edge])]
        if edge.size:
            free = np.broadcast_to(self._free_of(kind), pars[edge].shape)
            p2, f2, s2, _, _ = along_edge(self.model, data[edge], pars[edge], free, self.bounds, self.tol,
                                          self.maxiter)
            lower = (s2 == CONVERGED) & (f2 < f[edge])
            pars[edge[lower]], f[edge[lower]] = p2[lower], f2[lower]
            stats.lower_along_edge += int(lower.sum())

    def _start(self, kind, mu_test):
        """:func:`new_start` of the host's retries for fits [R] of one kind, the POI of
        fixed-POI fits at the tested values ``mu_test`` [R]."""
        init = self.model.suggested_init()
        x0 = np.repeat(init[None], len(mu_test), axis=0)
        if kind == "fixed":
            x0[:, self.model.poi_index] = mu_test
        return new_start(init, x0, self._free_of(kind), self.bounds[:, 0], self.bounds[:, 1], xp=np)

    def _rescue(self, kind, data, mu_test, res: ChunkFits, wanted):
        """Steps 3 and 4 of the host's retries for the ``wanted`` [C] fits of one kind of
        a chunk, after :meth:`_settle`, in place."""
        stats = self.stats
        pars, f, status = res.pars, res.twice_nll, res.status
        still = np.flatnonzero((status != CONVERGED) & wanted)
        if still.size == 0:
            return
        # 3. new starts from the suggested init, Newton and heavily damped Gauss-Newton:
        # hard toys have several minima (empty bins, the POI at its bound), and the
        # lower converged one is kept; 4. iminuit where neither converged
        start = self._start(kind, mu_test[still])
        stats.restarted += still.size
        candidates = [self._refit(kind, data[still], mu_test[still], init=start, retry=False, newton=True),
                      self._refit(kind, data[still], mu_test[still], init=start, retry=False, damping=RESTART_DAMPING)]
        r = _lowest_converged(candidates)
        _store(pars, f, status, still, r)
        rest = ~r.converged
        if rest.any():
            r = self._refit(kind, data[still[rest]], mu_test[still[rest]], init=start[rest], damping=RESTART_DAMPING,
                            retry=True)
            stats.minuit += int(np.sum(r.by_minuit))
            _store(pars, f, status, still[rest], r)

    def _local_minima(self, data, free_res: ChunkFits, fixed_res: ChunkFits, refitted, wanted):
        """Step 5 of the host's retries, in place: a free fit above its fixed twin sits in
        a local minimum: refit from the twin (of the ``wanted`` [C] toys, those the chunk
        call had no room for, or whose refit there did not converge)."""
        f_free, f_fixed = free_res.twice_nll, fixed_res.twice_nll
        worse = np.flatnonzero(
            local_minimum(f_free, f_fixed, free_res.status, fixed_res.status, self.tol, xp=np) & ~refitted & wanted
        )
        if worse.size:
            self.stats.local_minima += worse.size
            r = self._refit("free", data[worse], None, init=fixed_res.pars[worse], retry=True)
            better = r.converged & (r.twice_nll < f_free[worse])
            _store(free_res.pars, f_free, free_res.status, worse[better], _select(r, better))

    # -- rows --------------------------------------------------------------------------
    def teststats(self, hypothesis, mu_index, toy_index, bar=None) -> tuple[np.ndarray, np.ndarray]:
        """Test statistics of toys given by rows: three int arrays [R].

        Returns:
            teststat [R] (NaN where a fit failed after every retry), failed [R] bool.
        """
        hypothesis = np.asarray(hypothesis, np.int64)
        mu_index = np.asarray(mu_index, np.int64)
        toy_index = np.asarray(toy_index, np.int64)
        out = np.full(hypothesis.size, np.nan)
        failed = np.zeros(hypothesis.size, bool)
        model = self.model
        compiled = model.compiled
        # a run smaller than a chunk pads only to a power of two (a few compiled shapes)
        slots = lockstep_slots(model)
        chunk = padded_size(hypothesis.size, self.chunk_size, slots) if hypothesis.size else self.chunk_size
        group = _device.lockstep_group(chunk, slots)
        chunk -= chunk % group
        lo, hi = jnp.asarray(self.bounds[:, 0]), jnp.asarray(self.bounds[:, 1])
        free, poi_mask = jnp.asarray(self.free), jnp.asarray(self.poi_mask)
        init = jnp.asarray(model.suggested_init())
        capacity, refits = continuation_capacity(chunk, group), refit_capacity(chunk, group)
        queue = _device.platform() == "cpu"  # lockstep slots refilled from a queue (toy_chunk)
        edge = 0 if queue else edge_capacity(chunk)
        started = time.perf_counter()

        def dispatch(rows, take):
            """Start the chunk call of ``rows`` (JAX returns before it has run)."""
            h, i, t = hypothesis[take], mu_index[take], toy_index[take]
            gen = np.where((h == SIGNAL_PLUS_BACKGROUND)[:, None], self.gen_sb[i], self.gen_b[i])
            args = (compiled, jnp.asarray(self.seed, jnp.uint32), jnp.asarray(h), jnp.asarray(i), jnp.asarray(t),
                    jnp.asarray(gen), init, jnp.asarray(self.mus[i]), poi_mask, free, lo, hi, self.tol,
                    jnp.asarray(rows.size))
            compiled_call, compile_seconds = _compiled(args, group, capacity, refits, edge, self.maxiter, queue,
                                                       self.side, self.kernel_dir)
            self.stats.compile_seconds += compile_seconds
            return rows, self.mus[i][: rows.size], compiled_call(*args)

        device = jax.config.jax_default_device  # thread-local: the retry thread re-enters it

        deferred = []  # the chunks whose retries wait until the device is idle (a CPU's)

        def held(rows, mu_test, toys, index, outputs, *_):
            """Bytes a deferred chunk holds: its call's outputs."""
            return sum(a.nbytes for a in outputs)

        def finish(rows, mu_test, toys: PerToy, index, outputs, rest=None):
            """The host's part of one chunk (:meth:`_fetch`): the retries of its toys
            ``index``, taken whole from the call's ``outputs`` (:meth:`_whole`), then
            every toy's test statistic; ``rest``: a deferred chunk's toys taken whole
            and their retries."""
            repairing = time.perf_counter()
            with jax.default_device(device):
                if rest is None:
                    whole = self._whole(outputs, index)
                    defer = queue and sum(held(*job) for job in deferred) < _DEFERRED_BYTES
                    repaired = self._repair(whole[0], mu_test[index], *whole[1:], group, defer)
                else:
                    whole, retries = rest
                    repaired = retries()
            self.stats.host_retry_seconds += time.perf_counter() - repairing
            if callable(repaired):
                deferred.append((rows, mu_test, toys, index, outputs, (whole, repaired)))
                return
            ts, bad, needed = self._teststats(toys, index, whole, repaired, mu_test)
            out[rows] = np.where(bad, np.nan, ts)
            failed[rows] = bad
            self.stats.toys += rows.size
            self.stats.fits += rows.size + int(needed.sum())
            self.stats.failed += int(bad.sum())
            if bar is not None:
                bar.update(rows.size)

        # The host's retries (iminuit above all: seconds a fit) run in a thread of their
        # own, chunk after chunk, while this one keeps the device busy with the next
        # chunks; a chunk's retries depend on its rows only, so the answer is the same.
        chunks = list(padded_chunks(hypothesis.size, chunk))
        pending = dispatch(*chunks[0]) if chunks else None
        retries = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpufit-retries")
        try:
            queued = collections.deque()
            for k in range(len(chunks)):
                rows, mu_test, outputs = pending
                # the next chunk runs on the device while the host reads and repairs this one
                pending = dispatch(*chunks[k + 1]) if k + 1 < len(chunks) else None
                waited = time.perf_counter()
                host = self._fetch(outputs, rows.size, mu_test)
                self.stats.device_wait_seconds += time.perf_counter() - waited
                while len(queued) >= _QUEUED_CHUNKS:  # bounded: each holds a chunk's outputs
                    queued.popleft().result()
                queued.append(retries.submit(finish, rows, mu_test, *host, outputs))
            for job in queued:
                job.result()
            for job in deferred:  # every chunk call has returned: the device is idle
                finish(*job)
        finally:  # an error or Ctrl-C does not wait for the retries of the chunks still queued
            retries.shutdown(wait=False, cancel_futures=True)
        self.stats.seconds += time.perf_counter() - started
        return out, failed

    def run(self) -> dict:
        """All toys of every mu: ``teststat_sb``, ``teststat_b`` [M, ntoys] and p-values;
        ``stats`` counts this run alone (:meth:`teststats` adds to them, call by call)."""
        self.stats = ToyStats()
        if self.ntoys is None:
            raise InvalidArgument("this calculator was built with ntoys=None (rows only): give ntoys to run() its toys")
        m, n = len(self.mus), self.ntoys
        hyp = np.repeat([SIGNAL_PLUS_BACKGROUND, BACKGROUND_ONLY], n)
        hypothesis = np.tile(hyp, m)
        mu_index = np.repeat(np.arange(m), 2 * n)
        toy_index = np.tile(np.arange(n), 2 * m)
        with progress_bar(self.progress, 2 * m * n) as bar:
            ts, _ = self.teststats(hypothesis, mu_index, toy_index, bar)
        ts = ts.reshape(m, 2, n)
        return self.summarize(ts[:, 0], ts[:, 1])

    def summarize(self, teststat_sb, teststat_b) -> dict:
        """p-values per mu from toy distributions [M, T]; enforces ``max_failed``."""
        results = [toy_pvalues(self.teststat_obs[k], teststat_sb[k], teststat_b[k]) for k in range(len(self.mus))]
        out = {key: np.array([r[key] for r in results]) for key in results[0]}
        out.update(mu=self.mus, teststat_obs=np.asarray(self.teststat_obs), teststat_sb=teststat_sb,
                   teststat_b=teststat_b)
        out["n_failed"] = count_failed(teststat_sb, teststat_b)
        out["stats"] = self.stats.to_dict()
        check_failed(teststat_sb, teststat_b, self.max_failed, result=out)
        return out


def _lowest_converged(results):
    """Per fit, the candidate result with the lowest -2 log L among those that converged
    (the first candidate where none did)."""
    f = np.stack([np.where(r.converged, r.twice_nll, np.inf) for r in results])  # [R, B]
    pick = np.argmin(f, axis=0)
    fields = ("pars", "twice_nll", "converged", "status", "n_iter", "edm", "by_minuit")
    chosen = {k: np.choose(pick[:, None] if k == "pars" else pick, [getattr(r, k) for r in results])
              for k in fields}
    return dataclasses.replace(results[0], **chosen)


def _compiled_cache_key(args, *static):
    leaves, tree = jax.tree_util.tree_flatten(args)
    return (tree, tuple((np.shape(a), str(getattr(a, "dtype", type(a)))) for a in leaves)) + static


# compiled chunk kernels by argument shapes, shared by every calculator of the process
# (a toy limit's mus, a grid's points): the 16 most recently used are kept
_COMPILED: collections.OrderedDict = collections.OrderedDict()


def _compiled(args, group, capacity, refits, edge, maxiter, queue, side, kernel_dir=None):
    """The compiled chunk function for these argument shapes, and its compile seconds
    (0 when it was compiled before); through :func:`_exported` where ``kernel_dir``."""
    key = _compiled_cache_key(args, group, capacity, refits, edge, maxiter, queue, side)
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
        return _COMPILED[key], 0.0
    start = time.perf_counter()
    statics = dict(first_steps=FIRST_PASS_STEPS, maxiter=maxiter, group=group, capacity=capacity, refits=refits,
                   edge=edge, queue=queue, side=side)
    if kernel_dir is None:
        compiled = toy_chunk.lower(*args, **statics).compile()
    else:
        compiled = _exported(kernel_dir, key, args, statics)
    seconds = time.perf_counter() - start
    _COMPILED[key] = compiled
    if len(_COMPILED) > 16:
        _COMPILED.popitem(last=False)
    return compiled, seconds


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """A digest of gpufit's own source: a serialized kernel is the traced program, so a
    changed source (a development install, same version string) must not reuse it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digest = hashlib.sha256()
    for folder, _, files in sorted(os.walk(root)):
        for name in sorted(f for f in files if f.endswith(".py")):
            with open(os.path.join(folder, name), "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()


def _exported(folder: str, key, args, statics: dict):
    """The chunk kernel by way of ``jax.export``: the first process to need it traces it
    and writes it to ``folder``; the others (a campaign's later jobs) read it back
    instead of tracing it (~2 s of a 1Lbb job's start), and compile it, which JAX's
    persistent compilation cache answers where it points to the same folder. Returns a
    callable taking the chunk's arguments."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    # jax.export names GPUs by their runtime (cuda, rocm); the CPU beside a GPU is "cpu"
    platform = "cpu" if _device.platform() == "cpu" else jax.export.default_export_platform()
    name = hashlib.sha256(repr((key, statics, platform, jax.__version__, __version__, _source_digest())).encode())
    name = name.hexdigest()[:24]
    path = os.path.join(folder, f"toy-chunk-{name}.jax-export")
    try:
        with open(path, "rb") as handle:
            blob = handle.read()
        exported = jax.export.deserialize(bytearray(blob))
    except Exception:  # noqa: BLE001 - not there yet, or not an export of this JAX: trace it (again)
        def flat(*leaves):
            return toy_chunk(*jax.tree_util.tree_unflatten(tree, leaves), **statics)

        exported = jax.export.export(jax.jit(flat), platforms=[platform])(*leaves)
        blob = exported.serialize()
        os.makedirs(folder, exist_ok=True)
        partial = f"{path}.{os.getpid()}.part"
        with open(partial, "wb") as handle:
            handle.write(blob)
        os.replace(partial, path)  # whole or not at all, for jobs reading beside this one
    compiled = jax.jit(exported.call).lower(*leaves).compile()
    return lambda *call_args: compiled(*jax.tree_util.tree_leaves(call_args))


def _store(pars, f, status, rows, r):
    pars[rows], f[rows], status[rows] = r.pars, r.twice_nll, np.where(r.converged, CONVERGED, r.status)


def _select(r, mask):
    return dataclasses.replace(
        r, pars=r.pars[mask], twice_nll=r.twice_nll[mask], converged=r.converged[mask], status=r.status[mask],
        n_iter=r.n_iter[mask], edm=r.edm[mask], by_minuit=r.by_minuit[mask],
    )


class _NoBar:
    def update(self, n):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def progress_bar(progress, total):
    """A tqdm bar over ``total`` toys on stderr (see :func:`show_progress`), or a no-op."""
    if not show_progress(progress):
        return _NoBar()
    return tqdm(total=total, unit="toy", desc="toys", leave=False, smoothing=0.1)
