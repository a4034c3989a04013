"""gpufit.scan: every point of a patchset, compiled once, against each point alone and pyhf."""

import json
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pyhf
import pytest

import gpufit
from gpufit.likelihood import derivatives
from gpufit.model import own_parameters, pad_models, stack_key, union_data
from gpufit.infer.scan import ROW_KEYS
from gpufit.optimize import fit_points


def _bkg_spec():
    def bkg(data, stat, jes=None):
        modifiers = [
            {"name": "bkg_norm", "type": "normsys", "data": {"hi": 1.1, "lo": 0.92}},
            {"name": "mu_bkg", "type": "normfactor", "data": None},
            {"name": f"stat_{stat}", "type": "staterror", "data": [0.1 * x ** 0.5 for x in data]},
        ]
        if jes:
            modifiers.append({"name": "jes", "type": "histosys", "data": {"hi_data": jes[0], "lo_data": jes[1]}})
        return {"name": "background", "data": data, "modifiers": modifiers}

    return {
        "channels": [
            {"name": "SR", "samples": [bkg([12.0, 8.0, 3.0], "SR", ([13.0, 8.5, 3.3], [11.2, 7.6, 2.8]))]},
            {"name": "CR", "samples": [bkg([110.0, 95.0], "CR")]},
        ],
        "observations": [{"name": "SR", "data": [14.0, 7.0, 3.0]}, {"name": "CR", "data": [104.0, 99.0]}],
        "measurements": [{"name": "meas", "config": {"poi": "mu", "parameters": [
            {"name": "mu", "bounds": [[0.0, 10.0]]}, {"name": "mu_bkg", "bounds": [[0.0, 5.0]]}]}}],
        "version": "1.0.0",
    }


def _signal(data, *modifiers):
    return {"name": "signal", "data": data,
            "modifiers": [{"name": "mu", "type": "normfactor", "data": None}, *modifiers]}


XSEC = {"name": "sig_xsec", "type": "normsys", "data": {"hi": 1.15, "lo": 0.85}}


def _patchset(bkg: dict) -> dict:
    """Signal points that differ in what padding must reconcile: sample-bins (a signal in
    one or two channels), modifiers per sample-bin, normsys and histosys terms, a
    staterror on the signal (other gamma widths); and points with other parameters (no
    cross-section normsys, or one of their own: other shape families)."""
    jes = {"name": "jes", "type": "histosys", "data": {"hi_data": [5.5, 3.3, 1.1], "lo_data": [4.6, 2.8, 0.9]}}
    stat = {"name": "stat_SR", "type": "staterror", "data": [1.0, 0.8, 0.5]}
    extra = {"name": "sig_extra", "type": "normsys", "data": {"hi": 1.3, "lo": 0.8}}
    points = [
        ((300, 0), [_signal([4.0, 2.0, 1.0], XSEC)], []),
        ((400, 0), [_signal([5.0, 3.0, 1.0], XSEC, jes)], [_signal([1.0, 0.5], XSEC)]),
        ((500, 100), [_signal([2.0, 4.0, 2.5], stat)], []),
        ((600, 100), [_signal([0.5, 1.0, 6.0], XSEC, jes, stat)], [_signal([0.2, 0.1], XSEC)]),
        ((700, 200), [_signal([0.8, 1.5, 2.0], XSEC, extra)], []),
    ]
    patches = []
    for (m1, m2), sr, cr in points:
        ops = [{"op": "add", "path": "/channels/0/samples/-", "value": s} for s in sr]
        ops += [{"op": "add", "path": "/channels/1/samples/-", "value": s} for s in cr]
        patches.append({"metadata": {"name": f"sig_{m1}_{m2}", "values": [m1, m2]}, "patch": ops})
    return {
        "metadata": {"name": "test grid", "description": "signal points for tests", "labels": ["m1", "m2"],
                     "digests": {"sha256": pyhf.utils.digest(bkg)}, "references": {"hepdata": "ins0000000"}},
        "patches": patches,
        "version": "1.0.0",
    }


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grid")
    bkg = _bkg_spec()
    paths = {"bkg": str(folder / "BkgOnly.json"), "ps": str(folder / "patchset.json")}
    with open(paths["bkg"], "w") as handle:
        json.dump(bkg, handle)
    with open(paths["ps"], "w") as handle:
        json.dump(_patchset(bkg), handle)
    return paths


@pytest.fixture(scope="module")
def result(grid):
    return gpufit.scan(grid["bkg"], grid["ps"])


def _alone(grid, name):
    ws = gpufit.Workspace.load(grid["bkg"]).with_patchset(grid["ps"], name)
    model = ws.model()
    return model, ws.data(model)


@pytest.mark.slow
def test_padded_points_have_the_likelihood_of_each_point_alone(grid):
    """Padding is inert: every point, in the union of the grid's parameters and padded to
    the longest tables, has its own log-likelihood, derivatives and minima; the
    parameters it lacks are fixed and add nothing (not even a constraint's constant)."""
    ws = gpufit.Workspace.load(grid["bkg"])
    built = list(ws.signal_points(grid["ps"]))
    points = [(m, d) for _, m, d in built]
    assert len({stack_key(m.compiled_numpy) for m, _ in points}) == 3  # 500_100 lacks sig_xsec, 700_200 has sig_extra
    assert len({m.compiled_numpy.nominal.shape for m, _ in points}) > 1  # they do differ in shape
    stacked, padded = pad_models([m for m, _ in points])
    assert len({twin.n_pars for twin in padded}) == 1 and padded[0].n_pars == points[0][0].n_pars + 1
    rng = np.random.default_rng(3)
    for (patch, model, data), twin in zip(built, padded):
        own = np.arange(model.n_pars) if twin.own_layout is None else twin.own_layout[0]
        lacks = np.setdiff1d(np.arange(twin.n_pars), own)
        assert twin.fixed_parameters()[lacks].all()
        low, high = model.suggested_bounds().T
        pars = np.clip(model.suggested_init() + rng.normal(0, 0.4, (6, model.n_pars)), low + 0.1, high)
        union = np.tile(twin.suggested_init(), (6, 1))
        union[:, own] = pars
        twin_data = union_data(twin, data)
        np.testing.assert_allclose(twin.logpdf(union, twin_data), model.logpdf(pars, data), rtol=1e-12)
        np.testing.assert_array_equal(own_parameters(twin, union), pars)
        np.testing.assert_allclose(twin.prior_widths()[own], model.prior_widths())
        if patch.name not in ("sig_500_100", "sig_600_100"):  # (compiling for each shape takes seconds)
            continue
        # its analytic derivatives (the padded entries and the lacking parameters add nothing)
        first, hessian_of = jax.jit(derivatives.twice_nll_gradient_curvature), jax.jit(derivatives.twice_nll_hessian)
        want = first(model.compiled, jnp.asarray(pars[0]), jnp.asarray(data))
        got = first(twin.compiled, jnp.asarray(union[0]), jnp.asarray(twin_data))
        np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
        for g, w in zip(got[1:], want[1:]):
            g, w = np.asarray(g), np.asarray(w)
            if g.shape[-1] == twin.n_pars:  # gradient, Jacobian, curvature: the lacking columns zero
                assert not np.any(g[..., lacks])
                g = g[..., own]
            np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
        hessian = np.asarray(hessian_of(twin.compiled, jnp.asarray(union[0]), jnp.asarray(twin_data)))
        assert not np.any(hessian[lacks]) and not np.any(hessian[:, lacks])
        np.testing.assert_allclose(hessian[np.ix_(own, own)], hessian_of(
            model.compiled, jnp.asarray(pars[0]), jnp.asarray(data)), rtol=1e-12, atol=1e-12)
    data = np.stack([union_data(twin, d) for twin, (_, d) in zip(padded, points)])
    free = np.stack([~twin.fixed_parameters() for twin in padded])
    inits = np.stack([twin.suggested_init() for twin in padded])
    together = fit_points(stacked, padded, np.arange(len(points)), data, inits, free)
    for i, (model, d) in enumerate(points):
        if i < 2:  # (300_0 and 400_0 lack what 600_100 lacks; a fit alone compiles for each shape)
            continue
        alone = gpufit.fit(model, d, hesse=False)
        assert together.converged[i] and alone.converged
        assert abs(together.twice_nll[i] - alone.twice_nll) < 1e-9


def test_a_parameter_on_one_bin_in_one_point_and_on_several_in_another_stacks():
    """The damped step puts a constrained parameter that acts on one main bin on the
    diagonal of its N x N matrix (``_solver.solve_damped``). A signal normsys on a
    one-bin channel in one point and on two channels in another is one parameter of
    one stacked shape: the stack treats it as acting on several bins in every point,
    and each point's fit in the stack reaches its minimum alone."""
    def spec(channels):
        syst = {"name": "sig_syst", "type": "normsys", "data": {"hi": 1.2, "lo": 0.85}}
        bkg = {"name": "background", "data": None, "modifiers": [
            {"name": "lumi", "type": "normsys", "data": {"hi": 1.02, "lo": 0.98}}]}
        data = {"A": [20.0], "B": [15.0, 9.0]}
        return {"channels": [{"name": name, "samples": [
                    dict(bkg, data=[d * 0.8 for d in data[name]]),
                    {"name": "signal", "data": [2.0] * len(data[name]),
                     "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]
                     + ([syst] if name in channels else [])}]} for name in ("A", "B")],
                "observations": [{"name": name, "data": data[name]} for name in ("A", "B")],
                "measurements": [{"name": "meas", "config": {"poi": "mu", "parameters": []}}], "version": "1.0.0"}

    points = [gpufit.Workspace(spec(channels)) for channels in (("A",), ("A", "B"))]
    models = [ws.model() for ws in points]
    syst = models[0].parameter_names.index("sig_syst")
    alone = [np.asarray(m.compiled_numpy.local) for m in models]
    assert syst in alone[0] and syst not in alone[1]  # one bin in the first point only
    assert len({stack_key(m.compiled_numpy) for m in models}) == 1
    stacked, padded = pad_models(models)
    for twin in padded:
        assert syst in np.asarray(twin.compiled_numpy.spread) and syst not in np.asarray(twin.compiled_numpy.local)
    data = np.stack([union_data(twin, ws.data(m)) for twin, ws, m in zip(padded, points, models)])
    free = np.stack([~twin.fixed_parameters() for twin in padded])
    inits = np.stack([twin.suggested_init() for twin in padded])
    together = fit_points(stacked, padded, np.arange(2), data, inits, free)
    for i, (ws, model) in enumerate(zip(points, models)):
        one = gpufit.fit(model, ws.data(model), hesse=False)
        assert together.converged[i] and one.converged
        assert abs(together.twice_nll[i] - one.twice_nll) < 1e-9


def test_points_whose_shared_parameter_differs_in_kind_compile_apart():
    """A parameter that is a normsys (Gaussian constraint) in one point and a normfactor
    (none) in another cannot be one parameter of a union: such points form families of
    their own, and union_layout names the parameter."""
    from gpufit.model import families, union_layout

    def point(modifier):
        spec = _bkg_spec()
        spec["channels"][0]["samples"].append(_signal([1.0, 2.0, 3.0], modifier))
        return gpufit.Workspace(spec).model()

    normsys = point(XSEC)
    normfactor = point({"name": "sig_xsec", "type": "normfactor", "data": None})
    other = point({"name": "sig_other", "type": "normsys", "data": {"hi": 1.2, "lo": 0.9}})
    found = families([normsys, normfactor, other])
    assert [indices for indices, _ in found] == [[0, 2], [1]]
    assert found[0][1] == union_layout([normsys, other])
    with pytest.raises(ValueError, match=r"'sig_xsec' has 1 component\(s\) and no constraint in one point, 1 and a Gaussian"):
        union_layout([normsys, normfactor])
    layout = union_layout([normsys, other])
    assert [g["name"] for g in layout["groups"]][-1] == "sig_other" and layout["poi"] == "mu"


def test_prior_widths_are_pyhfs():
    """Gaussian widths (a staterror's relative uncertainties) and Poisson ones
    (1/sqrt(tau) of a shapesys) as pyhf's parameter sets give them."""
    spec = _bkg_spec()
    spec["channels"][1]["samples"][0]["modifiers"].append(
        {"name": "shape_CR", "type": "shapesys", "data": [7.0, 12.0]})
    model = gpufit.Workspace(spec).model(poi_name="mu_bkg")
    config = model.pyhf_model.config
    want = np.full(model.n_pars, np.nan)
    for name in config.par_order:
        if config.param_set(name).constrained:
            want[config.par_slice(name)] = config.param_set(name).width()
    np.testing.assert_allclose(model.prior_widths(), want, rtol=1e-12)
    assert np.isfinite(want[model.parameter_slice("shape_CR")]).all() and np.isnan(want[model.poi_index])


@pytest.mark.slow
def test_scan_rows_equal_each_point_tested_alone(grid, result):
    """CLs at mu = 1 and the six limits of every point, from one batched scan in one
    compiled shape, equal gpufit.hypotest and gpufit.upper_limit (TOMS 748) on the point
    compiled alone."""
    assert [row["name"] for row in result.points] == [f"sig_{a}_{b}" for a, b in
                                                      [(300, 0), (400, 0), (500, 100), (600, 100), (700, 200)]]
    assert result.labels == ["m1", "m2"] and result.points[2]["values"] == [500, 100]
    assert result.info["n_shapes"] == 1
    # 500_100 lacks sig_xsec and sig_extra, 600_100 has a signal in SR and CR (and lacks sig_extra)
    for row in result.points[2:4]:
        model, data = _alone(grid, row["name"])
        h = gpufit.hypotest(model, data, mu=1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", gpufit.LimitOutsideGrid)
            lim = gpufit.upper_limit(model, data)
        assert row["error"] is None and row["n_failed"] == 0
        np.testing.assert_allclose(row["cls_obs"], h.cls_obs, rtol=1e-7)
        np.testing.assert_allclose(row["cls_exp"], h.cls_exp, rtol=1e-7)
        np.testing.assert_allclose(row["upper_limit_obs"], lim.observed, rtol=1e-6)
        np.testing.assert_allclose(row["upper_limit_exp"], lim.expected, rtol=1e-6)


def test_scan_agrees_with_pyhf(grid, result):
    """pyhf (numpy backend): CLs to 1e-4, among them on sig_600_100, whose Asimov fit at
    mu = 1 has two minima (a warm start finds the shallower one, 8.797 against 7.484 in
    -2 log L; pyhf, gpufit.hypotest and the scan the deeper); limits to pyhf's TOMS 748
    tolerance on sig_400_0 (its scan fails on sig_600_100: CLs is 0/0 at mu = 0)."""
    for row in result.points[1:4]:
        model, data = _alone(grid, row["name"])
        cls, exp = pyhf.infer.hypotest(1.0, data, model.pyhf_model, test_stat="qtilde", return_expected_set=True)
        np.testing.assert_allclose(row["cls_obs"], float(cls), rtol=1e-4)
        np.testing.assert_allclose(row["cls_exp"], np.asarray(exp, dtype=float).ravel(), rtol=1e-4)
        if row["name"] != "sig_400_0":  # one point's limits (sig_500_100's add 6 s, the same code)
            continue
        obs, exp_lim = pyhf.infer.intervals.upper_limits.upper_limit(data, model.pyhf_model)
        np.testing.assert_allclose(row["upper_limit_obs"], float(obs), rtol=1e-3)
        np.testing.assert_allclose(row["upper_limit_exp"], np.asarray(exp_lim, dtype=float), rtol=1e-3)


def test_a_point_that_cannot_be_built_is_a_row_with_its_error(grid, tmp_path):
    """A NaN yield in one patch: that point's row names the JSON path, the others are
    computed as before."""
    with open(grid["ps"]) as handle:
        ps = json.load(handle)
    ps["patches"][1]["patch"][0]["value"]["data"][1] = float("nan")
    broken = tmp_path / "patchset.json"
    broken.write_text(json.dumps(ps))
    r = gpufit.scan(grid["bkg"], str(broken), patches="sig_[34]00_0")
    good, bad = r.points
    assert good["error"] is None and np.isfinite(good["upper_limit_obs"])
    assert bad["cls_obs"] is None and "InvalidWorkspace" in bad["error"]
    assert "channels[0].samples[1].data[1]" in bad["error"]  # the path in the patched workspace


def test_patch_selection_refuses_a_glob_that_matches_nothing(grid):
    with pytest.raises(gpufit.InvalidArgument, match="no patch of the patchset matches sig_9.*sig_300_0"):
        gpufit.scan(grid["bkg"], grid["ps"], patches="sig_9*")
    with pytest.raises(gpufit.InvalidArgument, match="test_stat is qtilde or q"):
        gpufit.scan(grid["bkg"], grid["ps"], test_stat="q0")


def test_scan_writes_json_and_csv(result, tmp_path):
    paths = result.write(tmp_path / "out")
    with open(paths["json"]) as handle:
        back = json.load(handle)
    assert gpufit.ScanResult.from_dict(back).points == json.loads(json.dumps(result.points))
    lines = open(paths["csv"]).read().splitlines()
    assert lines[0].startswith("name,m1,m2,cls_obs,cls_exp_-2") and len(lines) == 1 + len(result.points)
    assert lines[3].split(",")[:3] == ["sig_500_100", "500", "100"]


def test_cli_scan_prints_rows_writes_files_and_the_contour(grid, tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    from click.testing import CliRunner

    from conftest import strict_json
    from gpufit.cli import main

    out, plot = tmp_path / "out", tmp_path / "contour.png"
    r = CliRunner().invoke(main, ["scan", grid["bkg"], "--patchset", grid["ps"], "--patches", "sig_[345]*",
                                  "--patches", "sig_700_200", "--out", str(out), "--plot", str(plot), "--json"])
    assert r.exit_code == 0, r.output
    payload = strict_json(r.stdout)
    assert [row["name"] for row in payload["points"]] == ["sig_300_0", "sig_400_0", "sig_500_100", "sig_700_200"]
    for row in payload["points"]:
        assert set(ROW_KEYS) <= set(row) and len(row["cls_exp"]) == 5 and len(row["upper_limit_exp"]) == 5
    assert payload["device"] and payload["labels"] == ["m1", "m2"]
    written = json.loads((out / "scan.json").read_text())
    assert written["points"] == payload["points"]
    assert written["command"] == f"gpufit scan {grid['bkg']} --patchset {grid['ps']} --patches 'sig_[345]*' " \
        f"--patches sig_700_200 --out {out} --plot {plot} --json"
    assert (out / "scan.csv").exists() and plot.stat().st_size > 10_000


def test_contour_lines_lie_where_cls_crosses_the_level():
    """A grid whose CLs falls tenfold per 100 in m1: the observed line is m1 = 500 (CLs =
    0.05 there), the expected one m1 = 600, at every m2."""
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    from gpufit import plotting

    rows = []
    for m1 in range(200, 1001, 100):
        for m2 in range(0, 401, 100):
            obs = 0.05 * 10 ** (-(m1 - 500) / 100)
            exp = [0.05 * 10 ** (-(m1 - c) / 100) for c in (800, 700, 600, 500, 400)]
            rows.append({"name": f"p{m1}_{m2}", "values": [m1, m2], "cls_obs": obs, "cls_exp": exp})
    fake = {"points": rows, "labels": ["m1", "m2"], "level": 0.05, "mu": 1.0, "calculator": "asymptotic",
            "test_stat": "qtilde"}
    ax = plotting.contour_plot(fake, path=None)
    lines = [c for c in ax.collections if hasattr(c, "get_paths") and c.get_paths()]
    xs = {round(float(np.mean(p.vertices[:, 0]))) for c in lines for p in c.get_paths() if len(p.vertices)}
    assert {500, 600} <= xs
    assert ax.get_xlabel() == "m1" and ax.get_ylabel() == "m2"
    with pytest.raises(gpufit.InvalidArgument, match="two values"):
        plotting.contour_plot(dict(fake, labels=["m1"]))


@pytest.mark.slow
def test_a_grid_campaign_merges_to_each_points_toy_hypotest(grid, tmp_path):
    """plan --patchset: (point x mu x toys) jobs; the merged rows equal gpufit.hypotest
    with toys on each point, seeded with the point's seed; a limit per point from the mu
    grid; the points share one parameter layout and padded shape (one compiled toy
    kernel), sig_500_100 lacking two of its parameters."""
    from gpufit import campaign, executors
    from gpufit.campaign.plan import point_seed

    bkg = gpufit.Workspace.load(grid["bkg"])
    plan = campaign.plan(bkg, str(tmp_path), [1.0, 3.0], 16, 16, seed=5, patchset=grid["ps"],
                         patches="sig_[345]00_*", chunk_size=16)
    assert plan["n_jobs"] == 3 * 2 and len(plan["shapes"]) == len(plan["layouts"]) == 1
    assert [p["seed"] for p in plan["points"]] == [point_seed(5, i) for i in range(3)]
    executors.run(str(tmp_path), executor="local")
    merged = campaign.merge(str(tmp_path))
    assert merged["labels"] == ["m1", "m2"]
    assert [r["name"] for r in merged["points"]] == ["sig_300_0", "sig_400_0", "sig_500_100"]
    for row in merged["points"]:
        assert row["error"] is None and row["n_failed"] == 0
        assert row["upper_limit_obs"] is not None and len(row["upper_limit_exp"]) == 5
    # the third point, its own seed, in the layout and shape the jobs use (which change
    # none of its toys: test_a_point_in_the_union_of_the_grids_parameters_draws_and_fits_its_own_toys)
    model, data = _alone(grid, "sig_500_100")
    twin = pad_models([model], plan["shapes"][0], plan["layouts"][0])[1][0]
    assert twin.n_pars == model.n_pars + 1  # sig_xsec (sig_extra is not in these points)
    direct = gpufit.hypotest(twin, union_data(twin, data), mu=1.0, calculator="toys", ntoys=16,
                             seed=point_seed(5, 2), chunk_size=16, progress=False)
    row = merged["points"][2]
    assert row["cls_obs"] == direct.cls_obs and row["cls_exp"] == direct.cls_exp.tolist()


@pytest.mark.slow
def test_a_point_in_the_union_of_the_grids_parameters_draws_and_fits_its_own_toys(grid):
    """sig_500_100 lacks sig_xsec and sig_extra: in the grid's union layout (the auxiliary
    data of the parameters it lacks inserted among its own) its toys are its own draws
    and its toy test statistics its own."""
    ws = gpufit.Workspace.load(grid["bkg"])
    points = {p.name: (m, d) for p, m, d in ws.signal_points(grid["ps"])}
    model, data = points["sig_500_100"]
    twin = pad_models([m for m, _ in points.values()])[1][2]
    assert twin.n_pars == model.n_pars + 2 and twin.n_aux == model.n_aux + 2
    assert not np.array_equal(twin.own_layout[1], np.arange(model.n_aux))  # its own data moved
    options = dict(mu=1.0, calculator="toys", ntoys=32, seed=4, chunk_size=32, progress=False)
    own = gpufit.hypotest(model, data, **options)
    union = gpufit.hypotest(twin, union_data(twin, data), **options)
    assert own.n_failed == union.n_failed == 0
    np.testing.assert_allclose(union.teststat_sb, own.teststat_sb, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(union.teststat_b, own.teststat_b, rtol=1e-9, atol=1e-9)
    assert union.cls_obs == own.cls_obs


@pytest.mark.slow
def test_a_toy_scan_runs_each_point_as_hypotest_does(grid):
    """calculator="toys": a point's row holds gpufit.hypotest's toy CLs on the point
    compiled alone (same seed), its limits from the toy scan over ``mus``."""
    r = gpufit.scan(grid["bkg"], grid["ps"], patches="sig_[34]00_0", calculator="toys", mus=[0.5, 3.0], ntoys=16,
                    seed=2, progress=False)
    assert r.calculator == "toys" and [row["error"] for row in r.points] == [None, None]
    assert all(row["upper_limit_obs"] is not None and len(row["upper_limit_exp"]) == 5 for row in r.points)
    model, data = _alone(grid, "sig_400_0")
    direct = gpufit.hypotest(model, data, mu=1.0, calculator="toys", ntoys=16, seed=2, progress=False)
    assert r.points[1]["cls_obs"] == direct.cls_obs and r.points[1]["cls_exp"] == direct.cls_exp.tolist()


def test_a_patch_the_schema_refuses_is_named_by_the_schema(grid, tmp_path):
    """A patch whose modifier lacks its data: pyhf's patchset schema does not look inside
    patches, the point's model is refused with the workspace schema's path."""
    with open(grid["ps"]) as handle:
        ps = json.load(handle)
    del ps["patches"][0]["patch"][0]["value"]["modifiers"][1]["data"]
    broken = tmp_path / "patchset.json"
    broken.write_text(json.dumps(ps))
    [(_, err, data)] = gpufit.Workspace.load(grid["bkg"]).signal_points(str(broken), ["sig_300_0"])
    assert isinstance(err, gpufit.InvalidWorkspace) and data is None
    assert "channels[0].samples[1].modifiers[1]" in str(err)


def test_worker_processes_build_the_points_this_process_builds(grid, tmp_path, monkeypatch):
    """``workers=2``: the same points in the same order, the same tables to the bit, and a
    bad point's error (type, message, JSON path) as built here."""
    import gpufit.workspace as workspace

    calls = []
    spawned = workspace._points_in_processes
    monkeypatch.setattr(workspace, "_points_in_processes", lambda *a: calls.append(a[-1]) or spawned(*a))
    with open(grid["ps"]) as handle:
        ps = json.load(handle)
    ps["patches"][1]["patch"][0]["value"]["data"][1] = float("nan")
    broken = tmp_path / "patchset.json"
    broken.write_text(json.dumps(ps))
    ws = gpufit.Workspace.load(grid["bkg"])
    here = list(ws.signal_points(str(broken)))
    there = list(ws.signal_points(str(broken), workers=2))
    assert calls == [2]
    assert [p.name for p, _, _ in there] == [p.name for p, _, _ in here] and len(here) == 5
    for (_, a, data_a), (_, b, data_b) in zip(here, there):
        if data_a is None:
            assert type(b) is type(a) and str(b) == str(a) and b.path == a.path and data_b is None
            continue
        assert np.array_equal(data_b, data_a)
        tables_a, tables_b = [], []
        a.compiled_numpy.map_arrays(lambda name, x: tables_a.append((name, x)))
        b.compiled_numpy.map_arrays(lambda name, x: tables_b.append((name, x)))
        assert all(na == nb and np.array_equal(x, y) for (na, x), (nb, y) in zip(tables_a, tables_b))
        pars = a.suggested_init()
        assert float(b.logpdf(pars, data_b)) == float(a.logpdf(pars, data_a))
        # pyhf's model of a worker's point is built here when asked for, from the point's spec
        assert "pyhf_model" not in b.__dict__  # a grid's models hold none (many would slow the fits)
        assert b.pyhf_model.config.par_names == a.pyhf_model.config.par_names
        np.testing.assert_allclose(b.pyhf_model.logpdf(pars, data_b), a.logpdf(pars, data_a), rtol=1e-12)
    assert sum(data is None for _, _, data in here) == 1


def test_a_dead_build_worker_is_a_clear_error(grid, monkeypatch):
    """A worker process that dies (out of memory, say) ends the build with a one-line
    error that says how to build without workers, not a traceback of the pool."""
    import gpufit.workspace as workspace

    monkeypatch.setattr(workspace, "_worker_point", _die)
    ws = gpufit.Workspace.load(grid["bkg"])
    with pytest.raises(gpufit.GpufitError, match="worker process building the point models died.*--build-workers 1"):
        list(ws.signal_points(grid["ps"], workers=2))


def _die(operations):
    os._exit(1)
