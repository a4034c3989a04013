"""``gpufit.hypotest``: CLs, CLsb, CLb and the expected band at one POI value."""

from __future__ import annotations

import dataclasses

import numpy as np

from ..exceptions import InvalidModel
from .asymptotics import AsymptoticScan
from .test_statistics import normalize_test_stat

CALCULATORS = ("asymptotic", "toys")
_CALCULATOR_ALIASES = {"asymptotics": "asymptotic", "toybased": "toys"}


def normalize_calculator(name: str) -> str:
    name = _CALCULATOR_ALIASES.get(name, name)
    if name not in CALCULATORS:
        raise ValueError(f"unknown calculator {name!r}; choose one of {', '.join(CALCULATORS)}")
    if name == "toys":
        raise NotImplementedError(
            "calculator='toys' is not available in this version of gpufit; "
            "use calculator='asymptotic'"
        )
    return name


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
        teststat_sb, teststat_b: toy distributions (None for asymptotics).
        n_failed: fits that did not converge (after retries).
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
        return out


def _check_poi(model, fixed) -> None:
    model.require_poi()
    if model.fixed_parameters()[model.poi_index] or (fixed and model.poi_name in fixed):
        raise InvalidModel(
            f"the POI {model.poi_name!r} is fixed, which makes a profile-likelihood test "
            "impossible; unfix it in the measurement (parameters: fixed) or drop it from fixed="
        )


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
        test_stat: ``"qtilde"`` (default, POI >= 0), ``"q"`` or ``"q0"``.
        calculator: ``"asymptotic"`` (``"asymptotics"`` also accepted).
        init, bounds, fixed: as for :func:`gpufit.fit`.
    """
    test_stat = normalize_test_stat(test_stat)
    calculator = normalize_calculator(calculator)
    _check_poi(model, fixed)
    data = np.asarray(data, dtype=model.dtype)
    if data.ndim != 1:
        raise ValueError(f"hypotest takes one observed dataset [N + A], got shape {data.shape}")
    scan = AsymptoticScan(model, data, test_stat, init=init, bounds=bounds, fixed=fixed, **fit_options)
    r = scan.evaluate([mu])
    q0 = test_stat == "q0"
    return HypoTestResult(
        mu=float(r["mu"][0]),
        test_stat=test_stat,
        calculator=calculator,
        cls_obs=float(r["clsb_obs"][0] if q0 else r["cls_obs"][0]),
        clsb_obs=float(r["clsb_obs"][0]),
        clb_obs=float(r["clb_obs"][0]),
        cls_exp=np.asarray(r["clsb_exp"][0] if q0 else r["cls_exp"][0]),
        clsb_exp=np.asarray(r["clsb_exp"][0]),
        clb_exp=np.asarray(r["clb_exp"][0]),
        teststat=float(r["q_obs"][0]),
        teststat_asimov=float(r["q_asimov"][0]),
        n_failed=scan.fits_failed,
    )
