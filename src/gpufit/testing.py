"""Helpers for tests and benchmarks: generated workspaces and a pyhf 0.7.6 shim.

``generate_workspace`` writes random but physical HistFactory workspaces that use every
modifier type together, of any size (``n_parameters`` gives the parameter count of a
call). Within ``with pyhf_percentile_shim():`` pyhf 0.7.6's toy calculator runs on
numpy >= 2.4 and jax >= 0.10 (fixed upstream after 0.7.6).
"""

from __future__ import annotations

import contextlib

import jax.numpy as jnp
import numpy as np
import pyhf
from pyhf.tensor import jax_backend, numpy_backend


def generate_workspace(seed: int = 0, n_channels: int = 2, n_bins: int = 4, n_samples: int = 3,
                       n_normsys: int = 3, n_histosys: int = 3, empty_bin: bool = False) -> dict:
    """A random but physical workspace: signal with normfactor mu, backgrounds with lumi,
    normsys, histosys (shared across channels), staterror, shapesys and a shapefactor, a
    free background normfactor, and a fixed parameter in the measurement."""
    rng = np.random.default_rng(seed)
    channels, observations = [], []
    for c in range(n_channels):
        samples = []
        total = np.zeros(n_bins)
        for s in range(n_samples):
            nominal = rng.uniform(5.0, 60.0, n_bins) * (0.3 if s == 0 else 1.0)
            if empty_bin and s == 0:
                nominal[-1] = 0.0
            total += nominal
            mods = []
            if s == 0:
                mods.append({"name": "mu", "type": "normfactor", "data": None})
            else:
                mods.append({"name": "lumi", "type": "lumi", "data": None})
                mods.append({"name": "staterror_ch%d" % c, "type": "staterror",
                             "data": list(np.sqrt(nominal) * rng.uniform(0.2, 0.6, n_bins))})
            for j in range(n_normsys):
                if rng.uniform() < 0.7:
                    hi, lo = 1 + rng.uniform(0.02, 0.25), 1 - rng.uniform(0.02, 0.25)
                    mods.append({"name": f"norm_{j}", "type": "normsys", "data": {"hi": hi, "lo": lo}})
            for j in range(n_histosys):
                if rng.uniform() < 0.7:
                    up = nominal * (1 + rng.uniform(-0.15, 0.2, n_bins))
                    down = nominal * (1 - rng.uniform(-0.1, 0.2, n_bins))
                    mods.append({"name": f"shape_{j}", "type": "histosys",
                                 "data": {"hi_data": list(up), "lo_data": list(down)}})
            if s == 1:
                mods.append({"name": f"bkgnorm_ch{c}", "type": "normfactor", "data": None})
                mods.append({"name": "fixed_norm", "type": "normfactor", "data": None})
            if s == 2 % n_samples and s != 0:
                mods.append({"name": f"shapesys_ch{c}", "type": "shapesys",
                             "data": list(nominal * rng.uniform(0.05, 0.3, n_bins))})
            if s == n_samples - 1 and c == 0:
                mods.append({"name": "shapefactor_ch0", "type": "shapefactor", "data": None})
            samples.append({"name": f"sample_{s}", "data": list(nominal), "modifiers": mods})
        channels.append({"name": f"channel_{c}", "samples": samples})
        observations.append({"name": f"channel_{c}", "data": list(rng.poisson(total).astype(float))})
    measurement = {
        "name": "meas",
        "config": {
            "poi": "mu",
            "parameters": [
                {"name": "lumi", "auxdata": [1.0], "sigmas": [0.02], "bounds": [[0.5, 1.5]], "inits": [1.0]},
                {"name": "fixed_norm", "fixed": True, "inits": [1.1]},
                {"name": "mu", "bounds": [[0.0, 10.0]], "inits": [1.0]},
            ],
        },
    }
    return {"channels": channels, "observations": observations, "measurements": [measurement], "version": "1.0.0"}


def n_parameters(spec: dict) -> int:
    """Number of model parameters of a generated workspace (as pyhf counts them)."""
    return pyhf.Workspace(spec).model().config.npars


@contextlib.contextmanager
def pyhf_percentile_shim():
    """Within the block, pyhf 0.7.6's ``percentile`` calls numpy/jax with ``method=``.

    pyhf 0.7.6 passes ``interpolation=`` to ``numpy.percentile`` and ``jax.numpy.percentile``,
    a keyword numpy >= 2.4 and jax >= 0.10 no longer take, so its ``ToyCalculator``
    raises TypeError (fixed upstream after 0.7.6). pyhf's backends are restored on exit:
    nothing outlives the block.

    >>> with pyhf_percentile_shim():
    ...     calc.distributions(1.0)  # doctest: +SKIP
    """

    def numpy_percentile(self, tensor_in, q, axis=None, interpolation="linear"):
        return np.percentile(tensor_in, q, axis=axis, method=interpolation)

    def jax_percentile(self, tensor_in, q, axis=None, interpolation="linear"):
        return jnp.percentile(tensor_in, q, axis=axis, method=interpolation)

    classes = (numpy_backend.numpy_backend, jax_backend.jax_backend)
    originals = [cls.__dict__["percentile"] for cls in classes]
    numpy_backend.numpy_backend.percentile = numpy_percentile
    jax_backend.jax_backend.percentile = jax_percentile
    try:
        yield
    finally:
        for cls, original in zip(classes, originals):
            cls.percentile = original
