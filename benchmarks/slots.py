"""How many lockstep slots a CPU's queue should have, per model.

    python benchmarks/slots.py [--models gen40:4096,sbottom:4096,1lbb:1024,gen300:256]
                               [--slots 8,16,32,64] [--rounds 5] [--out benchmarks/results/slots-cpu.json]

Each model's toys (``name:count``, drawn at the suggested initial values) are fitted by
the solver's queue (``minimize_batch(queue=True)``, edm 1e-6, up to 300 steps) with each
slot count of ``--slots``, compiled once each, then the calls alternated ``--rounds``
times in one process (the order reversed every other round), so that the machine's
drift falls on every row alike. Reported: the median microseconds per fit-step (wall
time / the batch's total steps, the same for every slot count) and the model's
``_device.bytes_per_fit`` (the rough size of one fit's temporaries), the quantity a
per-model slot count is derived from (``_device.cpu_slots``; before it, 16 slots
for every model).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np

import toys  # benchmarks/toys.py: the generated and published models
from _report import write_report  # benchmarks/_report.py
from gpufit import _device
from gpufit.optimize._solver import minimize_batch
from solver import toys_at_init  # benchmarks/solver.py: toys drawn and fitted at the suggested init


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="gen40:4096,sbottom:4096,1lbb:1024,gen300:256")
    parser.add_argument("--slots", default="8,16,32,64")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "slots-cpu.json"))
    args = parser.parse_args()
    slots = [int(s) for s in args.slots.split(",")]
    rows = []
    for spec in args.models.split(","):
        name, count = spec.split(":")
        n = int(count)
        model, _ = toys.load(name)
        m = model.compiled
        call = toys_at_init(model, n, 1e-6)
        compiled = {s: minimize_batch.lower(*call, maxiter=300, group=s, queue=True).compile() for s in slots}
        seconds = {s: [] for s in slots}
        steps = {}
        for r in range(args.rounds):
            for s in slots if r % 2 == 0 else slots[::-1]:
                start = time.perf_counter()
                out = jax.block_until_ready(compiled[s](*call))
                seconds[s].append(time.perf_counter() - start)
                steps[s] = int(np.asarray(out[3]).sum())
        per_fit = _device.bytes_per_fit(m, model.n_pars, model.n_main, model.n_aux)
        for s in slots:
            rows.append({"model": name, "parameters": model.n_pars, "fits": n, "slots": s, "steps": steps[s],
                         "seconds_runs": seconds[s], "us_per_fit_step": 1e6 * float(np.median(seconds[s])) / steps[s],
                         "bytes_per_fit": per_fit})
        print(f"{name:8s} P={model.n_pars:4d} {per_fit / 2**10:7.0f} KB a fit   us per fit-step: "
              + "  ".join(f"{s}: {r['us_per_fit_step']:7.2f}" for s, r in zip(slots, rows[-len(slots):])), flush=True)
        write_report(args.out, "slots.py", args, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
