"""p-values from toy distributions of a test statistic, with pyhf's conventions.

pyhf's ``EmpiricalDistribution.pvalue(x)`` is the fraction of toys with a test
statistic ``>= x``; CLsb comes from the signal+background toys, CLb from the
background-only toys and CLs = CLsb / CLb. The expected band evaluates the three at
every background-only toy and takes their (linear) percentiles at the normal quantiles
of -2 ... +2 sigma (pyhf's ``ToyCalculator.expected_pvalues``).
"""

from __future__ import annotations

import numpy as np

from ..exceptions import ToyFitsFailed

NORMAL_PERCENTILES = np.array([2.27501319, 15.86552539, 50.0, 84.13447461, 97.72498681])


def tail_fraction(sorted_samples: np.ndarray, values) -> np.ndarray:
    """Fraction of ``sorted_samples`` [T] that are ``>= values`` (any shape)."""
    n = sorted_samples.size
    if n == 0:
        return np.full(np.shape(values), np.nan)
    return (n - np.searchsorted(sorted_samples, values, side="left")) / n


def _binomial_error(p, n):
    return np.sqrt(np.clip(p * (1.0 - p), 0.0, None) / max(n, 1))


def toy_pvalues(teststat_obs: float, teststat_sb: np.ndarray, teststat_b: np.ndarray) -> dict:
    """Observed CLsb, CLb, CLs (with binomial errors) and the expected bands [5].

    NaN entries (toys whose fits failed) are left out of both distributions; the
    caller counts them.
    """
    sb = np.sort(teststat_sb[np.isfinite(teststat_sb)])
    b = np.sort(teststat_b[np.isfinite(teststat_b)])
    clsb = float(tail_fraction(sb, teststat_obs))
    clb = float(tail_fraction(b, teststat_obs))
    with np.errstate(divide="ignore", invalid="ignore"):
        cls = clsb / clb
        clsb_err = float(_binomial_error(clsb, sb.size))
        clb_err = float(_binomial_error(clb, b.size))
        cls_err = float(abs(cls) * np.hypot(clsb_err / clsb, clb_err / clb)) if clsb > 0 else float(
            clsb_err / clb if clb > 0 else np.nan
        )
        p_sb = tail_fraction(sb, b)
        p_b = tail_fraction(b, b)
        p_s = p_sb / p_b
    if b.size:
        bands = np.percentile(np.stack([p_sb, p_b, p_s], axis=1), NORMAL_PERCENTILES, axis=0).T
    else:
        bands = np.full((3, 5), np.nan)
    return {
        "clsb_obs": clsb,
        "clb_obs": clb,
        "cls_obs": float(cls),
        "clsb_obs_err": clsb_err,
        "clb_obs_err": clb_err,
        "cls_obs_err": cls_err,
        "clsb_exp": bands[0],
        "clb_exp": bands[1],
        "cls_exp": bands[2],
    }


DEFAULT_MAX_FAILED = 0.01  # the fraction of toys whose fits may fail after every retry


def count_failed(teststat_sb: np.ndarray, teststat_b: np.ndarray) -> int:
    """Toys whose fits failed after every retry: NaN test statistics (any shapes)."""
    return int(np.sum(~np.isfinite(teststat_sb)) + np.sum(~np.isfinite(teststat_b)))


def check_failed(teststat_sb: np.ndarray, teststat_b: np.ndarray, max_failed: float, result=None) -> int:
    """:func:`count_failed`, raising :class:`gpufit.ToyFitsFailed` carrying ``result``
    where their fraction of all toys exceeds ``max_failed``: the one verdict of a toy
    hypothesis test, a toy limit and a merged campaign."""
    failed = count_failed(teststat_sb, teststat_b)
    total = int(np.size(teststat_sb) + np.size(teststat_b))
    if total and failed / total > max_failed:
        raise ToyFitsFailed(
            f"{failed} of {total} toys ({failed / total:.2%}) have a fit that failed after every retry, "
            f"above max_failed={max_failed:g}; their test statistics are NaN in "
            "err.result. Check the model (gpufit fit on the observed data), loosen tol, "
            "or raise max_failed to accept them",
            result=result, n_failed=failed, n_toys=total, max_failed=max_failed,
        )
    return failed
