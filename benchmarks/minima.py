"""Do the batched toy fits reach MINUIT's minima, and in how many steps?

    python benchmarks/minima.py [--models gen40,sbottom,1lbb] [--toys 500] [--referee 50]
                                [--edge-endgame-edm 1e-3] [--out benchmarks/results/minima-cpu.json]

Per model: ``--toys`` s+b and as many b-only pseudo-experiments at mu = 1, drawn as the
toy calculator draws them (profiled generating points, seed 3), each fitted twice by
``gpufit.fit`` (the POI fixed at 1, and free) from its generating point, with the toy
calculator's tolerance (edm 1e-6), up to 300 steps, and no iminuit fallback. Reported
per kind of fit: mean, 90th percentile and largest number of steps, fits not converged,
seconds (warm). Then the referee: MIGRAD (strategy 1, the exact gradient, up to 20,000
calls) from gpufit's end point, for every fit that did not converge and ``--referee``
others drawn at random; a fit fails the referee when MIGRAD finds a point lower by more
than 1e-3 in -2 log L.

``--edge-endgame-edm`` sets the solver's end game at an empty bin's edge
(``_solver.EDGE_ENDGAME_EDM``; 0 switches it off): the A/B of issue 8, one process each.
"""

from __future__ import annotations

import argparse
import os
import time

import jax.numpy as jnp
import numpy as np
from iminuit import Minuit

import gpufit
import toys as toy_bench  # benchmarks/toys.py: the models
from _report import write_report  # benchmarks/_report.py
from gpufit.infer.sampling import sample_toys, toy_keys
from gpufit.infer.toys import ToyCalculator
from gpufit.optimize import _solver

SEED, TOY_TOL, MAXITER, REFEREE_MARGIN = 3, 1e-6, 300, 1e-3


def draw(model, observed, ntoys):
    """Toy datasets [2T, N + A] (s+b then b-only) and their generating points [2T, P]."""
    calc = ToyCalculator(model, observed, [1.0], ntoys=ntoys, seed=SEED, progress=False)
    hypothesis = np.repeat([0, 1], ntoys)
    toy_index = np.tile(np.arange(ntoys), 2)
    mu_index = np.zeros(2 * ntoys, int)
    gen = np.where((hypothesis == 0)[:, None], calc.gen_sb[mu_index], calc.gen_b[mu_index])
    keys = toy_keys(jnp.asarray(SEED, jnp.uint32), jnp.asarray(hypothesis), jnp.asarray(mu_index),
                    jnp.asarray(toy_index))
    return np.asarray(sample_toys(model.compiled, jnp.asarray(gen), keys)), gen


def migrad(model, data, start, free, bounds):
    """-2 log L at MIGRAD's minimum (strategy 1) from ``start``."""
    d = jnp.asarray(data)

    def fcn(p):
        return float(_solver.value_and_grad_one(model.compiled, d, jnp.asarray(p))[0])

    def grad(p):
        return np.asarray(_solver.value_and_grad_one(model.compiled, d, jnp.asarray(p))[1])

    minuit = Minuit(fcn, np.asarray(start), grad=grad, name=model.parameter_names)
    minuit.errordef = Minuit.LEAST_SQUARES
    minuit.strategy = 1
    minuit.limits = [tuple(b) if f else (-np.inf, np.inf) for b, f in zip(bounds, free)]
    minuit.fixed = [not f for f in free]
    minuit.migrad(ncall=20_000)
    return float(minuit.fval)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="gen40,sbottom,1lbb")
    parser.add_argument("--toys", type=int, default=500)
    parser.add_argument("--referee", type=int, default=50, help="fits per kind that MIGRAD checks besides the failed")
    parser.add_argument("--edge-endgame-edm", type=float, default=_solver.EDGE_ENDGAME_EDM)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "minima-cpu.json"))
    args = parser.parse_args()
    _solver.EDGE_ENDGAME_EDM = args.edge_endgame_edm  # read when the solver is traced: set before any fit
    rows = []
    rng = np.random.default_rng(0)
    for name in args.models.split(","):
        model, observed = toy_bench.load(name)
        data, gen = draw(model, observed, args.toys)
        for kind in ("fixed", "free"):
            free = ~model.fixed_parameters()
            fixed = {}
            start = gen.copy()
            if kind == "fixed":
                free[model.poi_index] = False
                fixed = {model.poi_name: np.ones(len(data))}
                start[:, model.poi_index] = 1.0

            def run():
                return gpufit.fit(model, data, fixed=fixed, init=start, tol=TOY_TOL, maxiter=MAXITER, retry=False,
                                  hesse=False)

            run()  # compiles
            began = time.perf_counter()
            r = run()
            seconds = time.perf_counter() - began
            failed = np.flatnonzero(~r.converged)
            others = np.setdiff1d(np.arange(len(data)), failed)
            checked = np.concatenate([failed, rng.choice(others, min(args.referee, others.size), replace=False)])
            bounds = r.bounds
            lower = np.array([r.twice_nll[i] - migrad(model, data[i], r.pars[i], free, bounds) for i in checked])
            row = {
                "model": name, "parameters": model.n_pars, "fit": kind, "datasets": len(data),
                "edge_endgame_edm": args.edge_endgame_edm, "mean_steps": float(r.n_iter.mean()),
                "p90_steps": float(np.percentile(r.n_iter, 90)), "max_steps": int(r.n_iter.max()),
                "not_converged": int(failed.size), "seconds": seconds, "refereed": int(checked.size),
                "migrad_lower_by_more_than_1e-3": int(np.sum(lower > REFEREE_MARGIN)),
                "largest_migrad_improvement": float(lower.max()) if lower.size else None,
            }
            rows.append(row)
            write_report(args.out, "minima.py", args, rows)
            print(f"{name:8s} P={model.n_pars:4d} {kind:5s} fits {len(data):5d}: steps mean {row['mean_steps']:5.1f} "
                  f"p90 {row['p90_steps']:4.0f} max {row['max_steps']:4d}  not converged {failed.size:3d}  "
                  f"{seconds:6.2f} s   MIGRAD from {checked.size} end points: lower by > 1e-3 in "
                  f"{row['migrad_lower_by_more_than_1e-3']}, at most {row['largest_migrad_improvement']:.2e}",
                  flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
