"""float32 fits against float64 ones on the same datasets (issue: precision-aware solver).

    python benchmarks/float32.py [--models sbottom,1lbb] [--fits 64]
                                 [--out benchmarks/results/float32-cpu.json]

Datasets: Poisson fluctuations of the observed main data (``fits.datasets``, seed 3).
Each float32 minimum is evaluated in float64 and compared with the float64 fit's
minimum: ``excess`` = -2 log L(float32 pars) - -2 log L(float64 pars), in float64.
The target is every float32 fit converged with an excess below 1e-3.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import fits  # benchmarks/fits.py: the models and datasets
import gpufit
from _report import write_report  # benchmarks/_report.py


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sbottom,1lbb")
    parser.add_argument("--fits", type=int, default=64)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "float32-cpu.json"))
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        ws = fits.workspace(name)
        m64, m32 = ws.model(), ws.model(dtype="float32")
        datasets = fits.datasets(m64, np.asarray(ws.data(m64)), args.fits, seed=3)
        r64 = gpufit.fit(m64, datasets, hesse=False)
        start = time.perf_counter()
        r32 = gpufit.fit(m32, datasets.astype(np.float32), hesse=False)
        seconds = time.perf_counter() - start
        excess = np.asarray(m64.twice_nll(r32.pars.astype(np.float64), datasets)) - r64.twice_nll
        row = {"model": name, "parameters": m64.n_pars, "fits": args.fits,
               "float64_converged": int(r64.converged.sum()), "float32_converged": int(r32.converged.sum()),
               "float32_by_minuit": int(r32.by_minuit.sum()), "float32_mean_steps": float(r32.n_iter.mean()),
               "float64_mean_steps": float(r64.n_iter.mean()), "excess_max": float(excess.max()),
               "excess_median": float(np.median(excess)), "fits_above_1e-3": int(np.sum(excess > 1e-3)),
               "float32_seconds_with_compiling": seconds}
        rows.append(row)
        print(f"{name:8s} P={m64.n_pars:4d}  converged float64 {row['float64_converged']}/{args.fits}, float32 "
              f"{row['float32_converged']}/{args.fits} ({row['float32_by_minuit']} by iminuit)  steps "
              f"{row['float64_mean_steps']:.1f} / {row['float32_mean_steps']:.1f}  excess of the float32 minimum: "
              f"max {row['excess_max']:.2e}, median {row['excess_median']:.2e}, {row['fits_above_1e-3']} above 1e-3",
              flush=True)
        write_report(args.out, "float32.py", args, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
