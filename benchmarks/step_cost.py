"""Cost of one solver step per fit, and fit() throughput, for the gpufit on sys.path.

    python benchmarks/step_cost.py [--models sbottom,1lbb] [--batch 256]
                                   [--out benchmarks/results/step-cost-cpu.json]

For a before/after comparison of a kernel change, run it twice in a row, once with
``PYTHONPATH=<old checkout>/src`` (``git archive <rev> src | tar -x -C <dir>``); the
JSON records which source tree was imported. Datasets: Poisson fluctuations of the
observed main data. The step cost is a 20-step ``minimize_batch`` call (tol 0: no fit
stops early) in groups of 16, divided by fits and steps; ``fit()`` is timed warm.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import fits  # benchmarks/fits.py: the sbottom and 1Lbb models
import gpufit
from _report import write_report  # benchmarks/_report.py
from gpufit.optimize._solver import minimize_batch


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sbottom,1lbb")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "step-cost-cpu.json"))
    args = parser.parse_args()
    rows = []
    source = os.path.dirname(os.path.dirname(os.path.dirname(gpufit.__file__)))
    for name in args.models.split(","):
        model, data = fits.load(name)
        n = args.batch
        datasets = fits.datasets(model, np.asarray(data), n)
        b = model.suggested_bounds()
        call = (model.compiled, jnp.asarray(datasets), jnp.broadcast_to(jnp.asarray(model.suggested_init()), (n, model.n_pars)),
                jnp.asarray(~model.fixed_parameters()), jnp.asarray(b[:, 0]), jnp.asarray(b[:, 1]), 0.0)
        jax.block_until_ready(minimize_batch(*call, maxiter=20, group=16))
        start = time.perf_counter()
        jax.block_until_ready(minimize_batch(*call, maxiter=20, group=16))
        step_us = 1e6 * (time.perf_counter() - start) / n / 20
        gpufit.fit(model, datasets, hesse=False)
        start = time.perf_counter()
        result = gpufit.fit(model, datasets, hesse=False)
        rate = n / (time.perf_counter() - start)
        row = {"model": name, "parameters": model.n_pars, "batch": n, "source": os.path.basename(source),
               "us_per_fit_step": step_us, "fit_per_s": rate, "mean_steps": float(result.n_iter.mean()),
               "max_steps": int(result.n_iter.max()), "n_failed": result.n_failed}
        rows.append(row)
        print(f"{row['source']:>12s} {name:8s} P={model.n_pars:4d} {step_us:7.1f} us per fit-step  fit() {rate:7.1f} "
              f"fits/s  steps mean {row['mean_steps']:.1f} max {row['max_steps']}  failed {row['n_failed']}", flush=True)
        write_report(args.out, "step_cost.py", args, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
