"""The same work on the GPU and on the CPU gives the same numbers (float64).

Skipped without a CUDA device; ``benchmarks/gpu/run.sh`` runs them on one. Each test
runs its work twice in one process, once with ``jax.default_device`` on the CPU and once
on the GPU, so that the CPU side uses the CPU's chunking and the GPU side the GPU's.
"""

import os

import jax
import numpy as np
import pytest

import gpufit
from gpufit.infer.toys import ToyCalculator

pytestmark = pytest.mark.gpu


def _gpu():
    try:
        return jax.devices("gpu")[0]
    except RuntimeError:
        return None


GPU = _gpu()
CPU = jax.devices("cpu")[0]
needs_gpu = pytest.mark.skipif(GPU is None, reason="no CUDA device visible to JAX")


def on(device, work):
    with jax.default_device(device):
        return work()


def rel(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


@needs_gpu
def test_logpdf_on_gpu_equals_cpu(sbottom):
    model, data = sbottom
    rng = np.random.default_rng(3)
    pars = model.suggested_init() + 0.3 * rng.standard_normal((256, model.n_pars))
    pars[:, model.poi_index] = np.abs(pars[:, model.poi_index])
    cpu = on(CPU, lambda: np.asarray(model.logpdf(pars, data)))
    gpu = on(GPU, lambda: np.asarray(model.logpdf(pars, data)))
    assert np.all(np.isfinite(cpu))
    assert rel(gpu, cpu) < 1e-12, rel(gpu, cpu)


@needs_gpu
def test_fits_on_gpu_equal_cpu(sbottom):
    model, data = sbottom
    rng = np.random.default_rng(4)
    batch = np.tile(data, (512, 1))
    batch[:, : model.n_main] = rng.poisson(data[: model.n_main], size=(512, model.n_main))
    cpu = on(CPU, lambda: gpufit.fit(model, batch, retry=False))
    gpu = on(GPU, lambda: gpufit.fit(model, batch, retry=False))
    both = cpu.converged & gpu.converged
    assert both.mean() > 0.99
    # the same minimum to the fit's own precision (edm < tol = 1e-8 in -2 log L)
    assert np.max(np.abs(gpu.twice_nll[both] - cpu.twice_nll[both])) < 1e-7
    assert np.max(np.abs(gpu.pars[both] - cpu.pars[both])) < 1e-3


@pytest.fixture(scope="module")
def lbb(lbb_ws):
    model = lbb_ws.model()
    return model, lbb_ws.data(model)


@needs_gpu
@pytest.mark.parametrize("name", ["sbottom", "lbb"])
def test_toy_teststats_on_gpu_equal_cpu(name, request):
    """Same seed, same toys (drawn from the keys on either device), same test statistics."""
    model, data = request.getfixturevalue(name)

    def run():
        calc = ToyCalculator(model, data, [1.0], ntoys=256, seed=11, progress=False, max_failed=1.0)
        return calc.run()

    cpu, gpu = on(CPU, run), on(GPU, run)
    for key in ("teststat_sb", "teststat_b"):
        a, b = gpu[key], cpu[key]
        assert np.array_equal(np.isnan(a), np.isnan(b))
        ok = ~np.isnan(a)
        # toy fits stop at edm < 1e-6: each test statistic is within ~1e-6 of its exact value
        assert np.max(np.abs(a[ok] - b[ok])) < 1e-5, (key, np.max(np.abs(a[ok] - b[ok])))
    assert abs(gpu["cls_obs"][0] - cpu["cls_obs"][0]) < 3 / 256


@needs_gpu
def test_scan_on_gpu_equals_cpu(lbb_ws):
    """A few 1Lbb signal points, fitted side by side (one padded model per fit): CLs at
    mu = 1 and the six limits of every point agree between the devices."""
    folder = gpufit.workspace.bundled_path("atlas_1Lbb_ins1755298")
    patchset = os.path.join(folder, "patchset.json.gz")

    def run():
        return gpufit.scan(lbb_ws, patchset, patches="C1N2_Wh_hbb_300_*").points

    cpu, gpu = on(CPU, run), on(GPU, run)
    assert [r["name"] for r in gpu] == [r["name"] for r in cpu] and len(cpu) == 5
    for a, b in zip(gpu, cpu):
        assert a["error"] is None and b["error"] is None
        # fits stop at edm < 1e-8: CLs and the limits (solved to 1e-7) agree well inside 1e-5
        assert rel([a["cls_obs"], *a["cls_exp"]], [b["cls_obs"], *b["cls_exp"]]) < 1e-5, a["name"]
        assert rel([a["upper_limit_obs"], *a["upper_limit_exp"]],
                   [b["upper_limit_obs"], *b["upper_limit_exp"]]) < 1e-5, a["name"]


@needs_gpu
def test_a_kernel_folder_on_the_gpu_gives_the_same_toys(sbottom, tmp_path):
    """The serialized chunk kernel of a campaign (jax.export for the GPU's runtime) gives
    the toys of the traced one, written and read back on the GPU."""
    from gpufit.infer import toys

    model, data = sbottom

    def run(**kwargs):
        toys._COMPILED.clear()  # as in a new process
        return ToyCalculator(model, data, [1.0], ntoys=128, seed=3, progress=False, max_failed=1.0, **kwargs).run()

    plain, first, again = (on(GPU, lambda k=k: run(**k)) for k in ({}, {"kernel_dir": str(tmp_path)},
                                                                    {"kernel_dir": str(tmp_path)}))
    assert list(tmp_path.glob("toy-chunk-*.jax-export"))
    for r in (first, again):
        np.testing.assert_array_equal(r["teststat_sb"], plain["teststat_sb"])
        np.testing.assert_array_equal(r["teststat_b"], plain["teststat_b"])
