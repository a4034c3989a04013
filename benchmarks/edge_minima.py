"""Minima at an empty bin's edge: how far the toys' chunk call and a fit without the edge
solver stop short of it (issue 8, session 21).

    python benchmarks/edge_minima.py [--fits 2000] [--toys 1000] [--seed 1]
                                     [--out benchmarks/results/edge-minima-cpu.json]

1. ``--fits`` 1Lbb fits of fluctuated observed data (``fits.py``'s datasets, ``--seed``),
   fitted by ``gpufit.fit``, and again with the edge solver left out of its retries
   (``fit``'s pass over the fits converged at the edge replaced by nothing): how many
   fits end at the edge, how many end lower with it (by more than 1e-3), by how much,
   and the seconds of each (warm, the second call).
2. ``--toys`` 1Lbb toys at mu = 1 (qtilde, seed 0) from the toy engine, whose chunk call
   runs no edge solver, against the same toys' test statistics from ``gpufit.fit``
   (toy tolerance, the engine's generating points as starts): how many differ by more
   than 1e-3, and CLs both ways.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import fits  # benchmarks/fits.py: the 1Lbb model and its datasets
import gpufit
from _report import write_report  # benchmarks/_report.py
from gpufit.infer.sampling import sample_toys, toy_keys
from gpufit.infer.test_statistics import from_fits
from gpufit.infer.toys import BACKGROUND_ONLY, SIGNAL_PLUS_BACKGROUND, ToyCalculator
from gpufit.optimize import at_edge


def timed_fit(model, data, **options):
    gpufit.fit(model, data, hesse=False, **options)  # compiles
    start = time.perf_counter()
    result = gpufit.fit(model, data, hesse=False, **options)
    return result, time.perf_counter() - start


def fit_rows(n, seed):
    model, observed = fits.load("1lbb")
    data = fits.datasets(model, observed, n, seed=seed)
    fit_module = sys.modules["gpufit.optimize.fit"]
    with_edge, seconds = timed_fit(model, data)
    along_edge = fit_module._along_edge
    fit_module._along_edge = lambda compiled, d, x0, *rest: (  # the pass left out: every fit as it came
        x0, np.full(len(x0), np.inf), np.full(len(x0), -1), np.zeros(len(x0), int), np.full(len(x0), np.inf))
    try:
        without, seconds_without = timed_fit(model, data)
    finally:
        fit_module._along_edge = along_edge
    gain = without.twice_nll - with_edge.twice_nll
    return {
        "part": "fits", "model": "1lbb", "fits": n, "seed": seed,
        "at_edge": int(np.sum(with_edge.converged & at_edge(model, data, with_edge.pars))),
        "lower_by_more_than_1e-3": int(np.sum(gain > 1e-3)), "higher_by_more_than_1e-6": int(np.sum(gain < -1e-6)),
        "largest_gain": float(gain.max()), "converged": int(with_edge.converged.sum()),
        "seconds": seconds, "seconds_without_edge_solver": seconds_without,
    }


def toy_rows(n):
    ws = gpufit.Workspace.example("1lbb")
    model = ws.model()
    calc = ToyCalculator(model, ws.data(model), [1.0], ntoys=n, seed=0, progress=False)
    engine = calc.run()
    refit = {}
    for name, hypothesis, gen in (("sb", SIGNAL_PLUS_BACKGROUND, calc.gen_sb), ("b", BACKGROUND_ONLY, calc.gen_b)):
        keys = toy_keys(0, jnp.full(n, hypothesis), jnp.zeros(n, int), jnp.arange(n))
        starts = np.repeat(gen[:1], n, axis=0)
        toys = np.asarray(jax.jit(sample_toys)(model.compiled, jnp.asarray(starts), keys))
        free = gpufit.fit(model, toys, init=starts, hesse=False, tol=calc.tol)
        fixed = gpufit.fit(model, toys, init=starts, fixed={model.poi_name: 1.0}, hesse=False, tol=calc.tol)
        refit[name] = from_fits("qtilde", 1.0, fixed.twice_nll, free.twice_nll, free.pars[:, model.poi_index])
    again = calc.summarize(refit["sb"][None], refit["b"][None])
    rows = []
    for name in ("sb", "b"):
        diff = refit[name] - engine["teststat_" + name][0]
        rows.append({"part": "toys", "model": "1lbb", "toys": n, "hypothesis": name,
                     "differ_by_more_than_1e-3": int(np.sum(np.abs(diff) > 1e-3)),
                     "largest_difference": float(np.abs(diff).max())})
    rows.append({"part": "toys", "model": "1lbb", "toys": n, "cls_engine": float(engine["cls_obs"][0]),
                 "cls_fit": float(again["cls_obs"][0]), "cls_error": float(engine["cls_obs_err"][0])})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fits", type=int, default=2000)
    parser.add_argument("--toys", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "edge-minima-cpu.json"))
    args = parser.parse_args()
    rows = []
    if args.fits:
        rows.append(fit_rows(args.fits, args.seed))
        print(rows[-1], flush=True)
        write_report(args.out, "edge_minima.py", args, rows)
    if args.toys:
        for row in toy_rows(args.toys):
            rows.append(row)
            print(row, flush=True)
        write_report(args.out, "edge_minima.py", args, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
