"""The fraction of a GPU's FP64 rate that the toy engine reached: flops per toy counted
from the model, times toys per second from a GPU run of benchmarks/toys.py.

    python benchmarks/fp64_fraction.py --gpu-results benchmarks/results/toys-gpu-h200-float64-gen40-sbottom-7-session10.json,benchmarks/results/toys-gpu-h200-float64-1lbb-7-session10.json

Flops per toy = 4 fits x mean Gauss-Newton steps per fit x flops of one step, where

- flops of one step: XLA's own count (``compiled.cost_analysis()["flops"]``) of one
  vmapped step, evaluation (-2 log L, gradient, curvature factors) plus the damped
  solve, divided by the batch, plus the two Cholesky solves that XLA hands to
  LAPACK/cuSOLVER and does not count (N^3/3 + 2 N^2 (1 + U) + U^3/3 + 2 U^2 for N bins
  and U unconstrained parameters; tiny beside the rest): the work a step must do,
  nothing of the lockstep bookkeeping (acceptance, bounds, frozen fits), the toy draws
  or the host;
- mean steps: the engine's fits on its own toys (``sample_toys`` at the observed
  fixed-POI fit at mu = 1, free and fixed-POI fits from there, ``tol = 1e-6`` as the
  toy fits use), counted here on the CPU (a fit takes the same steps on either device
  to rounding: tests/test_gpu.py).

The peak is the datasheet's FP64 rate of an H100/H200 SXM, 34 TFLOP/s without tensor
cores (67 with them; XLA's batched small solves and the likelihood's gathers use none).
The FLOP counts here are a lower bound of what the device executes: a fraction of a
few percent says the engine is bound by memory traffic and launch latency, not by
arithmetic.
"""

from __future__ import annotations

import argparse
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

import toys  # benchmarks/toys.py: the generated and published models
from _report import write_report  # benchmarks/_report.py
import gpufit
from gpufit.infer.sampling import sample_toys, toy_keys
from gpufit.likelihood.derivatives import twice_nll_gradient_curvature
from gpufit.optimize._solver import solve_damped

PEAK_FP64 = 34e12  # FLOP/s, H100 / H200 SXM without tensor cores (the datasheet's)
BATCH = 1024


def step_flops(model) -> float:
    """XLA's flop count of one Gauss-Newton step (evaluate + damped solve), per fit."""
    m = model.compiled
    free = jnp.asarray(~model.fixed_parameters())

    def step(d, p):
        _, g, jac, w, c = twice_nll_gradient_curvature(m, p, d)
        return p + solve_damped(m, jac, w, c, g, 1e-3, free)

    x = jnp.broadcast_to(jnp.asarray(model.suggested_init()), (BATCH, model.n_pars))
    data = jnp.ones((BATCH, model.n_main + model.n_aux), model.dtype)
    cost = jax.jit(jax.vmap(step)).lower(data, x).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    n, u = model.n_main, int(np.asarray(m.unconstrained).size)
    cholesky = n ** 3 / 3 + 2 * n * n * (1 + u) + u ** 3 / 3 + 2 * u * u
    return float(cost["flops"]) / BATCH + cholesky


def mean_steps(model, data, ntoys: int) -> tuple[float, float]:
    """Mean steps of the engine's free and fixed-POI fits on its own toys at mu = 1, and
    the fraction of them that converged."""
    poi = model.poi_index
    gen = gpufit.fit(model, data, fixed={model.poi_name: 1.0}, hesse=False).pars
    pars = np.broadcast_to(gen, (ntoys, model.n_pars))
    index = np.arange(ntoys)
    toys_data = np.asarray(sample_toys(model.compiled, jnp.asarray(pars), toy_keys(0, np.zeros(ntoys), np.zeros(ntoys), index)))
    free = gpufit.fit(model, toys_data, init=gen, tol=1e-6, hesse=False, retry=False)
    fixed = gpufit.fit(model, toys_data, init=gen, fixed={model.poi_name: float(gen[poi])}, tol=1e-6, hesse=False,
                       retry=False)
    steps = np.concatenate([free.n_iter, fixed.n_iter])
    converged = np.concatenate([free.converged, fixed.converged])
    return float(steps.mean()), float(converged.mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-results", required=True, help="toys.py JSON files of a GPU run, comma-separated")
    parser.add_argument("--ntoys", type=int, default=1024, help="toys whose fits count the steps")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "fp64-fraction.json"))
    args = parser.parse_args()
    runs = []
    for path in args.gpu_results.split(","):
        with open(path) as handle:
            report = json.load(handle)
        runs += [(os.path.relpath(path, os.path.dirname(os.path.abspath(__file__))), report["device"], row)
                 for row in report["rows"] if row["dtype"] == "float64"]
    counted = {}
    rows = []
    print(f"{'model':8s} {'P':>4s} {'toys':>7s} {'toys/s':>9s} {'steps/fit':>9s} {'kflop/step':>10s} "
          f"{'Mflop/toy':>9s} {'TFLOP/s':>8s} {'of FP64 peak':>12s}")
    for path, device, row in runs:
        name = row["model"]
        if name not in counted:
            model, data = toys.load(name)
            steps, converged = mean_steps(model, np.asarray(data), args.ntoys)
            counted[name] = (step_flops(model), steps, converged)
        flops_step, steps, converged = counted[name]
        per_toy = 4 * steps * flops_step
        rate = row["gpufit_toys_per_s"] * per_toy
        out = {"model": name, "parameters": row["parameters"], "ntoys": row["ntoys"], "device": device,
               "source": path, "toys_per_s": row["gpufit_toys_per_s"], "flops_per_step": flops_step,
               "mean_steps_per_fit": steps, "converged_fraction_counted": converged, "flops_per_toy": per_toy,
               "flops_per_s": rate, "peak_fp64_flops_per_s": PEAK_FP64, "fraction_of_fp64_peak": rate / PEAK_FP64}
        rows.append(out)
        print(f"{name:8s} {row['parameters']:4d} {row['ntoys']:7d} {row['gpufit_toys_per_s']:9.0f} {steps:9.2f} "
              f"{flops_step / 1e3:10.1f} {per_toy / 1e6:9.2f} {rate / 1e12:8.3f} {rate / PEAK_FP64:12.2%}")
        write_report(args.out, "fp64_fraction.py", args, rows,
                     threads="flops and steps counted on this machine; toys/s from the GPU run named in each row")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
