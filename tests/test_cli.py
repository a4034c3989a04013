"""The command line, as a user runs it (``--json`` output parsed back)."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from gpufit.cli import main
from conftest import VALIDATION, WS, strict_json

DOCS = os.path.join(WS, "pyhf_docs_2-bin_1-channel.json")


def run(*args):
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result


def test_fit_json():
    result = run("fit", DOCS, "--fixed", "mu=1", "--json")
    assert result.exit_code == 0, result.output
    payload = strict_json(result.stdout)
    assert payload["parameters"]["mu"] == 1.0
    assert payload["converged"] is True
    assert set(payload) >= {"parameters", "twice_nll", "converged", "uncertainties"}


def test_hypotest_json_matches_validation():
    path = os.path.join(VALIDATION, "1bin_normsys.json")
    result = run("hypotest", path, "--mu", "1", "--test-stat", "q", "--normsys-code", "code1", "--histosys-code", "code0", "--json")
    assert result.exit_code == 0, result.output
    payload = strict_json(result.stdout)
    with open(os.path.join(VALIDATION, "expected.json")) as handle:
        expected = json.load(handle)["1bin_normsys_mu1"]
    assert payload["cls_obs"] == pytest.approx(expected["CLs_obs"], abs=1e-4)
    assert len(payload["cls_exp"]) == 5


def test_limit_json_is_the_api_limit():
    """``gpufit limit --json`` prints what ``gpufit.upper_limit`` computes on the same grid."""
    import numpy as np

    import gpufit

    result = run("limit", "example:docs", "--mus", "0:5:11", "--json")
    assert result.exit_code == 0, result.output
    payload = strict_json(result.stdout)
    ws = gpufit.Workspace.example("docs")
    model = ws.model()
    api = gpufit.upper_limit(model, ws.data(model), mus=np.linspace(0, 5, 11))
    np.testing.assert_allclose(payload["mus"], api.mus, rtol=0, atol=1e-12)
    assert payload["observed"] == pytest.approx(api.observed, rel=1e-9)
    np.testing.assert_allclose(payload["expected"], api.expected, rtol=1e-9)
    np.testing.assert_allclose(payload["cls_obs"], api.cls_obs, rtol=1e-9)


def test_limit_plot(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    plot = tmp_path / "brazil.png"
    result = run("limit", "example:docs", "--mus", "0:5:11", "--json", "--plot", str(plot))
    assert result.exit_code == 0, result.output
    assert strict_json(result.stdout)["plot"] == str(plot)
    assert plot.stat().st_size > 1000


def test_saving_a_plot_leaves_the_users_backend_alone(tmp_path):
    matplotlib = pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    import numpy as np

    import gpufit
    from gpufit.plotting import brazil_plot

    ws = gpufit.Workspace.load(os.path.join(WS, "pyhf_docs_2-bin_1-channel.json"))
    model = ws.model()
    result = gpufit.upper_limit(model, ws.data(model), np.linspace(0, 5, 6))
    before = matplotlib.get_backend()
    matplotlib.use("pdf")  # a backend the plot must not switch away from (a notebook's, say)
    try:
        brazil_plot(result, tmp_path / "brazil.png")
        assert matplotlib.get_backend() == "pdf"
    finally:
        matplotlib.use(before)
    assert (tmp_path / "brazil.png").stat().st_size > 1000


def test_patchset_and_errors(tmp_path):
    lbb = os.path.join(WS, "atlas_1Lbb_ins1755298")
    result = run("fit", os.path.join(lbb, "BkgOnly.json"), "--patchset", os.path.join(lbb, "patchset.json.gz"),
                 "--patch-name", "nope", "--json")
    assert result.exit_code == 2
    assert "unknown patch 'nope'" in result.output
    bad = tmp_path / "bad.json"
    bad.write_text('{"channels": [')
    result = run("fit", str(bad))
    assert result.exit_code == 2 and "not valid JSON" in result.output
    result = run("fit", DOCS, "--fixed", "muu=1")
    assert result.exit_code == 2 and "Did you mean 'mu'" in result.output


def test_info_and_entry_point():
    result = run("info", "--json", "--ntoys", "32")
    payload = strict_json(result.stdout)
    assert payload["x64"] is True and payload["versions"]["jax"] and payload["versions"]["pyhf"]
    assert payload["command"] == "gpufit info --json --ntoys 32"  # a saved check says how it was made
    # the check ran toys on every device: here the CPU alone, the reference of itself
    (row,) = payload["check"]["rows"]
    assert row["device"].startswith("cpu") and row["ntoys"] == 32 and row["toys_per_s"] > 0 and row["agrees"]


def test_require_gpu_refuses_a_cpu_before_any_work(monkeypatch):
    import gpufit.infer.device_check as device_check

    monkeypatch.setattr(device_check, "check_devices", lambda *a, **k: pytest.fail("the check ran"))
    result = run("info", "--require-gpu")
    assert result.exit_code == 2
    assert "--require-gpu: JAX runs on cpu" in result.output and "Traceback" not in result.output
    proc = subprocess.run([sys.executable, "-m", "gpufit", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "gpufit" in proc.stdout
