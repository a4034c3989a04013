"""Run the same toys on every JAX device and compare: the check behind ``gpufit info``.

A job that asked for a GPU and landed on a CPU, a CUDA build of JAX that silently fell
back to the host, or a device that computes wrong numbers all show up here: the toy test
statistics of one seed are computed on each device (the CPU included) and compared with
the CPU's, and each device's rate is reported.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from .. import _device
from .toys import ToyCalculator

TOLERANCE = 1e-9  # largest |teststat(device) - teststat(cpu)| accepted in float64 (x1e3 in float32)


def devices_to_check() -> list:
    """The CPU first (the reference), then every device of JAX's default backend."""
    cpu = jax.devices("cpu")[0]
    return [cpu] + [d for d in jax.devices() if d.platform != "cpu"]


def run_on(device, model, data, ntoys: int, seed: int) -> dict:
    """One toy run on ``device``; its test statistics [2, ntoys] and its rate."""
    with jax.default_device(device):
        # fits to edm < 1e-10 so that two devices' test statistics can agree to 1e-9
        calc = ToyCalculator(model, data, [1.0], ntoys=ntoys, seed=seed, progress=False, max_failed=1.0,
                             toy_tol=1e-10)
        started = time.perf_counter()
        out = calc.run()
        seconds = time.perf_counter() - started
    stats = out["stats"]
    return {
        "device": _device.describe(device),
        "memory_bytes": _device.device_memory_bytes(device),
        "chunk_size": calc.chunk_size,
        "ntoys": ntoys,
        "seconds": seconds,
        "compile_seconds": stats["compile_seconds"],
        "toys_per_s": ntoys / max(seconds - stats["compile_seconds"], 1e-9),
        "n_failed": int(out["n_failed"]),
        "teststats": np.stack([out["teststat_sb"][0], out["teststat_b"][0]]),
    }


def check_devices(model, data, ntoys: int = 512, seed: int = 0) -> list[dict]:
    """Rows, one per device (CPU first), with ``max_abs_diff`` and ``agrees`` against the CPU.

    ``agrees`` is False where a test statistic differs by more than ``TOLERANCE`` (scaled
    for float32 models) or is NaN on one device only.
    """
    tolerance = TOLERANCE * (1e3 if model.dtype == np.float32 else 1.0)
    rows = [run_on(d, model, data, ntoys, seed) for d in devices_to_check()]
    reference = rows[0]["teststats"]
    for row in rows:
        ts = row.pop("teststats")
        same_nan = bool(np.array_equal(np.isnan(ts), np.isnan(reference)))
        ok = ~np.isnan(ts) & ~np.isnan(reference)
        diff = float(np.max(np.abs(ts[ok] - reference[ok]))) if ok.any() else 0.0
        row["max_abs_diff"] = diff
        row["agrees"] = same_nan and diff <= tolerance
    return rows
