"""What skipping the fixed-POI fits that qtilde does not need buys and costs.

    python benchmarks/skipped_twins.py [--models sbottom,1lbb] [--ntoys 10000] [--rounds 3]
                                       [--out benchmarks/results/skipped-twins-cpu.json]

A toy whose converged free fit has muhat > mu has qtilde = 0 whatever its fixed-POI fit
gives, and gpufit skips that fit (as ROOT's ProfileLikelihoodTestStat does);
``all_fixed_fits=True`` fits it anyway and refits the free fit from it where the free fit
ended above it (a local minimum). Per model, the same toys (one seed) both ways,
alternated ``--rounds`` times in one process, after a warm-up of 1,024 toys each way (the
first round can still compile the larger run's chunk shapes: every run's seconds are
kept, and the median is reported): seconds of each, the fits each ran, the
toys whose test statistic differs and by how much, and both CLs with their binomial
errors. The difference is the price of the skip: free fits caught in a local minimum
at a muhat above mu whose deeper minimum lies below it.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import gpufit
import toys  # benchmarks/toys.py: the generated and published models
from _report import write_report  # benchmarks/_report.py


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sbottom,1lbb")
    parser.add_argument("--ntoys", type=int, default=10000)
    parser.add_argument("--mu", type=float, default=1.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "skipped-twins-cpu.json"))
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        model, data = toys.load(name)
        ways = {"skip": False, "all_fixed_fits": True}

        def run(all_fits, ntoys=args.ntoys, seed=0):
            return gpufit.hypotest(model, data, args.mu, calculator="toys", ntoys=ntoys, seed=seed, progress=False,
                                   max_failed=1.0, all_fixed_fits=all_fits)

        for all_fits in ways.values():  # compile both ways' kernels
            run(all_fits, ntoys=min(args.ntoys, 1024), seed=12345)
        seconds = {way: [] for way in ways}
        results = {}
        for r in range(args.rounds):
            for way, all_fits in ways.items() if r % 2 == 0 else reversed(ways.items()):
                start = time.perf_counter()
                results[way] = run(all_fits)
                seconds[way].append(time.perf_counter() - start)
        skip, every = results["skip"], results["all_fixed_fits"]
        ts_skip = np.concatenate([skip.teststat_sb, skip.teststat_b])
        ts_every = np.concatenate([every.teststat_sb, every.teststat_b])
        diff = np.abs(ts_skip - ts_every)
        moved = np.flatnonzero(diff > 1e-6)
        row = {
            "model": name, "parameters": model.n_pars, "ntoys": args.ntoys, "mu": args.mu,
            "seconds_runs": seconds, "seconds": {way: float(np.median(s)) for way, s in seconds.items()},
            "fits": {way: r.info["fits"] for way, r in results.items()},
            "skipped": skip.info["skipped"],
            "local_minima": {way: r.info["local_minima"] for way, r in results.items()},
            "toys_moved": int(moved.size), "moved_sb": int(np.sum(moved < args.ntoys)),
            "largest_change": float(diff.max()),
            "moved_from": ts_skip[moved].tolist(), "moved_to": ts_every[moved].tolist(),
            "teststat_obs": float(skip.teststat),
            "cls": {way: [float(r.cls_obs), float(r.cls_obs_err)] for way, r in results.items()},
            "n_failed": {way: int(r.n_failed) for way, r in results.items()},
        }
        rows.append(row)
        s = row["seconds"]
        print(f"{name:8s} {args.ntoys} toys: skip {s['skip']:.2f} s ({row['fits']['skip']} fits), all fixed fits "
              f"{s['all_fixed_fits']:.2f} s ({row['fits']['all_fixed_fits']} fits): x{s['all_fixed_fits'] / s['skip']:.3f};"
              f" {row['toys_moved']} test statistics differ (largest {row['largest_change']:.3g}); CLs "
              f"{skip.cls_obs:.5f} / {every.cls_obs:.5f} +- {every.cls_obs_err:.5f} (q_obs {skip.teststat:.3f})",
              flush=True)
        write_report(args.out, "skipped_twins.py", args, rows, threads="gpufit with every core XLA sees")


if __name__ == "__main__":
    main()
