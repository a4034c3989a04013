"""``gpufit.scan``: every signal point of a pyhf patchset, CLs at one mu and upper limits.

The points are compiled once: laid out in the union of their parameters and their
tables padded to one shape (:func:`gpufit.model.pad_models`), so one compiled solver
serves the grid. With the
asymptotic calculator the fits of all points run together, in rounds
(:func:`gpufit.optimize.fit_points`): the free and background-only fits, the Asimov
data, the tests at ``mu``, then the six limit curves (observed and the expected band)
of every point are solved side by side, each round fitting every point's next POI
values at once. With toys each point runs :func:`gpufit.hypotest` and
:func:`gpufit.upper_limit` in turn, on the shared compiled kernels.
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import io
import json
import os
import time
import warnings

import jax
import numpy as np
from scipy.stats import norm

from .. import _device
from ..exceptions import GpufitError, InvalidArgument, LimitOutsideGrid
from ..model import families, pad_models, union_data
from ..optimize import fit_points
from ..workspace import Workspace, load_patchset
from .asymptotics import N_SIGMA, pvalues
from .hypotest import check_poi, hypotest, normalize_calculator, split_toy_options
from .intervals import check_grid, check_level, crossing, upper_limit
from .test_statistics import from_fits, normalize_test_stat

ROW_KEYS = ("name", "values", "cls_obs", "cls_exp", "upper_limit_obs", "upper_limit_exp", "n_failed")
_RTOL = 1e-7  # a limit is solved when its bracket is this narrow (relative) or |residual| below it
_MAX_ROUNDS = 40
_MU_MAX = 1e6


@dataclasses.dataclass(frozen=True)
class ScanResult:
    """One row per signal point (``points``): ``name``, ``values`` (the patchset's
    labels, e.g. m1 and m2), ``cls_obs`` and ``cls_exp`` (5, -2 ... +2 sigma) at ``mu``,
    ``upper_limit_obs`` and ``upper_limit_exp`` (5) at CLs = ``level``, ``n_failed``,
    ``clsb_obs``, ``clb_obs``, ``limit_bounds`` (None, or which limits are bounds, not
    crossings) and ``error`` (None, or why the point has no numbers)."""

    points: list
    labels: list
    calculator: str
    test_stat: str
    mu: float
    level: float
    device: str
    info: dict

    def to_dict(self) -> dict:
        return {"labels": list(self.labels), "calculator": self.calculator, "test_stat": self.test_stat,
                "mu": self.mu, "level": self.level, "device": self.device, "info": self.info,
                "points": [dict(row) for row in self.points]}

    def to_csv(self) -> str:
        """The rows as CSV: one column per label and per number (``cls_exp_-2`` ...)."""
        bands = ["-2", "-1", "0", "+1", "+2"]
        header = (["name"] + list(self.labels) + ["cls_obs"] + [f"cls_exp_{b}" for b in bands]
                  + ["upper_limit_obs"] + [f"upper_limit_exp_{b}" for b in bands] + ["n_failed", "error"])
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(header)
        for row in self.points:
            writer.writerow([row["name"], *row["values"], _num(row["cls_obs"]), *map(_num, row["cls_exp"]),
                             _num(row["upper_limit_obs"]), *map(_num, row["upper_limit_exp"]), row["n_failed"],
                             row["error"] or ""])
        return out.getvalue()

    def write(self, directory, command: str | None = None) -> dict:
        """Write ``scan.json`` and ``scan.csv`` into ``directory`` (made if missing);
        returns their paths. ``command``: the command line that computed the rows,
        recorded in ``scan.json``."""
        os.makedirs(directory, exist_ok=True)
        paths = {"json": os.path.join(directory, "scan.json"), "csv": os.path.join(directory, "scan.csv")}
        with open(paths["json"], "w") as handle:
            json.dump(({"command": command} if command else {}) | self.to_dict(), handle, indent=1)
        with open(paths["csv"], "w", newline="") as handle:
            handle.write(self.to_csv())
        return paths

    @classmethod
    def from_dict(cls, d: dict) -> "ScanResult":
        return cls(points=d["points"], labels=d["labels"], calculator=d["calculator"], test_stat=d["test_stat"],
                   mu=d["mu"], level=d["level"], device=d["device"], info=d.get("info", {}))


def _finite(value):
    """A row's number, or None where it is not finite (strict JSON has no NaN)."""
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def _num(value):
    return "" if value is None else repr(float(value))


def select_patches(patchset, patches=None) -> list[str]:
    """Names of the patches a scan runs: all, or those matching ``patches`` (a glob such
    as ``"C1N2_Wh_hbb_7*"`` or a list of names and globs)."""
    names = [p.name for p in patchset.patches]
    if patches is None:
        return names
    wanted = [patches] if isinstance(patches, str) else list(patches)
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, w) for w in wanted)]
    if not chosen:
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise InvalidArgument(f"no patch of the patchset matches {', '.join(wanted)}; its patches are {shown}")
    return chosen


def scan(workspace, patchset, patches=None, calculator: str = "asymptotic", mu: float = 1.0, level: float = 0.05,
         test_stat: str = "qtilde", mus=None, *, measurement: str | None = None, modifier_settings=None,
         dtype: str = "float64", workers: int | None = 1, **options) -> ScanResult:
    """CLs at ``mu`` and upper limits on the POI for every signal point of a patchset.

    Args:
        workspace: the background-only workspace (a path or :class:`gpufit.Workspace`).
        patchset: the pyhf patchset (path, dict or :class:`pyhf.PatchSet`).
        patches: a glob or list of names/globs (default: every patch).
        calculator: ``"asymptotic"`` (all points fitted together) or ``"toys"`` (the
            toy options of :func:`gpufit.hypotest` apply, per point).
        mu, level, test_stat: the tested POI value, the CLs threshold of the limits
            (0.05: 95% CL) and the statistic (``qtilde`` or ``q``).
        mus: a grid of POI values for the limits, interpolated as
            :func:`gpufit.upper_limit` does with ``mus`` (default: each limit solved
            to 1e-7; toys: the default grid of ``upper_limit``).
        workers: processes that build the points' models (None: from the CPUs;
            :meth:`gpufit.Workspace.signal_points`, whose note on Python's
            ``__main__`` guard applies).
        options: the toy options of :func:`gpufit.hypotest` (toys: per point and
            hypothesis); the fit options ``tol`` and ``maxiter``.

    Returns:
        :class:`ScanResult`; a point whose model or fits fail is a row with its
        ``error``, not an exception.
    """
    calculator = normalize_calculator(calculator)
    test_stat = normalize_test_stat(test_stat)
    if test_stat not in ("qtilde", "q"):
        raise InvalidArgument(f"a scan sets upper limits: test_stat is qtilde or q, not {test_stat!r}")
    level = check_level(level)
    mu = float(mu)
    toy_options, fit_options = split_toy_options(calculator, dict(options))
    unknown = set(fit_options) - {"tol", "maxiter"}
    if unknown:
        raise InvalidArgument(f"scan takes no option {', '.join(sorted(unknown))}; fit options: tol, maxiter")
    ws = workspace if isinstance(workspace, Workspace) else Workspace.load(workspace)
    if not hasattr(patchset, "patches"):
        patchset = load_patchset(patchset)
    names = select_patches(patchset, patches)
    if mus is not None:
        mus = check_grid(mus)
    labels = list(patchset.labels)

    started = time.perf_counter()
    rows, built = [], []
    for patch, model, data in ws.signal_points(patchset, names, measurement=measurement, workers=workers,
                                                modifier_settings=modifier_settings, dtype=dtype):
        row = _empty_row(patch.name, list(patch.values))
        rows.append(row)
        if isinstance(model, GpufitError):
            row["error"] = f"{type(model).__name__}: {model}"
            continue
        try:
            check_poi(model, mus=[mu] if mus is None else [mu, *mus])
        except GpufitError as err:
            row["error"] = f"{type(err).__name__}: {err}"
            continue
        built.append((row, model, data))

    # one compiled shape for the points, in the union of their parameters (more only
    # where points differ in interpolation codes, bins or a parameter's constraint)
    groups = families([model for _, model, _ in built])
    info = {"n_points": len(rows), "n_shapes": len(groups), "build_seconds": time.perf_counter() - started,
            "fits": 0, "rounds": 0}
    for indices, layout in groups:
        family = [built[i] for i in indices]
        stacked, padded = pad_models([model for _, model, _ in family], layout=layout)
        data = np.stack([union_data(model, d) for model, (_, _, d) in zip(padded, family)])
        if calculator == "asymptotic":
            results = _asymptotic(stacked, padded, data, mu, level, test_stat, info, mus, **fit_options)
        else:
            results = _toys(padded, data, mu, level, test_stat, mus, toy_options, fit_options)
        for (row, _, _), result in zip(family, results):
            row.update({key: _finite(value) for key, value in result.items()})
    info["seconds"] = time.perf_counter() - started
    device = _device.describe(jax.devices()[0])
    return ScanResult(points=rows, labels=labels, calculator=calculator, test_stat=test_stat, mu=mu, level=level,
                      device=device, info=info)


def _empty_row(name, values) -> dict:
    return {"name": name, "values": values, "cls_obs": None, "cls_exp": [None] * 5, "upper_limit_obs": None,
            "upper_limit_exp": [None] * 5, "n_failed": 0, "clsb_obs": None, "clb_obs": None,
            "limit_bounds": None, "error": None}


# -- asymptotic: every point at once ----------------------------------------------------


def _targets(level: float) -> np.ndarray:
    """sqrt(q_A) where each expected CLs (-2 ... +2 sigma) equals ``level``: from
    CLs_exp = Phi(-(n + sqrt(q_A))) / Phi(-n) (:func:`gpufit.infer.asymptotics.pvalues`)."""
    return norm.isf(level * norm.cdf(-N_SIGMA)) - N_SIGMA


def _asymptotic(stacked, models, data, mu, level, test_stat, info, mus=None, tol=1e-8, maxiter=300):
    """Rows (CLs at ``mu``, limits) for points [S] with data [S, N + A]; counts fits and
    rounds into ``info``."""
    n = len(models)
    poi = np.array([m.poi_index for m in models])
    free = np.stack([~m.fixed_parameters() for m in models])  # [S, P]
    init = np.stack([m.suggested_init() for m in models])
    failed = np.zeros(n, int)

    def fit(point, d, x0, fr):
        info["fits"] += len(point)
        info["rounds"] += 1
        return fit_points(stacked, models, point, d, x0, fr, tol=tol, maxiter=maxiter)

    def conditional(point, d, x0):
        fr = free[point].copy()
        fr[np.arange(len(point)), poi[point]] = False
        r = fit(point, d, x0, fr)
        np.add.at(failed, point, ~r.converged)
        return r

    everyone = np.arange(n)
    # round 1: the free fit and the background-only fit (the Asimov data's nuisance parameters)
    x0 = init.copy()
    x0[everyone, poi] = 0.0
    r1 = fit(np.concatenate([everyone, everyone]), np.concatenate([data, data]), np.concatenate([init, x0]),
             np.concatenate([free, free & (np.arange(free.shape[1]) != poi[:, None])]))
    np.add.at(failed, np.concatenate([everyone, everyone]), ~r1.converged)
    free_d, bkg = r1.pars[:n], r1.pars[n:]
    f_free_d, muhat_d = r1.twice_nll[:n], free_d[everyone, poi]
    asimov = np.stack([np.asarray(models[s].expected_data(bkg[s])) for s in everyone])
    # round 2: the free fit to the Asimov data (from the init, as hypotest's), then the tests at mu
    r2 = fit(everyone, asimov, init, free)
    np.add.at(failed, everyone, ~r2.converged)
    f_free_a, muhat_a = r2.twice_nll, r2.pars[everyone, poi]

    def evaluate(requests):
        """q_obs (NaN where not asked) and q_A at the (point, mu, with_data) requests.

        Every fit starts from the suggested init (POI at mu), as pyhf's and
        :func:`gpufit.upper_limit`'s do: a warm start from a nearby fit can end in
        another local minimum (on the observed and on the Asimov data alike; measured
        on 1Lbb and on a bimodal histosys in the tests), and the scan must find theirs."""
        pts = np.array([s for s, _, _ in requests], dtype=int)
        mus = np.array([m for _, m, _ in requests])
        d_idx = np.flatnonzero([w for _, _, w in requests])
        point = np.concatenate([pts, pts[d_idx]])
        x0 = init[point].copy()
        x0[np.arange(len(point)), poi[point]] = np.concatenate([mus, mus[d_idx]])
        r = conditional(point, np.concatenate([asimov[pts], data[pts[d_idx]]]), x0)
        k = len(pts)
        q_a = from_fits(test_stat, mus, r.twice_nll[:k], f_free_a[pts], muhat_a[pts])
        q_d = np.full(k, np.nan)
        q_d[d_idx] = from_fits(test_stat, mus[d_idx], r.twice_nll[k:], f_free_d[pts[d_idx]], muhat_d[pts[d_idx]])
        return q_d, q_a

    q_d, q_a = evaluate([(s, mu, True) for s in everyone])
    at_mu = pvalues(test_stat, q_d, q_a)
    rows = [{"cls_obs": float(at_mu["cls_obs"][s]), "clsb_obs": float(at_mu["clsb_obs"][s]),
             "clb_obs": float(at_mu["clb_obs"][s]), "cls_exp": [float(v) for v in at_mu["cls_exp"][s]]}
            for s in everyone]

    if mus is not None:  # a grid: every point at every mu, interpolated as upper_limit(mus=) does
        q_d, q_a = evaluate([(s, m, True) for s in everyone for m in mus])
        p = pvalues(test_stat, q_d, q_a)
        values = np.column_stack([p["cls_obs"], p["cls_exp"]]).reshape(n, len(mus), 6)
        for s in everyone:
            limits = [crossing(mus, values[s, :, j], level, interpolate="pyhf") for j in range(6)]
            bounds = [b for _, b in limits]
            rows[s].update(upper_limit_obs=limits[0][0], upper_limit_exp=[v for v, _ in limits[1:]],
                           n_failed=int(failed[s]), limit_bounds=None if not any(bounds) else bounds)
        return rows

    # the limits: six increasing residuals per point, y = 0 at CLs = level
    targets = _targets(level)
    lows = np.array([m.suggested_bounds()[p, 0] for m, p in zip(models, poi)])  # a limit is not below these

    def residuals(q_d, q_a):
        y = np.empty((len(q_a), 6))
        y[:, 1:] = np.sqrt(q_a)[:, None] - targets
        with np.errstate(divide="ignore"):
            cls = pvalues(test_stat, np.where(np.isnan(q_d), 0.0, q_d), q_a)["cls_obs"]
            y[:, 0] = np.where(np.isnan(q_d), np.nan, norm.isf(cls) - norm.isf(level))
        return y

    roots = [[_Root() for _ in range(6)] for _ in everyone]
    y_mu = residuals(q_d, q_a)
    sigma = np.where(q_a > 0, abs(mu) / np.sqrt(np.maximum(q_a, 1e-300)), np.nan)  # the POI's Asimov width
    for s in everyone:
        for j in range(6):
            roots[s][j].add(mu, y_mu[s, j])
            if j > 0:
                roots[s][j].add(0.0, -targets[j - 1])  # q_A(0) = 0 exactly
            guess = (max(muhat_d[s], 0.0) if j == 0 else 0.0) + sigma[s] * targets[2 if j == 0 else j - 1]
            roots[s][j].guess = guess if np.isfinite(guess) and guess > lows[s] else None
    for _ in range(_MAX_ROUNDS):
        asks = {}
        for s in everyone:
            for j in range(6):
                m = roots[s][j].next(lows[s])
                if m is not None:
                    asks.setdefault((s, m), set()).add(j)
        if not asks:
            break
        requests = [(s, m, 0 in js) for (s, m), js in asks.items()]
        info.setdefault("requests_per_round", []).append(len(requests))
        y = residuals(*evaluate(requests))
        for i, ((s, m), js) in enumerate(asks.items()):
            if 0 in js:
                roots[s][0].add(m, y[i, 0])
            for j in range(1, 6):  # a value of q_A serves every expected curve of the point
                if not roots[s][j].done:
                    roots[s][j].add(m, y[i, j])
    for s in everyone:
        limits = [roots[s][j].root() for j in range(6)]
        bounds = [b for _, b in limits]
        rows[s].update(
            upper_limit_obs=limits[0][0], upper_limit_exp=[v for v, _ in limits[1:]], n_failed=int(failed[s]),
            limit_bounds=None if not any(bounds) else bounds,
        )
        if not np.all(np.isfinite([v for v, _ in limits])):
            rows[s]["error"] = "a limit could not be solved (fits returned no finite test statistic)"
    return rows


class _Root:
    """Where one increasing residual y(mu) crosses 0: its evaluated points, the next POI
    value to evaluate (secant inside the bracket, else regula falsi, else bisection;
    extrapolation until bracketed) and the root."""

    def __init__(self):
        self.points: list = []  # (mu, y)
        self.guess = None
        self.done = False
        self.failed = False

    def add(self, mu, y):
        self.points.append((float(mu), float(y)))

    def _bracket(self):
        below = [(m, y) for m, y in self.points if y < 0]
        above = [(m, y) for m, y in self.points if y > 0]
        return (max(below) if below else None), (min(above) if above else None)

    def next(self, low):
        if self.done:
            return None
        if any(np.isnan(y) for _, y in self.points):
            self.done = self.failed = True
            return None
        if any(abs(y) <= _RTOL for _, y in self.points):
            self.done = True
            return None
        a, b = self._bracket()
        if a is not None and b is not None:
            if b[0] - a[0] <= _RTOL * max(abs(b[0]), 1e-3):
                self.done = True
                return None
            proposal = self._secant_in(a, b)
        elif b is None:  # every point below the crossing: go up
            top = max(a[0], 1e-3)
            if top >= _MU_MAX:
                self.done = True
                return None
            proposal = self.guess if self.guess is not None and self.guess > top else self._extrapolate(a, 4.0 * top)
            proposal = min(max(proposal, 1.05 * top), 4.0 * top, _MU_MAX)
        else:  # every point above: go down, to the POI's lower bound at most
            if b[0] <= low + 1e-12:
                self.done = True
                return None
            proposal = max(self._extrapolate(b, low), low, b[0] - 4.0 * max(b[0] - low, 1e-3))
        self.guess = None
        return float(proposal)

    def _extrapolate(self, end, fallback):
        """The secant through the two points nearest ``end`` (the last known side)."""
        near = sorted(self.points, key=lambda p: abs(p[0] - end[0]))[:2]
        if len(near) == 2 and near[0][0] != near[1][0]:
            (m0, y0), (m1, y1) = near
            slope = (y1 - y0) / (m1 - m0)
            if slope > 0 and np.isfinite(slope):
                return end[0] - end[1] / slope
        return fallback

    def _secant_in(self, a, b):
        """Inside the bracket (a, b): inverse quadratic interpolation through the three
        finite points nearest the regula-falsi estimate (every point of the curve counts,
        whichever curve asked for it), else that estimate, else the midpoint; kept at
        least a tolerance from either end, so that an estimate next to an end closes the
        bracket (as Brent's method does)."""
        width = b[0] - a[0]
        if not (np.isfinite(a[1]) and np.isfinite(b[1])):
            return 0.5 * (a[0] + b[0])
        delta = 0.4 * _RTOL * max(abs(b[0]), 1e-3)
        guess = a[0] - a[1] * width / (b[1] - a[1])
        candidates = []
        finite = [(m, y) for m, y in set(self.points) if np.isfinite(y)]
        near = sorted(finite, key=lambda p: abs(p[0] - guess))[:3]
        if len(near) == 3 and len({y for _, y in near}) == 3:
            (m0, y0), (m1, y1), (m2, y2) = near
            candidates.append(m0 * y1 * y2 / ((y0 - y1) * (y0 - y2)) + m1 * y0 * y2 / ((y1 - y0) * (y1 - y2))
                              + m2 * y0 * y1 / ((y2 - y0) * (y2 - y1)))
        candidates.append(guess)
        for c in candidates:
            if a[0] < c < b[0]:
                return min(max(c, a[0] + delta), b[0] - delta)
        return 0.5 * (a[0] + b[0])

    def root(self):
        """(limit, bound): bound is None for a crossing, "above" where the residual
        stays below 0 up to the largest POI value tried, "below" where it is above 0
        at the lowest."""
        if self.failed:
            return float("nan"), None
        exact = [m for m, y in self.points if abs(y) <= _RTOL]
        if exact:
            return exact[0], None
        a, b = self._bracket()
        if a is None:
            return b[0], "below"
        if b is None:
            return a[0], "above"
        if np.isfinite(a[1]) and np.isfinite(b[1]):
            return a[0] - a[1] * (b[0] - a[0]) / (b[1] - a[1]), None
        return 0.5 * (a[0] + b[0]), None


# -- toys: point after point, on the shared kernels --------------------------------------


def _toys(models, data, mu, level, test_stat, mus, toy_options, fit_options):
    rows = []
    for model, d in zip(models, data):
        row = {}
        try:
            r = hypotest(model, d, mu=mu, test_stat=test_stat, calculator="toys", **toy_options, **fit_options)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", LimitOutsideGrid)
                lim = upper_limit(model, d, mus=mus, calculator="toys", level=level, test_stat=test_stat,
                                  **toy_options, **fit_options)
            bounds = [lim.observed_bound, *lim.expected_bound]
            row.update(cls_obs=float(r.cls_obs), cls_exp=[float(v) for v in r.cls_exp], clsb_obs=float(r.clsb_obs),
                       clb_obs=float(r.clb_obs), upper_limit_obs=float(lim.observed),
                       upper_limit_exp=[float(v) for v in lim.expected], n_failed=int(r.n_failed + lim.n_failed),
                       limit_bounds=None if not any(bounds) else bounds)
        except GpufitError as err:
            row["error"] = f"{type(err).__name__}: {err}"
        rows.append(row)
    return rows
