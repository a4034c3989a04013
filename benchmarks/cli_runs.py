"""Whole command-line runs, as a user types them: wall seconds, peak memory and the
result of each, in a fresh process (what ``/usr/bin/time -v`` reports, written by this
script instead of copied by hand). Prints a table and writes
``benchmarks/results/cli-runs-*.json``.

    python benchmarks/cli_runs.py [--runs readme,million,1lbb] [--workspaces ../shared/workspaces]

Runs (each ``--json``, its JSON result kept in the row):

- ``readme``: the main job of the README (sbottom, toy-based limit, 11 mu points x 1,000
  toys per hypothesis);
- ``million``: a million toys per hypothesis on the pyhf docs example in one process;
- ``1lbb``: 10,000 toys at mu = 1 on ATLAS 1Lbb (``C1N2_Wh_hbb_700_300``), needs the
  published workspace under ``--workspaces``.

Each run starts cold (a fresh process, no compilation cache: ``GPUFIT_NO_COMPILATION_CACHE``),
so its seconds include importing and compiling, as a first run on a new machine does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from _report import write_report

HERE = os.path.dirname(os.path.abspath(__file__))


def runs(workspaces: str) -> dict:
    lbb = os.path.join(workspaces, "atlas_1Lbb_ins1755298")
    return {
        "readme": ["limit", "example:sbottom", "--calculator", "toys", "--ntoys", "1000"],
        "million": ["hypotest", "example:docs", "--calculator", "toys", "--ntoys", "1000000", "--seed", "5",
                    "--quiet"],
        "1lbb": ["hypotest", os.path.join(lbb, "BkgOnly.json"), "--patchset", os.path.join(lbb, "patchset.json.gz"),
                 "--patch-name", "C1N2_Wh_hbb_700_300", "--mu", "1", "--calculator", "toys", "--ntoys", "10000",
                 "--seed", "1", "--max-failed", "1", "--quiet"],
    }


def run_one(exe: str, argv: list[str]) -> dict:
    """One run in a child process: wall seconds, the child's own peak resident memory
    (``os.wait4``), its exit status and its JSON result."""
    env = dict(os.environ, GPUFIT_NO_COMPILATION_CACHE="1")
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        start = time.perf_counter()
        proc = subprocess.Popen([exe, *argv, "--json"], stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    try:
        result = json.loads(stdout)
    except json.JSONDecodeError:
        result = {"error": stderr.strip()[-500:]}
    return {"seconds": seconds, "exit_code": os.waitstatus_to_exitcode(status), "result": result,
            "max_rss_mb": usage.ru_maxrss / 1024}  # ru_maxrss: kB on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default="readme,million,1lbb")
    # relative to where it runs (the children run there too), so that the commands it
    # records name no path of this machine
    parser.add_argument("--workspaces", default=os.path.relpath(os.path.join(HERE, "..", "..", "shared", "workspaces")))
    parser.add_argument("--out", default=os.path.join(HERE, "results", "cli-runs-cpu.json"))
    args = parser.parse_args()
    exe = shutil.which("gpufit") or os.path.join(os.path.dirname(sys.executable), "gpufit")
    table = runs(args.workspaces)
    rows = []
    print(f"{'run':8s} {'seconds':>8s} {'peak MB':>8s} exit  result")
    for name in args.runs.split(","):
        row = {"run": name, "command": "gpufit " + " ".join(table[name]) + " --json"} | run_one(exe, table[name])
        rows.append(row)
        r = row["result"]
        summary = {k: r[k] for k in ("observed", "expected", "cls_obs", "cls_obs_err", "n_failed", "error") if k in r}
        print(f"{name:8s} {row['seconds']:8.1f} {row['max_rss_mb']:8.0f} {row['exit_code']:4d}  {summary}", flush=True)
        write_report(args.out, "cli_runs.py", args, rows, threads="one gpufit process per run, every core XLA sees")


if __name__ == "__main__":
    main()
