"""The solver's phases side by side: Gauss-Newton alone and with its secant end game,
Newton end game, Newton throughout.

    python benchmarks/solver.py [--models sbottom,1lbb] [--toys 128] [--group 16]
                                [--out benchmarks/results/solver-cpu.json]

Each model's toys are drawn at the suggested initial values (the same keys for every
row) and fitted from there by ``minimize_batch`` in lockstep groups of ``--group`` (16,
a CPU's; 0: the whole batch, as an accelerator's chunk steps), with the edm tolerance of
the fits (1e-8) and up to 300 steps. Timed
warm (after a call that compiles). Reported per row: milliseconds per fit (wall time of
the batch / toys), mean and largest number of steps, how the fits ended, and the
largest difference in -2 log L from the Gauss-Newton row (same datasets). One process,
every core XLA sees.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

import fits  # benchmarks/fits.py: the sbottom and 1Lbb models
from _report import write_report  # benchmarks/_report.py
from gpufit.infer.sampling import sample_toys, toy_keys
from gpufit.optimize._solver import ANDERSON_M, STATUS, minimize_batch

CONFIGS = {  # row name: (newton_edm, newton_after, secant pairs of the Gauss-Newton end game)
    "gauss-newton": (0.0, 0, 0),
    "gauss-newton + secant pairs": (0.0, 0, ANDERSON_M),
    "newton below edm 1": (1.0, 0, 0),
    "newton below edm 1e-2": (1e-2, 0, 0),
    "newton after 20 steps": (0.0, 20, 0),
    "newton throughout": (float("inf"), 0, 0),
}


def toys_at_init(model, n, tol):
    """``minimize_batch``'s positional arguments for ``n`` toys of ``model`` drawn at its
    suggested initial values and fitted from there, with edm threshold ``tol``."""
    m = model.compiled
    init = jnp.asarray(model.suggested_init())
    keys = toy_keys(1, jnp.zeros(n, int), jnp.zeros(n, int), jnp.arange(n))
    data = jax.jit(sample_toys)(m, init, keys)
    b = model.suggested_bounds()
    return (m, data, jnp.broadcast_to(init, (n, model.n_pars)), jnp.asarray(~model.fixed_parameters()),
            jnp.asarray(b[:, 0]), jnp.asarray(b[:, 1]), tol)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sbottom,1lbb")
    parser.add_argument("--toys", type=int, default=128)
    parser.add_argument("--group", type=int, default=16, help="fits in lockstep (0: the whole batch)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "solver-cpu.json"))
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        model, _ = fits.load(name)
        n = args.toys
        call = toys_at_init(model, n, 1e-8)
        reference = None
        for row_name, (newton_edm, newton_after, pairs) in CONFIGS.items():
            def run():
                return jax.block_until_ready(minimize_batch(*call, maxiter=300, group=args.group or None,
                                                            newton_edm=newton_edm, newton_after=newton_after,
                                                            pairs=pairs))
            run()
            start = time.perf_counter()
            _, f, status, steps, _ = (np.asarray(a) for a in run())
            seconds = time.perf_counter() - start
            reference = f if reference is None else reference
            ended = {STATUS[int(code)]: int(np.sum(status == code)) for code in np.unique(status)}
            row = {
                "model": name, "parameters": model.n_pars, "toys": n, "group": args.group or n, "solver": row_name,
                "newton_edm": newton_edm, "newton_after": newton_after, "secant_pairs": pairs,
                "ms_per_fit": 1e3 * seconds / n, "mean_steps": float(steps.mean()), "max_steps": int(steps.max()),
                "ended": ended, "max_abs_twice_nll_change": float(np.max(np.abs(f - reference))),
            }
            rows.append(row)
            print(f"{name:8s} P={model.n_pars:4d} {row_name:28s} {row['ms_per_fit']:7.2f} ms/fit  steps mean "
                  f"{row['mean_steps']:5.1f} max {row['max_steps']:4d}  {ended}  "
                  f"|d(-2lnL)| <= {row['max_abs_twice_nll_change']:.1e}", flush=True)
            write_report(args.out, "solver.py", args, rows)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
