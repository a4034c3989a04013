"""A whole signal grid: ``gpufit.scan`` over every patch of the ATLAS 1Lbb patchset
(asymptotic CLs at mu = 1 and upper limits), including model builds and compilation,
against pyhf's jax backend looping over a few of the same points in the same run.

    python benchmarks/scan.py --patches '*' --pyhf-points 3
    python benchmarks/scan.py --pyhf-points 0 --repeat 2 --rows DIR --out scan-gpu.json   # gpu/run.sh

pyhf 0.7.6's TOMS 748 limit scan fails on jax arrays (unhashable), so pyhf's points run
its 21-point linear grid scan (``upper_limit(data, model, scan=grid)``), with the grid
from 0 to 1.5 times gpufit's largest limit of the point (at most the POI's upper bound,
5, beyond which pyhf refuses to fit: a limit above it is then a bound in both); gpufit runs the same grid on
those points too (``scan(mus=grid)``), so that the limits compare number for number.
Prints a table and writes ``benchmarks/results/scan-cpu.json``. ``--repeat 2`` runs the
whole scan twice in one process: the first includes compilation, the second is warm (what
a scan costs where the kernels are already compiled, or in JAX's persistent cache);
``--rows DIR`` writes the first scan's rows (``DIR/scan.json``); ``--compare ROWS.json``
compares them point by point with such a file written elsewhere (another device):

    python benchmarks/scan.py --pyhf-points 3 --compare benchmarks/results/scan-gpu-h200-points.json
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import pyhf

import gpufit
from _report import command_line, write_report

HERE = os.path.dirname(os.path.abspath(__file__))
LBB = gpufit.workspace.bundled_path("atlas_1Lbb_ins1755298")


def pyhf_point(bkg: gpufit.Workspace, patchset: str, name: str, grid) -> dict:
    """pyhf (jax backend): the point's model, CLs at mu = 1, and the linear grid scan."""
    start = time.perf_counter()
    ws = bkg.with_patchset(patchset, name).pyhf
    model = ws.model()
    data = ws.data(model)
    cls, exp = pyhf.infer.hypotest(1.0, data, model, test_stat="qtilde", return_expected_set=True)
    obs, exp_lim = pyhf.infer.intervals.upper_limits.upper_limit(data, model, scan=grid)
    return {"seconds": time.perf_counter() - start, "cls_obs": float(cls),
            "cls_exp": np.asarray(exp, dtype=float).ravel().tolist(),
            "limits": [float(obs), *np.asarray(exp_lim, dtype=float).tolist()]}


def rel(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.abs(b)))


def cls_values(row) -> list:
    """A row's CLs: observed, then the 5 expected."""
    return [row["cls_obs"], *row["cls_exp"]]


def limit_values(row) -> list:
    """A row's upper limits: observed, then the 5 expected."""
    return [row["upper_limit_obs"], *row["upper_limit_exp"]]


def compare(result, path: str) -> dict:
    """The largest relative differences of CLs (observed, 5 expected) and limits (observed,
    5 expected) between this scan's rows and those of ``path`` (same points by name)."""
    with open(path) as handle:
        other = json.load(handle)
    theirs = {r["name"]: r for r in other["points"]}
    common = [r for r in result.points if r["name"] in theirs and not r["error"]]
    cls = max(rel(cls_values(r), cls_values(theirs[r["name"]])) for r in common)
    limits = max(rel(limit_values(r), limit_values(theirs[r["name"]])) for r in common)
    print(f"against {os.path.basename(path)} ({other['device']}): {len(common)} points, CLs max rel diff "
          f"{cls:.1e}, limits max rel diff {limits:.1e}")
    return {"what": "compare", "against": os.path.relpath(path, HERE), "against_device": other["device"],
            "points": len(common), "cls_max_rel_diff": cls, "limits_max_rel_diff": limits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--patches", default="*", help="glob of the 1Lbb patches to scan")
    parser.add_argument("--pyhf-points", type=int, default=3,
                        help="points also run with pyhf's jax backend (spread over the grid)")
    parser.add_argument("--grid-points", type=int, default=21, help="POI values of pyhf's linear scan")
    parser.add_argument("--build-workers", type=int, default=None,
                        help="processes building the point models (default: gpufit's choice from the CPUs)")
    parser.add_argument("--repeat", type=int, default=1, help="scans in one process (the first compiles)")
    parser.add_argument("--rows", default=None, help="folder for the first scan's rows (scan.json, scan.csv)")
    parser.add_argument("--compare", default=None,
                        help="a scan.json written on another device: the largest differences point by point")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "scan-cpu.json"))
    args = parser.parse_args()
    bkg_path, ps_path = os.path.join(LBB, "BkgOnly.json"), os.path.join(LBB, "patchset.json.gz")

    rows = []
    for repeat in range(args.repeat):
        start = time.perf_counter()
        scanned = gpufit.scan(bkg_path, ps_path, patches=args.patches, workers=args.build_workers)
        seconds = time.perf_counter() - start
        failed = [r["name"] for r in scanned.points if r["error"]]
        n = len(scanned.points)
        rows.append({"what": "gpufit scan", "repeat": repeat, "points": n, "seconds": seconds,
                     "seconds_per_point": seconds / n, "build_seconds": scanned.info["build_seconds"],
                     "build_workers": args.build_workers or gpufit.workspace.build_workers(n),
                     "fits": scanned.info["fits"], "rounds": scanned.info["rounds"], "points_with_error": failed,
                     "fits_failed": int(sum(r["n_failed"] for r in scanned.points)), "device": scanned.device})
        print(f"gpufit ({'first' if repeat == 0 else 'again'}): {n} points in {seconds:.1f} s ({seconds / n:.2f} s "
              f"a point, models built in {scanned.info['build_seconds']:.1f} s, {scanned.info['fits']} fits in "
              f"{scanned.info['rounds']} rounds), {len(failed)} points with an error")
        write_report(args.out, "scan.py", args, rows)
        if repeat == 0:
            result, seconds_first = scanned, seconds
            if args.rows:
                result.write(args.rows, command=command_line("scan.py", args))
    seconds = seconds_first
    if args.compare:
        rows.append(compare(result, args.compare))
        write_report(args.out, "scan.py", args, rows)

    pyhf.set_backend("jax")
    bkg = gpufit.Workspace.load(bkg_path)
    picks = np.linspace(0, n - 1, args.pyhf_points).round().astype(int) if args.pyhf_points else []
    if len(picks):
        print(f"{'point':<24s} {'pyhf s':>7s} {'CLs rel diff':>12s} {'grid UL rel diff':>16s} "
              f"{'root vs grid UL':>15s}")
    pyhf_seconds = 0.0
    for i in picks:
        row = result.points[i]
        top = min(1.5 * max(limit_values(row)), 5.0)  # mu_SIG's bounds: [0, 5]
        grid = np.linspace(0.0, top, args.grid_points)
        ours = gpufit.scan(bkg_path, ps_path, patches=row["name"], mus=grid).points[0]
        theirs = pyhf_point(bkg, ps_path, row["name"], grid)
        pyhf_seconds += theirs["seconds"]
        out = {"what": "pyhf jax point", "point": row["name"], "pyhf_seconds": theirs["seconds"],
               "grid": grid.tolist(), "pyhf": theirs,
               "gpufit_cls_obs": row["cls_obs"], "gpufit_cls_exp": row["cls_exp"],
               "gpufit_grid_limits": limit_values(ours),
               "gpufit_limits": limit_values(row),
               "cls_max_rel_diff": rel(cls_values(row), cls_values(theirs)),
               "grid_limits_max_rel_diff": rel(limit_values(ours), theirs["limits"])}
        out["root_vs_grid_limits_max_rel_diff"] = rel(out["gpufit_limits"], theirs["limits"])
        rows.append(out)
        print(f"{row['name']:<24s} {theirs['seconds']:7.1f} {out['cls_max_rel_diff']:12.2e} "
              f"{out['grid_limits_max_rel_diff']:16.2e} {out['root_vs_grid_limits_max_rel_diff']:15.2e}")
        write_report(args.out, "scan.py", args, rows)
    if len(picks):
        per_point = pyhf_seconds / len(picks)
        rows.append({"what": "ratio", "pyhf_seconds_per_point": per_point,
                     "gpufit_seconds_per_point": seconds / n, "speedup": per_point / (seconds / n),
                     "pyhf_grid": f"{args.grid_points}-point linear scan (pyhf's TOMS 748 scan fails on jax arrays)"})
        print(f"pyhf jax: {per_point:.1f} s a point ({args.grid_points}-point linear scan); gpufit "
              f"{seconds / n:.2f} s a point: x{per_point / (seconds / n):.0f}")
        write_report(args.out, "scan.py", args, rows)


if __name__ == "__main__":
    main()
