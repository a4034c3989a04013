"""Minima at an empty bin's edge: how far the toy engine and a fit without the edge solver
stop short of it (issue 8, sessions 21 and 22).

    python benchmarks/edge_minima.py [--fits 2000] [--toys 1000] [--seed 1]
                                     [--out benchmarks/results/edge-minima-cpu.json]

1. ``--fits`` 1Lbb fits of fluctuated observed data (``fits.py``'s datasets, ``--seed``),
   fitted by ``gpufit.fit``, and again with the edge solver left out of its retries
   (``fit``'s pass over the fits converged at the edge replaced by nothing): how many
   fits end at the edge, how many end lower with it (by more than 1e-3), by how much,
   and the seconds of each (warm, the second call).
2. ``--toys`` 1Lbb toys at mu = 1 (qtilde, seed 0) from the toy engine, and again with
   the solver along the edge left out of its retries (the host's ``along_edge``, which a
   CPU's chunk call leaves every fit at the edge to, replaced by nothing), against the
   same toys' fits by ``gpufit.fit`` (toy tolerance, the engine's generating points as
   starts): per kind of fit, how many of the engine's minima lie above fit()'s by more
   than 1e-3 and how many below; how many test statistics differ by more than 1e-3; CLs
   each way; the engine's seconds each way (warm). The engine's -2 log L per fit are
   read where it computes the test statistics (one chunk: all toys in row order).
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
from gpufit.infer import toys as toys_module
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
    along_edge = fit_module.along_edge
    fit_module.along_edge = lambda model, d, x0, *rest: (  # the pass left out: every fit as it came
        x0, np.full(len(x0), np.inf), np.full(len(x0), -1), np.zeros(len(x0), int), np.full(len(x0), np.inf))
    try:
        without, seconds_without = timed_fit(model, data)
    finally:
        fit_module.along_edge = along_edge
    gain = without.twice_nll - with_edge.twice_nll
    return {
        "part": "fits", "model": "1lbb", "fits": n, "seed": seed,
        "at_edge": int(np.sum(with_edge.converged & at_edge(model, data, with_edge.pars))),
        "lower_by_more_than_1e-3": int(np.sum(gain > 1e-3)), "higher_by_more_than_1e-6": int(np.sum(gain < -1e-6)),
        "largest_gain": float(gain.max()), "converged": int(with_edge.converged.sum()),
        "seconds": seconds, "seconds_without_edge_solver": seconds_without,
    }


def engine_fits(model, observed, n, along):
    """The toy engine's run of ``n`` toys per hypothesis at mu = 1 (seed 0, one chunk), with
    or without the solver along the edge: its result, and -2 log L [2n] of its free and
    fixed-POI fits (inf where a fixed-POI fit was not needed), in row order."""
    real = toys_module.along_edge
    if not along:
        toys_module.along_edge = lambda model, d, x0, *rest: (
            x0, np.full(len(x0), np.inf), np.full(len(x0), -1), np.zeros(len(x0), int), np.full(len(x0), np.inf))
    seen, read = [], toys_module.ToyCalculator._teststats

    def spy(self, per_toy, index, whole, repaired, mu_test):
        f_free, f_fixed = per_toy.free.twice_nll.copy(), per_toy.fixed.twice_nll.copy()
        f_free[index], f_fixed[index] = whole[1].twice_nll, whole[2].twice_nll
        seen.append((f_free, f_fixed))
        return read(self, per_toy, index, whole, repaired, mu_test)

    toys_module.ToyCalculator._teststats = spy
    try:
        calc = ToyCalculator(model, observed, [1.0], ntoys=n, seed=0, progress=False, chunk_size=2 * n)
        calc.run()  # compiles (and warms the host's kernels)
        seen.clear()
        result = calc.run()
    finally:
        toys_module.ToyCalculator._teststats = read
        toys_module.along_edge = real
    assert len(seen) == 1, "one chunk expected"
    return calc, result, seen[0]


def toy_rows(n):
    model, observed = fits.load("1lbb")
    runs = {along: engine_fits(model, observed, n, along) for along in (True, False)}
    calc = runs[True][0]
    refit = {"free": [], "fixed": [], "q": []}
    for hypothesis, gen in ((SIGNAL_PLUS_BACKGROUND, calc.gen_sb), (BACKGROUND_ONLY, calc.gen_b)):
        keys = toy_keys(0, jnp.full(n, hypothesis), jnp.zeros(n, int), jnp.arange(n))
        starts = np.repeat(gen[:1], n, axis=0)
        data = np.asarray(jax.jit(sample_toys)(model.compiled, jnp.asarray(starts), keys))
        free = gpufit.fit(model, data, init=starts, hesse=False, tol=calc.tol)
        fixed = gpufit.fit(model, data, init=starts, fixed={model.poi_name: 1.0}, hesse=False, tol=calc.tol)
        refit["free"].append(free.twice_nll)
        refit["fixed"].append(fixed.twice_nll)
        refit["q"].append(from_fits("qtilde", 1.0, fixed.twice_nll, free.twice_nll, free.pars[:, model.poi_index]))
    refit = {k: np.concatenate(v) for k, v in refit.items()}
    again = calc.summarize(refit["q"][None, :n], refit["q"][None, n:])
    rows = []
    for along, (_, result, (f_free, f_fixed)) in runs.items():
        q = np.concatenate([result["teststat_sb"][0], result["teststat_b"][0]])
        row = {"part": "toys", "model": "1lbb", "toys": n, "solver_along_the_edge": along,
               "seconds": result["stats"]["seconds"], "lower_along_edge": result["stats"]["lower_along_edge"],
               "teststats_differ_by_more_than_1e-3": int(np.sum(np.abs(q - refit["q"]) > 1e-3)),
               "cls_engine": float(result["cls_obs"][0]), "cls_fit": float(again["cls_obs"][0]),
               "cls_error": float(result["cls_obs_err"][0])}
        for kind, mine in (("free", f_free), ("fixed", f_fixed)):
            used = np.isfinite(mine)  # a fixed-POI fit the statistic did not need is not run
            diff = mine[used] - refit[kind][used]
            row[f"{kind}_fits_compared"] = int(used.sum())
            row[f"{kind}_engine_above_fit_by_1e-3"] = int(np.sum(diff > 1e-3))
            row[f"{kind}_engine_below_fit_by_1e-3"] = int(np.sum(diff < -1e-3))
            row[f"{kind}_largest_engine_excess"] = float(max(diff.max(), 0.0))
        rows.append(row)
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
