"""Plots (matplotlib, the ``plot`` extra) of gpufit's results, the way pyhf, cabinetry and
ROOT users read them:

- :func:`brazil_plot`: CLs against the POI with the expected bands (an upper limit);
- :func:`teststat_plot`: the toy test-statistic distributions of a hypothesis test, with
  the asymptotic ones drawn over them;
- :func:`pulls_plot`: nuisance-parameter pulls and constraints of a fit;
- :func:`correlation_plot`: the correlation matrix of a fit;
- :func:`contour_plot`: the exclusion contour of a signal grid (``gpufit.scan``).

Each takes the result object and an optional matplotlib ``ax``, returns the axes, and
saves the figure where ``path`` is given. Importing this module does not import
pyplot, and with ``path`` and no ``ax`` no pyplot figure is made: the user's matplotlib
backend is left as it is.
"""

from __future__ import annotations

import numpy as np

from .exceptions import BackendUnavailable, InvalidArgument
from .infer.asymptotics import pvalues

_TOY_COLORS = {"sb": "tab:red", "b": "tab:blue"}


def _axes(ax, path, figsize):
    """The axes to draw on: ``ax``, else a new figure's (a pyplot one only where the
    figure is to be shown, i.e. without ``path``)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise BackendUnavailable("plots need matplotlib: pip install 'gpufit[plot]'") from err
    if ax is not None:
        return ax
    if path is not None:
        return Figure(figsize=figsize, layout="constrained").subplots()
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, layout="constrained")[1]


def _save(ax, path):
    if path is not None:
        ax.figure.savefig(path, dpi=120)
    return ax


def brazil_plot(result, path=None, ax=None):
    """CLs against the POI with the expected +-1/2 sigma bands, the observed and expected
    limits marked.

    Args:
        result: :class:`gpufit.infer.intervals.UpperLimitResult` (``gpufit.upper_limit``).
    """
    ax = _axes(ax, path, (6, 4.5))
    mus, exp = result.mus, result.cls_exp
    ax.fill_between(mus, exp[:, 0], exp[:, 4], color="yellow", label=r"expected $\pm 2\sigma$")
    ax.fill_between(mus, exp[:, 1], exp[:, 3], color="limegreen", label=r"expected $\pm 1\sigma$")
    ax.plot(mus, exp[:, 2], "k--", label="expected")
    ax.plot(mus, result.cls_obs, "k.-", label="observed")
    ax.axhline(result.level, color="red", label=f"CLs = {result.level}")
    if np.isfinite(result.observed):
        ax.axvline(result.observed, color="k", lw=0.8, ls=":")
    ax.set_xlabel(r"$\mu$ (signal strength)")
    ax.set_ylabel(r"CL$_s$")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="upper right")
    ax.set_title(f"{100 * (1 - result.level):.0f}% CL upper limit: observed {result.observed:.3f}, "
                 f"expected {result.expected[2]:.3f}", fontsize="medium")
    return _save(ax, path)


def asymptotic_counts(test_stat: str, q_asimov: float, edges, n: int) -> dict:
    """Toys per bin that the asymptotic formulae (Cowan et al.) expect, for ``n`` toys of
    each hypothesis: ``{"sb": [len(edges) - 1], "b": [...]}``, from the same survival
    functions that give the asymptotic p-values (:func:`gpufit.infer.asymptotics.pvalues`:
    CLsb(q) = P(Q >= q | s+b), CLb(q) = P(Q >= q | b)). The first bin, from 0, holds the
    point mass at q = 0."""
    edges = np.asarray(edges, dtype=float)
    r = pvalues(test_stat, np.clip(edges, 0.0, None), np.full(edges.shape, float(q_asimov)))
    out = {}
    for key, survival in (("sb", r["clsb_obs"]), ("b", r["clb_obs"])):
        s = np.where(edges <= 0.0, 1.0, survival)
        out[key] = n * (s[:-1] - s[1:])
    return out


def teststat_plot(result, asymptotic=None, path=None, ax=None, bins=40):
    """The toy test-statistic distributions of a hypothesis test: the signal+background
    and background-only toys (histograms), the observed value, and, where an asymptotic
    result at the same mu is given, the counts the asymptotic formulae expect in each bin
    (steps): where the two disagree is where toys matter.

    Args:
        result: a toy :class:`gpufit.infer.hypotest.HypoTestResult`
            (``gpufit.hypotest(..., calculator="toys")``).
        asymptotic: the asymptotic result at the same mu (``calculator="asymptotic"``),
            for its Asimov test statistic; q and qtilde only.
        bins: number of bins, from 0 to past the observed value and the bulk of the toys
            (the last bin holds the overflow).
    """
    if result.teststat_sb is None or result.teststat_b is None:
        raise InvalidArgument("teststat_plot needs a toy result (hypotest(..., calculator='toys'))")
    ax = _axes(ax, path, (6, 4.5))
    sb, b = np.asarray(result.teststat_sb, float), np.asarray(result.teststat_b, float)
    sb, b = sb[np.isfinite(sb)], b[np.isfinite(b)]
    top = max(np.quantile(np.concatenate([sb, b]), 0.999), 1.2 * result.teststat, 1.0)
    edges = np.linspace(0.0, top, bins + 1)
    mu = f"{result.mu:g}"
    names = {"sb": rf"s+b toys ($\mu$ = {mu})", "b": r"b-only toys ($\mu$ = 0)"}
    for key, values in (("sb", sb), ("b", b)):
        ax.hist(np.clip(values, 0.0, top), edges, histtype="stepfilled", alpha=0.3, color=_TOY_COLORS[key],
                label=f"{names[key]}, {values.size}")
    if asymptotic is not None and result.test_stat in ("q", "qtilde"):
        expected = asymptotic_counts(result.test_stat, asymptotic.teststat_asimov, edges, 1)
        for key, values in (("sb", sb), ("b", b)):
            ax.stairs(values.size * expected[key], edges, color=_TOY_COLORS[key], lw=1.5,
                      label=f"asymptotic, {names[key].split(' toys')[0]}")
    ax.axvline(result.teststat, color="k", lw=1.5, label=f"observed {result.teststat:.3g}")
    ax.set_yscale("log")
    ax.set_ylim(bottom=0.5)
    ax.set_xlim(0.0, top)
    label = {"qtilde": r"$\tilde{q}_\mu$", "q": r"$q_\mu$", "q0": r"$q_0$", "t": r"$t_\mu$", "ttilde": r"$\tilde{t}_\mu$"}
    ax.set_xlabel(f"test statistic {label.get(result.test_stat, result.test_stat)}")
    ax.set_ylabel("toys per bin")
    err = f" $\\pm$ {result.cls_obs_err:.3f}" if result.cls_obs_err is not None else ""
    versus = f", asymptotic {asymptotic.cls_obs:.4f}" if asymptotic is not None else ""
    ax.set_title(f"$\\mu$ = {mu}: CLs = {result.cls_obs:.4f}{err} from {sb.size + b.size} toys "
                 f"({result.n_failed} failed){versus}", fontsize="medium")
    ax.legend(loc="upper right", fontsize="small")
    return _save(ax, path)


def pulls_plot(fit_result, model, path=None, ax=None, exclude=()):
    """Pulls and constraints of the constrained nuisance parameters of one fit:
    ``(theta_hat - theta_0) / sigma_0`` with the error bar ``sigma_hat / sigma_0``, where
    theta_0 and sigma_0 are the parameter's initial value and prior width (pyhf's
    ``suggested_init`` and its parameter set's ``width()``, as cabinetry draws them).

    Args:
        fit_result: a :class:`gpufit.FitResult` of ONE dataset with ``hesse`` (``fit(model,
            data)`` of one dataset runs it).
        model: the fit's :class:`gpufit.Model` (the priors).
        exclude: parameter names, or name prefixes such as ``"staterror_"``, to leave out.
    """
    pars = np.asarray(fit_result.pars)
    if pars.ndim != 1:
        raise InvalidArgument(f"pulls_plot draws one fit, got a batch of shape {pars.shape[:-1]}")
    if fit_result.uncertainties is None:
        raise InvalidArgument("pulls_plot needs the fit's uncertainties: fit(..., hesse=True)")
    center, width = model.prior_centers(), model.prior_widths()
    names = np.asarray(fit_result.parameter_names, dtype=object)
    keep = np.isfinite(width) & ~np.asarray(fit_result.fixed)
    keep &= np.array([not any(n == e or n.startswith(e) for e in exclude) for n in names], bool)
    index = np.flatnonzero(keep)
    pull = (pars[index] - center[index]) / width[index]
    error = np.asarray(fit_result.uncertainties)[index] / width[index]
    ax = _axes(ax, path, (6, 1.5 + 0.25 * max(index.size, 4)))
    y = np.arange(index.size)[::-1]
    ax.axvspan(-2, 2, color="yellow", alpha=0.5, lw=0)
    ax.axvspan(-1, 1, color="limegreen", alpha=0.5, lw=0)
    ax.axvline(0, color="grey", lw=0.8)
    ax.errorbar(pull, y, xerr=error, fmt="ko", ms=4, capsize=0)
    ax.set_yticks(y, names[index], fontsize="small")
    ax.set_ylim(-0.7, index.size - 0.3)
    lim = max(3.0, float(np.max(np.abs(pull) + error, initial=0.0)) + 0.3)
    ax.set_xlim(-lim, lim)
    ax.set_xlabel(r"$(\hat{\theta} - \theta_0) / \Delta\theta$")
    ax.set_title(f"pulls of {index.size} constrained parameters", fontsize="medium")
    return _save(ax, path)


def correlation_plot(fit_result, path=None, ax=None, min_correlation=0.0):
    """The correlation matrix of the free parameters of one fit.

    Args:
        fit_result: a :class:`gpufit.FitResult` of ONE dataset with ``hesse``.
        min_correlation: draw only the parameters correlated with some other one by at
            least this much in absolute value (0: all free parameters); cabinetry calls
            it the pruning threshold.
    """
    corr = fit_result.correlations
    if corr is None:
        raise InvalidArgument("correlation_plot needs the fit's covariance: fit(..., hesse=True)")
    if corr.ndim != 2:
        raise InvalidArgument(f"correlation_plot draws one fit, got a batch of shape {corr.shape[:-2]}")
    index = np.flatnonzero(~np.asarray(fit_result.fixed))
    off = np.abs(corr[np.ix_(index, index)] - np.eye(index.size))
    index = index[np.max(off, axis=1, initial=0.0) >= min_correlation]
    sub = corr[np.ix_(index, index)]
    names = np.asarray(fit_result.parameter_names, dtype=object)[index]
    size = 2.5 + 0.28 * index.size
    ax = _axes(ax, path, (size + 1.0, size))
    image = ax.imshow(sub, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.figure.colorbar(image, ax=ax, label="correlation", shrink=0.8)
    ax.set_xticks(np.arange(index.size), names, rotation=90, fontsize="small")
    ax.set_yticks(np.arange(index.size), names, fontsize="small")
    if index.size <= 20:
        for (i, j), value in np.ndenumerate(sub):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize="x-small",
                    color="white" if abs(value) > 0.6 else "black")
    pruned = f", |correlation| >= {min_correlation:g}" if min_correlation > 0 else ""
    ax.set_title(f"correlations of {index.size} free parameters{pruned}", fontsize="medium")
    return _save(ax, path)


def contour_plot(result, path=None, ax=None, labels=None):
    """The exclusion contour of a signal grid in the plane of its two labels: observed
    (solid) and expected (dashed) lines where CLs at the tested mu equals the level,
    the expected +-1 sigma band filled, the points marked (crossed where an error left
    them without numbers).

    CLs is interpolated linearly in log10(CLs) on the Delaunay triangulation of the
    points (matplotlib's ``tricontour``), so the lines are as good as the grid is dense.

    Args:
        result: :class:`gpufit.ScanResult` (``gpufit.scan``), or its ``to_dict()``.
        labels: the two axis titles (default: the patchset's labels, e.g. m1, m2).
    """
    d = result.to_dict() if hasattr(result, "to_dict") else result
    names = list(labels or d["labels"])
    if len(d["labels"]) != 2:
        raise InvalidArgument(f"a contour needs points labelled by two values, these have {d['labels']}")
    rows = [r for r in d["points"] if r.get("cls_obs") is not None and None not in r["cls_exp"]]
    bad = [r for r in d["points"] if r not in rows]
    if len(rows) < 3:
        raise InvalidArgument(f"a contour needs at least 3 points with CLs values, the scan has {len(rows)}")
    from matplotlib.tri import Triangulation

    ax = _axes(ax, path, (6, 5))
    xy = np.array([r["values"] for r in rows], dtype=float)
    tri = Triangulation(xy[:, 0], xy[:, 1])
    tiny = 1e-300
    obs = np.log10(np.maximum([r["cls_obs"] for r in rows], tiny) / d["level"])
    exp = np.log10(np.maximum(np.array([r["cls_exp"] for r in rows], dtype=float), tiny) / d["level"])
    # the +-1 sigma band: where the -1 sigma expected CLs excludes (it excludes more than
    # the +1 sigma one, everywhere), less where the +1 sigma one does too (painted over)
    low = min(exp[:, 1].min(), exp[:, 3].min()) - 1.0
    if exp[:, 1].min() < 0:
        ax.tricontourf(tri, exp[:, 1], levels=[low, 0.0], colors=["gold"], alpha=0.6)
    if exp[:, 3].min() < 0:
        ax.tricontourf(tri, exp[:, 3], levels=[low, 0.0], colors=[ax.get_facecolor()])
    ax.tricontour(tri, exp[:, 2], levels=[0.0], colors="k", linestyles="--")
    ax.tricontour(tri, obs, levels=[0.0], colors="firebrick", linestyles="-", linewidths=2)
    ax.plot(xy[:, 0], xy[:, 1], ".", color="grey", ms=3)
    if bad:
        ax.plot([r["values"][0] for r in bad], [r["values"][1] for r in bad], "x", color="red", ms=6)
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color="firebrick", lw=2, label="observed"),
               Line2D([], [], color="k", ls="--", label="expected"),
               Patch(color="gold", alpha=0.6, label=r"expected $\pm 1\sigma$")]
    if bad:
        handles.append(Line2D([], [], color="red", marker="x", ls="", label=f"no result ({len(bad)})"))
    ax.legend(handles=handles, loc="best", frameon=False)
    ax.set_xlabel(names[0])
    ax.set_ylabel(names[1])
    cl = 100 * (1 - d["level"])
    ax.set_title(f"{cl:g}% CL exclusion, CLs at mu = {d['mu']:g} ({d['calculator']}, {d['test_stat']})")
    return _save(ax, path)
