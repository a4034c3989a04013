"""Where a solver step's time goes, against the batch width: the parts of one
Gauss-Newton step timed alone, and the solver's while loop around them.

    python benchmarks/step_parts.py [--models gen40,sbottom,1lbb] [--batches 1024,8192,32768]
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
"""

from __future__ import annotations

import argparse
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
from gpufit.optimize._solver import minimize_batch, solve_damped

STEPS = 20


def best_time(fn, repeat):
    jax.block_until_ready(fn())  # compile
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return min(times)


def parts(model, data, x0, free, lo, hi):
    m = model.compiled

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
            row = {"model": name, "parameters": model.n_pars, "bins": model.n_main, "batch": n}
            for part, (fn, per) in parts(model, datasets, x0, free, lo, hi).items():
                row[f"{part}_us_per_fit"] = 1e6 * best_time(fn, args.repeat) / n / per
            rows.append(row)
            print(f"{name:8s} P={model.n_pars:4d} N={model.n_main:4d} batch {n:6d}  us per fit: " + "  ".join(
                f"{k[:-11]} {v:8.3f}" for k, v in row.items() if k.endswith("_us_per_fit")), flush=True)
            write_report(args.out, "step_parts.py", args, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
