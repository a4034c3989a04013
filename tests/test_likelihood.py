"""logpdf and expected data against pyhf (1e-9 relative) and a slow reference."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import gpufit
from gpufit.likelihood import derivatives, kernels
from gpufit.testing import generate_workspace
from reference import reference_logpdf
from conftest import VALIDATION, random_points

CODES = [
    {"normsys": {"interpcode": n}, "histosys": {"interpcode": h}}
    for n in ("code1", "code4")
    for h in ("code0", "code2", "code4p")
]


def assert_matches_pyhf(model, data, points):
    ours = np.asarray(model.logpdf(points, data))
    ref = np.array([model.pyhf_model.logpdf(p, data)[0] for p in points])
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=0)


@pytest.mark.parametrize("settings", CODES, ids=lambda s: s["normsys"]["interpcode"] + "-" + s["histosys"]["interpcode"])
def test_generated_every_modifier_and_code(settings):
    ws = gpufit.Workspace(generate_workspace(seed=3))
    model = ws.model(modifier_settings=settings)
    kinds = {m["type"] for c in model.spec["channels"] for s in c["samples"] for m in s["modifiers"]}
    assert kinds == {"normfactor", "lumi", "normsys", "histosys", "staterror", "shapesys", "shapefactor"}
    data = ws.data(model)
    points = random_points(model, 20, seed=1, scale=1.6)  # reaches |alpha| > 1: every branch
    assert_matches_pyhf(model, data, points)
    for p in points[:4]:
        assert float(model.logpdf(p, data)) == pytest.approx(reference_logpdf(model, p, data), rel=1e-9)


def test_parameter_names_and_config_equal_pyhf():
    ws = gpufit.Workspace(generate_workspace(seed=5, empty_bin=True))
    model = ws.model()
    cfg = model.pyhf_model.config
    assert model.parameter_names == cfg.par_names
    np.testing.assert_array_equal(model.suggested_init(), cfg.suggested_init())
    np.testing.assert_array_equal(model.suggested_bounds(), cfg.suggested_bounds())
    np.testing.assert_array_equal(model.fixed_parameters(), cfg.suggested_fixed())
    assert model.fixed_parameters()[model.parameter_index("fixed_norm")]
    np.testing.assert_array_equal(ws.data(model), ws.pyhf.data(model.pyhf_model))
    p = random_points(model, 3)
    np.testing.assert_allclose(model.expected_data(p), [model.pyhf_model.expected_data(x) for x in p], rtol=1e-12)


VALIDATION_FILES = sorted(p for p in glob.glob(os.path.join(VALIDATION, "*.json")) if not p.endswith("expected.json"))


@pytest.mark.parametrize("path", VALIDATION_FILES, ids=os.path.basename)
def test_validation_workspaces(path):
    ws = gpufit.Workspace.load(path)
    model = ws.model(modifier_settings={"normsys": {"interpcode": "code1"}, "histosys": {"interpcode": "code0"}})
    assert_matches_pyhf(model, ws.data(model), random_points(model, 10))


def test_xml_imports():
    for path in glob.glob(os.path.join(os.path.dirname(VALIDATION), "pyhf_xml", "*.json")):
        ws = gpufit.Workspace.load(path)
        model = ws.model()
        assert_matches_pyhf(model, ws.data(model), random_points(model, 5))


def test_sbottom(sbottom):
    model, data = sbottom
    assert_matches_pyhf(model, data, random_points(model, 10))


def test_1lbb(lbb_ws):
    model = lbb_ws.model()
    assert model.n_pars == 126
    assert_matches_pyhf(model, lbb_ws.data(model), random_points(model, 5))


def test_batch_shapes_and_backends(sbottom):
    model, data = sbottom
    points = random_points(model, 6).reshape(2, 3, -1)
    batched = np.asarray(model.logpdf(points, data))
    assert batched.shape == (2, 3)
    loop = np.array([[float(model.logpdf(p, data)) for p in row] for row in points])
    np.testing.assert_allclose(batched, loop, rtol=1e-13)
    numpy_model = gpufit.Model(model.spec, poi_name=model.poi_name, modifier_settings=model.modifier_settings, backend="numpy")
    np.testing.assert_allclose(numpy_model.logpdf(points, data), batched, rtol=1e-12)
    eager = kernels.logpdf(model.compiled, jnp.asarray(points), jnp.asarray(data))
    np.testing.assert_allclose(eager, batched, rtol=1e-13)
    vmapped = jax.vmap(lambda p: kernels.logpdf(model.compiled, p, jnp.asarray(data)))(jnp.asarray(points[0]))
    np.testing.assert_allclose(vmapped, batched[0], rtol=1e-13)


def test_float32_accuracy(sbottom_ws):
    """float32 is within 1e-5 relative of float64 on sbottom (documented in the README)."""
    m64 = sbottom_ws.model()
    m32 = sbottom_ws.model(dtype="float32")
    data = sbottom_ws.data(m64)
    p = random_points(m64, 8)
    l32 = np.asarray(m32.logpdf(p, data))
    assert l32.dtype == np.float32
    np.testing.assert_allclose(l32, np.asarray(m64.logpdf(p, data)), rtol=1e-5)


@pytest.mark.parametrize("settings", CODES, ids=lambda s: s["normsys"]["interpcode"] + "-" + s["histosys"]["interpcode"])
def test_analytic_derivatives_equal_autodiff(settings):
    ws = gpufit.Workspace(generate_workspace(seed=7))
    model = ws.model(modifier_settings=settings)
    m = model.compiled
    data = jnp.asarray(ws.data(model))

    @jax.jit  # both sides compiled once for the four points (op by op they took 20 s)
    def both(p):
        ours = derivatives.expected_main_and_jacobian(m, p, second=True)[1:]
        ours += derivatives.twice_nll_gradient_curvature(m, p, data)[:2]
        jac = jax.jacfwd(lambda x: kernels.expected_main(m, x))(p)
        hess = jax.hessian(lambda x: kernels.expected_main(m, x))(p)
        f, g = jax.value_and_grad(lambda x: kernels.twice_nll(m, x, data))(p)
        return ours, (jac, jnp.diagonal(hess, axis1=1, axis2=2), f, g)

    for p in random_points(model, 4, scale=1.6):
        (jac, d2, f, g), (want_jac, want_d2, want_f, want_g) = both(jnp.asarray(p))
        np.testing.assert_allclose(jac, want_jac, rtol=1e-10, atol=1e-10)
        # the diagonal second derivatives leave out products of two different entries
        # of one parameter; on this generated model no parameter enters a sample twice
        np.testing.assert_allclose(d2, want_d2, rtol=1e-8, atol=1e-8)
        np.testing.assert_allclose(f, want_f, rtol=1e-12)
        np.testing.assert_allclose(g, want_g, rtol=1e-9, atol=1e-9)


def test_analytic_jacobian_at_a_zero_normfactor():
    """With the POI (a normfactor) at 0 the signal's expected counts vanish, yet their
    derivative in the POI does not: the analytic Jacobian and diagonal second
    derivatives equal autodiff's there too (a model where no parameter enters a sample
    twice, as in test_analytic_derivatives_equal_autodiff)."""
    model = gpufit.Workspace(generate_workspace(seed=7)).model()
    m = model.compiled
    p = random_points(model, 1)[0]
    p[model.poi_index] = 0.0
    nu, jac, d2 = jax.jit(lambda x: derivatives.expected_main_and_jacobian(m, x, second=True))(jnp.asarray(p))
    want_jac = jax.jacfwd(lambda x: kernels.expected_main(m, x))(jnp.asarray(p))
    want_d2 = jnp.diagonal(jax.hessian(lambda x: kernels.expected_main(m, x))(jnp.asarray(p)), axis1=1, axis2=2)
    assert np.all(np.abs(np.asarray(want_jac)[:, model.poi_index]) > 0)
    np.testing.assert_allclose(nu, kernels.expected_main(m, jnp.asarray(p)), rtol=1e-13)
    np.testing.assert_allclose(jac, want_jac, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(d2, want_d2, rtol=1e-8, atol=1e-8)


def test_grad_is_finite_at_bounds(sbottom):
    model, data = sbottom
    p = model.suggested_init()
    p[model.poi_index] = 0.0
    g = jax.grad(lambda x: kernels.twice_nll(model.compiled, x, jnp.asarray(data)))(jnp.asarray(p))
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize("name", ["sbottom", "generated"])
@pytest.mark.slow
def test_structured_solve_equals_dense_solve(name, sbottom):
    """The Woodbury/Schur step equals a dense solve of the same damped matrix; the
    constrained parameters it takes as acting on one main bin (on the diagonal of its
    N x N matrix) do: their Jacobian columns (autodiff's) are zero outside that bin."""
    from gpufit.optimize import _solver

    if name == "sbottom":
        model, data = sbottom
    else:  # a gamma per bin (staterror, shapesys) in three channels: most parameters local
        ws = gpufit.Workspace(generate_workspace(seed=2, n_channels=3, n_bins=5))
        model = ws.model()
        data = ws.data(model)
    m = model.compiled
    local, spread = np.asarray(m.local), np.asarray(m.spread)
    assert local.size >= 14 and spread.size >= 1
    outside = np.ones((model.n_main, local.size), bool)
    outside[np.asarray(m.local_bin), np.arange(local.size)] = False
    for p in random_points(model, 2):
        want_jac = np.asarray(jax.jacfwd(lambda x: kernels.expected_main(m, x))(jnp.asarray(p)))
        assert np.all(want_jac[:, local][outside] == 0.0)
        assert np.all(np.count_nonzero(want_jac[:, spread], axis=0) >= 2)
    rng = np.random.default_rng(3)
    for p in random_points(model, 3):
        f, g, jac, w, c = derivatives.twice_nll_gradient_curvature(m, jnp.asarray(p), jnp.asarray(data))
        active = rng.random(model.n_pars) > 0.2
        for lam in (1e-9, 1e-3, 10.0):
            delta = _solver.solve_damped(m, jac, w, c, g, lam, jnp.asarray(active))
            h = np.asarray(derivatives.curvature_matrix(jac, w, c)) / 2.0
            d = np.diag(h)
            scale = max(d[active].max(), 1.0)
            a = h + np.diag(lam * d + 1e-10 * scale)
            idx = np.flatnonzero(active)
            sub, rhs, delta = a[np.ix_(idx, idx)], -0.5 * np.asarray(g)[idx], np.asarray(delta)
            assert np.all(delta[~active] == 0.0)
            # backward error: at lam = 1e-9 the matrix's condition reaches 1e10, where a
            # dense solve is no more accurate than the structured one
            residual = np.linalg.norm(sub @ delta[idx] - rhs)
            assert residual <= 1e-13 * (np.linalg.norm(sub, 2) * np.linalg.norm(delta[idx]) + np.linalg.norm(rhs))


@pytest.mark.parametrize("settings", CODES, ids=lambda s: s["normsys"]["interpcode"] + "-" + s["histosys"]["interpcode"])
def test_exact_hessian_equals_autodiff(settings):
    """The structured Hessian (rank one per sample-bin, clamped factors off the diagonal)
    equals jax.hessian, also with the POI exactly at 0 (a zero factor) and empty bins."""
    ws = gpufit.Workspace(generate_workspace(seed=7, empty_bin=True))
    model = ws.model(modifier_settings=settings)
    m = model.compiled
    data = np.asarray(ws.data(model))
    empty = data.copy()
    empty[: model.n_main : 2] = 0.0
    points = random_points(model, 3, scale=1.6)
    points[0, model.poi_index] = 0.0

    @jax.jit  # compiled once for the six cases
    def both(p, d):
        return derivatives.twice_nll_hessian(m, p, d), jax.hessian(lambda x: kernels.twice_nll(m, x, d))(p)

    for p in points:
        for d in (data, empty):
            h, want = (np.asarray(a) for a in both(jnp.asarray(p), jnp.asarray(d)))
            np.testing.assert_allclose(h, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


def test_exact_hessian_on_1lbb(lbb_ws):
    """On 1Lbb (126 parameters, 131 sample-bins), with the POI at 0: Hessian-vector
    products equal autodiff's (three random directions; a full jax.hessian takes 20 s)."""
    model = lbb_ws.model()
    m = model.compiled
    data = jnp.asarray(lbb_ws.data(model))
    p = random_points(model, 1)[0]
    p[model.poi_index] = 0.0
    p = jnp.asarray(p)
    h = np.asarray(jax.jit(derivatives.twice_nll_hessian)(m, p, data))
    grad = jax.grad(lambda x: kernels.twice_nll(m, x, data))
    hvp = jax.jit(lambda v: jax.jvp(grad, (p,), (v,))[1])  # compiled: op by op it took 20 s
    for v in np.random.default_rng(5).normal(size=(3, model.n_pars)):
        want = np.asarray(hvp(jnp.asarray(v)))
        np.testing.assert_allclose(h @ v, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


def test_negative_expected_counts_in_an_empty_bin_are_no_minimum(docs_ws):
    """n = 0 and nu < 0 would make -2 log L unbounded below; the solver's objective
    refuses such points (+inf) instead of running to minus infinity."""
    model = docs_ws.model()
    data = np.asarray(docs_ws.data(model)).copy()
    data[0] = 0.0
    p = model.suggested_init()
    p[model.poi_index] = -50.0  # signal pulls nu_0 below zero
    nu = np.asarray(model.expected_main(p))
    assert nu[0] < 0
    f, *_ = derivatives.twice_nll_gradient_curvature(model.compiled, jnp.asarray(p), jnp.asarray(data))
    assert np.isinf(float(f)) and float(f) > 0
