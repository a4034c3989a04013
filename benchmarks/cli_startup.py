"""Start-up time of the command line: wall seconds from launch to exit of commands that
compute nothing (``--help``, ``info``, a refused argument), each run ``--repeats``
times in a fresh process. Prints a table and writes ``benchmarks/results/cli-startup-*.json``.

    python benchmarks/cli_startup.py --repeats 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

from _report import write_report

COMMANDS = [
    ["--help"],
    ["limit", "--help"],
    ["info"],
    ["hypotest", "example:docs", "--mu", "-1"],  # refused after the workspace is read
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cli-startup-cpu.json"))
    args = parser.parse_args()
    exe = shutil.which("gpufit") or os.path.join(os.path.dirname(sys.executable), "gpufit")
    rows = []
    print(f"{'command':45s} {'median s':>9s} {'min s':>7s} {'max s':>7s}  exit")
    for command in COMMANDS:
        times, codes = [], set()
        for _ in range(args.repeats):
            start = time.perf_counter()
            proc = subprocess.run([exe, *command], capture_output=True)
            times.append(time.perf_counter() - start)
            codes.add(proc.returncode)
        row = {"command": "gpufit " + " ".join(command), "median_seconds": statistics.median(times),
               "min_seconds": min(times), "max_seconds": max(times), "exit_codes": sorted(codes),
               "repeats": args.repeats}
        rows.append(row)
        print(f"{row['command']:45s} {row['median_seconds']:9.2f} {row['min_seconds']:7.2f} "
              f"{row['max_seconds']:7.2f}  {row['exit_codes']}")
        write_report(args.out, "cli_startup.py", args, rows, threads="one gpufit process per run, default threads")


if __name__ == "__main__":
    main()
