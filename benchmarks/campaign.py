"""Campaign overhead: the same toys in one process and on a 2-worker Dask LocalCluster.

    python benchmarks/campaign.py [--model gen40] [--mus 0.5,1,1.5,2] [--ntoys 2000]
                                  [--toys-per-job 500] [--workers 2]
                                  [--out benchmarks/results/campaign-cpu.json]

Plans the campaign twice (same settings, so the same campaign and toys), runs one with
``executor="local"`` and one with ``executor="dask"`` (a LocalCluster started inside the
timing, as ``gpufit campaign run --executor dask`` does), checks that the merged results
are identical (exit status 1 where they are not), and reports wall times, the speed-up
and the parallel efficiency (speed-up / workers). A plain ``hypotest``-style run of the same toys in one process
(no job files) is the baseline for the local executor's own overhead.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
from toys import load, workspace  # benchmarks/toys.py: generated and published models

from _report import write_report  # benchmarks/_report.py
from gpufit import campaign, executors
from gpufit.infer.toys import ToyCalculator


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="gen40")
    parser.add_argument("--mus", default="0.5,1,1.5,2")
    parser.add_argument("--ntoys", type=int, default=2000)
    parser.add_argument("--toys-per-job", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "campaign-cpu.json"))
    args = parser.parse_args()
    import gpufit

    model, data = load(args.model)
    mus = [float(m) for m in args.mus.split(",")]
    ws = workspace(args.model)

    # warm the compiled kernels of this process (the workers compile their own)
    ToyCalculator(model, data, mus, ntoys=16, progress=False).run()
    start = time.perf_counter()
    direct = ToyCalculator(model, data, mus, ntoys=args.ntoys, seed=1, progress=False).run()
    t_direct = time.perf_counter() - start

    times, merged = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for executor in ("local", "dask"):
            directory = os.path.join(tmp, executor)
            campaign.plan(ws, directory, mus, args.ntoys, args.toys_per_job, seed=1)
            start = time.perf_counter()
            executors.run(directory, executor=executor, workers=args.workers)
            times[executor] = time.perf_counter() - start
            merged[executor] = campaign.merge(directory)
    identical = merged["local"]["cls_obs"] == merged["dask"]["cls_obs"] and merged["local"]["cls_exp"] == merged["dask"]["cls_exp"]
    same_as_direct = np.array_equal(merged["local"]["cls_obs"], direct["cls_obs"])
    speedup = times["local"] / times["dask"]
    row = {
        "model": args.model, "parameters": model.n_pars, "mus": mus, "ntoys": args.ntoys,
        "toys_per_job": args.toys_per_job, "jobs": len(mus) * -(-args.ntoys // args.toys_per_job),
        "workers": args.workers, "direct_seconds": t_direct, "local_seconds": times["local"],
        "dask_seconds": times["dask"], "speedup": speedup, "efficiency": speedup / args.workers,
        "identical_local_dask": bool(identical), "identical_local_direct": bool(same_as_direct),
        "gpufit": gpufit.__version__,
    }
    print(f"{args.model} P={model.n_pars} {len(mus)} mu x {args.ntoys} toys in {row['jobs']} jobs: "
          f"direct {t_direct:.1f} s, local executor {times['local']:.1f} s, dask x{args.workers} {times['dask']:.1f} s "
          f"-> speed-up {speedup:.2f}, efficiency {speedup / args.workers:.0%}; identical: {identical}")
    write_report(args.out, "campaign.py", args, [row])
    print(f"wrote {args.out}")
    if not (identical and same_as_direct):  # a campaign that changes the answer is a failure, not a speed
        raise SystemExit("the merged results differ between the local and Dask executors or from the direct run "
                         f"(identical_local_dask={identical}, identical_local_direct={same_as_direct})")


if __name__ == "__main__":
    main()
