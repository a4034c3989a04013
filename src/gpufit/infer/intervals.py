"""Upper limits on the POI from CLs scans, with the expected band."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
from scipy.optimize import toms748

from ..exceptions import InvalidArgument, LimitOutsideGrid
from .asymptotics import AsymptoticScan
from .hypotest import check_poi, normalize_calculator, split_toy_options, toy_info
from .test_statistics import normalize_test_stat
from .toys import ToyCalculator


@dataclasses.dataclass(frozen=True)
class UpperLimitResult:
    """Observed and expected (-2 ... +2 sigma) upper limits at CLs = ``level``.

    ``mus``, ``cls_obs`` [M] and ``cls_exp`` [M, 5] are the scan points behind them.
    ``observed_bound`` (and ``expected_bound``, 5 entries) is None where the limit is a
    crossing of the CLs curve inside the scanned range; ``"above"`` where the curve
    never drops below ``level`` (the limit is larger than the value given, the last
    point scanned) and ``"below"`` where it is already below at the first point (the
    limit is smaller than the value given).
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
    observed_bound: str | None = None
    expected_bound: tuple = (None,) * 5

    def to_dict(self) -> dict:
        return {
            "observed": self.observed,
            "expected": np.asarray(self.expected).tolist(),
            "observed_bound": self.observed_bound,
            "expected_bound": list(self.expected_bound),
            "mus": np.asarray(self.mus).tolist(),
            "cls_obs": np.asarray(self.cls_obs).tolist(),
            "cls_exp": np.asarray(self.cls_exp).tolist(),
            "level": self.level,
            "test_stat": self.test_stat,
            "calculator": self.calculator,
            "n_failed": self.n_failed,
            **({"info": self.info} if self.info is not None else {}),
        }

    @classmethod
    def from_dict(cls, d: dict, **overrides) -> "UpperLimitResult":
        """The result back from :meth:`to_dict`'s keys (also those of a merged campaign,
        ``gpufit.campaign.merge``, which has no ``calculator``: toys)."""
        fields = dict(
            observed=d["observed"], expected=np.asarray(d["expected"]), mus=np.asarray(d["mus"]),
            cls_obs=np.asarray(d["cls_obs"]), cls_exp=np.asarray(d["cls_exp"]), level=d["level"],
            test_stat=d["test_stat"], calculator=d.get("calculator", "toys"), n_failed=d.get("n_failed", 0),
            info=d.get("info"), observed_bound=d.get("observed_bound"),
            expected_bound=tuple(d.get("expected_bound", (None,) * 5)),
        )
        return cls(**(fields | overrides))


def check_level(level) -> float:
    """The CLs level as a float in (0, 1) (0.05 for a 95% CL limit)."""
    value = float(level)
    if not 0.0 < value < 1.0:
        raise InvalidArgument(f"level is the CLs threshold, between 0 and 1 (0.05 = 95% CL), got {level!r}")
    return value


def check_grid(mus, poi_range=None, name: str = "mus") -> np.ndarray:
    """POI values [M] of a limit scan: finite, strictly increasing, at least two, and
    inside ``poi_range`` = (low, high) when given."""
    grid = np.asarray(mus, dtype=float)
    if grid.ndim != 1 or grid.size < 2:
        raise InvalidArgument(f"{name} needs at least two POI values to bracket a limit, got {grid.size}")
    if not np.all(np.isfinite(grid)):
        raise InvalidArgument(f"{name} must be finite numbers, got {grid.tolist()}")
    if np.any(np.diff(grid) <= 0):
        raise InvalidArgument(f"{name} must increase strictly (START < STOP), got {grid.tolist()}")
    if poi_range is not None:
        low, high = poi_range
        if grid[0] < low or grid[-1] > high:
            raise InvalidArgument(
                f"{name} from {grid[0]:g} to {grid[-1]:g} lie outside the POI's bounds [{low:g}, {high:g}]; "
                "scan inside them"
            )
    return grid


def crossing(mus, values, level, interpolate: str = "first") -> tuple[float, str | None]:
    """Where a CLs curve [M] over ``mus`` [M] crosses ``level``: ``(limit, bound)``.

    ``bound`` is None for a crossing inside the grid, ``"above"`` (limit = the last mu)
    when the curve never drops below ``level``, ``"below"`` (limit = the first mu) when
    it starts below. ``interpolate="first"`` interpolates linearly where the curve first
    drops below ``level`` (robust to toy noise that makes a curve non-monotonic);
    ``"pyhf"`` interpolates the whole curve as pyhf's ``linear_grid_scan`` does.
    """
    mus, values = np.asarray(mus, dtype=float), np.asarray(values, dtype=float)
    below = np.flatnonzero(values < level)
    if below.size == 0:
        return float(mus[-1]), "above"
    i = below[0]
    if i == 0:
        return float(mus[0]), "below"
    if interpolate == "pyhf":
        return float(np.interp(level, values[::-1], mus[::-1])), None
    x0, x1, y0, y1 = mus[i - 1], mus[i], values[i - 1], values[i]
    return float(x0 + (level - y0) * (x1 - x0) / (y1 - y0)), None


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
    level = check_level(level)
    toy_options, fit_options = split_toy_options(calculator, fit_options)
    poi_range = check_poi(model, fixed, bounds)
    if mus is not None:
        mus = check_grid(mus, poi_range)
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
        values = curves(mus)
        limits = [crossing(mus, values[:, j], level, interpolate="pyhf") for j in range(6)]
    else:
        low, high = _default_scan_range(poi_range)
        grid = np.linspace(low, high, 11)
        values = curves(grid)
        while np.any(values[-1] > level) and high < 1e6:  # widen until every curve crosses
            high *= 2.0
            grid = np.linspace(low, high, 11)
            values = curves(grid)
        limits = []
        for j in range(6):
            limit, bound = crossing(grid, values[:, j], level)
            if bound is None:  # refine the bracketing grid interval with TOMS 748
                i = np.flatnonzero(values[:, j] < level)[0]
                f = lambda x, j=j: curves([x])[0, j] - level  # noqa: E731
                limit = float(toms748(f, grid[i - 1], grid[i], k=2, xtol=2e-12, rtol=rtol))
            limits.append((limit, bound))
        mus = np.array(sorted(cache))
        values = curves(mus)
    return _limit_result(limits, mus, values, level, test_stat, calculator, scan.fits_failed)


def toy_limit(mus, values, level, test_stat, n_failed=0, info=None, warn=True) -> UpperLimitResult:
    """The limits of a toy scan, from its CLs values [M, 6] (observed, then -2..+2 sigma)
    at the POI values ``mus`` [M]: where each curve crosses ``level``, interpolated
    between grid points (:func:`crossing`; a toy curve has no values between them). The
    one rule of :func:`upper_limit` with toys and of ``gpufit.campaign.merge``."""
    limits = [crossing(mus, values[:, j], level) for j in range(6)]
    return _limit_result(limits, mus, values, level, test_stat, "toys", n_failed, info, warn=warn)


def _limit_result(limits, mus, values, level, test_stat, calculator, n_failed, info=None,
                  warn=True) -> UpperLimitResult:
    """The result from ``limits`` [6] of ``(limit, bound)`` (observed, then -2..+2 sigma)
    and the scan's CLs values [M, 6]; warns when a limit is a bound of the grid."""
    names = ["observed", "-2 sigma", "-1 sigma", "median expected", "+1 sigma", "+2 sigma"]
    loose = [f"{name} {'>' if bound == 'above' else '<'} {value:g}"
             for name, (value, bound) in zip(names, limits) if bound]
    if loose and warn:
        warnings.warn(LimitOutsideGrid(
            f"CLs does not cross {level:g} inside the scanned POI values ({mus[0]:g} to {mus[-1]:g}); "
            f"these limits are bounds, not crossings: {', '.join(loose)}. Extend the scan (mus=) to bracket them"
        ), stacklevel=3)
    return UpperLimitResult(
        observed=limits[0][0],
        expected=np.asarray([v for v, _ in limits[1:]]),
        mus=mus,
        cls_obs=values[:, 0],
        cls_exp=values[:, 1:],
        level=level,
        test_stat=test_stat,
        calculator=calculator,
        n_failed=n_failed,
        info=info,
        observed_bound=limits[0][1],
        expected_bound=tuple(b for _, b in limits[1:]),
    )


def _default_scan_range(poi_range) -> tuple[float, float]:
    """Where a limit scan without ``mus`` starts and may end: the POI's range, from 0 at
    the lowest (an upper limit on a signal strength is sought among mu >= 0)."""
    return max(poi_range[0], 0.0), poi_range[1]


def toy_grid(model, data, level=0.05, test_stat="qtilde", points=11, bounds=None, **fit_options) -> np.ndarray:
    """Default grid of a toy scan: from the POI's lower bound (at least 0) to 1.5 times
    the largest asymptotic limit (observed or +2 sigma expected)."""
    low, high = _default_scan_range(check_poi(model, fit_options.get("fixed"), bounds))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LimitOutsideGrid)  # a bound still sizes the grid
        asy = upper_limit(model, data, level=level, test_stat=test_stat, bounds=bounds, **fit_options)
    top = 1.5 * max(asy.observed, *asy.expected)
    return np.linspace(low, max(min(top, high), low + 1e-3), points)


def _toy_upper_limit(model, data, mus, level, test_stat, toy_options, **fit_options) -> UpperLimitResult:
    if mus is None:
        mus = toy_grid(model, data, level, test_stat, **fit_options)
    mus = np.asarray(mus, dtype=float)
    calc = ToyCalculator(model, data, mus, test_stat, **toy_options, **fit_options)
    r = calc.run()
    values = np.column_stack([r["cls_obs"], r["cls_exp"]])
    return toy_limit(mus, values, level, test_stat, int(r["n_failed"]), toy_info(calc, r))
