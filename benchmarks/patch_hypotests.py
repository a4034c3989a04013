"""A loop of asymptotic hypotests over the points of a patchset, one model per point: how a
notebook walks a signal grid without ``gpufit.scan``. Each point: its model
(``Workspace.signal_points``), then CLs at mu = 1 timed alone, with the number of XLA
compilations it caused (``jax.log_compiles``); pyhf (numpy backend, its scipy optimizer) on
some of the same points in the same run, CLs compared.

A point compiles when its tables have a shape no earlier point had: since session 23 a
model rounds its normsys and histosys term counts up (inert terms), so points whose signal
carries a few more or fewer terms share one shape.

    python benchmarks/patch_hypotests.py --points 12 --pyhf-points 3
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import jax
import numpy as np
import pyhf

import gpufit
from _report import command_line, write_report

HERE = os.path.dirname(os.path.abspath(__file__))
LBB = gpufit.workspace.bundled_path("atlas_1Lbb_ins1755298")


class _Compiles(logging.Handler):
    """Counts JAX's "Compiling ..." log records (under ``jax.log_compiles``)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        self.count += record.getMessage().startswith("Compiling")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=12, help="the first N points of the 1Lbb patchset")
    parser.add_argument("--pyhf-points", type=int, default=3, help="of those, how many pyhf runs too (spread out)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "patch-hypotests-cpu.json"))
    args = parser.parse_args()

    bkg = gpufit.Workspace.load(os.path.join(LBB, "BkgOnly.json"))
    patchset = gpufit.workspace.load_patchset(os.path.join(LBB, "patchset.json.gz"))
    names = [p.name for p in patchset.patches][: args.points]
    compiles = _Compiles()
    logging.getLogger("jax").addHandler(compiles)
    logging.getLogger("jax").propagate = False
    picks = set(np.linspace(0, len(names) - 1, args.pyhf_points).round().astype(int).tolist()) if args.pyhf_points else set()
    pyhf.set_backend("numpy")
    rows = []
    print(f"{'point':<28s} {'build s':>8s} {'hypotest s':>10s} {'compiles':>8s} {'histosys terms':>14s} "
          f"{'pyhf s':>7s} {'CLs diff':>9s}")
    last = time.perf_counter()
    for i, (patch, model, data) in enumerate(bkg.signal_points(patchset, names)):
        name = patch.name
        build = time.perf_counter() - last  # the point's model (signal_points builds it)
        before = compiles.count
        start = time.perf_counter()
        with jax.log_compiles():
            result = gpufit.hypotest(model, data, mu=1.0)
        seconds = time.perf_counter() - start
        row = {"point": name, "build_seconds": build, "hypotest_seconds": seconds, "compilations": compiles.count - before,
               "histosys_terms": int(model.compiled_numpy.histosys_par.shape[0]),
               "normsys_terms": int(model.compiled_numpy.normsys_par.shape[0]), "cls_obs": result.cls_obs}
        if i in picks:
            start = time.perf_counter()
            cls = pyhf.infer.hypotest(1.0, data, model.pyhf_model, test_stat="qtilde")
            row |= {"pyhf_seconds": time.perf_counter() - start, "pyhf_cls_obs": float(cls)}
        rows.append(row)
        pyhf_s = f"{row['pyhf_seconds']:7.2f}" if "pyhf_seconds" in row else f"{'':>7s}"
        diff = f"{row['cls_obs'] - row['pyhf_cls_obs']:9.1e}" if "pyhf_cls_obs" in row else f"{'':>9s}"
        print(f"{name:<28s} {build:8.2f} {seconds:10.2f} {row['compilations']:8d} "
              f"{row['histosys_terms']:14d} {pyhf_s} {diff}")
        write_report(args.out, "patch_hypotests.py", args, rows,
                     threads="gpufit and pyhf (numpy) run in one process, each with every core XLA and BLAS see")
        last = time.perf_counter()
    later = [r["hypotest_seconds"] for r in rows[1:]]
    print(f"first point {rows[0]['hypotest_seconds']:.2f} s; the other {len(later)}: median {np.median(later):.2f} s, "
          f"{sum(r['compilations'] > 0 for r in rows[1:])} of them compiled; command: "
          f"{command_line('patch_hypotests.py', args)}")


if __name__ == "__main__":
    main()
