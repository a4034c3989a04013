"""Asymptotic upper limits without a grid (TOMS 748 root finding, as pyhf's
``upper_limit(scan=None)``): gpufit cold (first call, compiling) and warm (second call),
and pyhf on the same model in the same run, with both answers side by side.

    python benchmarks/upper_limit.py --models 2ljets,sbottom,1lbb --pyhf-models 2ljets,sbottom

Prints a table and writes ``benchmarks/results/upper-limit-cpu.json``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pyhf

import gpufit
from _report import write_report

HERE = os.path.dirname(os.path.abspath(__file__))


def load(name: str):
    """The gpufit workspace of a benchmark model (bundled with the package)."""
    if name not in ("2ljets", "sbottom", "1lbb"):
        raise SystemExit(f"unknown model {name!r}; choose from 2ljets, sbottom, 1lbb")
    return gpufit.Workspace.example(name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="2ljets,sbottom,1lbb")
    parser.add_argument("--pyhf-models", default="2ljets,sbottom",
                        help="models also run with pyhf (numpy backend, scipy optimizer)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "upper-limit-cpu.json"))
    args = parser.parse_args()
    pyhf.set_backend("numpy")
    rows = []
    print(f"{'model':8s} {'P':>4s} {'cold s':>7s} {'warm s':>7s} {'pyhf s':>8s} {'observed':>10s} "
          f"{'pyhf obs':>10s} {'max rel diff':>12s}")
    for name in args.models.split(","):
        ws = load(name)
        model = ws.model()
        data = ws.data(model)
        start = time.perf_counter()
        cold = gpufit.upper_limit(model, data)
        cold_s = time.perf_counter() - start
        start = time.perf_counter()
        warm = gpufit.upper_limit(model, data)
        warm_s = time.perf_counter() - start
        ours = np.array([warm.observed, *warm.expected])
        row = {"model": name, "parameters": model.n_pars, "gpufit_cold_seconds": cold_s,
               "gpufit_warm_seconds": warm_s, "gpufit_limits": ours.tolist(),
               "gpufit_evaluations": int(len(warm.mus)), "gpufit_failed_fits": warm.n_failed,
               # the cold call (compiling) must give the warm call's limits
               "gpufit_cold_warm_max_rel_diff": float(np.max(np.abs(np.array([cold.observed, *cold.expected]) / ours
                                                                   - 1.0)))}
        pyhf_s = diff = None
        if name in args.pyhf_models.split(","):
            pmodel = ws.pyhf.model()
            pdata = ws.pyhf.data(pmodel)
            start = time.perf_counter()
            obs, exp = pyhf.infer.intervals.upper_limits.upper_limit(pdata, pmodel, level=0.05)
            pyhf_s = time.perf_counter() - start
            theirs = np.array([float(obs), *[float(e) for e in exp]])
            diff = float(np.max(np.abs(ours / theirs - 1.0)))
            row |= {"pyhf_seconds": pyhf_s, "pyhf_limits": theirs.tolist(), "max_relative_difference": diff}
        rows.append(row)
        print(f"{name:8s} {model.n_pars:4d} {cold_s:7.2f} {warm_s:7.2f} "
              f"{pyhf_s if pyhf_s is not None else float('nan'):8.1f} {ours[0]:10.5f} "
              f"{row.get('pyhf_limits', [float('nan')])[0]:10.5f} {diff if diff is not None else float('nan'):12.1e}",
              flush=True)
        write_report(args.out, "upper_limit.py", args, rows,
                     threads="gpufit, then pyhf (numpy, scipy), one after the other in one process; default threads")


if __name__ == "__main__":
    main()
