import json
import os
import shutil

# Before JAX starts its backend: the suite compiles a few hundred small kernels and runs each
# briefly, and LLVM's optimization of their machine code was a quarter of its time (2 cores:
# 513 -> 383 s). The same HLO either way; results agree to rounding (1e-12 on generated toys'
# test statistics). Not set where a GPU is (benchmarks/gpu/run.sh measures its kernels as users
# get them) or where the caller chose a level; the environment carries it to the notebooks'
# kernels, the Dask workers and the CLI's subprocesses.
if shutil.which("nvidia-smi") is None and "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()

import jax
import numpy as np
import pyhf
import pytest

import gpufit
from gpufit.workspace import bundled_path
from gpufit.testing import generate_workspace

WS = bundled_path()
SBOTTOM = os.path.join(WS, "atlas_sbottom_ins1748602")
LBB = os.path.join(WS, "atlas_1Lbb_ins1755298")
VALIDATION = os.path.join(WS, "pyhf_validation")


def pytest_collection_modifyitems(config, items):
    """The slow tests first: the test workers then finish together, instead of one
    running a minute-long test alone at the end while the other waits."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


def pytest_configure(config):
    pyhf.set_backend("numpy")
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):  # .ci/run: one cache for the run's processes
        # every kernel, not only those compiling in over a second (JAX's default): the test
        # workers, notebook kernels, Dask workers and CLI subprocesses share them all
        os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)


@pytest.fixture(scope="session")
def sbottom_ws():
    return gpufit.Workspace.load(os.path.join(SBOTTOM, "RegionA", "BkgOnly.json")).patched(
        os.path.join(SBOTTOM, "RegionA", "patch.sbottom_1300_205_60.json")
    )


@pytest.fixture(scope="session")
def sbottom(sbottom_ws):
    model = sbottom_ws.model(
        modifier_settings={"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}
    )
    return model, sbottom_ws.data(model)


@pytest.fixture(scope="session")
def lbb_ws():
    return gpufit.Workspace.load(os.path.join(LBB, "BkgOnly.json")).with_patchset(
        os.path.join(LBB, "patchset.json.gz"), "C1N2_Wh_hbb_700_300"
    )


@pytest.fixture(scope="session")
def docs_ws():
    return gpufit.Workspace.load(os.path.join(WS, "pyhf_docs_2-bin_1-channel.json"))


@pytest.fixture(scope="session")
def validation_expected():
    with open(os.path.join(VALIDATION, "expected.json")) as handle:
        return json.load(handle)


def strict_json(text: str):
    """Parse one JSON document as a strict parser would: NaN and Infinity are refused."""

    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def random_points(model, n, seed=0, scale=0.8):
    """Random parameter points inside the bounds (fixed parameters at their init)."""
    rng = np.random.default_rng(seed)
    init = model.suggested_init()
    bounds = model.suggested_bounds()
    free = ~model.fixed_parameters()
    pts = init + scale * rng.normal(size=(n, model.n_pars)) * free
    pts = np.where(init == 1.0, np.abs(pts - 1.0) * 0.5 + 0.75, pts)  # multiplicative ones near 1
    return np.clip(pts, bounds[:, 0] + 1e-3, bounds[:, 1] - 1e-3)


def broken_workspace(monkeypatch):
    """A model that cannot be fitted: a normsys with lo = 0 makes the likelihood NaN.

    Loading refuses such a model (test_bad_input.py); the load-time check is switched
    off here to build one anyway, so that the failure accounting of fits and toys
    meets fits that really fail."""
    import gpufit.model._model
    import gpufit.workspace

    for module in (gpufit.workspace, gpufit.model._model):
        monkeypatch.setattr(module, "check_channel_values", lambda channels: None)
    spec = generate_workspace(seed=2, n_channels=1, n_bins=2, n_normsys=0, n_histosys=0)
    spec["channels"][0]["samples"][1]["modifiers"].append(
        {"name": "broken", "type": "normsys", "data": {"hi": 1.2, "lo": 0.0}}
    )
    return gpufit.Workspace(spec)
