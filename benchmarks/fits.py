"""Fits per second: gpufit's batched fits against pyhf's one-by-one fits, same run.

    python benchmarks/fits.py [--batches 1,10,100,1000,10000] [--models sbottom,1lbb]
                              [--pyhf-fits 5] [--out benchmarks/results/fits-cpu.json]

Datasets are Poisson fluctuations of the observed main data (auxiliary data kept);
each gpufit batch is timed warm (after a first call that compiles), and pyhf fits
the first few of the same datasets one at a time with its jax backend and scipy
(its fastest configuration) and, for reference, numpy.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pyhf

import gpufit
from _report import write_report  # benchmarks/_report.py


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


def time_pyhf(model, toys, backend):
    pyhf.set_backend(backend, pyhf.optimize.scipy_optimizer())
    pyhf.infer.mle.fit(toys[0], model.pyhf_model)  # warm-up (jit)
    start = time.perf_counter()
    for d in toys:
        pyhf.infer.mle.fit(d, model.pyhf_model)
    return len(toys) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,10,100,1000,10000")
    parser.add_argument("--models", default="sbottom,1lbb")
    parser.add_argument("--pyhf-fits", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "fits-cpu.json"))
    args = parser.parse_args()
    rows = []

    def write():
        write_report(args.out, "fits.py", args, rows)

    for name in args.models.split(","):
        model, data = load(name)
        toys = datasets(model, data, max(int(b) for b in args.batches.split(",")))
        ref = {b: time_pyhf(model, toys[: args.pyhf_fits], b) for b in ("jax", "numpy")}
        for batch in (int(b) for b in args.batches.split(",")):
            gpufit.fit(model, toys[:batch], hesse=False)  # compile
            start = time.perf_counter()
            result = gpufit.fit(model, toys[:batch], hesse=False)
            seconds = time.perf_counter() - start
            rate = batch / seconds
            row = {
                "model": name, "parameters": model.n_pars, "batch": batch, "seconds": seconds,
                "gpufit_fits_per_s": rate, "pyhf_jax_fits_per_s": ref["jax"], "pyhf_numpy_fits_per_s": ref["numpy"],
                "ratio_vs_pyhf_jax": rate / ref["jax"], "n_failed": result.n_failed,
                "mean_iterations": float(np.mean(result.n_iter)), "max_iterations": int(np.max(result.n_iter)),
            }
            rows.append(row)
            print(f"{name:8s} P={model.n_pars:4d} B={batch:6d}  gpufit {rate:9.1f} fits/s  "
                  f"pyhf-jax {ref['jax']:7.1f}  pyhf-numpy {ref['numpy']:6.2f}  "
                  f"x{rate / ref['jax']:6.1f} vs pyhf-jax  failed {result.n_failed}  "
                  f"steps mean {np.mean(result.n_iter):.1f} max {np.max(result.n_iter)}", flush=True)
            write()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
