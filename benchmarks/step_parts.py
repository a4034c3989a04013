"""Where a solver step's time goes, against the batch width: the parts of one
Gauss-Newton step timed alone, and the solver's while loop around them.

    python benchmarks/step_parts.py [--models gen40,sbottom,1lbb] [--batches 1024,8192,32768]
                                    [--solves lapack,unrolled] [--splits local,dense]
                                    [--out benchmarks/results/step-parts-cpu.json]

Rows (microseconds per fit, warm, best of ``--repeat``; datasets are Poisson
fluctuations of the observed data):

- ``value``: -2 log L alone (``twice_nll``), vmapped over the batch;
- ``gradient_curvature``: -2 log L, gradient and curvature factors, the part a step
  evaluates once (``twice_nll_gradient_curvature``);
- ``solve``: the damped step from those factors (``solve_damped``);
- ``fixed_loop_step``: ``lax.fori_loop`` of 20 x (evaluate + solve + move), per step:
  the two parts with no acceptance, bounds, status or early exit;
- ``solver_step``: ``minimize_batch`` with 20 steps and ``tol = 0`` (no fit stops
  early), one lockstep group, per step.

If a row's cost per fit falls as the batch widens, the device is not busy at that
width (launch or loop overhead); ``solver_step`` far above ``fixed_loop_step`` puts the
cost in the solver's bookkeeping rather than in the likelihood or the linear algebra.

``--solves``: the Cholesky factorizations and solves of the damped step (N x N and U x U,
``_solver._cho_solve``) as the library makes them (``lapack``: LAPACK on a CPU, cuSOLVER
and cuBLAS on a GPU) and, with ``unrolled``, written out column by column in plain array
operations that XLA fuses (N <= ``UNROLL_MAX``); every row of each, and the largest
relative difference of the unrolled step from the library's. On an H200 at 1,024 gen40
fits the library's solve cost 0.74 us a fit, 3.6x the likelihood's derivatives
(session 8): a GPU's batched solvers have a latency that narrow lockstep passes pay in
every step. A question for a GPU; on a CPU LAPACK's is the faster (session 15).

``--splits``: the constrained parameters that act on one main bin (``m.local``: a gamma
per bin) on the diagonal of the damped step's N x N matrix, as the solver makes it
(``local``), or every constrained parameter in its product (``dense``: the solver before
session 19); the same step to rounding, reported as for ``--solves``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import fits  # benchmarks/fits.py: Poisson datasets
import toys  # benchmarks/toys.py: the generated and published models
from _report import write_report  # benchmarks/_report.py
from gpufit.likelihood.derivatives import twice_nll_gradient_curvature
from gpufit.likelihood.kernels import twice_nll
from gpufit.optimize import _solver
from gpufit.optimize._solver import minimize_batch, solve_damped

STEPS = 20
UNROLL_MAX = 32  # the largest system written out column by column (its HLO grows as N^2)
LIBRARY_CHO_SOLVE = _solver._cho_solve  # main() swaps the solver's for the unrolled one


def unrolled_cho_solve(matrix, rhs):
    """``cho_solve((cholesky(matrix), True), rhs)`` for ONE symmetric positive definite
    matrix [n, n] and rhs [n, k], column by column in plain array operations (the
    solver's own :func:`~gpufit.optimize._solver._small_cho_solve`, which its secant end
    game uses for a 4 x 4 system), the library's beyond ``UNROLL_MAX``."""
    if matrix.shape[-1] > UNROLL_MAX:
        return LIBRARY_CHO_SOLVE(matrix, rhs)
    return _solver._small_cho_solve(matrix, rhs)


SOLVES = {"lapack": LIBRARY_CHO_SOLVE, "unrolled": unrolled_cho_solve}


def with_split(m, split):
    """The compiled tables ``m`` with the damped step's split ``split`` (see above)."""
    if split == "local":
        return m
    if split != "dense":
        raise SystemExit(f"unknown split {split!r}; choose local or dense")
    return dataclasses.replace(m, spread=jnp.concatenate([m.spread, m.local]), local=m.local[:0],
                               local_bin=m.local_bin[:0])


def best_time(fn, repeat):
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def parts(m, data, x0, free, lo, hi):

    @jax.jit
    def value(data, x):
        return jax.vmap(lambda d, p: twice_nll(m, p, d))(data, x)

    @jax.jit
    def gradient_curvature(data, x):
        return jax.vmap(lambda d, p: twice_nll_gradient_curvature(m, p, d))(data, x)

    @jax.jit
    def solve(factors):
        _, g, jac, w, c = factors
        return jax.vmap(lambda j, w_, c_, g_: solve_damped(m, j, w_, c_, g_, 1e-3, free))(jac, w, c, g)

    @jax.jit
    def fixed_loop(data, x):
        def one(d, p):
            def body(_, p):
                _, g, jac, w, c = twice_nll_gradient_curvature(m, p, d)
                delta = solve_damped(m, jac, w, c, g, 1e-3, free)
                return jnp.where(free, jnp.clip(p + delta, lo, hi), p)

            return jax.lax.fori_loop(0, STEPS, body, p)

        return jax.vmap(one)(data, x)

    def solver():
        return minimize_batch(m, data, x0, free, lo, hi, 0.0, maxiter=STEPS, group=None)

    factors = gradient_curvature(data, x0)
    return {
        "value": (lambda: value(data, x0), 1),
        "gradient_curvature": (lambda: gradient_curvature(data, x0), 1),
        "solve": (lambda: solve(factors), 1),
        "fixed_loop_step": (lambda: fixed_loop(data, x0), STEPS),
        "solver_step": (solver, STEPS),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="gen40,sbottom,1lbb")
    parser.add_argument("--batches", default="1024,8192,32768")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--solves", default="lapack", help="lapack and/or unrolled (see above)")
    parser.add_argument("--splits", default="local", help="local and/or dense (see above)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "step-parts-cpu.json"))
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        model, data = toys.load(name)
        b = model.suggested_bounds()
        lo, hi = jnp.asarray(b[:, 0]), jnp.asarray(b[:, 1])
        free = jnp.asarray(~model.fixed_parameters())
        for n in (int(x) for x in args.batches.split(",")):
            datasets = jnp.asarray(fits.datasets(model, np.asarray(data), n))
            x0 = jnp.broadcast_to(jnp.asarray(model.suggested_init()), (n, model.n_pars))
            first = None  # the step of the first variant, the others' reference
            for solve in args.solves.split(","):
                for split in args.splits.split(","):
                    _solver._cho_solve = SOLVES[solve]  # read when a kernel is traced: trace them all again
                    jax.clear_caches()
                    row = {"model": name, "parameters": model.n_pars, "bins": model.n_main, "batch": n,
                           "solve": solve, "split": split, "local_parameters": int(np.asarray(model.compiled.local).size)}
                    timed = parts(with_split(model.compiled, split), datasets, x0, free, lo, hi)
                    for part, (fn, per) in timed.items():
                        row[f"{part}_us_per_fit"] = 1e6 * best_time(fn, args.repeat) / n / per
                    step = np.asarray(timed["solve"][0]())
                    if first is None:
                        first = step
                    else:
                        row["max_rel_diff_vs_first"] = float(np.max(np.abs(step - first))
                                                             / max(np.max(np.abs(first)), 1e-300))
                    rows.append(row)
                    print(f"{name:8s} P={model.n_pars:4d} N={model.n_main:4d} batch {n:6d} {solve:8s} {split:5s} "
                          "us per fit: "
                          + "  ".join(f"{k[:-11]} {v:8.3f}" for k, v in row.items() if k.endswith("_us_per_fit"))
                          + (f"  max rel diff {row['max_rel_diff_vs_first']:.1e}" if "max_rel_diff_vs_first" in row
                             else ""), flush=True)
                    write_report(args.out, "step_parts.py", args, rows)
            _solver._cho_solve = SOLVES["lapack"]
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
