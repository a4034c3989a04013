"""Toys per second: gpufit's batched toy calculator against pyhf's ToyCalculator, same run.

    python benchmarks/toys.py [--models gen10,gen40,gen100,gen300,sbottom,1lbb]
                              [--ntoys 100,1000,10000] [--pyhf-toys 10] [--pyhf-seconds 30]
                              [--repeats 1] [--out benchmarks/results/toys-cpu.json]

A "toy" is one signal+background and one background-only pseudo-experiment at one mu
(4 fits for pyhf; gpufit skips the fixed-POI fits that qtilde does not need, counted
in ``fixed_poi_fits_skipped``, and its fits/s counts the fits it ran), as pyhf's
``hypotest(calctype="toybased", ntoys=N)`` counts them; toys/s is ``ntoys / seconds``
for both, the observed-data fits included. gpufit is timed warm: each
toy count runs twice (other seeds), the first compiling what it needs (its compile time
and wall time are reported), the second timed (the seconds it still spends compiling, a
retry kernel the first call did not need, are reported beside it); with ``--repeats N``
the timed call runs N times on the same toys and the median is reported, every run's
seconds kept in the JSON (this machine's speed drifts by 15-30% between runs). pyhf with its jax
backend and scipy (its fastest set-up) after a warm-up call, on ``--pyhf-toys`` toys or as many as
``--pyhf-seconds`` of its work take (sized from a 2-toy run), with the numpy>=2.4 percentile shim
(:func:`gpufit.testing.pyhf_percentile_shim`). pyhf's jax runs can abort on a failed
fit (1Lbb): such a run is repeated on new toys (``pyhf_aborted_runs`` counts them), and a
row says so instead of a rate only where every attempt aborted.
"""

from __future__ import annotations

import argparse
import os
import time

import fits  # benchmarks/fits.py: the sbottom and 1Lbb models
import jax
import numpy as np
import pyhf

import gpufit
from _report import write_report  # benchmarks/_report.py
from gpufit.testing import generate_workspace, pyhf_percentile_shim

GENERATED = {  # name: generate_workspace arguments (parameter count printed in the table)
    "gen10": dict(seed=1, n_channels=1, n_bins=2, n_normsys=2, n_histosys=1),
    "gen40": dict(seed=1, n_channels=2, n_bins=6),
    "gen100": dict(seed=1, n_channels=3, n_bins=12, n_normsys=6, n_histosys=6),
    "gen300": dict(seed=1, n_channels=6, n_bins=20, n_normsys=10, n_histosys=10),
}


def workspace(name):
    if name not in GENERATED:
        return fits.workspace(name)  # sbottom, 1lbb
    return gpufit.Workspace(generate_workspace(**GENERATED[name]))


def load(name, dtype="float64"):
    ws = workspace(name)
    model = ws.model(dtype=dtype)
    return model, ws.data(model)


PYHF_ATTEMPTS = 3  # pyhf runs of one size, each on new toys, before its row gives up


def time_pyhf(model, data, ntoys, mu=1.0, seconds=0.0):
    """pyhf toys/s (jax backend + scipy), the toys and seconds timed, the runs that aborted
    on a failed fit, and an error message where every attempt did: ``ntoys`` toys, or as
    many as ``seconds`` of pyhf's work take (sized from a 2-toy run after the warm-up,
    then enlarged until one timed run lasts that long). A run that aborts is run again
    on new toys (pyhf draws them afresh), up to ``PYHF_ATTEMPTS`` times; the aborted
    runs' seconds are not counted, which flatters pyhf."""
    pyhf.set_backend("jax", pyhf.optimize.scipy_optimizer())
    pm = model.pyhf_model
    aborted = [0]

    def run(n):
        for attempt in range(PYHF_ATTEMPTS):
            start = time.perf_counter()
            try:
                pyhf.infer.hypotest(mu, data, pm, calctype="toybased", ntoys=n, track_progress=False)
            except Exception:  # noqa: BLE001 - pyhf's fit failed on one of its toys
                aborted[0] += 1
                if attempt == PYHF_ATTEMPTS - 1:
                    raise
                continue
            return time.perf_counter() - start

    try:
        with pyhf_percentile_shim():
            run(2)  # warm-up (jit)
            if seconds > 0:
                ntoys = max(ntoys, int(np.ceil(seconds / (run(2) / 2))))
            elapsed = run(ntoys)
            for _ in range(3):  # a call's fixed cost made the 2-toy run look slow: more toys
                if elapsed >= seconds:
                    break
                ntoys = int(np.ceil(1.2 * ntoys * seconds / elapsed))
                elapsed = run(ntoys)
        return ntoys / elapsed, ntoys, elapsed, aborted[0], None
    except Exception as err:  # noqa: BLE001 - every attempt failed; report it
        return None, ntoys, None, aborted[0], f"{type(err).__name__}: {str(err)[:120]}"
    finally:
        pyhf.set_backend("numpy")


_COMPILING = [0.0]  # seconds JAX spent tracing, lowering and compiling since the last reset


def _count_compiles(event, duration, **_):
    if event.startswith("/jax/core/compile/"):
        _COMPILING[0] += duration


jax.monitoring.register_event_duration_secs_listener(_count_compiles)


def time_gpufit(model, data, ntoys, mu=1.0, seed=0, chunk_size=None):
    """toys/s of one call, the result, and the seconds of it spent compiling."""
    _COMPILING[0] = 0.0
    start = time.perf_counter()
    r = gpufit.hypotest(model, data, mu, calculator="toys", ntoys=ntoys, seed=seed, progress=False, max_failed=1.0,
                        chunk_size=chunk_size)
    return ntoys / (time.perf_counter() - start), r, _COMPILING[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="gen10,gen40,gen100,gen300,sbottom,1lbb")
    parser.add_argument("--ntoys", default="100,1000,10000")
    parser.add_argument("--pyhf-toys", type=int, default=10, help="0: no pyhf rows (e.g. on a GPU machine)")
    parser.add_argument("--pyhf-seconds", type=float, default=30.0,
                        help="at least this many seconds of pyhf's work per model (more toys than --pyhf-toys)")
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"))
    parser.add_argument("--mu", type=float, default=1.0)
    parser.add_argument("--chunk-size", type=int, default=None, help="toys per compiled call (default: the device's)")
    parser.add_argument("--warmup-toys", type=int, default=None,
                        help="toys of the first, compiling call (default: as many as the timed one; at least a "
                             "chunk's worth compiles the same chunk kernel, and a retry kernel the smaller call "
                             "did not meet compiles in the timed call: timed_call_compile_seconds)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed calls per toy count, on the same toys; the median is reported, all kept")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "toys-cpu.json"))
    args = parser.parse_args()
    rows = []

    def write():
        write_report(args.out, "toys.py", args, rows)

    for name in args.models.split(","):
        model, data = load(name, args.dtype)
        ref, ref_toys, ref_seconds, ref_aborted, ref_error = (
            time_pyhf(model, data, args.pyhf_toys, args.mu, args.pyhf_seconds) if args.pyhf_toys
            else (None, 0, None, 0, "not run"))
        for ntoys in (int(n) for n in args.ntoys.split(",")):
            # the first call compiles the chunk and the retry shapes it meets; time the second
            first = time.perf_counter()
            warmup = ntoys if args.warmup_toys is None else min(ntoys, args.warmup_toys)
            _, r0, compiling = time_gpufit(model, data, warmup, args.mu, seed=12345, chunk_size=args.chunk_size)
            first_call = time.perf_counter() - first
            runs = [time_gpufit(model, data, ntoys, args.mu, chunk_size=args.chunk_size) for _ in range(args.repeats)]
            rate, r, timed_compiling = sorted(runs, key=lambda run: run[0])[len(runs) // 2]  # the median run
            steady = ntoys / (ntoys / rate - timed_compiling)  # the same call without its compiles
            info = r.info
            row = {
                "model": name, "dtype": args.dtype, "parameters": model.n_pars, "ntoys": ntoys,
                "seconds_runs": [ntoys / run[0] for run in runs],
                "chunk_size": r.info["chunk_size"], "gpufit_toys_per_s": rate,
                "gpufit_fits_per_s": info["fits"] * rate / ntoys, "compile_seconds": compiling,
                "timed_call_compile_seconds": timed_compiling, "gpufit_toys_per_s_without_compiles": steady,
                "first_call_seconds": first_call, "pyhf_jax_toys_per_s": ref, "pyhf_error": ref_error,
                "pyhf_toys_timed": ref_toys, "pyhf_seconds": ref_seconds, "pyhf_aborted_runs": ref_aborted, "ratio_vs_pyhf_jax": rate / ref if ref else None,
                "n_failed": r.n_failed, "retried": info["continued"] + info["restarted"] + info["local_minima"],
                "minuit": info["minuit"], "at_edge": info["at_edge"], "lower_at_edge": info["lower_at_edge"],
                "lower_along_edge": info["lower_along_edge"],
                "fixed_poi_fits_skipped": info["skipped"],
                "cls_obs": r.cls_obs, "cls_obs_err": r.cls_obs_err,
                "toy_seconds": info["seconds"], "device_wait_seconds": info["device_wait_seconds"],
                "host_retry_seconds": info["host_retry_seconds"],
            }
            rows.append(row)
            ratio = f"x{rate / ref:7.1f}" if ref else "   n/a "
            pyhf_text = f"{ref:8.2f}" if ref else ("  failed" if args.pyhf_toys else " not run")
            print(f"{name:8s} P={model.n_pars:4d} ntoys={ntoys:7d}  gpufit {rate:9.1f} toys/s ({steady:9.1f} without "
                  f"compiles)  pyhf-jax {pyhf_text} "
                  f"{ratio} vs pyhf-jax  failed {r.n_failed}  retried {row['retried']}  "
                  f"(compile {row['compile_seconds']:.1f} s, in the timed call {timed_compiling:.1f} s)", flush=True)
            print(f"         of the timed call's {ntoys / rate:.2f} s: toys {info['seconds']:.2f} s (waiting for the "
                  f"device {info['device_wait_seconds']:.2f} s, host retries {info['host_retry_seconds']:.2f} s), "
                  f"the rest observed-data fits and set-up", flush=True)
            write()
            if ref_error and args.pyhf_toys and ntoys == int(args.ntoys.split(",")[0]):
                print(f"         pyhf: {ref_error}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
