"""Fits per second: gpufit's batched fits against pyhf's one-by-one fits, same run.

    python benchmarks/fits.py [--batches 1,10,100,1000,10000] [--models sbottom,1lbb]
                              [--pyhf-seconds 30] [--repeats 3] [--tols 1e-8,1e-6]
                              [--out benchmarks/results/fits-cpu.json]

Datasets are Poisson fluctuations of the observed main data (auxiliary data kept);
each gpufit batch is timed warm (after a first call that compiles; the median of
``--repeats`` calls, every one kept in the JSON: this machine's speed drifts), and pyhf fits
the same datasets one at a time, as many as it fits in ``--pyhf-seconds`` (after a
warm-up fit), with its jax backend and scipy (its fastest configuration) and, for
reference, numpy. Both sides use every core XLA and BLAS see. gpufit's fits/s counts
each dataset once (its iminuit retries, if any, are extra work inside the same seconds).
``--tols``: gpufit's convergence threshold on the edm (default: ``fit``'s own), a row for
each; a later one also reports how far its minima lie from the first one's
(``max_twice_nll_above_first``, in -2 log L).
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pyhf

import gpufit
from _report import write_report  # benchmarks/_report.py
from gpufit.optimize.fit import DEFAULT_TOL


def workspace(name):
    """The sbottom (RegionA + 1300_205_60) or 1Lbb (C1N2_Wh_hbb_700_300) workspace."""
    if name not in ("sbottom", "1lbb"):
        raise SystemExit(f"unknown model {name!r}; choose sbottom or 1lbb")
    return gpufit.Workspace.example(name)


def load(name):
    ws = workspace(name)
    model = ws.model()
    return model, ws.data(model)


def datasets(model, data, n, seed=0):
    rng = np.random.default_rng(seed)
    out = np.tile(data, (n, 1))
    out[:, : model.n_main] = rng.poisson(data[: model.n_main], size=(n, model.n_main))
    return out


def time_pyhf(model, toys, backend, seconds):
    """pyhf fits of ``toys`` one at a time for at least ``seconds`` (or all of them):
    (fits/s, fits timed, seconds timed)."""
    pyhf.set_backend(backend, pyhf.optimize.scipy_optimizer())
    pyhf.infer.mle.fit(toys[0], model.pyhf_model)  # warm-up (jit)
    start = time.perf_counter()
    n = 0
    while n < len(toys) and (n == 0 or time.perf_counter() - start < seconds):
        pyhf.infer.mle.fit(toys[n], model.pyhf_model)
        n += 1
    elapsed = time.perf_counter() - start
    pyhf.set_backend("numpy")
    return n / elapsed, n, elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,10,100,1000,10000")
    parser.add_argument("--models", default="sbottom,1lbb")
    parser.add_argument("--pyhf-seconds", type=float, default=30.0, help="pyhf fits for at least this long per backend")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed gpufit calls per batch (after the compiling one); the median is reported, all kept")
    parser.add_argument("--tols", default=str(DEFAULT_TOL), help="gpufit's edm thresholds, a row each")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "fits-cpu.json"))
    args = parser.parse_args()
    rows = []

    def write():
        write_report(args.out, "fits.py", args, rows)

    for name in args.models.split(","):
        model, data = load(name)
        toys = datasets(model, data, max(int(b) for b in args.batches.split(",")))
        timed = {b: time_pyhf(model, toys, b, args.pyhf_seconds) for b in ("jax", "numpy")}
        ref = {b: t[0] for b, t in timed.items()}
        for batch in (int(b) for b in args.batches.split(",")):
            first = None
            for tol in (float(t) for t in args.tols.split(",")):
                gpufit.fit(model, toys[:batch], hesse=False, tol=tol)  # compile
                runs = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    result = gpufit.fit(model, toys[:batch], hesse=False, tol=tol)
                    runs.append(time.perf_counter() - start)
                seconds = float(np.median(runs))
                rate = batch / seconds
                row = {
                    "model": name, "parameters": model.n_pars, "batch": batch, "tol": tol, "seconds": seconds,
                    "seconds_runs": runs, "gpufit_fits_per_s": rate, "pyhf_jax_fits_per_s": ref["jax"],
                    "pyhf_numpy_fits_per_s": ref["numpy"], "pyhf_jax_fits_timed": timed["jax"][1],
                    "pyhf_jax_seconds": timed["jax"][2], "pyhf_numpy_fits_timed": timed["numpy"][1],
                    "pyhf_numpy_seconds": timed["numpy"][2], "ratio_vs_pyhf_jax": rate / ref["jax"],
                    "n_failed": result.n_failed, "converged": int(np.sum(result.converged)),
                    "by_minuit": int(np.sum(result.by_minuit)), "mean_iterations": float(np.mean(result.n_iter)),
                    "max_iterations": int(np.max(result.n_iter)),
                }
                if first is None:
                    first = np.asarray(result.twice_nll)
                else:
                    row["max_twice_nll_above_first"] = float(np.max(np.asarray(result.twice_nll) - first))
                rows.append(row)
                print(f"{name:8s} P={model.n_pars:4d} B={batch:6d} tol {tol:.0e}  gpufit {rate:9.1f} fits/s  "
                      f"pyhf-jax {ref['jax']:7.1f}  pyhf-numpy {ref['numpy']:6.2f}  "
                      f"x{rate / ref['jax']:6.1f} vs pyhf-jax  failed {result.n_failed}  "
                      f"steps mean {np.mean(result.n_iter):.1f} max {np.max(result.n_iter)}"
                      + (f"  above the first tol's minima by {row['max_twice_nll_above_first']:.1e} at most"
                         if "max_twice_nll_above_first" in row else ""), flush=True)
                write()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
