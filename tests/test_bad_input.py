"""Bad input, fed to the command line and to the Python API: every case gets a one-line
error naming what is wrong, a non-zero exit, no traceback, and nothing computed from it.
Results that the input does not support are flagged (limits outside the scan), and the
edge cases pyhf answers (mu = 0, in-grid limits) agree with pyhf."""

import importlib.util
import json
import os
import stat
import subprocess
import sys

import numpy as np
import pyhf
import pytest
from click.testing import CliRunner
from scipy.stats import norm

import gpufit
from gpufit import executors
from gpufit.cli import main
from gpufit.exceptions import InvalidArgument, LimitOutsideGrid
from conftest import WS, strict_json

DOCS = os.path.join(WS, "pyhf_docs_2-bin_1-channel.json")


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(result, needle, code=2):
    """The CLI refused: exit ``code``, no traceback, one ``Error:`` line holding ``needle``."""
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    return errors[0]


def refused_json(result, needle, code=2):
    """Under --json the error is also one strict JSON object on stdout."""
    refused(result, needle, code)
    payload = strict_json(result.stdout)
    assert set(payload) == {"error", "type", "exit_code"} and needle in payload["error"]
    assert payload["exit_code"] == code


@pytest.fixture
def never_computes(monkeypatch):
    """Fail the test if a command starts computing (for input that must be refused first)."""

    def boom(*args, **kwargs):
        raise AssertionError("computed from refused input")

    monkeypatch.setattr(sys.modules["gpufit.optimize.fit"], "minimize_batch", boom)  # every fit goes through it


TOY_OPTIONS = [
    (["--ntoys", 0], "--ntoys"), (["--ntoys", -5], "--ntoys"), (["--seed", -1], "--seed"),
    (["--seed", 2**32], "--seed"), (["--max-failed", -1], "--max-failed"), (["--max-failed", 2], "--max-failed"),
    (["--chunk-size", 0], "--chunk-size"), (["--chunk-size", -3], "--chunk-size"),
]


@pytest.mark.parametrize("option,needle", TOY_OPTIONS)
def test_cli_refuses_toy_options(option, needle, never_computes):
    refused(cli("hypotest", "example:docs", "--calculator", "toys", *option), needle)


@pytest.mark.parametrize("mus,needle", [
    ("abc", "START:STOP:COUNT"), ("0:5", "START:STOP:COUNT"), ("0:5:0", "COUNT"), ("0,nan", "finite"),
    ("5:0:3", "must increase strictly"), ("0:5:1", "at least two"), ("-1,1", "outside the POI's bounds"),
    ("0,20", "outside the POI's bounds"),
])
def test_cli_refuses_grids(mus, needle, never_computes):
    refused(cli("limit", "example:docs", "--mus", mus), needle)


@pytest.mark.parametrize("level", ["1.5", "0", "1", "-0.05"])
def test_cli_refuses_levels(level, never_computes):
    refused(cli("limit", "example:docs", "--level", level), "--level")


def test_cli_refuses_bad_arguments_with_json_errors(tmp_path, never_computes):
    refused_json(cli("fit", tmp_path, "--json"), "is a directory")
    refused_json(cli("hypotest", "example:docs", "--mu", "-1", "--json"), "outside the POI's bounds [0, 10]")
    refused_json(cli("limit", "example:docs", "--mus", "abc", "--json"), "START:STOP:COUNT")
    refused_json(cli("fit", "example:docs", "--patch-name", "x", "--json"), "give --patchset")
    refused(cli("fit", "example:nope"), "choose one of sbottom, 1lbb, 2ljets, docs")
    refused(cli("fit", tmp_path / "missing.json"), "does not exist")
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(os.urandom(64) + b"\xff\xfe")
    refused(cli("fit", garbage), "not a JSON text file")
    if importlib.util.find_spec("matplotlib"):  # without it: test_without_the_optional_extras
        refused(cli("limit", "example:docs", "--plot", tmp_path / "no" / "such" / "dir.png"), "does not exist")
        refused(cli("limit", "example:docs", "--plot", tmp_path / "brazil.txt"), "image suffix")
    refused(cli("fit", "example:docs", "--output-file", tmp_path / "no" / "out.json"), "does not exist")
    refused(cli("fit", "example:docs", "--tol", "0"), "--tol")
    refused(cli("fit", "example:docs", "--maxiter", "0"), "--maxiter")


def test_api_refuses_bad_arguments(docs_ws):
    model = docs_ws.model()
    data = docs_ws.data(model)
    cases = [
        (lambda: gpufit.hypotest(model, data, mu=-1.0), "outside the POI's bounds"),
        (lambda: gpufit.hypotest(model, data, mu=11.0), "outside the POI's bounds"),
        (lambda: gpufit.upper_limit(model, data, mus=[2.0, 1.0]), "increase strictly"),
        (lambda: gpufit.upper_limit(model, data, mus=[1.0]), "at least two"),
        (lambda: gpufit.upper_limit(model, data, mus=[-1.0, 1.0]), "outside the POI's bounds"),
        (lambda: gpufit.upper_limit(model, data, level=1.5), "between 0 and 1"),
        (lambda: gpufit.hypotest(model, data, calculator="toys", ntoys=0), "ntoys"),
        (lambda: gpufit.hypotest(model, data, calculator="toys", ntoys=2.5), "ntoys"),
        (lambda: gpufit.hypotest(model, data, calculator="toys", seed=-1), "seed"),
        (lambda: gpufit.hypotest(model, data, calculator="toys", chunk_size=0), "chunk_size"),
        (lambda: gpufit.hypotest(model, data, calculator="toys", max_failed=2), "max_failed"),
        (lambda: gpufit.hypotest(model, data, calculator="bayes"), "unknown calculator"),
        (lambda: gpufit.fit(model, data, chunk_size=0), "chunk_size"),
        (lambda: gpufit.fit(model, np.where(np.arange(data.size) == 1, np.nan, data)), "data[1] (main-bin count) is nan"),
        (lambda: gpufit.fit(model, np.where(np.arange(data.size) == 0, -3.0, data)), "data[0] (main-bin count) is -3"),
        (lambda: gpufit.fit(model, np.stack([data, data * np.inf])), "data[1, 0]"),
    ]
    for call, needle in cases:
        with pytest.raises(InvalidArgument, match=".*") as err:
            call()
        assert needle in str(err.value) and "\n" not in str(err.value)
        assert isinstance(err.value, ValueError)  # callers catching ValueError keep working


def _docs_spec():
    with open(DOCS) as handle:
        return json.load(handle)


def _broken(edit):
    spec = _docs_spec()
    edit(spec)
    return spec


BROKEN_MODELS = [
    (lambda s: s["channels"][0]["samples"][1].update(data=[-50.0, 60.0]), "channels[0].samples[1].data[0]"),
    (lambda s: s["channels"][0]["samples"][0].update(data=[12.0, float("nan")]), "channels[0].samples[0].data[1]"),
    (lambda s: s["channels"][0]["samples"][1].update(data=[float("inf"), 60.0]), "channels[0].samples[1].data[0]"),
    (lambda s: s["observations"][0].update(data=[51.0, -1.0]), "observations[0].data[1]"),
    (lambda s: s["observations"][0].update(data=[float("nan"), 48.0]), "observations[0].data[0]"),
    (lambda s: s["channels"][0]["samples"][1]["modifiers"][0].update(data=[5.0, float("nan")]),
     "channels[0].samples[1].modifiers[0].data[1]"),
    (lambda s: s["channels"][0]["samples"][1]["modifiers"].append(
        {"name": "n", "type": "normsys", "data": {"hi": 1.1, "lo": 0.0}}), "modifiers[1].data.lo"),
    (lambda s: s["channels"][0]["samples"][1]["modifiers"].append(
        {"name": "h", "type": "histosys", "data": {"hi_data": [55, 65], "lo_data": [45, -1]}}),
     "modifiers[1].data.lo_data[1]"),
    (lambda s: s["channels"][0]["samples"][0].update(data=[0.0, 0.0]), "scales only samples that are zero"),
    (lambda s: s["channels"][0]["samples"][0].update(data=[12.0, 11.0, 3.0]), "channels[0].samples[0].data"),
]


@pytest.mark.parametrize("edit,path", BROKEN_MODELS)
def test_broken_models_are_refused_at_load(edit, path, tmp_path, never_computes):
    spec = _broken(edit)
    with pytest.raises(gpufit.InvalidWorkspace) as err:
        gpufit.Workspace(spec).model()
    assert path in str(err.value)
    file = tmp_path / "ws.json"
    file.write_text(json.dumps(spec))  # Python writes NaN/Infinity literals, which its reader accepts
    refused(cli("fit", file), path)


def test_wrong_bin_count_blames_the_odd_sample():
    spec = _broken(lambda s: s["channels"][0]["samples"][0].update(data=[12.0, 11.0, 3.0]))
    with pytest.raises(gpufit.InvalidWorkspace, match=r"channels\[0\]\.samples\[0\]\.data \('signal'\) has 3 bins"):
        gpufit.Workspace(spec)


def test_unknown_names_read_as_english(lbb_ws):
    lbb = os.path.join(WS, "atlas_1Lbb_ins1755298")
    result = cli("fit", os.path.join(lbb, "BkgOnly.json"), "--patchset", os.path.join(lbb, "patchset.json.gz"),
                 "--patch-name", "nope")
    assert "Valid patches:" in refused(result, "unknown patch 'nope'")
    with pytest.raises(gpufit.UnknownName, match="Valid parameters of interest"):
        gpufit.Workspace(_docs_spec()).model(poi_name="signal_strength")


def test_unconverged_fit_exits_3_after_printing_it(monkeypatch):
    # one solver step is not enough, and the iminuit fallback is made to fail too
    module = sys.modules["gpufit.optimize.fit"]
    monkeypatch.setattr(module, "_minuit_refit",
                        lambda model, data, x0, *a, **kw: (x0, float("nan"), False, float("nan")))
    result = cli("fit", "example:sbottom", "--maxiter", "1", "--no-hesse", "--json")
    refused(result, "did not converge", code=3)
    payload = strict_json(result.stdout)  # the result itself, not an error object
    assert payload["converged"] is False and payload["status"] != "converged"


def test_mu_zero_and_discovery_agree_with_pyhf(docs_ws):
    pyhf_model = pyhf.Workspace(_docs_spec()).model()
    pyhf_data = pyhf.Workspace(_docs_spec()).data(pyhf_model)
    cls, tails, band = pyhf.infer.hypotest(0.0, pyhf_data, pyhf_model, return_expected_set=True,
                                           return_tail_probs=True)
    payload = strict_json(cli("hypotest", "example:docs", "--mu", "0", "--json").stdout)
    assert payload["cls_obs"] == pytest.approx(float(cls), abs=1e-4) == 1.0
    assert [payload["clsb_obs"], payload["clb_obs"]] == pytest.approx([float(t) for t in tails], abs=1e-4)
    assert payload["cls_exp"] == pytest.approx([float(b) for b in band], abs=1e-4)
    assert payload["CLs_obs"] == payload["cls_obs"] and payload["CLs_exp"] == payload["cls_exp"]

    p0, p0_band = pyhf.infer.hypotest(0.0, pyhf_data, pyhf_model, test_stat="q0", return_expected_set=True)
    result = cli("hypotest", "example:docs", "--test-stat", "q0")
    assert result.exit_code == 0 and "p0 obs" in result.stdout and "Z = " in result.stdout
    assert "CLs" not in result.stdout
    payload = strict_json(cli("hypotest", "example:docs", "--test-stat", "q0", "--json").stdout)
    assert payload["p0_obs"] == pytest.approx(float(p0), abs=1e-4)
    assert payload["p0_exp"] == pytest.approx([float(b) for b in p0_band], abs=1e-4)
    assert payload["z_obs"] == pytest.approx(norm.isf(float(p0)), abs=1e-3)
    assert payload["z_exp"] == pytest.approx(norm.isf([float(b) for b in p0_band]), abs=1e-3)


def test_limits_outside_the_grid_are_flagged_bounds(docs_ws):
    """pyhf clips unbracketed limits to the grid edge; gpufit flags them as bounds and
    equals pyhf on the bracketed ones."""
    model, data = docs_ws.model(), docs_ws.data(docs_ws.model())
    pyhf_model = pyhf.Workspace(_docs_spec()).model()
    grid = np.linspace(0, 2, 11)
    obs, exp = pyhf.infer.intervals.upper_limits.upper_limit(
        pyhf.Workspace(_docs_spec()).data(pyhf_model), pyhf_model, scan=grid)
    with pytest.warns(LimitOutsideGrid, match="median expected > 2"):
        lim = gpufit.upper_limit(model, data, mus=grid)
    assert lim.observed_bound == "above" and lim.observed == 2.0
    assert list(lim.expected_bound) == [None, None, "above", "above", "above"]
    assert lim.expected[:2] == pytest.approx([float(e) for e in exp[:2]], rel=1e-4)
    assert float(obs) == 2.0  # pyhf's clipped value, which gpufit reports as a bound

    result = cli("limit", "example:docs", "--mus", "0:2:11")
    assert result.exit_code == 0 and "observed: > 2.0000" in result.stdout
    assert "warning: CLs does not cross 0.05" in result.stderr
    payload = strict_json(cli("limit", "example:docs", "--mus", "0:2:11", "--json").stdout)
    assert payload["observed_bound"] == "above" and payload["expected_bound"][:2] == [None, None]

    with pytest.warns(LimitOutsideGrid):
        toys = gpufit.upper_limit(model, data, mus=[0.0, 0.5, 1.0], calculator="toys", ntoys=200, progress=False)
    assert toys.observed_bound == "above" and np.isfinite(toys.observed) and toys.observed == 1.0


def test_campaign_refusals_and_messages(tmp_path, monkeypatch):
    out = tmp_path / "camp"
    refused(cli("campaign", "plan", "example:docs", "--mus", "5:0:3", "--ntoys", 8, "--toys-per-job", 8,
                "--out", out), "must increase strictly")
    refused(cli("campaign", "plan", "example:docs", "--mus", "-1", "--ntoys", 8, "--toys-per-job", 8,
                "--out", out), "outside the POI's bounds")
    assert not out.exists()
    old = os.umask(0o022)
    try:
        result = cli("campaign", "plan", "example:docs", "--mus", "0.5,1", "--ntoys", 8, "--toys-per-job", 4,
                     "--out", out, "--submit", "panda", "--container", "docker://gpufit:cuda")
        assert result.exit_code == 0, result.output
    finally:
        os.umask(old)
    panda = (out / "submit" / "panda.sh").read_text()
    assert "--containerImage docker://gpufit:cuda " in panda and "docker://docker://" not in panda
    refused(cli("campaign", "run", out, "--workers", 0), "--workers")
    refused(cli("campaign", "run", out, "--executor", "slurm"), "unknown executor")
    monkeypatch.setattr(executors.runner, "CONNECT_TIMEOUT", "1s")
    refused(cli("campaign", "run", out, "--executor", "dask://127.0.0.1:9"), "cannot reach a Dask scheduler")
    refused(cli("campaign", "merge", out, "--allow-partial"), "at least two")
    refused(cli("campaign", "merge", out, "--level", "2"), "--level")

    job = out / "jobs" / "job-0000.json"
    result = cli("campaign", "run-job", job, "--quiet", "--json")
    done = strict_json(result.stdout)
    assert done["status"] == "done"
    mode = stat.S_IMODE(os.stat(done["path"]).st_mode)
    assert mode & 0o044 == 0o044, oct(mode)  # colleagues can read (and merge) it

    garbage = out / "results" / "job-0001.npz"
    garbage.write_bytes(b"\x80\x04garbage pickle")
    message = refused(cli("campaign", "merge", out, "--allow-partial"), "job-0001.npz is truncated or not a gpufit result")
    assert "allow_pickle" not in message
    result = cli("campaign", "run", out)
    assert result.exit_code == 0 and "broken result removed and its job run again" in result.stdout


def test_htcondor_script_without_container(tmp_path):
    out = tmp_path / "condor"
    result = cli("campaign", "plan", "example:docs", "--mus", "1", "--ntoys", 8, "--toys-per-job", 8,
                 "--out", out, "--submit", "htcondor")
    assert result.exit_code == 0, result.output
    text = (out / "submit" / "htcondor.sub").read_text()
    assert "container_image" not in text and "transfer_executable     = false" in text
    out = tmp_path / "condor2"
    cli("campaign", "plan", "example:docs", "--mus", "1", "--ntoys", 8, "--toys-per-job", 8,
        "--out", out, "--submit", "htcondor", "--container", "gpufit:cpu")
    assert "container_image         = docker://gpufit:cpu" in (out / "submit" / "htcondor.sub").read_text()


def test_json_is_strict_and_output_file(tmp_path):
    target = tmp_path / "fit.json"
    result = cli("fit", "example:docs", "--json", "--output-file", target)
    assert result.exit_code == 0
    assert strict_json(result.stdout) == strict_json(target.read_text())
    corr = strict_json(target.read_text())["correlation"]
    assert corr["parameters"][0] == "mu" and corr["matrix"][0][0] == pytest.approx(1.0)
    result = cli("-h")
    assert result.exit_code == 0 and "inspect" in result.stdout
    assert cli("limit", "-h").exit_code == 0


def test_inspect_commands():
    payload = strict_json(cli("inspect", "example:docs", "--json").stdout)
    assert [c["bins"] for c in payload["channels"]] == [2]
    assert {"name": "uncorr_bkguncrt", "type": "shapesys"} in payload["modifiers"]
    assert payload["poi"] == "mu" and payload["parameters"][1]["n"] == 2
    lbb = os.path.join(WS, "atlas_1Lbb_ins1755298", "patchset.json.gz")
    payload = strict_json(cli("patchset", "inspect", lbb, "--json").stdout)
    assert len(payload["patches"]) == 125 and payload["labels"] == ["m1", "m2"]
    assert payload["patches"][0]["values"].keys() == {"m1", "m2"}
    result = cli("patchset", "inspect", lbb)
    assert result.exit_code == 0 and "C1N2_Wh_hbb_" in result.stdout


def test_cli_toy_failures_speak_cli(tmp_path, monkeypatch):
    """More failed toys than --max-failed: exit 3 and advice in the CLI's own terms. The
    model (normsys lo = 0: a NaN likelihood) is built with the load-time check off."""
    import gpufit.model._model

    for module in (gpufit.workspace, gpufit.model._model):
        monkeypatch.setattr(module, "check_channel_values", lambda channels: None)
    spec = _broken(lambda s: s["channels"][0]["samples"][1]["modifiers"].append(
        {"name": "broken", "type": "normsys", "data": {"hi": 1.2, "lo": 0.0}}))
    file = tmp_path / "ws.json"
    file.write_text(json.dumps(spec))
    message = refused(cli("hypotest", file, "--calculator", "toys", "--ntoys", 8, "--quiet"),
                      "16 of 16 toys (100.00%) have a fit that failed", code=3)
    assert "--max-failed" in message and "err.result" not in message and "tol" not in message


def test_without_the_optional_extras(tmp_path):
    """A plain ``pip install gpufit`` (no matplotlib, no dask: the plot and dask extras):
    limits run and print; ``--plot`` and the dask executor refuse before any work with a
    one-line message that names the extra to install, and no traceback."""
    blocked = ("import sys\n"
               "for name in ('matplotlib', 'dask', 'distributed'):\n"
               "    sys.modules[name] = None  # import fails as if not installed\n"
               "from gpufit.cli import main\n"
               "main()\n")

    def plain(*args):
        return subprocess.run([sys.executable, "-c", blocked, *map(str, args)], capture_output=True, text=True,
                              timeout=300)

    result = plain("limit", "example:docs", "--mus", "0:5:6", "--json")
    assert result.returncode == 0, result.stderr
    assert strict_json(result.stdout)["observed"] > 0

    def one_error(result, needle):
        errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert len(errors) == 1 and needle in errors[0], result.stderr

    one_error(plain("limit", "example:docs", "--plot", tmp_path / "brazil.png"), "pip install 'gpufit[plot]'")
    out = tmp_path / "camp"
    assert plain("campaign", "plan", "example:docs", "--mus", "1", "--ntoys", 8, "--toys-per-job", 8,
                 "--out", out).returncode == 0
    one_error(plain("campaign", "run", out, "--executor", "dask"), "pip install 'gpufit[dask]'")
