"""``gpufit.hypotest``: CLs, CLsb, CLb and the expected band at one POI value."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.stats import norm

from ..exceptions import InvalidArgument, InvalidModel
from ..optimize import resolve_bounds
from .asymptotics import AsymptoticScan
from .test_statistics import normalize_test_stat
from .toys import ToyCalculator

CALCULATORS = ("asymptotic", "toys")
TOY_OPTIONS = ("ntoys", "seed", "toy_pars", "chunk_size", "max_failed", "progress", "toy_tol", "all_fixed_fits")
_CALCULATOR_ALIASES = {"asymptotics": "asymptotic", "toybased": "toys"}


def normalize_calculator(name: str) -> str:
    name = _CALCULATOR_ALIASES.get(name, name)
    if name not in CALCULATORS:
        raise InvalidArgument(f"unknown calculator {name!r}; choose one of {', '.join(CALCULATORS)}")
    return name


def split_toy_options(calculator: str, options: dict) -> tuple[dict, dict]:
    """Separate the toy calculator's options from the fit options; refuse toy options
    for the asymptotic calculator (they would be silently ignored)."""
    toy = {k: options.pop(k) for k in TOY_OPTIONS if k in options}
    if toy and calculator != "toys":
        raise InvalidArgument(f"{', '.join(sorted(toy))} only apply to calculator='toys'")
    return toy, options


@dataclasses.dataclass(frozen=True)
class HypoTestResult:
    """A hypothesis test at POI value ``mu``.

    For ``test_stat="q0"`` the CLs fields hold p-values as pyhf's ``hypotest`` returns
    them: ``cls_obs`` is p0 (= ``clsb_obs``) and ``cls_exp`` the expected p0 band.

    Attributes:
        cls_obs, clsb_obs, clb_obs: observed p-values.
        cls_exp: 5 expected CLs values for -2, -1, 0, +1, +2 sigma (pyhf's order).
        clsb_exp, clb_exp: the same for CLsb and CLb.
        teststat: the observed test statistic (q, qtilde or q0), and ``teststat_asimov``.
        teststat_sb, teststat_b: toy distributions [ntoys] (None for asymptotics); NaN
            where a toy's fit failed after every retry.
        n_failed: toys whose fits failed after every retry (toys calculator), or fits
            to the observed and Asimov data that did not converge (asymptotic).
        cls_obs_err, clsb_obs_err, clb_obs_err: binomial errors of the toy p-values.
        info: toy book-keeping (ntoys, seed, toy_pars, retries, compile and run seconds).
    """

    mu: float
    test_stat: str
    calculator: str
    cls_obs: float
    clsb_obs: float
    clb_obs: float
    cls_exp: np.ndarray
    clsb_exp: np.ndarray
    clb_exp: np.ndarray
    teststat: float
    teststat_asimov: float | None = None
    teststat_sb: np.ndarray | None = None
    teststat_b: np.ndarray | None = None
    n_failed: int = 0
    cls_obs_err: float | None = None
    clsb_obs_err: float | None = None
    clb_obs_err: float | None = None
    info: dict | None = None

    def _discovery(self):
        if self.test_stat != "q0":
            raise AttributeError(f"p0 and Z belong to a discovery test (test_stat='q0'), not {self.test_stat!r}")

    @property
    def p0_obs(self) -> float:
        """Observed p-value of the background-only hypothesis (q0 only)."""
        self._discovery()
        return float(self.clsb_obs)

    @property
    def z_obs(self) -> float:
        """Observed significance Z = Phi^-1(1 - p0), in sigma (q0 only)."""
        return float(norm.isf(self.p0_obs))

    @property
    def p0_exp(self) -> np.ndarray:
        """Expected p0 [5] for -2 ... +2 sigma (q0 only)."""
        self._discovery()
        return np.asarray(self.clsb_exp, dtype=float)

    @property
    def z_exp(self) -> np.ndarray:
        """Expected significances [5] (q0 only)."""
        return norm.isf(self.p0_exp)

    def to_dict(self) -> dict:
        out = {
            "mu": self.mu,
            "test_stat": self.test_stat,
            "calculator": self.calculator,
            "cls_obs": self.cls_obs,
            "clsb_obs": self.clsb_obs,
            "clb_obs": self.clb_obs,
            "cls_exp": np.asarray(self.cls_exp).tolist(),
            "clsb_exp": np.asarray(self.clsb_exp).tolist(),
            "clb_exp": np.asarray(self.clb_exp).tolist(),
            "teststat": self.teststat,
            "teststat_asimov": self.teststat_asimov,
            "n_failed": self.n_failed,
        }
        if self.test_stat == "q0":  # discovery: p0 and its significance, as pyhf users read them
            out.update(p0_obs=self.p0_obs, z_obs=self.z_obs, p0_exp=self.p0_exp.tolist(), z_exp=self.z_exp.tolist())
        if self.calculator == "toys":
            out.update(
                cls_obs_err=self.cls_obs_err, clsb_obs_err=self.clsb_obs_err, clb_obs_err=self.clb_obs_err,
                info=self.info,
            )
        return out


def check_poi(model, fixed=None, bounds=None, mus=()) -> tuple[float, float]:
    """The POI's (lower, upper) bound in use, after checking that the model has a free
    POI and that every tested value in ``mus`` lies within those bounds (as pyhf does)."""
    poi = model.require_poi()
    if model.fixed_parameters()[poi] or (fixed and model.poi_name in fixed):
        raise InvalidModel(
            f"the POI {model.poi_name!r} is fixed, which makes a profile-likelihood test "
            "impossible; unfix it in the measurement (parameters: fixed) or drop it from fixed="
        )
    low, high = (float(v) for v in resolve_bounds(model, bounds)[poi])
    for mu in np.atleast_1d(np.asarray(mus, dtype=float)):
        if not low <= mu <= high:
            raise InvalidArgument(
                f"{model.poi_name} = {mu:g} lies outside the POI's bounds [{low:g}, {high:g}]; "
                f"test a value inside them, or widen them with bounds={{{model.poi_name!r}: (low, high)}}"
            )
    return low, high


def hypotest(
    model,
    data,
    mu: float = 1.0,
    test_stat: str = "qtilde",
    calculator: str = "asymptotic",
    *,
    init=None,
    bounds=None,
    fixed=None,
    **fit_options,
) -> HypoTestResult:
    """Test the signal strength ``mu`` on one observed dataset [N + A].

    Args:
        test_stat: ``"qtilde"`` (default, POI >= 0), ``"q"`` or ``"q0"``; the toys
            calculator also takes ``"t"`` and ``"ttilde"``.
        calculator: ``"asymptotic"`` (``"asymptotics"`` also accepted) or ``"toys"``.
        init, bounds, fixed: as for :func:`gpufit.fit`.
        ntoys, seed, toy_pars, chunk_size, max_failed, progress, toy_tol, all_fixed_fits: options of
            the toys calculator (:class:`gpufit.infer.toys.ToyCalculator`); by default
            2000 toys per hypothesis, seed 0, ``toy_pars="profiled"``.
    """
    test_stat = normalize_test_stat(test_stat)
    calculator = normalize_calculator(calculator)
    toy_options, fit_options = split_toy_options(calculator, fit_options)
    check_poi(model, fixed, bounds, mus=() if test_stat == "q0" else [mu])
    data = np.asarray(data, dtype=model.dtype)
    if data.ndim != 1:
        raise InvalidArgument(f"hypotest takes one observed dataset [N + A], got shape {data.shape}")
    if calculator == "toys":
        return _toy_hypotest(model, data, mu, test_stat, toy_options, init=init, bounds=bounds, fixed=fixed,
                             **fit_options)
    scan = AsymptoticScan(model, data, test_stat, init=init, bounds=bounds, fixed=fixed, **fit_options)
    r = scan.evaluate([mu])
    return _result(r, test_stat, calculator, teststat=float(r["q_obs"][0]),
                   teststat_asimov=float(r["q_asimov"][0]), n_failed=scan.fits_failed)


def cls_fields(test_stat: str, r: dict) -> dict:
    """What a hypothesis test reports as CLs, from a p-value dict ``r`` (asymptotic or
    toys): ``cls_obs``, ``cls_exp`` and, where ``r`` has errors, ``cls_obs_err``. For q0
    they hold p0 (CLsb) and its band, as pyhf's ``hypotest`` returns them; the one place
    of that rule (``gpufit hypotest`` and ``gpufit campaign merge`` alike)."""
    key = "clsb" if test_stat == "q0" else "cls"
    return {name: r[f"{key}{suffix}"] for name, suffix in
            (("cls_obs", "_obs"), ("cls_exp", "_exp"), ("cls_obs_err", "_obs_err")) if f"{key}{suffix}" in r}


def _result(r: dict, test_stat: str, calculator: str, **extra) -> HypoTestResult:
    """The result at the first mu of a calculator's p-value dict (arrays [M], bands [M, 5])."""
    cls = cls_fields(test_stat, r)
    if "cls_obs_err" in cls:
        extra["cls_obs_err"] = float(cls["cls_obs_err"][0])
    return HypoTestResult(
        mu=float(r["mu"][0]),
        test_stat=test_stat,
        calculator=calculator,
        cls_obs=float(cls["cls_obs"][0]),
        clsb_obs=float(r["clsb_obs"][0]),
        clb_obs=float(r["clb_obs"][0]),
        cls_exp=np.asarray(cls["cls_exp"][0]),
        clsb_exp=np.asarray(r["clsb_exp"][0]),
        clb_exp=np.asarray(r["clb_exp"][0]),
        **extra,
    )


def _toy_hypotest(model, data, mu, test_stat, toy_options, **fit_options) -> HypoTestResult:
    calc = ToyCalculator(model, data, [mu], test_stat, **toy_options, **fit_options)
    r = calc.run()
    return _result(
        r, test_stat, "toys",
        teststat=float(r["teststat_obs"][0]),
        teststat_sb=r["teststat_sb"][0],
        teststat_b=r["teststat_b"][0],
        n_failed=int(r["n_failed"]),
        clsb_obs_err=float(r["clsb_obs_err"][0]),
        clb_obs_err=float(r["clb_obs_err"][0]),
        info=toy_info(calc, r),
    )


def toy_info(calc, r) -> dict:
    """What a toy run did: counts, retries and seconds (for results and the CLI)."""
    return {
        "ntoys": calc.ntoys,
        "seed": calc.seed,
        "toy_pars": calc.toy_pars,
        "chunk_size": calc.chunk_size,
        "n_failed_observed_fits": calc.n_failed_observed,
        **r["stats"],
    }
