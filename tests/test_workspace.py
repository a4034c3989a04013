"""Workspaces: formats, patches, patchsets, digests, and every bad input with its message."""

import copy
import gzip
import json
import os

import pytest

import gpufit
from conftest import LBB, SBOTTOM
from gpufit.testing import generate_workspace


def test_load_json_gz_and_file_object(tmp_path):
    spec = generate_workspace(seed=1)
    plain = tmp_path / "ws.json"
    plain.write_text(json.dumps(spec))
    packed = tmp_path / "ws.json.gz"
    packed.write_bytes(gzip.compress(json.dumps(spec).encode()))
    a, b = gpufit.Workspace.load(plain), gpufit.Workspace.load(packed)
    with open(plain) as handle:
        c = gpufit.Workspace.load(handle)
    assert a.digest() == b.digest() == c.digest() == gpufit.Workspace(spec).digest()
    assert len(a.digest()) == 64


def test_digest_ignores_key_order_but_not_content():
    spec = generate_workspace(seed=1)
    reordered = json.loads(json.dumps(spec, sort_keys=True))
    assert gpufit.Workspace(spec).digest() == gpufit.Workspace(reordered).digest()
    changed = copy.deepcopy(spec)
    changed["observations"][0]["data"][0] += 1
    assert gpufit.Workspace(spec).digest() != gpufit.Workspace(changed).digest()


def test_patch_and_patchset(sbottom_ws, lbb_ws):
    bkg = gpufit.Workspace.load(os.path.join(SBOTTOM, "RegionA", "BkgOnly.json"))
    assert "sbottom_1300_205_60" not in bkg.samples
    assert any("1300_205_60" in s for s in sbottom_ws.samples)
    assert lbb_ws.model().n_pars == 126
    with pytest.raises(gpufit.UnknownName, match="unknown patch 'C1N2_Wh_hbb_7000_300'.*Did you mean"):
        gpufit.Workspace.load(os.path.join(LBB, "BkgOnly.json")).with_patchset(
            os.path.join(LBB, "patchset.json.gz"), "C1N2_Wh_hbb_7000_300"
        )


def test_malformed_spec_names_the_json_path():
    spec = generate_workspace(seed=1)
    spec["channels"][0]["samples"][1]["data"] = "not a list"
    with pytest.raises(gpufit.InvalidWorkspace, match=r"channels\[0\]\.samples\[1\]\.data") as info:
        gpufit.Workspace(spec)
    assert info.value.path == "channels[0].samples[1].data"
    assert "array" in str(info.value)


def test_missing_key_and_wrong_type():
    spec = generate_workspace(seed=1)
    del spec["observations"]
    with pytest.raises(gpufit.InvalidWorkspace, match="'observations' is a required property"):
        gpufit.Workspace(spec)
    with pytest.raises(gpufit.InvalidWorkspace, match="a workspace spec is a JSON object, got list"):
        gpufit.Workspace([])


def test_bin_count_mismatches():
    spec = generate_workspace(seed=1)
    spec["observations"][1]["data"].append(3.0)
    with pytest.raises(gpufit.InvalidWorkspace, match=r"observations\[1\]\.data .* has 5 bins but .* 4"):
        gpufit.Workspace(spec)
    spec = generate_workspace(seed=1)
    spec["channels"][0]["samples"][2]["data"].pop()
    with pytest.raises(gpufit.InvalidWorkspace, match=r"channels\[0\]\.samples\[2\]\.data"):
        gpufit.Workspace(spec)


def test_truncated_file(tmp_path):
    path = tmp_path / "cut.json"
    path.write_text(json.dumps(generate_workspace(seed=1))[:500])
    with pytest.raises(gpufit.InvalidWorkspace, match="cut.json is not valid JSON.*truncated"):
        gpufit.Workspace.load(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gpufit.Workspace.load(tmp_path / "nothing.json")


def test_unknown_names_list_the_valid_ones(docs_ws):
    with pytest.raises(gpufit.UnknownName, match="unknown measurement 'meas'.*Valid measurements: 'Measurement'"):
        docs_ws.model(measurement="meas")
    model = docs_ws.model()
    with pytest.raises(gpufit.UnknownName, match="unknown parameter 'muu'.*Did you mean 'mu'"):
        gpufit.fit(model, docs_ws.data(model), fixed={"muu": 1.0})
    with pytest.raises(gpufit.UnknownName, match="unknown parameter of interest 'signal_strength'"):
        docs_ws.model(poi_name="signal_strength")


def test_bad_interpolation_codes(docs_ws):
    with pytest.raises(gpufit.InvalidInterpCode, match="code2.*not available for normsys.*code1, code4"):
        docs_ws.model(modifier_settings={"normsys": {"interpcode": "code2"}})
    with pytest.raises(gpufit.InvalidInterpCode, match="only 'normsys' and 'histosys'"):
        docs_ws.model(modifier_settings={"lumi": {"interpcode": "code1"}})
    model = docs_ws.model(modifier_settings={"normsys": {"interpcode": 4}, "histosys": {"interpcode": "4p"}})
    assert model.modifier_settings == {"normsys": {"interpcode": "code4"}, "histosys": {"interpcode": "code4p"}}
    # pyhf's rule: a type left out falls back to code1/code0
    partial = docs_ws.model(modifier_settings={"normsys": {"interpcode": "code4"}})
    assert partial.modifier_settings["histosys"]["interpcode"] == "code0"


def test_shape_errors(docs_ws):
    model = docs_ws.model()
    with pytest.raises(gpufit.InvalidShape, match="parameters have length 2 but the model has 3"):
        model.logpdf([1.0, 1.0], docs_ws.data(model))
    with pytest.raises(gpufit.InvalidShape, match="data have length 2 but the model needs 4"):
        gpufit.fit(model, [50.0, 60.0])


def test_poi_less_model(docs_ws):
    model = docs_ws.model(poi_name=None)
    assert model.poi_name is None
    with pytest.raises(gpufit.UnspecifiedPOI, match="no parameter of interest"):
        gpufit.hypotest(model, docs_ws.data(model))
    assert gpufit.fit(model, docs_ws.data(model)).converged


def test_public_api():
    expected = {
        "Workspace", "Model", "fit", "FitResult", "hypotest", "upper_limit", "scan", "ScanResult", "HypoTestResult",
        "UpperLimitResult", "infer", "GpufitError", "InvalidWorkspace", "UnknownName", "InvalidModel",
        "InvalidShape", "InvalidInterpCode", "InvalidArgument", "LimitOutsideGrid", "UnspecifiedPOI",
        "BackendUnavailable", "ToyFitsFailed", "__version__",
    }
    assert set(gpufit.__all__) == expected
    assert all(hasattr(gpufit, name) for name in expected)


def test_bundled_examples_are_the_published_likelihoods(lbb_ws):
    """Workspace.example builds the same workspaces as the files and patchsets it names;
    an unknown name lists the valid ones."""
    ws = gpufit.Workspace.example("1lbb")
    assert ws.spec == lbb_ws.spec
    assert ws.model().n_pars == 126
    with pytest.raises(gpufit.UnknownName, match="'sbottom', '1lbb', '2ljets', 'docs'"):
        gpufit.Workspace.example("1Lbb_typo")


def test_a_pickled_model_computes_what_it_computed(sbottom):
    """Models travel between processes (the build workers of a grid): the tables and the
    configuration do, pyhf's model is built again from the spec when asked for."""
    import pickle

    import numpy as np

    model, data = sbottom
    back = pickle.loads(pickle.dumps(model))
    assert "pyhf_model" not in back.__dict__  # not carried: rebuilt below
    pars = model.suggested_init() + 0.1
    assert np.array_equal(np.asarray(back.logpdf(pars, data)), np.asarray(model.logpdf(pars, data)))
    assert back.parameter_names == model.parameter_names and back.poi_index == model.poi_index
    np.testing.assert_allclose(back.pyhf_model.logpdf(pars, data), model.pyhf_model.logpdf(pars, data), rtol=1e-14)


def test_errors_survive_pickling():
    """A worker's error arrives as the error it was (type, message, fields)."""
    import pickle

    err = pickle.loads(pickle.dumps(gpufit.UnknownName("patch", "sig_1", ["sig_10", "sig_2"])))
    assert isinstance(err, gpufit.UnknownName) and "Did you mean 'sig_10'" in str(err) and err.valid == ["sig_10", "sig_2"]
    err = pickle.loads(pickle.dumps(gpufit.InvalidWorkspace("bad number", path="channels[0].data[1]", expected="number")))
    assert str(err) == "bad number" and err.path == "channels[0].data[1]" and err.expected == "number"
