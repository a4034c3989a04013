"""How long a campaign job takes before its toys start, with the campaign's compilation
cache cold (the first job of a grid) and warm (a job of another point, in a new process,
after the first filled the cache), each job in a process of its own as a batch job or a
fresh Dask worker runs it.

    python benchmarks/campaign_startup.py --model 1lbb --points 3 --dask-points 2

Plans a signal-grid campaign of ``--points`` + ``--dask-points`` points of the model's
patchset (1Lbb; a few toys per job), runs the job of each of the first ``--points`` with
``gpufit campaign run-job`` in a subprocess, one after another (the first fills the
campaign's cache), then the others with a 2-worker Dask cluster (``gpufit.executors.run``,
executor ``dask``), and reads back each result's setup and compile seconds: the time
from the job's start to its first toys. Prints a table and writes
``benchmarks/results/campaign-startup-cpu.json``.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
import time

import gpufit
from gpufit import campaign, executors
from gpufit.campaign._files import read_result
from _report import write_report

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="1lbb", choices=["1lbb"])
    parser.add_argument("--points", type=int, default=3, help="points whose job runs as a process of its own")
    parser.add_argument("--dask-points", type=int, default=2, help="points whose job runs on a 2-worker Dask cluster")
    parser.add_argument("--ntoys", type=int, default=64)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "campaign-startup-cpu.json"))
    args = parser.parse_args()
    base = gpufit.workspace.bundled_path("atlas_1Lbb_ins1755298")
    ws = gpufit.Workspace.load(os.path.join(base, "BkgOnly.json"))
    names = ["C1N2_Wh_hbb_700_300", "C1N2_Wh_hbb_600_150", "C1N2_Wh_hbb_800_0", "C1N2_Wh_hbb_500_100",
             "C1N2_Wh_hbb_900_200", "C1N2_Wh_hbb_400_50"][: args.points + args.dask_points]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        directory = os.path.join(tmp, "camp")
        campaign.plan(ws, directory, [1.0], args.ntoys, args.ntoys, seed=1, patchset=os.path.join(base, "patchset.json.gz"),
                      patches=names)
        jobs = sorted(glob.glob(os.path.join(directory, "jobs", "job-*.json")))
        env = dict(os.environ, GPUFIT_NO_COMPILATION_CACHE="1")  # only the campaign's cache
        for k, job in enumerate(jobs[: args.points]):
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "gpufit", "campaign", "run-job", job, "--quiet"], env=env,
                           check=True, capture_output=True)
            wall = time.perf_counter() - start
            result = sorted(glob.glob(os.path.join(directory, "results", "job-*.npz")))[k]
            meta = read_result(result, extra=("teststat_obs",))[0]
            row = {"job": os.path.basename(job), "cache": "cold" if k == 0 else "warm", "process_seconds": wall,
                   "job_seconds": meta["seconds"], "setup_seconds": meta["setup_seconds"],
                   "toy_compile_seconds": meta["stats"]["compile_seconds"],
                   "startup_seconds": meta["setup_seconds"] + meta["stats"]["compile_seconds"],
                   }
            rows.append(row)
            print(f"{row['job']}  cache {row['cache']:4s}  process {wall:6.1f} s  job {row['job_seconds']:6.1f} s  "
                  f"until toys start {row['startup_seconds']:6.1f} s (setup {row['setup_seconds']:.1f}, "
                  f"toy kernel compile {row['toy_compile_seconds']:.1f})")
            write_report(args.out, "campaign_startup.py", args, rows)
        if args.dask_points:
            start = time.perf_counter()
            os.environ.update(env)  # the workers, too, use the campaign's cache only
            ran = executors.run(directory, executor="dask", workers=2)["ran"]
            wall = time.perf_counter() - start
            for k, job in enumerate(jobs[args.points:], start=args.points):
                result = sorted(glob.glob(os.path.join(directory, "results", "job-*.npz")))[k]
                meta = read_result(result, extra=("teststat_obs",))[0]
                row = {"job": os.path.basename(job), "cache": "warm, Dask worker", "dask_run_seconds": wall,
                       "job_seconds": meta["seconds"], "setup_seconds": meta["setup_seconds"],
                       "toy_compile_seconds": meta["stats"]["compile_seconds"],
                       "startup_seconds": meta["setup_seconds"] + meta["stats"]["compile_seconds"]}
                rows.append(row)
                print(f"{row['job']}  Dask worker (2-worker run of {len(ran)} jobs, {wall:.1f} s)  job "
                      f"{row['job_seconds']:6.1f} s  until toys start {row['startup_seconds']:6.1f} s (setup "
                      f"{row['setup_seconds']:.1f}, toy kernel compile {row['toy_compile_seconds']:.1f})")
            write_report(args.out, "campaign_startup.py", args, rows)


if __name__ == "__main__":
    main()
