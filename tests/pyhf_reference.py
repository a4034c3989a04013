"""pyhf's ToyCalculator on the models of ``test_toys.py::test_toys_agree_with_pyhf``.

pyhf fits each toy one after another (minutes for the generated model on CI's two cores),
so the cases marked ``stored`` compare against pyhf's distributions saved in
``tests/data/pyhf_toys.json``; the others run pyhf live in the test. Regenerate the file
(and see which pyhf made it) with

    python tests/pyhf_reference.py
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pyhf

import gpufit
from conftest import VALIDATION  # tests/conftest.py
from gpufit.testing import generate_workspace, pyhf_percentile_shim

STORED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "pyhf_toys.json")
# case: (mu, pyhf toys per hypothesis, stored in STORED rather than run in the test)
CASES = {
    "docs": (1.0, 1500, True),
    "1bin_shapesys.json": (1.0, 600, False),
    "generated": (1.0, 150, True),
}
SEED = 11


def workspace(case):
    if case == "docs":
        return gpufit.Workspace.example("docs")
    if case == "generated":
        # two channels: the shapefactor of channel 0 cannot absorb the signal of channel 1
        return gpufit.Workspace(generate_workspace(seed=5, n_channels=2, n_bins=2, n_normsys=2, n_histosys=1))
    return gpufit.Workspace.load(os.path.join(VALIDATION, case))


def pyhf_toys(model, data, mu, ntoys, seed, test_stat="qtilde"):
    """pyhf's ToyCalculator (numpy backend, percentile shim): p-values and distributions."""
    pyhf.set_backend("numpy")
    np.random.seed(seed)
    pm = model.pyhf_model
    calc = pyhf.infer.utils.create_calculator(
        "toybased", data, pm, pm.config.suggested_init(), pm.config.suggested_bounds(),
        pm.config.suggested_fixed(), ntoys=ntoys, test_stat=test_stat, track_progress=False,
    )
    with pyhf_percentile_shim():
        obs = calc.teststatistic(mu)
        sb, b = calc.distributions(mu)
        clsb, clb, cls = calc.pvalues(obs, sb, b)
        exp = calc.expected_pvalues(sb, b)
    return {
        "clsb": float(clsb), "clb": float(clb), "cls": float(cls), "cls_exp": np.asarray(exp[2], dtype=float).tolist(),
        "sb": np.asarray(sb.samples, dtype=float).tolist(), "b": np.asarray(b.samples, dtype=float).tolist(),
        "obs": float(obs),
    }


def reference(case, model, data):
    """pyhf's result for a case: from STORED, or computed now."""
    mu, ntoys, stored = CASES[case]
    if not stored:
        return pyhf_toys(model, data, mu, ntoys, SEED)
    with open(STORED) as handle:
        return json.load(handle)["cases"][case]


def main():
    cases = {}
    for case, (mu, ntoys, stored) in CASES.items():
        if stored:
            ws = workspace(case)
            model = ws.model()
            cases[case] = pyhf_toys(model, ws.data(model), mu, ntoys, SEED) | {"mu": mu, "ntoys": ntoys, "seed": SEED}
            print(f"{case}: CLs {cases[case]['cls']:.4f}", flush=True)
    with open(STORED, "w") as handle:
        json.dump({"command": "python tests/pyhf_reference.py", "pyhf": pyhf.__version__,
                   "numpy": np.__version__, "python": sys.version.split()[0], "cases": cases}, handle)
    print(f"wrote {STORED}")


if __name__ == "__main__":
    main()
