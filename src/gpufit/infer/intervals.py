"""Upper limits on the POI from CLs scans, with the expected band."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import toms748

from .asymptotics import AsymptoticScan
from .hypotest import _check_poi, normalize_calculator, split_toy_options, toy_info
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
    info: dict | None = None

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
            **({"info": self.info} if self.info is not None else {}),
        }


def first_crossing(mus, values, level) -> float:
    """Where a CLs curve first drops below ``level``, interpolated linearly between the
    two grid points around it (robust to the toy noise that makes a curve non-monotonic);
    NaN if it never does, ``mus[0]`` if it starts below."""
    below = np.flatnonzero(np.asarray(values) < level)
    if below.size == 0:
        return float("nan")
    i = below[0]
    if i == 0:
        return float(mus[0])
    x0, x1, y0, y1 = mus[i - 1], mus[i], values[i - 1], values[i]
    return float(x0 + (level - y0) * (x1 - x0) / (y1 - y0))


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

    ``calculator="toys"`` runs the toys of every grid point as one batch (the toy
    options of :func:`gpufit.hypotest` apply, ``ntoys`` per hypothesis and point) and
    interpolates each curve where it first crosses ``level``. Without ``mus`` the grid
    is 11 points from the POI's lower bound to 1.5 times the largest asymptotic limit.
    """
    test_stat = normalize_test_stat(test_stat)
    calculator = normalize_calculator(calculator)
    toy_options, fit_options = split_toy_options(calculator, fit_options)
    _check_poi(model, fixed)
    if calculator == "toys":
        return _toy_upper_limit(model, data, mus, level, test_stat, toy_options,
                                init=init, bounds=bounds, fixed=fixed, **fit_options)
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
        low, high = _poi_range(model, bounds)
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
    return _limit_result(limits, mus, values, level, test_stat, calculator, scan.fits_failed)


def _poi_range(model, bounds) -> tuple[float, float]:
    """The POI's (lower bound, at least 0; upper bound), from ``bounds={name: ...}`` or the model."""
    low, high = model.suggested_bounds()[model.poi_index]
    if isinstance(bounds, dict) and model.poi_name in bounds:
        low, high = bounds[model.poi_name]
    return max(float(low), 0.0), float(high)


def _limit_result(limits, mus, values, level, test_stat, calculator, n_failed, info=None) -> UpperLimitResult:
    """Limits [6] (observed, then -2..+2 sigma) and the scan's CLs values [M, 6]."""
    return UpperLimitResult(
        observed=limits[0],
        expected=np.asarray(limits[1:]),
        mus=mus,
        cls_obs=values[:, 0],
        cls_exp=values[:, 1:],
        level=level,
        test_stat=test_stat,
        calculator=calculator,
        n_failed=n_failed,
        info=info,
    )


def toy_grid(model, data, level=0.05, test_stat="qtilde", points=11, bounds=None, **fit_options) -> np.ndarray:
    """Default grid of a toy scan: from the POI's lower bound (at least 0) to 1.5 times
    the largest asymptotic limit (observed or +2 sigma expected)."""
    asy = upper_limit(model, data, level=level, test_stat=test_stat, bounds=bounds, **fit_options)
    finite = [v for v in [asy.observed, *asy.expected] if np.isfinite(v)]
    low, _ = _poi_range(model, bounds)
    top = 1.5 * max(finite) if finite else model.suggested_bounds()[model.poi_index, 1]
    return np.linspace(low, max(top, low + 1e-3), points)


def _toy_upper_limit(model, data, mus, level, test_stat, toy_options, **fit_options) -> UpperLimitResult:
    from .toys import ToyCalculator

    if mus is None:
        mus = toy_grid(model, data, level, test_stat, **fit_options)
    mus = np.asarray(mus, dtype=float)
    calc = ToyCalculator(model, data, mus, test_stat, **toy_options, **fit_options)
    r = calc.run()
    values = np.column_stack([r["cls_obs"], r["cls_exp"]])
    limits = [first_crossing(mus, values[:, j], level) for j in range(6)]
    return _limit_result(limits, mus, values, level, test_stat, "toys", int(r["n_failed"]), toy_info(calc, r))
