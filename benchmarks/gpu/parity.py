"""Where the GPU and the CPU part ways on one toy run: a diagnostic for benchmarks/gpu/run.sh.

    python benchmarks/gpu/parity.py [--models sbottom,1lbb] [--ntoys 256] [--seed 11] [--out DIR]

For each model: the observed-data fits, the toy datasets drawn from the same keys, the
fits of the compiled chunk call (before the host's retries), and the final test
statistics are compared between
``jax.default_device(cpu)`` and the GPU. The toys whose test statistics differ are saved
(their data from both devices, chunk-call results, final statistics) to
``DIR/parity-MODEL.npz``, so that they can be refitted on any machine.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(__file__)))  # benchmarks/ for fits.py
import fits  # noqa: E402

from gpufit.infer.toys import (ToyCalculator, chunk_outputs, continuation_capacity, edge_capacity,  # noqa: E402
                               refit_capacity, toy_chunk)
from gpufit.optimize.fit import FIRST_PASS_STEPS  # noqa: E402


def run(device, model, data, ntoys, seed):
    with jax.default_device(device):
        calc = ToyCalculator(model, data, [1.0], ntoys=ntoys, seed=seed, progress=False, max_failed=1.0)
        out = calc.run()
        n = ntoys
        h = np.repeat([0, 1], n)
        i = np.zeros(2 * n, np.int64)
        t = np.tile(np.arange(n), 2)
        gen = np.where((h == 0)[:, None], calc.gen_sb[i], calc.gen_b[i])
        mu_test = calc.mus[i]
        lo, hi = jnp.asarray(calc.bounds[:, 0]), jnp.asarray(calc.bounds[:, 1])
        rows = 2 * n  # one chunk, in one lockstep group (as on a GPU)
        first = toy_chunk(model.compiled, jnp.asarray(seed, jnp.uint32), jnp.asarray(h), jnp.asarray(i),
                          jnp.asarray(t), jnp.asarray(gen), jnp.asarray(model.suggested_init()),
                          jnp.asarray(mu_test), jnp.asarray(calc.poi_mask),
                          jnp.asarray(calc.free), lo, hi, calc.tol, jnp.asarray(rows), first_steps=FIRST_PASS_STEPS,
                          maxiter=calc.maxiter, group=rows, capacity=continuation_capacity(rows, rows),
                          refits=refit_capacity(rows, rows), edge=edge_capacity(rows))
        data, free_fits, fixed_fits, *_ = chunk_outputs([np.asarray(a) for a in first])
    return {
        "free_obs": float(calc.free_obs.twice_nll), "fixed_obs": np.asarray(calc.fixed_obs.twice_nll),
        "gen_sb": np.asarray(calc.gen_sb), "gen_b": np.asarray(calc.gen_b),
        "teststat": np.concatenate([out["teststat_sb"][0], out["teststat_b"][0]]),
        "data": data, "free_pars": free_fits.pars, "free_f": free_fits.twice_nll, "free_status": free_fits.status,
        "fixed_pars": fixed_fits.pars, "fixed_f": fixed_fits.twice_nll, "fixed_status": fixed_fits.status,
        "stats": out["stats"],
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="sbottom,1lbb")
    parser.add_argument("--ntoys", type=int, default=256)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", default=os.environ.get("OUT", "."))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    cpu = jax.devices("cpu")[0]
    gpu = jax.devices()[0]
    print(f"comparing {gpu} with {cpu}")
    for name in args.models.split(","):
        ws = fits.workspace(name)
        model = ws.model()
        data = ws.data(model)
        a, b = run(cpu, model, data, args.ntoys, args.seed), run(gpu, model, data, args.ntoys, args.seed)
        print(f"--- {name}: stats cpu {a['stats']}\n    stats gpu {b['stats']}")
        print(f"observed free fit |diff| {abs(a['free_obs'] - b['free_obs']):.2e}, fixed "
              f"{np.max(np.abs(a['fixed_obs'] - b['fixed_obs'])):.2e}, gen_sb {np.max(np.abs(a['gen_sb'] - b['gen_sb'])):.2e}, "
              f"gen_b {np.max(np.abs(a['gen_b'] - b['gen_b'])):.2e}")
        same_data = np.all(a["data"] == b["data"], axis=1)
        main_diff = np.any(a["data"][:, : model.n_main] != b["data"][:, : model.n_main], axis=1)
        print(f"toy datasets identical: {same_data.sum()} of {same_data.size}; rows whose main counts differ: "
              f"{main_diff.sum()}; max |aux diff| {np.max(np.abs(a['data'] - b['data'])[:, model.n_main:]):.2e}")
        for kind in ("free", "fixed"):
            fa, fb = a[f"{kind}_f"], b[f"{kind}_f"]
            sa, sb = a[f"{kind}_status"], b[f"{kind}_status"]
            ok = np.isfinite(fa) & np.isfinite(fb) & (sa == 0) & (sb == 0)
            print(f"chunk call {kind}: status equal {np.sum(sa == sb)} of {sa.size}; converged cpu {np.sum(sa == 0)} "
                  f"gpu {np.sum(sb == 0)}; max |f diff| where both converged {np.max(np.abs(fa[ok] - fb[ok])):.2e}")
        d = np.abs(a["teststat"] - b["teststat"])
        bad = np.flatnonzero(~(d < 1e-6) & ~(np.isnan(a["teststat"]) & np.isnan(b["teststat"])))
        print(f"test statistics differing by > 1e-6: {bad.size} of {d.size}: rows {bad[:20].tolist()}")
        for r in bad[:10]:
            print(f"  row {r}: ts cpu {a['teststat'][r]:.6f} gpu {b['teststat'][r]:.6f}; data equal {same_data[r]}; "
                  f"chunk call free f {a['free_f'][r]:.6f}/{b['free_f'][r]:.6f} status {a['free_status'][r]}/"
                  f"{b['free_status'][r]}, fixed f {a['fixed_f'][r]:.6f}/{b['fixed_f'][r]:.6f} status "
                  f"{a['fixed_status'][r]}/{b['fixed_status'][r]}")
        np.savez_compressed(os.path.join(args.out, f"parity-{name}.npz"), rows=bad,
                            **{f"cpu_{k}": v for k, v in a.items() if k != "stats"},
                            **{f"gpu_{k}": v for k, v in b.items() if k != "stats"})


if __name__ == "__main__":
    main()
