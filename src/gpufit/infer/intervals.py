"""Upper limits on the POI from CLs scans, with the expected band."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import toms748

from .asymptotics import AsymptoticScan
from .hypotest import _check_poi, normalize_calculator
from .test_statistics import normalize_test_stat


@dataclasses.dataclass(frozen=True)
class UpperLimitResult:
    """Observed and expected (-2 ... +2 sigma) upper limits at CLs = ``level``.

    ``mus``, ``cls_obs`` [M] and ``cls_exp`` [M, 5] are the scan points behind them.
    """

    observed: float
    expected: np.ndarray
    mus: np.ndarray
    cls_obs: np.ndarray
    cls_exp: np.ndarray
    level: float
    test_stat: str
    calculator: str
    n_failed: int = 0

    def to_dict(self) -> dict:
        return {
            "observed": self.observed,
            "expected": np.asarray(self.expected).tolist(),
            "mus": np.asarray(self.mus).tolist(),
            "cls_obs": np.asarray(self.cls_obs).tolist(),
            "cls_exp": np.asarray(self.cls_exp).tolist(),
            "level": self.level,
            "test_stat": self.test_stat,
            "calculator": self.calculator,
            "n_failed": self.n_failed,
        }


def _interpolated_crossing(mus, values, level) -> float:
    """Where a (decreasing) CLs curve crosses ``level``, by linear interpolation as pyhf."""
    return float(np.interp(level, values[::-1], mus[::-1]))


def upper_limit(
    model,
    data,
    mus=None,
    calculator: str = "asymptotic",
    level: float = 0.05,
    test_stat: str = "qtilde",
    *,
    rtol: float = 1e-6,
    init=None,
    bounds=None,
    fixed=None,
    **fit_options,
) -> UpperLimitResult:
    """Upper limits on the POI at CLs = ``level`` (95% CL by default).

    With ``mus`` (a grid), CLs is computed at every point in one batch and the limits
    are interpolated linearly, as pyhf's ``linear_grid_scan``. Without, each of the six
    curves (observed, 5 expected) is bracketed and solved with TOMS 748 (as pyhf's
    ``toms748_scan``), every evaluation reusing the free fits.
    """
    test_stat = normalize_test_stat(test_stat)
    calculator = normalize_calculator(calculator)
    _check_poi(model, fixed)
    scan = AsymptoticScan(model, data, test_stat, init=init, bounds=bounds, fixed=fixed, **fit_options)
    cache: dict[float, np.ndarray] = {}

    def curves(points) -> np.ndarray:
        todo = [float(p) for p in np.atleast_1d(points) if float(p) not in cache]
        if todo:
            r = scan.evaluate(todo)
            for i, p in enumerate(todo):
                cache[p] = np.concatenate([[r["cls_obs"][i]], r["cls_exp"][i]])
        return np.array([cache[float(p)] for p in np.atleast_1d(points)])

    if mus is not None:
        mus = np.asarray(mus, dtype=float)
        values = curves(mus)
        limits = [_interpolated_crossing(mus, values[:, j], level) for j in range(6)]
    else:
        low, high = model.suggested_bounds()[model.poi_index]
        if isinstance(bounds, dict) and model.poi_name in bounds:
            low, high = bounds[model.poi_name]
        low = max(float(low), 0.0)
        high = float(high)
        grid = np.linspace(low, high, 11)
        values = curves(grid)
        while np.any(values[-1] > level) and high < 1e6:  # widen until every curve crosses
            high *= 2.0
            grid = np.linspace(low, high, 11)
            values = curves(grid)
        limits = []
        for j in range(6):
            below = np.flatnonzero(values[:, j] < level)
            if below.size == 0:
                limits.append(float("nan"))  # never excluded within the POI bounds
            elif below[0] == 0:
                limits.append(float(grid[0]))  # excluded everywhere
            else:
                a, b = grid[below[0] - 1], grid[below[0]]
                f = lambda x, j=j: curves([x])[0, j] - level  # noqa: E731
                limits.append(float(toms748(f, a, b, k=2, xtol=2e-12, rtol=rtol)))
        mus = np.array(sorted(cache))
        values = curves(mus)
    return UpperLimitResult(
        observed=limits[0],
        expected=np.asarray(limits[1:]),
        mus=mus,
        cls_obs=values[:, 0],
        cls_exp=values[:, 1:],
        level=level,
        test_stat=test_stat,
        calculator=calculator,
        n_failed=scan.fits_failed,
    )
