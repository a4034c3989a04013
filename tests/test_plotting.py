"""Plots: each draws what its result holds (checked against numbers computed here
another way), leaves the user's matplotlib backend alone, and the CLI writes them."""

import os
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats

import gpufit
from gpufit import plotting
from gpufit.cli import main


pytest.importorskip("matplotlib")


def test_asymptotic_counts_follow_the_half_chi2_distribution_of_q():
    """Under the tested hypothesis q_mu is 0 half of the time and chi2(1) otherwise
    (Cowan et al., eq. 49, from Wilks): independent of the p-value code it is built on."""
    edges = np.array([0.0, 0.5, 1.0, 2.0, 4.0, 9.0])
    counts = plotting.asymptotic_counts("q", 3.0, edges, 1000)["sb"]
    cdf = np.where(edges > 0, 0.5 + 0.5 * stats.chi2.cdf(edges, 1), 0.0)
    np.testing.assert_allclose(counts, 1000 * np.diff(cdf), rtol=1e-9)
    assert counts[0] == pytest.approx(1000 * (0.5 + 0.5 * stats.chi2.cdf(0.5, 1)))


def test_teststat_plot_draws_the_toys_and_the_asymptotic_expectation(docs_ws):
    model = docs_ws.model()
    data = docs_ws.data(model)
    toys = gpufit.hypotest(model, data, 1.0, calculator="toys", ntoys=300, seed=2, progress=False)
    asymptotic = gpufit.hypotest(model, data, 1.0)
    ax = plotting.teststat_plot(toys, asymptotic, bins=20)
    bars = [p for p in ax.patches if p.get_label().startswith("s+b toys")]
    edges = np.linspace(0.0, ax.get_xlim()[1], 21)
    heights = np.asarray(bars[0].get_path().vertices)[:, 1].max()
    assert heights == np.histogram(np.clip(toys.teststat_sb, 0, edges[-1]), edges)[0].max()
    steps = {p.get_label(): p for p in ax.patches if p.get_label().startswith("asymptotic")}
    assert set(steps) == {"asymptotic, s+b", "asymptotic, b-only"}
    expected = plotting.asymptotic_counts("qtilde", asymptotic.teststat_asimov, edges, 300)
    np.testing.assert_allclose(steps["asymptotic, s+b"].get_data()[0], expected["sb"])
    assert [line.get_xdata()[0] for line in ax.lines] == [toys.teststat]
    with pytest.raises(gpufit.InvalidArgument, match="toy result"):
        plotting.teststat_plot(asymptotic)


def test_pulls_are_counted_in_prior_widths(docs_ws):
    """The docs model's shapesys gammas have Poisson priors of relative width unc/nom
    (read here from the workspace itself)."""
    model = docs_ws.model()
    fit = gpufit.fit(model, docs_ws.data(model))
    ax = plotting.pulls_plot(fit, model)
    background = next(s for s in docs_ws.spec["channels"][0]["samples"] if s["name"] == "background")
    unc = np.asarray(next(m for m in background["modifiers"] if m["type"] == "shapesys")["data"])
    width = unc / np.asarray(background["data"])
    gammas = model.parameter_slice("uncorr_bkguncrt")
    points = ax.lines[-1]  # the errorbar's markers
    np.testing.assert_allclose(points.get_xdata(), (fit.pars[gammas] - 1.0) / width, rtol=1e-9)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["uncorr_bkguncrt[0]", "uncorr_bkguncrt[1]"]
    assert plotting.pulls_plot(fit, model, exclude=("uncorr_",)).lines[-1].get_xdata().size == 0
    with pytest.raises(gpufit.InvalidArgument, match="hesse=True"):
        plotting.pulls_plot(gpufit.fit(model, docs_ws.data(model), hesse=False), model)


def test_correlation_plot_shows_the_free_parameters_and_prunes(sbottom):
    model, data = sbottom
    fit = gpufit.fit(model, data)
    free = np.flatnonzero(~fit.fixed)
    image = plotting.correlation_plot(fit).get_images()[0]
    np.testing.assert_allclose(image.get_array(), fit.correlations[np.ix_(free, free)])
    pruned = plotting.correlation_plot(fit, min_correlation=0.2).get_images()[0].get_array()
    off = np.abs(fit.correlations[np.ix_(free, free)] - np.eye(free.size)).max(axis=1)
    assert 1 < pruned.shape[0] == np.sum(off >= 0.2) < free.size


def test_plots_leave_the_users_backend_alone(tmp_path):
    """Importing gpufit.plotting and saving a plot imports no pyplot (which would pick a
    backend for the user's process)."""
    code = (
        "import sys, numpy as np, gpufit, gpufit.plotting as p\n"
        "from gpufit.infer.intervals import UpperLimitResult\n"
        "r = UpperLimitResult(observed=1.0, expected=np.ones(5), mus=np.linspace(0, 2, 5), cls_obs=np.linspace(1, 0, 5),"
        " cls_exp=np.tile(np.linspace(1, 0, 5)[:, None], 5), level=0.05, test_stat='qtilde', calculator='asymptotic',"
        " observed_bound=None, expected_bound=(None,) * 5)\n"
        f"p.brazil_plot(r, path={str(tmp_path / 'b.png')!r})\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
    assert (tmp_path / "b.png").stat().st_size > 1000


def test_cli_writes_the_plots(tmp_path):
    runner = CliRunner()
    pulls, corr, dist = (str(tmp_path / name) for name in ("pulls.png", "corr.pdf", "toys.png"))
    r = runner.invoke(main, ["fit", "example:docs", "--plot", pulls, "--correlation-plot", corr, "--json"])
    assert r.exit_code == 0, r.output
    assert os.path.getsize(pulls) > 1000 and os.path.getsize(corr) > 1000
    r = runner.invoke(main, ["hypotest", "example:docs", "--calculator", "toys", "--ntoys", "100", "--plot", dist])
    assert r.exit_code == 0, r.output
    assert os.path.getsize(dist) > 1000
    r = runner.invoke(main, ["hypotest", "example:docs", "--plot", dist])
    assert r.exit_code == 2 and "--calculator toys" in r.output
    r = runner.invoke(main, ["fit", "example:docs", "--no-hesse", "--plot", pulls])
    assert r.exit_code == 2 and "--no-hesse" in r.output
