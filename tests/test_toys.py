"""Toys: device sampling, determinism, the batched calculator against pyhf's
ToyCalculator (statistically, with binomial errors), retries and failure accounting."""

import jax
import jax.numpy as jnp
import numpy as np
import pyhf
import pytest
from click.testing import CliRunner
from conftest import broken_workspace, strict_json
from scipy import stats

import gpufit
import pyhf_reference  # tests/pyhf_reference.py
from gpufit.cli import main
from gpufit.infer import sampling
from gpufit.infer.toy_pvalues import toy_pvalues
from gpufit.infer.toys import ToyCalculator
from gpufit.testing import generate_workspace, pyhf_percentile_shim


def _within(a, b, n_a, n_b, sigmas=4.0):
    """|a - b| within ``sigmas`` binomial errors of the difference."""
    p = 0.5 * (a + b)
    err = np.sqrt(max(p * (1 - p), 1.0 / max(n_a, n_b)) * (1.0 / n_a + 1.0 / n_b))
    return abs(a - b) <= sigmas * err


@pytest.mark.parametrize("case", list(pyhf_reference.CASES))
def test_toys_agree_with_pyhf(case):
    """Against pyhf's ToyCalculator (run here, or its stored distributions where pyhf takes
    minutes: tests/pyhf_reference.py), statistically: p-values within binomial errors,
    distributions by two-sample KS tests, the expected band within bootstrap noise."""
    mu, ntoys, _ = pyhf_reference.CASES[case]
    ws = pyhf_reference.workspace(case)
    model = ws.model()
    data = ws.data(model)
    ours = gpufit.hypotest(model, data, mu, calculator="toys", ntoys=4 * ntoys, seed=11, progress=False)
    ref = pyhf_reference.reference(case, model, data)
    assert len(ref["sb"]) == len(ref["b"]) == ntoys
    assert ours.n_failed == 0
    assert ours.teststat == pytest.approx(ref["obs"], abs=2e-4)
    n_ours, n_ref = 4 * ntoys, ntoys
    assert _within(ours.clsb_obs, ref["clsb"], n_ours, n_ref), (ours.clsb_obs, ref["clsb"])
    assert _within(ours.clb_obs, ref["clb"], n_ours, n_ref), (ours.clb_obs, ref["clb"])
    # the distributions themselves: two-sample KS on each hypothesis
    assert stats.ks_2samp(ours.teststat_sb, ref["sb"]).pvalue > 1e-3
    assert stats.ks_2samp(ours.teststat_b, ref["b"]).pvalue > 1e-3
    _assert_band_consistent(ours, ref)


def test_the_pyhf_shim_is_undone_on_exit():
    """pyhf's toys run on today's numpy inside the shim, and pyhf is as it was after it
    (gpufit.testing must not change pyhf for the rest of a user's process)."""
    from pyhf.tensor import numpy_backend

    before = numpy_backend.numpy_backend.percentile
    pyhf.set_backend("numpy")
    with pyhf_percentile_shim():
        assert pyhf.tensorlib.percentile(np.arange(5.0), 50) == 2.0
    assert numpy_backend.numpy_backend.percentile is before


def _band_noise(sb, b, obs, rng, n_boot=200):
    """Bootstrap standard deviation of the expected CLs band [5] from toy samples."""
    bands = [
        toy_pvalues(obs, rng.choice(sb, sb.size), rng.choice(b, b.size))["cls_exp"] for _ in range(n_boot)
    ]
    return np.std(bands, axis=0)


def _assert_band_consistent(ours, ref, sigmas=4.0):
    """The expected CLs band within toy noise: both bands' bootstrap errors combined.
    (Its outer values ride on the tails of the signal+background toys and move by
    several hundredths between seeds at a few thousand toys.)"""
    rng = np.random.default_rng(0)
    noise = np.hypot(
        _band_noise(ours.teststat_sb, ours.teststat_b, ours.teststat, rng),
        _band_noise(np.asarray(ref["sb"]), np.asarray(ref["b"]), ref["obs"], rng),
    )
    np.testing.assert_array_less(np.abs(ours.cls_exp - ref["cls_exp"]), sigmas * noise + 1e-3)


def test_toys_converge_to_asymptotics_at_large_counts():
    """A 2-bin model with thousands of events: toy CLs approach the asymptotic ones."""
    spec = pyhf.simplemodels.uncorrelated_background(
        signal=[150.0, 120.0], bkg=[5000.0, 4000.0], bkg_uncertainty=[50.0, 40.0]
    ).spec
    ws = gpufit.Workspace({"channels": spec["channels"], "observations": [{"name": "singlechannel", "data": [5080.0, 4050.0]}],
                           "measurements": [{"name": "m", "config": {"poi": "mu", "parameters": []}}], "version": "1.0.0"})
    model = ws.model()
    data = ws.data(model)
    asy = gpufit.hypotest(model, data, 1.0)
    toys = gpufit.hypotest(model, data, 1.0, calculator="toys", ntoys=4000, seed=3, progress=False)
    for ours, want, err in ((toys.clsb_obs, asy.clsb_obs, toys.clsb_obs_err), (toys.clb_obs, asy.clb_obs, toys.clb_obs_err)):
        assert abs(ours - want) < 4 * err + 0.01, (ours, want, err)
    assert toys.cls_obs == pytest.approx(asy.cls_obs, abs=4 * toys.cls_obs_err + 0.02)
    np.testing.assert_allclose(toys.cls_exp[:3], asy.cls_exp[:3], atol=0.03)


@pytest.mark.slow
def test_sampling_moments_match_the_model(sbottom):
    """Main data Poisson(nu), Gaussian aux Normal(theta, sigma), as pyhf samples them."""
    model, data = sbottom
    m = model.compiled
    pars = model.suggested_init()
    n = 20000
    keys = sampling.toy_keys(5, np.zeros(n), np.zeros(n), np.arange(n))
    toys = np.asarray(jax.jit(sampling.sample_toys)(m, jnp.asarray(pars), keys))  # eager: 9 s of op-by-op compiles
    nu = np.asarray(model.expected_data(pars))
    mean, var = toys.mean(0), toys.var(0)
    main = slice(0, model.n_main)
    err = np.sqrt(nu[main] / n)
    assert np.all(np.abs(mean[main] - nu[main]) < 5 * err)
    np.testing.assert_allclose(var[main], nu[main], rtol=0.1)
    aux = slice(model.n_main, None)
    np.testing.assert_allclose(mean[aux], nu[aux], atol=0.05)
    assert np.all(toys[:, main] == np.round(toys[:, main]))


@pytest.mark.parametrize("lam", [1e-3, 0.7, 4.0, 9.99, 10.0, 25.0, 670.0])
def test_poisson_sampler_follows_the_poisson_distribution(lam):
    """Both branches (Knuth below 10, rejection above) and the switch: a chi2 test of
    20,000 draws against scipy's pmf (cells merged to >= 5 expected)."""
    keys = jax.random.split(jax.random.key(1), 20000)
    x = np.asarray(jax.jit(jax.vmap(lambda k: sampling.poisson(k, jnp.float64(lam))))(keys))
    assert np.all(x == np.round(x)) and x.min() >= 0
    k = np.arange(int(lam + 12 * np.sqrt(lam) + 12))
    expected = stats.poisson.pmf(k, lam) * x.size
    observed = np.bincount(x.astype(int), minlength=k.size)[: k.size].astype(float)
    # merge cells from both tails until each expects >= 5
    edges, acc = [], 0.0
    for i, e in enumerate(expected):
        acc += e
        if acc >= 5:
            edges.append(i + 1)
            acc = 0.0
    cells_e = np.add.reduceat(expected, [0] + edges[:-1])
    cells_o = np.add.reduceat(observed, [0] + edges[:-1])
    cells_e[-1] += x.size - expected.sum()  # the far tail joins the last cell
    cells_o[-1] += np.sum(x >= k.size)
    if cells_e.size < 2:  # lam = 1e-3: zero or not
        assert abs(np.mean(x > 0) - (1 - np.exp(-lam))) < 5 * np.sqrt(lam / x.size)
        return
    chi2 = np.sum((cells_o - cells_e) ** 2 / cells_e)
    assert stats.chi2.sf(chi2, cells_e.size - 1) > 1e-4, (chi2, cells_e.size)


def test_a_count_depends_on_its_own_key_and_rate_only():
    """What makes a GPU and a CPU draw the same toys: changing one bin's rate changes no
    other bin's count (jax.random.poisson's shared rejection loop can change them all)."""
    key = jax.random.key(2)
    poisson = jax.jit(sampling.poisson)
    rates = np.array([3.0, 50.0, 700.0, 0.0, 12.0, 9.5])
    base = np.asarray(poisson(key, rates))
    assert base[3] == 0
    # a broken model's rate gives no number
    assert np.isnan(np.asarray(poisson(key, np.array([np.nan, np.inf, -1.0])))).all()
    for i in range(rates.size):
        for new in (0.2, 8.0, 40.0, 2000.0):
            other = rates.copy()
            other[i] = new
            changed = np.asarray(poisson(key, other))
            keep = np.arange(rates.size) != i
            np.testing.assert_array_equal(changed[keep], base[keep])


@pytest.mark.slow
def test_same_seed_any_chunk_size_identical_and_seeds_independent(docs_ws):
    model = docs_ws.model()
    data = docs_ws.data(model)
    a = ToyCalculator(model, data, [0.5, 1.0], ntoys=100, seed=7, chunk_size=16, progress=False).run()
    b = ToyCalculator(model, data, [0.5, 1.0], ntoys=100, seed=7, chunk_size=256, progress=False).run()
    np.testing.assert_array_equal(a["teststat_sb"], b["teststat_sb"])
    np.testing.assert_array_equal(a["teststat_b"], b["teststat_b"])
    # rows asked one by one, in another order, give the same toys
    calc = ToyCalculator(model, data, [0.5, 1.0], ntoys=100, seed=7, chunk_size=32, progress=False)
    ts, _ = calc.teststats([0, 1], [1, 0], [99, 3])
    assert ts[0] == a["teststat_sb"][1, 99] and ts[1] == a["teststat_b"][0, 3]
    c = ToyCalculator(model, data, [0.5, 1.0], ntoys=100, seed=8, chunk_size=16, progress=False).run()
    assert not np.array_equal(a["teststat_b"], c["teststat_b"])
    keys = [sampling.toy_keys(s, np.zeros(2000), np.zeros(2000), np.arange(2000)) for s in (7, 8)]
    sample = jax.jit(sampling.sample_toys)
    first = [np.asarray(sample(model.compiled, jnp.asarray(model.suggested_init()), k))[:, 0] for k in keys]
    assert abs(np.corrcoef(first[0], first[1])[0, 1]) < 0.1


@pytest.mark.slow
def test_fixed_poi_fits_a_one_sided_statistic_does_not_need_are_skipped(docs_ws):
    """qtilde is 0 wherever the free fit's muhat lies above mu, and q0 wherever it lies
    below 0, whatever the fixed-POI fit gives: those fits are not run (as ROOT's
    ProfileLikelihoodTestStat skips them), and the test statistics are those of a run
    that fits every twin (all_fixed_fits=True). The two-sided t needs every twin."""
    model = docs_ws.model()
    data = docs_ws.data(model)
    poi = model.poi_name
    for test_stat, mu, bounds in (("qtilde", 1.0, None), ("q0", 0.0, {poi: (-5.0, 10.0)}),
                                  ("t", 1.0, {poi: (-5.0, 10.0)})):
        skip, every = (
            gpufit.hypotest(model, data, mu, test_stat=test_stat, bounds=bounds, calculator="toys", ntoys=200,
                            seed=4, progress=False, all_fixed_fits=all_fits)
            for all_fits in (False, True)
        )
        skipped = skip.info["skipped"]
        assert every.info["skipped"] == 0 and every.info["fits"] == 800
        assert skip.info["fits"] == 800 - skipped
        assert (skipped == 0) if test_stat == "t" else (40 < skipped < 400), (test_stat, skipped)
        for key in ("teststat_sb", "teststat_b"):
            np.testing.assert_allclose(getattr(skip, key), getattr(every, key), rtol=0, atol=1e-9)
        # the skipped toys are some of those whose statistic is 0
        assert np.sum(np.concatenate([skip.teststat_sb, skip.teststat_b]) == 0) >= skipped
    # pyhf's names are the same statistics: qmu_tilde is one-sided (0 at muhat = 2 > mu = 1;
    # the calculator once took it for the two-sided one), tmu_tilde is not
    at_two = np.where(np.arange(model.n_pars) == model.poi_index, 2.0, model.suggested_init())
    signal_like = np.asarray(model.expected_data(at_two))
    q, t = (ToyCalculator(model, signal_like, [1.0], name, ntoys=None, progress=False).teststat_obs[0]
            for name in ("qmu_tilde", "tmu_tilde"))
    assert q == 0 < t


def test_the_chunk_call_on_a_cpu_does_not_fit_the_twins_it_skips(docs_ws):
    """On a CPU the chunk call runs the free fits first, then only the fixed-POI fits
    that qtilde needs: a skipped twin comes back unfitted (-2 log L inf), the others
    fitted, and the skipped ones are exactly the toys whose free fit converged above mu."""
    from gpufit.infer.toys import chunk_outputs, continuation_capacity, refit_capacity, toy_chunk
    from gpufit.optimize import CONVERGED
    from gpufit.optimize.fit import FIRST_PASS_STEPS

    model = docs_ws.model()
    calc = ToyCalculator(model, docs_ws.data(model), [1.0], ntoys=None, progress=False)
    n, group = 64, 16
    h, i, t = np.repeat([0, 1], n // 2), np.zeros(n, np.int64), np.tile(np.arange(n // 2), 2)
    gen = np.where((h == 0)[:, None], calc.gen_sb[i], calc.gen_b[i])
    out = toy_chunk(model.compiled, np.uint32(3), h, i, t, gen, model.suggested_init(), calc.mus[i], calc.poi_mask,
                    calc.free, calc.bounds[:, 0], calc.bounds[:, 1], calc.tol, n, first_steps=FIRST_PASS_STEPS,
                    maxiter=300, group=group, capacity=continuation_capacity(n, group),
                    refits=refit_capacity(n, group), queue=True, side=1)
    _, free, fixed, _, skipped, _ = chunk_outputs([np.asarray(a) for a in out])
    muhat, converged = free.pars[:, model.poi_index], free.status == CONVERGED
    assert 8 < skipped.sum() < n - 8 and np.all(converged)
    np.testing.assert_array_equal(skipped, muhat > 1.0)
    assert np.all(np.isinf(fixed.twice_nll[skipped])) and np.all(fixed.status[~skipped] == CONVERGED)


def test_toy_pars_init_and_q0(docs_ws):
    model = docs_ws.model()
    data = docs_ws.data(model)
    # data = the expectation at the suggested init (mu = 1): the profiled fit at mu = 1
    # lands on the init, so "init" and "profiled" signal+background toys are the same toys
    asimov = np.asarray(model.expected_data(model.suggested_init()))
    init = gpufit.hypotest(model, asimov, 1.0, calculator="toys", ntoys=300, toy_pars="init", progress=False)
    prof = gpufit.hypotest(model, asimov, 1.0, calculator="toys", ntoys=300, progress=False)
    assert init.info["toy_pars"] == "init" and prof.info["toy_pars"] == "profiled"
    np.testing.assert_allclose(init.teststat_sb, prof.teststat_sb, atol=1e-4)
    # their background-only toys differ: "init" keeps the init's nuisances, "profiled" refits them at mu = 0
    assert not np.allclose(init.teststat_b, prof.teststat_b, atol=1e-4)
    # q0 on the signal-like Asimov data (on the observed data q0 = 0, where the asymptotic
    # p0 is 1/2 by convention and every toy lies at or above): p0 is the tail of the mu = 0
    # toys, and agrees with the asymptotic p0 within its binomial error
    disc = gpufit.hypotest(model, asimov, 0.0, test_stat="q0", calculator="toys", ntoys=2000, progress=False)
    asym = gpufit.hypotest(model, asimov, 0.0, test_stat="q0")
    assert disc.clsb_obs == pytest.approx(np.mean(disc.teststat_sb >= disc.teststat - 1e-12))
    assert _within(disc.cls_obs, asym.cls_obs, 2000, 10**9), (disc.cls_obs, asym.cls_obs)
    with pytest.raises(ValueError, match="toy_pars must be one of"):
        gpufit.hypotest(model, data, 1.0, calculator="toys", ntoys=10, toy_pars="asimov")
    with pytest.raises(ValueError, match="only apply to calculator='toys'"):
        gpufit.hypotest(model, data, 1.0, ntoys=10)
    with pytest.raises(ValueError, match="seed must be an integer"):
        gpufit.hypotest(model, data, 1.0, calculator="toys", seed=-1)


@pytest.mark.slow
def test_hard_toys_are_retried_not_dropped():
    """Toys with empty signal-region bins (where pyhf's jax runs abort) all end converged,
    some after the retry chain; an unreachable tolerance sends fits through every stage:
    every free fit, then the fixed-POI fits that the free fits' muhat leaves needed."""
    ws = gpufit.Workspace(generate_workspace(seed=3, n_channels=1, n_bins=3, empty_bin=True))
    model = ws.model()
    data = ws.data(model)
    calc = ToyCalculator(model, data, [1.0], ntoys=6, seed=1, progress=False, toy_tol=0.0, maxiter=40)
    r = calc.run()
    st = r["stats"]
    fits = 12 + 12 - st["skipped"]
    assert 0 < st["skipped"] < 12  # not one of the chunk call's skips: no free fit converged there
    assert st["continued"] == st["restarted"] == fits and st["minuit"] > 0
    assert st["toys"] == 12 and st["fits"] == fits and r["n_failed"] == 0


@pytest.mark.slow
def test_toy_fits_stopped_at_an_empty_bins_edge_are_started_again_and_go_on_along_it(lbb_ws, monkeypatch):
    """1Lbb, seed 1, background-only toys at mu = 1.

    Toy 117 (its data: tests/data/1lbb_edge_toy.json): both fits stop at the edge of an
    empty bin, converged by their edm, the free one at -2 log L = 221.422; the new start
    from the suggested init finds 221.133 for it. The toy's q_mu is taken from the lower
    minima (fixed-POI fit: 221.690), and the run counts both new starts, made inside the
    chunk call.

    Toy 1974: its free fit converges at the edge, where the batched solver's damping
    freezes, 1.25 above the minimum further along it; the solver along the edge reaches
    218.2291 (fixed-POI fit: 226.1988), from where MIGRAD (strategies 0 and 1) finds
    nothing lower. Without that solver its q_mu is 6.717 instead of 7.970.

    All four fits end at the edge after their new start: on a CPU the host takes them on
    along it, and makes no new start of its own."""
    import gpufit.infer.toys as toys

    looked = []
    host_at_edge = toys.at_edge

    def spy(model, data, pars):
        looked.append(len(data))
        return host_at_edge(model, data, pars)

    monkeypatch.setattr(toys, "at_edge", spy)
    model = lbb_ws.model()
    calc = ToyCalculator(model, lbb_ws.data(model), [1.0], ntoys=None, seed=1, progress=False)
    ts, failed = calc.teststats(np.array([1, 1]), np.array([0, 0]), np.array([117, 1974]))
    assert not failed.any()
    assert ts[0] == pytest.approx(221.6902 - 221.1328, abs=2e-3)
    assert ts[1] == pytest.approx(226.1988 - 218.2291, abs=2e-3)
    assert calc.stats.at_edge == 4 and calc.stats.lower_at_edge >= 1 and calc.stats.lower_along_edge >= 1
    assert looked == [2, 2]  # the free fits, then the fixed-POI ones: no second look after a new start
    # an accelerator's chunk call (given room for every new start) takes them along the
    # edge itself: the same test statistics, and the host looks at no fit's edge
    import gpufit._device as device

    monkeypatch.setattr(device, "platform", lambda: "gpu")
    monkeypatch.setattr(toys, "continuation_capacity", lambda chunk, group: (2 * chunk, 2 * chunk))
    looked.clear()
    again = ToyCalculator(model, lbb_ws.data(model), [1.0], ntoys=None, seed=1, progress=False)
    ts_call, failed = again.teststats(np.array([1, 1]), np.array([0, 0]), np.array([117, 1974]))
    assert not failed.any() and sum(looked) == 0 and again.stats.lower_along_edge >= 1
    np.testing.assert_allclose(ts_call, ts, rtol=0, atol=1e-5)


def test_building_a_calculator_fits_nothing(docs_ws, monkeypatch):
    import gpufit.infer.toys as toys

    model = docs_ws.model()
    data = docs_ws.data(model)
    real_fit = toys.fit
    monkeypatch.setattr(toys, "fit", lambda *a, **k: pytest.fail("a fit ran while building the calculator"))
    calc = ToyCalculator(model, data, [1.0], ntoys=10, progress=False)
    monkeypatch.setattr(toys, "fit", real_fit)
    reference = gpufit.hypotest(model, data, 1.0)  # asymptotic: the same observed test statistic
    assert calc.teststat_obs[0] == pytest.approx(reference.teststat, abs=1e-6)


def test_a_rows_only_calculator_refuses_to_run_without_ntoys(docs_ws):
    """A campaign's job builds its calculator without ntoys (it computes given rows):
    run() then says what is missing instead of inventing a number of toys."""
    model = docs_ws.model()
    calc = ToyCalculator(model, docs_ws.data(model), [1.0], ntoys=None, progress=False)
    with pytest.raises(gpufit.InvalidArgument, match="ntoys=None"):
        calc.run()


def _counts(stats: dict) -> dict:
    """A toy run's counts, without its seconds."""
    return {k: v for k, v in stats.items() if not k.endswith("seconds")}


@pytest.mark.slow
def test_stragglers_continue_alike_in_the_chunk_call_and_from_the_host(monkeypatch):
    """A tight tolerance leaves fits unconverged after a first pass. Stepping as on
    an accelerator (the chunk one lockstep group: a first pass of FIRST_PASS_STEPS, then
    the stragglers continued in the call as far as it has room), with that room cut to
    1 fit and one refit most continue, and the local minima are refitted, from the
    host instead: the same kernel, and the same test statistics as a CPU's queue, which
    runs every fit to its end in the call. Reading every toy whole changes nothing: no
    toy the retries touch was left on the device."""
    import gpufit._device as device
    import gpufit.infer.toys as toys

    ws = gpufit.Workspace(generate_workspace(seed=1, n_channels=2, n_bins=6))
    model = ws.model()
    data = ws.data(model)

    def run(ntoys, chunk_size):
        calc = ToyCalculator(model, data, [1.0], ntoys=ntoys, seed=5, chunk_size=chunk_size, progress=False,
                             toy_tol=1e-11)
        return calc.run()

    queued = run(256, 512)  # the chunk kernel of the retry-thread tests too: one compilation
    monkeypatch.setattr(device, "platform", lambda: "gpu")
    monkeypatch.setattr(toys, "continuation_capacity", lambda chunk, group: (1, 1))
    monkeypatch.setattr(toys, "refit_capacity", lambda chunk, group: (1, 1))  # the host refits local minima
    opened, open_rows = [], toys.ToyCalculator._open

    def spy(self, *args):
        rows = open_rows(self, *args)
        opened.append((int(rows.sum()), rows.size))
        return rows

    monkeypatch.setattr(toys.ToyCalculator, "_open", spy)
    cramped = run(128, 256)  # the same seed: the first 128 toys of the queued run
    # only the toys the host retries leave the device whole; reading every toy whole
    # changes nothing
    monkeypatch.setattr(toys.ToyCalculator, "_open", lambda self, per_toy, mu_test: np.ones(mu_test.size, bool))
    read_all = run(128, 256)
    assert 0 < sum(k for k, _ in opened) < sum(n for _, n in opened)
    assert _counts(read_all["stats"]) == _counts(cramped["stats"])
    for key in ("teststat_sb", "teststat_b"):
        np.testing.assert_array_equal(read_all[key], cramped[key])
    assert cramped["stats"]["continued"] > 1  # more than the call has room for: the host continued the rest
    assert cramped["stats"]["local_minima"] > 1  # the same: one refit in the call, the others from the host
    assert cramped["n_failed"] == queued["n_failed"] == 0
    for key in ("teststat_sb", "teststat_b"):
        # the queue steps on where the accelerator's first pass stops and starts again
        np.testing.assert_allclose(queued[key][:, :128], cramped[key], rtol=0, atol=1e-6)


def test_continuation_room_scales_with_the_chunk_where_the_chunk_is_one_group():
    """On a GPU the whole chunk steps as one lockstep group: the in-call continuations
    must still be a fraction of it (rounding them up to whole groups made each as wide
    as the first pass, and halved the toys/s of an H200). On a CPU they are whole groups."""
    from gpufit.infer.toys import continuation_capacity, refit_capacity

    assert continuation_capacity(32768, 32768) == (8192, 2048)
    assert refit_capacity(32768, 32768) == (2048, 512)
    assert continuation_capacity(4096, 16) == (1024, 256)
    assert refit_capacity(4096, 16) == (256, 64)
    assert continuation_capacity(48, 16) == (16, 16)  # at least one whole group
    assert refit_capacity(48, 16) == (16, 16)


def test_host_retries_compute_on_the_callers_device(monkeypatch):
    """The host's retries run in a thread of their own, and JAX's default device is
    thread-local: ``gpufit info`` runs the same toys under ``jax.default_device(cpu)``
    beside a GPU, and the retry thread must compute there too."""
    import jax

    import gpufit.infer.toys as toys

    seen = []
    original = toys.ToyCalculator._repair

    def spy(self, *args):
        seen.append(jax.config.jax_default_device)
        return original(self, *args)

    monkeypatch.setattr(toys.ToyCalculator, "_repair", spy)
    cpu = jax.devices("cpu")[0]
    # the model and chunk shape of the stragglers test above: its compiled chunk is reused
    ws = gpufit.Workspace(generate_workspace(seed=1, n_channels=2, n_bins=6))
    model = ws.model()
    with jax.default_device(cpu):
        ToyCalculator(model, ws.data(model), [1.0], ntoys=256, seed=5, chunk_size=512, progress=False).run()
    assert seen and all(device == cpu for device in seen)


@pytest.mark.slow
def test_on_a_cpu_the_retries_wait_for_the_last_chunk_call(docs_ws, monkeypatch):
    """Two compiled calls at once can hang XLA's CPU runtime (benchmarks/README, sessions
    14 and 16). On a CPU the host's retries of a chunk with unconverged fits (here every
    fit: two steps allowed) make their compiled calls only once every chunk call has
    returned, and they still rescue every fit."""
    import gpufit.infer.toys as toys

    returned, seen_at = [], []
    fetch = toys.ToyCalculator._fetch  # the host reads a chunk call's outputs once it has returned
    monkeypatch.setattr(toys.ToyCalculator, "_fetch", lambda self, *args: (returned.append(1), fetch(self, *args))[1])
    for name in ("_continue", "_refit"):  # every compiled call of the retries goes through one of them

        def spy(self, *args, _original=getattr(toys.ToyCalculator, name), **kwargs):
            seen_at.append(len(returned))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(toys.ToyCalculator, name, spy)
    model = docs_ws.model()
    r = ToyCalculator(model, docs_ws.data(model), [1.0], ntoys=24, seed=2, chunk_size=16, maxiter=2,
                      progress=False).run()
    assert len(returned) == 3  # 48 pseudo-experiments in chunks of 16
    assert r["stats"]["continued"] > 48 and seen_at and set(seen_at) == {3}
    assert r["n_failed"] == 0


@pytest.mark.slow
def test_an_error_in_the_retry_thread_reaches_the_caller(monkeypatch):
    """The host's retries run in their own thread: an exception there must surface in
    the call, not vanish with the thread (and leave NaN test statistics behind)."""
    import gpufit.infer.toys as toys

    def broken(self, *args):
        raise RuntimeError("retry failed")

    monkeypatch.setattr(toys.ToyCalculator, "_repair", broken)
    ws = gpufit.Workspace(generate_workspace(seed=1, n_channels=2, n_bins=6))
    model = ws.model()
    calc = ToyCalculator(model, ws.data(model), [1.0], ntoys=256, seed=5, chunk_size=512, progress=False)
    with pytest.raises(RuntimeError, match="retry failed"):
        calc.run()


@pytest.mark.slow
def test_failed_fits_are_counted_and_raise_above_threshold(monkeypatch):
    ws = broken_workspace(monkeypatch)
    model = ws.model()
    data = ws.data(model)
    with pytest.raises(gpufit.ToyFitsFailed, match="failed after every retry") as err:
        gpufit.hypotest(model, data, 1.0, calculator="toys", ntoys=8, progress=False)
    result = err.value.result
    assert result["n_failed"] == 16
    assert np.isnan(result["teststat_sb"]).all()
    r = gpufit.hypotest(model, data, 1.0, calculator="toys", ntoys=8, progress=False, max_failed=1.0)
    assert r.n_failed == 16 and r.teststat_b.shape == (8,)


def test_toy_upper_limit(docs_ws):
    model = docs_ws.model()
    data = docs_ws.data(model)
    asy = gpufit.upper_limit(model, data)
    toys = gpufit.upper_limit(model, data, calculator="toys", ntoys=1500, seed=2, progress=False)
    assert toys.calculator == "toys" and toys.n_failed == 0
    assert toys.cls_exp.shape == (11, 5) and toys.mus.shape == (11,)
    assert toys.observed == pytest.approx(asy.observed, rel=0.1)
    np.testing.assert_allclose(toys.expected[1:4], asy.expected[1:4], rtol=0.15)
    assert np.all(np.diff(toys.expected) >= 0)


@pytest.mark.slow
def test_cli_toys(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["hypotest", "example:docs", "--calculator", "toys", "--ntoys", "300", "--seed", "4", "--json"])
    assert res.exit_code == 0, res.output
    payload = strict_json(res.stdout)
    assert payload["calculator"] == "toys" and payload["n_failed"] == 0
    assert payload["info"]["ntoys"] == 300 and payload["info"]["seed"] == 4
    assert "compile_seconds" in payload["info"]
    res = runner.invoke(main, ["hypotest", "example:docs", "--calculator", "toys", "--ntoys", "200", "--quiet"])
    assert res.exit_code == 0, res.output
    assert "failed toys: 0" in res.output and "compile" in res.output
    assert "fixed-POI fits not needed" in res.output  # qtilde's skipped twins are reported
    res = runner.invoke(main, ["limit", "example:docs", "--calculator", "toys", "--ntoys", "200", "--mus", "0.5:4:8", "--json"])
    assert res.exit_code == 0, res.output
    assert len(strict_json(res.stdout)["mus"]) == 8
    res = runner.invoke(main, ["hypotest", "example:docs", "--ntoys", "20"])
    assert res.exit_code != 0 and "need --calculator toys" in res.output


def test_retries_keep_the_lowest_converged_candidate():
    """Hard toys have several minima: of the restart candidates the lower converged one
    is kept, never a lower one that did not converge."""
    from gpufit.infer.toys import _lowest_converged

    def result(f, converged):
        f = np.asarray(f, float)
        return gpufit.FitResult(
            pars=np.repeat(f[:, None], 2, axis=1), twice_nll=f, converged=np.asarray(converged),
            status=np.where(converged, 0, 3), n_iter=np.ones(f.size, int), edm=np.zeros(f.size),
            parameter_names=["a", "b"], fixed=np.zeros(2, bool), by_minuit=np.zeros(f.size, bool),
        )

    newton = result([5.0, 7.0, 1.0, 9.0], [True, True, False, False])
    damped = result([6.0, 3.0, 4.0, 8.0], [True, True, True, False])
    best = _lowest_converged([newton, damped])
    assert best.twice_nll.tolist() == [5.0, 3.0, 4.0, 9.0]
    assert best.converged.tolist() == [True, True, True, False]
    assert best.pars[:, 0].tolist() == [5.0, 3.0, 4.0, 9.0]


@pytest.mark.slow
def test_a_kernel_folder_shares_the_traced_chunk_kernel(docs_ws, tmp_path, monkeypatch):
    """``kernel_dir``: the first calculator writes the chunk kernel (jax.export), a later
    one (a campaign's next job: nothing in memory) reads it instead of tracing, and both
    give the toys of a calculator without one, to the bit."""
    from gpufit.infer import toys

    model = docs_ws.model()
    data = docs_ws.data(model)

    def run(**kwargs):
        toys._COMPILED.clear()  # as in a new process
        return ToyCalculator(model, data, [1.0], ntoys=40, seed=5, chunk_size=32, progress=False, **kwargs).run()

    plain = run()
    first = run(kernel_dir=str(tmp_path))
    [written] = list(tmp_path.glob("toy-chunk-*.jax-export"))
    monkeypatch.setattr(toys.jax.export, "export", lambda *a, **k: pytest.fail("traced again"))
    again = run(kernel_dir=str(tmp_path))
    for r in (first, again):
        np.testing.assert_array_equal(r["teststat_sb"], plain["teststat_sb"])
        np.testing.assert_array_equal(r["teststat_b"], plain["teststat_b"])
    assert written.stat().st_size > 1000 and not list(tmp_path.glob("*.part"))


@pytest.mark.slow
def test_float32_toys_agree_with_float64_on_sbottom(sbottom_ws):
    """float32 toys on sbottom (same seed): none fail, and CLs, CLsb and CLb lie within
    the binomial error of float64's."""
    m64, m32 = sbottom_ws.model(), sbottom_ws.model(dtype="float32")
    data = sbottom_ws.data(m64)
    r64 = gpufit.hypotest(m64, data, 1.0, calculator="toys", ntoys=500, seed=3, progress=False)
    r32 = gpufit.hypotest(m32, data.astype(np.float32), 1.0, calculator="toys", ntoys=500, seed=3, progress=False)
    assert r32.n_failed == 0 and np.isfinite(r32.teststat_sb).all() and np.isfinite(r32.teststat_b).all()
    for key in ("cls_obs", "clsb_obs", "clb_obs"):
        assert _within(getattr(r32, key), getattr(r64, key), 500, 500), key
