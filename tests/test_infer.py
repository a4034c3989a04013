"""Asymptotic CLs against ROOT-validated values, pyhf's regression values and pyhf itself."""

import json
import os

import numpy as np
import pyhf
import pytest

import gpufit
from gpufit.infer import test_statistics as ts
from conftest import SBOTTOM, VALIDATION

with open(os.path.join(VALIDATION, "expected.json")) as _h:
    VALIDATION_CASES = {k: v for k, v in json.load(_h).items() if v["calctype"] == "asymptotics"}
with open(os.path.join(SBOTTOM, "expected.json")) as _h:
    SBOTTOM_CASES = json.load(_h)


@pytest.mark.parametrize("name", sorted(VALIDATION_CASES))
def test_validation_expected(name):
    case = VALIDATION_CASES[name]
    ws = gpufit.Workspace.load(os.path.join(VALIDATION, case["workspace"]))
    model = ws.model(modifier_settings=case["modifier_settings"])
    r = gpufit.hypotest(model, ws.data(model), mu=case["mu_test"], test_stat=case["test_stat"])
    assert r.cls_obs == pytest.approx(case["CLs_obs"], abs=1e-4)
    np.testing.assert_allclose(r.cls_exp, case["CLs_exp"], atol=1e-4)
    assert r.n_failed == 0


@pytest.mark.parametrize("patch", sorted(SBOTTOM_CASES))
def test_sbottom_expected(patch):
    case = SBOTTOM_CASES[patch]
    ws = gpufit.Workspace.load(os.path.join(SBOTTOM, case["bkgonly"])).patched(os.path.join(SBOTTOM, patch))
    model = ws.model(modifier_settings=case["modifier_settings"])
    r = gpufit.hypotest(model, ws.data(model), mu=case["mu_test"], test_stat=case["test_stat"])
    # pyhf's own regression tolerances are 1-1.5e-5 relative for its optimizer; gpufit's
    # fits land within 1e-4 relative (and far inside the 1e-4 absolute bar)
    assert r.cls_obs == pytest.approx(case["CLs_obs"], rel=1e-4, abs=0)
    np.testing.assert_allclose(r.cls_exp, case["CLs_exp"], rtol=1e-4, atol=0)


def test_the_points_of_a_patchset_share_their_compiled_kernels(caplog):
    """Two sbottom points whose signal carries 1,489 and 1,500 histosys terms: their term
    counts are rounded up with inert terms, so the second point's hypotest compiles
    nothing (it compiled every kernel again before: 3.4 s a point, warm)."""
    import jax

    results = []
    for patch in sorted(SBOTTOM_CASES)[:2]:
        case = SBOTTOM_CASES[patch]
        ws = gpufit.Workspace.load(os.path.join(SBOTTOM, case["bkgonly"])).patched(os.path.join(SBOTTOM, patch))
        model = ws.model(modifier_settings=case["modifier_settings"])
        caplog.clear()
        with jax.log_compiles():
            results.append(gpufit.hypotest(model, ws.data(model), mu=case["mu_test"], test_stat=case["test_stat"]))
        compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling")]
        assert not (results[1:] and compiled), compiled[:3]
        assert results[-1].cls_obs == pytest.approx(case["CLs_obs"], rel=1e-4, abs=0)


def _pyhf_hypotest(model, data, mu, test_stat="qtilde"):
    pyhf.set_backend("jax", pyhf.optimize.scipy_optimizer())
    try:
        cls, tails, exp = pyhf.infer.hypotest(
            mu, data, model.pyhf_model, test_stat=test_stat, return_tail_probs=True, return_expected_set=True
        )
    finally:
        pyhf.set_backend("numpy")
    # for q0 pyhf returns p0 first and only CLb as tail probability
    clsb, clb = (cls, tails[0]) if test_stat == "q0" else tails
    return float(cls), float(clsb), float(clb), np.asarray([float(e) for e in exp])


@pytest.mark.slow
def test_1lbb_against_pyhf(lbb_ws):
    model = lbb_ws.model()
    data = lbb_ws.data(model)
    r = gpufit.hypotest(model, data, mu=1.0)
    cls, clsb, clb, exp = _pyhf_hypotest(model, data, 1.0)
    assert r.cls_obs == pytest.approx(cls, abs=1e-4)
    assert r.clsb_obs == pytest.approx(clsb, abs=1e-4)
    assert r.clb_obs == pytest.approx(clb, abs=1e-4)
    np.testing.assert_allclose(r.cls_exp, exp, atol=1e-4)


@pytest.mark.slow
def test_generated_against_pyhf_every_stat():
    from gpufit.testing import generate_workspace

    ws = gpufit.Workspace(generate_workspace(seed=11))
    model = ws.model()
    data = ws.data(model)
    for stat, mu in (("qtilde", 1.5), ("q", 1.5), ("q0", 0.0)):
        r = gpufit.hypotest(model, data, mu=mu, test_stat=stat)
        cls, clsb, clb, exp = _pyhf_hypotest(model, data, mu, stat)
        assert r.cls_obs == pytest.approx(cls, abs=1e-4), stat
        assert r.clsb_obs == pytest.approx(clsb, abs=1e-4), stat
        assert r.clb_obs == pytest.approx(clb, abs=1e-4), stat
        np.testing.assert_allclose(r.cls_exp, exp, atol=1e-4)


def test_batched_test_statistics(docs_ws):
    model = docs_ws.model()
    data = docs_ws.data(model)
    rng = np.random.default_rng(2)
    toys = np.tile(data, (4, 1))
    toys[:, :2] = rng.poisson(data[:2] * 1.3, size=(4, 2))
    for name, func in (("qtilde", ts.qmu_tilde), ("ttilde", ts.tmu_tilde)):
        ours = func(model, toys, 1.0)
        assert ours.shape == (4,)
        ref_func = pyhf.infer.test_statistics.qmu_tilde if name == "qtilde" else pyhf.infer.test_statistics.tmu_tilde
        pm = model.pyhf_model
        ref = [float(ref_func(1.0, t, pm, pm.config.suggested_init(), pm.config.suggested_bounds(), pm.config.suggested_fixed())) for t in toys]
        np.testing.assert_allclose(ours, ref, atol=2e-4)
    q0 = ts.q0(model, toys)
    ref = [float(pyhf.infer.test_statistics.q0(0.0, t, pm, pm.config.suggested_init(), pm.config.suggested_bounds(),
                                                pm.config.suggested_fixed())) for t in toys]
    np.testing.assert_allclose(q0, ref, atol=2e-4)
    # t_mu and q_mu with the POI free to go negative: against pyhf with the same bounds
    bounds = {"mu": (-10.0, 10.0)}
    par_bounds = pm.config.suggested_bounds()
    par_bounds[pm.config.poi_index] = (-10.0, 10.0)
    for ours, ref_func in ((ts.tmu, pyhf.infer.test_statistics.tmu), (ts.qmu, pyhf.infer.test_statistics.qmu)):
        ref = [float(ref_func(1.0, t, pm, pm.config.suggested_init(), par_bounds, pm.config.suggested_fixed()))
               for t in toys]
        np.testing.assert_allclose(ours(model, toys, 1.0, bounds=bounds), ref, atol=2e-4)


def test_upper_limit_against_pyhf(docs_ws):
    model = docs_ws.model()
    data = docs_ws.data(model)
    lim = gpufit.upper_limit(model, data)
    obs, exp = pyhf.infer.intervals.upper_limits.upper_limit(data, model.pyhf_model)
    assert lim.observed == pytest.approx(float(obs), rel=1e-3)
    np.testing.assert_allclose(lim.expected, np.asarray(exp, dtype=float), rtol=1e-3)
    grid = np.linspace(0, 5, 21)
    scan = gpufit.upper_limit(model, data, mus=grid)
    obs_g, exp_g = pyhf.infer.intervals.upper_limits.upper_limit(data, model.pyhf_model, scan=grid)
    assert scan.observed == pytest.approx(float(obs_g), rel=1e-4)
    np.testing.assert_allclose(scan.expected, np.asarray(exp_g, dtype=float), rtol=1e-4)
    assert scan.cls_exp.shape == (21, 5)


def test_fixed_poi_is_refused(docs_ws):
    model = docs_ws.model()
    with pytest.raises(gpufit.InvalidModel, match="POI 'mu' is fixed"):
        gpufit.hypotest(model, docs_ws.data(model), fixed={"mu": 1.0})


def test_unknown_calculator_and_stat(docs_ws):
    model = docs_ws.model()
    with pytest.raises(ValueError, match="unknown test statistic 'qq'"):
        gpufit.hypotest(model, docs_ws.data(model), test_stat="qq")
    with pytest.raises(ValueError, match="unknown calculator 'bayes'"):
        gpufit.hypotest(model, docs_ws.data(model), calculator="bayes")
