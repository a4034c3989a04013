"""The JSON report every benchmark writes: machine, versions, command, rows."""

from __future__ import annotations

import json
import os
import platform


THREADS = "gpufit and pyhf run in one process, each with every core XLA and BLAS see"


def command_line(script: str, args) -> str:
    """The command line that reproduces a benchmark run (every option spelled out)."""
    return f"python benchmarks/{script} " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "out")


def write_report(path: str, script: str, args, rows: list, threads: str = THREADS) -> None:
    """Write ``rows`` with the device and versions (called after every row, so that an
    interrupted run keeps what it measured)."""
    import jax
    import pyhf

    import gpufit

    report = {
        "device": f"{jax.default_backend()}: {jax.devices()[0].device_kind}",
        "machine": platform.machine(), "cpus": os.cpu_count(),
        "threads": threads,
        "gpufit": gpufit.__version__, "pyhf": pyhf.__version__, "jax": jax.__version__,
        "command": command_line(script, args),
        # the environment that changes what XLA compiles belongs to the command line
        "environment": {k: os.environ[k] for k in ("XLA_FLAGS", "JAX_ENABLE_X64", "OMP_NUM_THREADS")
                        if k in os.environ},
        "rows": rows,
    }
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as handle:
        json.dump(report, handle, indent=1)
